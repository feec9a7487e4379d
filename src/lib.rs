//! RL-U²Net: dual-branch 3D U-Net whole-heart segmentation of CT and MRI,
//! with PPO agents that steer the cross-modal pose alignment.
//!
//! The data flows one way: `io` → `preprocess` → `data` → `model` (+ `rl`) →
//! `loss` → `config`/`checkpoint`/`model_file` (a run folder's contents, or one exported file) → `infer` → `train`
//! (whose validation is inference) → `metrics` → `cli`. Lower layers never import
//! higher ones.

// Index loops over x/y/z read like the formulas they implement.
#![allow(clippy::needless_range_loop)]

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod geometry;
pub mod infer;
pub mod io;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod model_file;
pub mod preprocess;
pub mod rl;
pub mod seed;
pub mod train;
pub mod viz;
