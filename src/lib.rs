//! RL-U²Net: dual-branch 3D U-Net whole-heart segmentation of CT and MRI,
//! with PPO agents that steer the cross-modal pose alignment.
//!
//! The data flows one way: `io` → `preprocess` → `data` → `model` (+ `rl`) →
//! `loss` → `config`/`checkpoint` → `run` (the run folder, one type for every file in it) →
//! `model_file` (a run folder's model as one exported file) → `infer` → `train`
//! (whose validation is inference) → `metrics` → `cli`. Lower layers never import
//! higher ones.

// Index loops over x/y/z read like the formulas they implement.
#![allow(clippy::needless_range_loop)]
// every `unsafe` block says why it is sound, every `unsafe fn` what its callers guarantee
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
pub mod allocator;
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
pub mod progress;
pub mod rl;
pub mod run;
pub mod seed;
pub mod train;
pub mod viz;
