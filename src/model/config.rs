//! The network's configuration: every switch and default of docs/method.md §2 and §7.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// 96³ patches, C = 48, heads (3,6,12,24), window 6, 1.5 mm: the paper's scale (GPU).
    Paper,
    /// 32³ patches, C = 12, heads (1,2,4,8), window 4, 4 mm: an hour's training on a CPU.
    Cpu,
    /// 32³ patches, C = 8, heads (1,2,4,8), window 4, 4 mm: tests and the demo.
    Tiny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderWeights {
    /// One Swin encoder for both modalities (the paper's shared encoder).
    Shared,
    Separate,
}

/// What PoseAlign rotates (docs/method.md §2, "Order").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoseAlignTarget {
    /// Rotate the auxiliary map into the primary pose, then attend (default).
    Auxiliary,
    /// Paper-literal: attend, then rotate and average F_cross.
    Cross,
}

/// How the k chosen rotations are averaged in the fused maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RotationWeights {
    /// Equally, as docs/method.md settles it (default).
    #[default]
    Uniform,
    /// Each by its policy probability, renormalised over the chosen ones. Measured on
    /// the demo set: not better (docs/method-notes.md), so not the default.
    Policy,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub in_channels: usize,
    pub num_classes: usize,
    /// Cubic patch edge (a multiple of 32).
    pub patch: usize,
    /// C: channels after the patch embedding.
    pub feature_size: usize,
    pub depths: [usize; 4],
    pub heads: [usize; 4],
    pub window: usize,
    pub mlp_ratio: usize,
    pub encoder_weights: EncoderWeights,
    /// Rotations sampled per forward pass.
    pub k_sel: usize,
    /// How the sampled rotations are averaged.
    pub rotation_weights: RotationWeights,
    /// λ of eq. 7.
    pub lambda: f64,
    pub pose_align_target: PoseAlignTarget,
    pub cma_bidirectional: bool,
    /// Ablation: no cross-modal attention (PoseAlign rotates the auxiliary map itself).
    pub no_cma: bool,
    /// Ablation: no RL-XAlign modules and no Res-Fusion; the branches run independently.
    pub no_rl_xalign: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::preset(Preset::Cpu)
    }
}

impl ModelConfig {
    pub fn preset(p: Preset) -> ModelConfig {
        let (patch, feature_size, heads, window) = match p {
            Preset::Paper => (96, 48, [3, 6, 12, 24], 6),
            Preset::Cpu => (32, 12, [1, 2, 4, 8], 4),
            Preset::Tiny => (32, 8, [1, 2, 4, 8], 4),
        };
        ModelConfig {
            in_channels: 1,
            num_classes: 8,
            patch,
            feature_size,
            depths: [2, 2, 2, 2],
            heads,
            window,
            mlp_ratio: 4,
            encoder_weights: EncoderWeights::Shared,
            k_sel: 4,
            rotation_weights: RotationWeights::Uniform,
            lambda: 0.3,
            pose_align_target: PoseAlignTarget::Auxiliary,
            cma_bidirectional: true,
            no_cma: false,
            no_rl_xalign: false,
        }
    }

    /// Channels at level l (0: 1/2 resolution … 4: 1/32).
    pub fn channels(&self, level: usize) -> usize {
        self.feature_size << level
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.patch >= 32 && self.patch.is_multiple_of(32),
            "patch must be a multiple of 32, got {}",
            self.patch
        );
        anyhow::ensure!(
            self.feature_size > 0 && self.window > 0 && self.mlp_ratio > 0,
            "feature_size, window and mlp_ratio must be positive"
        );
        for l in 0..4 {
            anyhow::ensure!(
                self.heads[l] > 0 && self.channels(l).is_multiple_of(self.heads[l]),
                "stage {l}: {} channels do not split into {} heads",
                self.channels(l),
                self.heads[l]
            );
        }
        anyhow::ensure!(
            (1..=24).contains(&self.k_sel),
            "k_sel must be 1..24, got {}",
            self.k_sel
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.lambda),
            "lambda must be in [0, 1], got {}",
            self.lambda
        );
        Ok(())
    }
}
