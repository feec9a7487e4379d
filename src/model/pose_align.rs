//! PoseAlign: the 24 proper cube rotations, chosen by a policy π_θ = softmax(θ).
//!
//! θ ∈ R²⁴ is a parameter of the module, but no segmentation loss reaches it: it is
//! read as numbers to draw actions, so the graph never holds it. The PPO agent (`rl`)
//! owns its updates and writes it back with [`PoseAlign::set_theta`].

use burn::module::Param;
use burn::prelude::*;
use rand::Rng;

use super::layers::rotate_spatial;
use crate::geometry::{SignedPerm, cube_rotations};

/// How a forward pass picks its rotations.
pub enum ActionMode<'a, R: Rng> {
    /// Gumbel top-k without replacement from softmax(θ) (training).
    Sample(&'a mut R),
    /// The k most probable rotations (inference, deterministic).
    TopK,
    /// Given rotation indices per RL-XAlign module (tests, replays).
    Fixed(&'a [Vec<usize>]),
    /// The identity alone in every module: both branches see the same patch
    /// (self-pairing), whose relative pose is the identity.
    Identity,
}

#[derive(Module, Debug)]
pub struct PoseAlign {
    /// Policy logits over the 24 rotations.
    pub theta: Param<Tensor<1>>,
}

/// log π_θ(a) = θ_a − logsumexp(θ).
pub fn log_probs(theta: &[f32]) -> Vec<f32> {
    let m = theta.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + theta.iter().map(|t| (t - m).exp()).sum::<f32>().ln();
    theta.iter().map(|t| t - lse).collect()
}

/// The k indices of the largest values (ties: lower index first).
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Gumbel top-k: k distinct indices drawn without replacement from softmax(θ).
pub fn gumbel_top_k(theta: &[f32], k: usize, rng: &mut impl Rng) -> Vec<usize> {
    let perturbed: Vec<f32> = theta
        .iter()
        .map(|t| {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            t + (-(-u.ln()).ln()) as f32
        })
        .collect();
    top_k(&perturbed, k)
}

impl PoseAlign {
    /// θ = 0: the uniform policy.
    pub fn new(device: &Device) -> Self {
        PoseAlign {
            theta: Param::from_tensor(Tensor::zeros([24], device)),
        }
    }

    pub fn theta_values(&self) -> Vec<f32> {
        self.theta
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .expect("θ is f32")
    }

    /// Replace θ (the PPO agent's update), keeping the parameter's identity.
    pub fn set_theta(self, theta: &[f32]) -> Self {
        assert_eq!(theta.len(), 24, "θ has 24 entries");
        let device = self.theta.val().device();
        let t = Tensor::<1>::from_data(TensorData::new(theta.to_vec(), [24]), &device);
        PoseAlign {
            theta: self.theta.map(|_| t),
        }
    }

    /// Choose `k` rotations; returns (indices, log π_θ of each).
    pub fn choose<R: Rng>(
        &self,
        k: usize,
        mode: &mut ActionMode<'_, R>,
        module: usize,
    ) -> (Vec<usize>, Vec<f32>) {
        let theta = self.theta_values();
        let actions = match mode {
            ActionMode::Sample(rng) => gumbel_top_k(&theta, k, *rng),
            ActionMode::TopK => top_k(&theta, k),
            ActionMode::Fixed(a) => a[module].clone(),
            ActionMode::Identity => vec![0],
        };
        let lp = log_probs(&theta);
        let logp = actions.iter().map(|&a| lp[a]).collect();
        (actions, logp)
    }
}

/// The weight of each chosen rotation in the fused map: its policy probability
/// renormalised over the chosen ones (`by_policy`), else 1/k. The chosen rotations are
/// k distinct ones (Gumbel top-k), so with equal weights 3 of k = 4 would always be
/// wrong rotations once the policy has found the pose (measured: docs/method-notes.md).
/// No gradient flows through the weights (θ is trained by PPO only).
pub fn rotation_weights(log_probs: &[f32], by_policy: bool) -> Vec<f64> {
    let k = log_probs.len().max(1);
    if !by_policy || log_probs.len() <= 1 {
        return vec![1.0 / k as f64; log_probs.len()];
    }
    let m = log_probs.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = log_probs.iter().map(|&l| (l as f64 - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// Σ_i w_i f(R_i) over the rotations (weights summing to 1).
pub fn mean_over(
    rotations: &[SignedPerm],
    weights: &[f64],
    mut f: impl FnMut(&SignedPerm) -> Tensor<5>,
) -> Tensor<5> {
    assert_eq!(rotations.len(), weights.len(), "one weight per rotation");
    if rotations.len() == 1 {
        return f(&rotations[0]);
    }
    rotations
        .iter()
        .zip(weights)
        .map(|(r, &w)| f(r).mul_scalar(w))
        .reduce(|a, b| a + b)
        .expect("at least one rotation")
}

/// Weighted mean of a map rotated by each of the rotations.
pub fn mean_rotated(x: Tensor<5>, rotations: &[SignedPerm], weights: &[f64]) -> Tensor<5> {
    mean_over(rotations, weights, |r| rotate_spatial(x.clone(), r))
}

/// For each of `rotations`, how well it lines the auxiliary map `[B, C, n, n, n]` up with the
/// primary one: the normalised cross-correlation of the two maps, each channel's
/// spatial mean removed first. Computed without gradient from the module's
/// inputs (before CMA and fusion), so it depends on the rotation and cannot be
/// raised by the network making F_aligned copy F_primary (the PPO reward, docs/method.md §3).
///
/// What does not depend on the rotation is computed once: a rotation permutes voxels,
/// so it changes neither a channel's mean
/// nor the norm; only the product is taken per rotation.
pub fn pose_similarities(
    primary: &Tensor<5>,
    auxiliary: &Tensor<5>,
    rotations: &[SignedPerm],
) -> Vec<f64> {
    let a = channel_centred(primary.clone().detach());
    let b = channel_centred(auxiliary.clone().detach());
    let na = a.clone().powi_scalar(2).sum().into_scalar::<f32>() as f64;
    let nb = b.clone().powi_scalar(2).sum().into_scalar::<f32>() as f64;
    let norm = (na * nb).sqrt() + 1e-12;
    rotations
        .iter()
        .map(|r| {
            let dot = (a.clone() * rotate_spatial(b.clone(), r))
                .sum()
                .into_scalar::<f32>() as f64;
            dot / norm
        })
        .collect()
}

/// Each channel's spatial mean removed.
fn channel_centred(x: Tensor<5>) -> Tensor<5> {
    let m = x.clone().mean_dim(2).mean_dim(3).mean_dim(4);
    x - m
}

/// The rotations of action indices, and their inverses.
pub fn rotations_of(actions: &[usize]) -> (Vec<SignedPerm>, Vec<SignedPerm>) {
    let rots = cube_rotations();
    let r: Vec<SignedPerm> = actions.iter().map(|&a| rots[a]).collect();
    let inv = r.iter().map(|q| q.inverse()).collect();
    (r, inv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// One rotation's score computed directly: the reference for `pose_similarities`.
    fn pose_similarity(primary: &Tensor<5>, auxiliary: &Tensor<5>, r: &SignedPerm) -> f64 {
        let a = channel_centred(primary.clone().detach());
        let b = channel_centred(rotate_spatial(auxiliary.clone().detach(), r));
        let dot = (a.clone() * b.clone()).sum().into_scalar::<f32>() as f64;
        let na = a.powi_scalar(2).sum().into_scalar::<f32>() as f64;
        let nb = b.powi_scalar(2).sum().into_scalar::<f32>() as f64;
        dot / ((na * nb).sqrt() + 1e-12)
    }

    #[test]
    fn pose_similarity_peaks_at_the_rotation_that_undoes_the_pose() {
        use burn::tensor::Distribution;
        let dev = Device::flex();
        let primary = Tensor::<5>::random([1, 3, 6, 6, 6], Distribution::Normal(0.0, 1.0), &dev);
        let rots = cube_rotations();
        let inv = crate::geometry::rotation_inverse_table();
        for pose in [0usize, 5, 9, 17] {
            // the auxiliary map is the primary one moved by the pose (plus an offset)
            let aux = rotate_spatial(primary.clone(), &rots[pose]).add_scalar(3.0);
            let sims: Vec<f64> = rots
                .iter()
                .map(|r| pose_similarity(&primary, &aux, r))
                .collect();
            let best = (0..24)
                .max_by(|&a, &b| sims[a].total_cmp(&sims[b]))
                .unwrap();
            assert_eq!(best, inv[pose], "pose {pose}: {sims:?}");
            assert!((sims[best] - 1.0).abs() < 1e-5);
            assert!(sims.iter().enumerate().all(|(a, s)| a == best || *s < 0.5));
        }
    }

    #[test]
    fn pose_similarities_equal_one_pose_similarity_per_rotation() {
        use burn::tensor::Distribution;
        let dev = Device::flex();
        let a = Tensor::<5>::random([1, 4, 6, 6, 6], Distribution::Normal(0.5, 1.0), &dev);
        let b = Tensor::<5>::random([1, 4, 6, 6, 6], Distribution::Normal(-1.0, 2.0), &dev);
        let b = b + rotate_spatial(a.clone(), &cube_rotations()[7]);
        let all = pose_similarities(&a, &b, cube_rotations());
        for (r, s) in cube_rotations().iter().zip(&all) {
            let one = pose_similarity(&a, &b, r);
            assert!((one - s).abs() < 1e-6, "{one} against {s}");
        }
    }

    #[test]
    fn log_probs_normalise() {
        let theta: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
        let lp = log_probs(&theta);
        let total: f32 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!((lp[3] - lp[5] - (theta[3] - theta[5])).abs() < 1e-6);
    }

    #[test]
    fn gumbel_top_k_draws_distinct_actions_with_softmax_frequencies() {
        let mut theta = vec![0.0f32; 24];
        theta[7] = 2.0f32.ln(); // twice as likely as any other
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut first = [0usize; 24];
        let n = 40_000;
        for _ in 0..n {
            let a = gumbel_top_k(&theta, 4, &mut rng);
            let mut s = a.clone();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), 4);
            first[a[0]] += 1;
        }
        // the first Gumbel-max draw is an exact sample of softmax(θ): p(7) = 2/25
        let p7 = first[7] as f64 / n as f64;
        assert!((p7 - 2.0 / 25.0).abs() < 0.006, "{p7}");
        let p0 = first[0] as f64 / n as f64;
        assert!((p0 - 1.0 / 25.0).abs() < 0.006, "{p0}");
    }

    #[test]
    fn top_k_is_deterministic_and_ordered() {
        let mut theta = vec![0.0f32; 24];
        theta[4] = 3.0;
        theta[9] = 2.0;
        theta[1] = 2.0;
        assert_eq!(top_k(&theta, 3), vec![4, 1, 9]);
    }

    #[test]
    fn rotation_weights_follow_the_policy_or_are_uniform() {
        let lp = [0.5f32.ln(), 0.25f32.ln(), 0.05f32.ln(), 0.2f32.ln()];
        let w = rotation_weights(&lp, true);
        let want = [0.5, 0.25, 0.05, 0.2];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        // renormalised over the chosen ones
        let w = rotation_weights(&lp[..2], true);
        assert!((w[0] - 2.0 / 3.0).abs() < 1e-6 && (w[1] - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(rotation_weights(&lp, false), vec![0.25; 4]);
        assert_eq!(rotation_weights(&lp[..1], true), vec![1.0]);
    }

    #[test]
    fn the_weighted_mean_of_rotated_maps_is_the_hand_computed_one() {
        let dev = Device::flex();
        let x = Tensor::<5>::from_data(
            TensorData::new(
                (0..8).map(|v| v as f32).collect::<Vec<_>>(),
                [1, 1, 2, 2, 2],
            ),
            &dev,
        );
        let rots = cube_rotations();
        let (a, b) = (rots[0], rots[5]);
        let got: Vec<f32> = mean_rotated(x.clone(), &[a, b], &[0.75, 0.25])
            .into_data()
            .iter::<f32>()
            .collect();
        let ra: Vec<f32> = rotate_spatial(x.clone(), &a)
            .into_data()
            .iter::<f32>()
            .collect();
        let rb: Vec<f32> = rotate_spatial(x, &b).into_data().iter::<f32>().collect();
        for i in 0..8 {
            assert!((got[i] - (0.75 * ra[i] + 0.25 * rb[i])).abs() < 1e-6);
        }
    }
}
