//! Training: the loop, validation, the log and plots (the configuration is
//! `crate::config`, checkpoints `crate::checkpoint`).

pub mod alignment;
mod clip;
mod log;
pub mod plots;
pub mod reward;
mod run;
pub mod validate;

pub use self::run::{TrainOptions, TrainSummary, train};
pub use self::validate::hard_dice;
pub use crate::checkpoint::{LoopState, load_model};
pub use crate::config::{OptimConfig, TrainConfig};
