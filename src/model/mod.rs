//! The RL-U²Net network (docs/method.md §2) as Burn modules.

pub mod add_act;
pub mod attn_kernel;
pub mod cma;
pub mod config;
pub mod conv;
pub mod conv3d;
pub mod decoder;
pub mod exp;
pub mod flex_op;
pub mod info;
pub mod layers;
pub mod norm_act;
pub mod pose_align;
pub mod rlu2net;
pub mod simd;
pub mod swin;
#[cfg(test)]
mod test_util;
pub mod window_attention;
pub mod xalign;

pub use config::{EncoderWeights, ModelConfig, PoseAlignTarget, Preset, RotationWeights};
pub use pose_align::ActionMode;
pub use rlu2net::{RlU2Net, RlU2NetOutput};
