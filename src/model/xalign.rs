//! RL-XAlign: CMA + PoseAlign + fusion (eq. 7) on one encoder level, both directions.

use burn::prelude::*;

use super::cma::Cma;
use super::config::{ModelConfig, PoseAlignTarget, RotationWeights};
use super::layers::rotate_spatial;
use super::pose_align::{PoseAlign, mean_rotated, rotation_weights};
use crate::geometry::SignedPerm;

#[derive(Module, Debug)]
pub struct RlXAlign {
    /// CT-primary direction (Q from CT, K/V from MRI); None in the `no_cma` ablation.
    pub cma_ct: Option<Cma>,
    /// MRI-primary direction; None in `no_cma` or without `cma_bidirectional`.
    pub cma_mr: Option<Cma>,
    pub pose: PoseAlign,
    pub lambda: f64,
    pub rotate_cross: bool,
    pub bidirectional: bool,
    /// Weight the chosen rotations by their policy probability (else equally).
    pub by_policy: bool,
}

/// What one module produced in one forward pass.
#[derive(Debug, Clone)]
pub struct AlignOutput {
    /// F_aligned and F_primary of the CT branch.
    pub aligned_ct: Tensor<5>,
    pub primary_ct: Tensor<5>,
    /// The same for the MRI branch (None without `cma_bidirectional`).
    pub aligned_mr: Option<Tensor<5>>,
    pub primary_mr: Option<Tensor<5>>,
    /// The module's MRI input (the CT input is `primary_ct`), for the alignment reward.
    pub input_mr: Tensor<5>,
    /// Rotation indices drawn, and log π_θ of each.
    pub actions: Vec<usize>,
    pub log_probs: Vec<f32>,
}

/// Σ_i w_i · group i of a batch stacked as k groups of `b` rows.
fn mean_over_groups(all: Tensor<5>, b: usize, weights: &[f64]) -> Tensor<5> {
    if weights.len() == 1 {
        return all;
    }
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| all.clone().narrow(0, i * b, b).mul_scalar(w))
        .reduce(|x, y| x + y)
        .expect("at least one rotation")
}

impl RlXAlign {
    pub fn new(cfg: &ModelConfig, level: usize, device: &Device) -> Self {
        let dim = cfg.channels(level);
        let heads = cfg.heads[level];
        let cma = |on: bool| (on && !cfg.no_cma).then(|| Cma::new(dim, heads, cfg.window, device));
        RlXAlign {
            cma_ct: cma(true),
            cma_mr: cma(cfg.cma_bidirectional),
            pose: PoseAlign::new(device),
            lambda: cfg.lambda,
            rotate_cross: cfg.pose_align_target == PoseAlignTarget::Cross,
            bidirectional: cfg.cma_bidirectional,
            by_policy: cfg.rotation_weights == RotationWeights::Policy,
        }
    }

    /// F_aligned for one direction: `rots` turn the auxiliary pose into the primary's.
    fn aligned(
        &self,
        cma: Option<&Cma>,
        primary: &Tensor<5>,
        auxiliary: &Tensor<5>,
        rots: &[SignedPerm],
        weights: &[f64],
    ) -> Tensor<5> {
        match cma {
            // no_cma: PoseAlign acts on the auxiliary map itself
            None => mean_rotated(auxiliary.clone(), rots, weights),
            Some(cma) if self.rotate_cross => mean_rotated(
                cma.forward(primary.clone(), auxiliary.clone()),
                rots,
                weights,
            ),
            // the k rotated auxiliary maps attended to in one batch
            Some(cma) => {
                let b = auxiliary.dims()[0];
                let rotated: Vec<Tensor<5>> = rots
                    .iter()
                    .map(|r| rotate_spatial(auxiliary.clone(), r))
                    .collect();
                let all = cma.forward_many(primary.clone(), Tensor::cat(rotated, 0), rots.len());
                mean_over_groups(all, b, weights)
            }
        }
    }

    /// (F_out CT, F_out MRI, record). `rots` are the chosen rotations, `inv` their inverses.
    pub fn forward(
        &self,
        ct: Tensor<5>,
        mr: Tensor<5>,
        rots: &[SignedPerm],
        inv: &[SignedPerm],
        actions: Vec<usize>,
        log_probs: Vec<f32>,
    ) -> (Tensor<5>, Tensor<5>, AlignOutput) {
        let w = rotation_weights(&log_probs, self.by_policy);
        let aligned_ct = self.aligned(self.cma_ct.as_ref(), &ct, &mr, rots, &w);
        let out_ct =
            aligned_ct.clone().mul_scalar(self.lambda) + ct.clone().mul_scalar(1.0 - self.lambda); // eq. 7
        let (out_mr, aligned_mr, primary_mr) = if self.bidirectional {
            let aligned_mr = self.aligned(self.cma_mr.as_ref(), &mr, &ct, inv, &w);
            let out = aligned_mr.clone().mul_scalar(self.lambda)
                + mr.clone().mul_scalar(1.0 - self.lambda);
            (out, Some(aligned_mr), Some(mr.clone()))
        } else {
            (mr.clone(), None, None)
        };
        (
            out_ct,
            out_mr,
            AlignOutput {
                aligned_ct,
                primary_ct: ct,
                aligned_mr,
                primary_mr,
                input_mr: mr,
                actions,
                log_probs,
            },
        )
    }
}
