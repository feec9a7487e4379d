//! Losses (eqs 17–20): soft Dice + cross-entropy per branch, the alignment loss
//! (InfoNCE + cosine) per RL-XAlign module, and AGWD balancing.

pub mod class_softmax;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use self::class_softmax::{log_softmax_classes, softmax_classes};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Smoothing of the soft Dice (numerator and denominator).
    pub dice_smooth: f64,
    /// α and β of eq. 17.
    pub align_alpha: f64,
    pub align_beta: f64,
    pub infonce_temperature: f64,
    /// Window edge for the pooled embeddings of the alignment loss.
    pub align_window: usize,
    /// λ1 of eq. 20.
    pub lambda_align: f64,
    /// Stop the gradient through F_primary in the alignment loss, so that it pulls
    /// F_aligned towards the primary features and never the encoder towards collapse.
    pub align_detach_primary: bool,
    /// AGWD: EMA factor, γ_w, δ.
    pub agwd_ema: f64,
    pub agwd_gamma: f64,
    pub agwd_delta: f64,
    /// Ablations.
    pub no_align_loss: bool,
    pub no_agwd: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            dice_smooth: 1e-5,
            align_alpha: 1.0,
            align_beta: 1.0,
            infonce_temperature: 0.1,
            align_window: 4,
            lambda_align: 0.1,
            align_detach_primary: true,
            agwd_ema: 0.9,
            agwd_gamma: 2.0,
            agwd_delta: 0.05,
            no_align_loss: false,
            no_agwd: false,
        }
    }
}

/// One-hot `[B, K, D, H, W]` of class maps `[B·D·H·W]` (row-major per item).
pub fn one_hot(labels: &[u8], b: usize, k: usize, p: [usize; 3], device: &Device) -> Tensor<5> {
    let n = p[0] * p[1] * p[2];
    let mut v = vec![0.0f32; b * k * n];
    for bi in 0..b {
        for i in 0..n {
            let c = labels[bi * n + i] as usize;
            v[(bi * k + c) * n + i] = 1.0;
        }
    }
    Tensor::from_data(TensorData::new(v, [b, k, p[0], p[1], p[2]]), device)
}

/// MONAI's DiceLoss on probabilities (include_background = false): mean over
/// items and foreground classes of 1 − (2Σpg + s)/(Σp + Σg + s).
pub fn soft_dice_from_probs(probs: Tensor<5>, target: Tensor<5>, smooth: f64) -> Tensor<1> {
    let [b, k, d, h, w] = probs.dims();
    let n = d * h * w;
    let p = probs.narrow(1, 1, k - 1).reshape([b, k - 1, n]);
    let g = target.narrow(1, 1, k - 1).reshape([b, k - 1, n]);
    let inter = (p.clone() * g.clone()).sum_dim(2);
    let den = p.sum_dim(2) + g.sum_dim(2);
    let dice = (inter.mul_scalar(2.0) + smooth) / (den + smooth);
    dice.mean().neg() + 1.0
}

/// Soft Dice loss of logits `[B, K, D, H, W]` against a one-hot target.
pub fn dice_loss(logits: Tensor<5>, target: Tensor<5>, smooth: f64) -> Tensor<1> {
    soft_dice_from_probs(softmax_classes(logits), target, smooth)
}

/// Mean voxel-wise cross-entropy of logits against a one-hot target.
pub fn ce_loss(logits: Tensor<5>, target: Tensor<5>) -> Tensor<1> {
    (log_softmax_classes(logits) * target)
        .sum_dim(1)
        .mean()
        .neg()
}

/// Window-pooled embeddings `[B·nW, C]` of a map `[B, C, D, H, W]`.
fn pooled(x: Tensor<5>, window: usize) -> Tensor<2> {
    use crate::model::layers::{channels_last, pad_to_windows, window_and_shift, window_partition};
    let [_, c, d, h, w] = x.dims();
    let (ws, _) = window_and_shift([d, h, w], window, 0);
    let win = window_partition(pad_to_windows(channels_last(x), ws), ws);
    let [m, _, _] = win.dims();
    win.mean_dim(1).reshape([m, c])
}

fn l2_normalise(x: Tensor<2>) -> Tensor<2> {
    let n = x.clone().powi_scalar(2).sum_dim(1).sqrt() + 1e-8;
    x / n
}

/// (InfoNCE, 1 − mean cosine) between window-pooled embeddings of F_aligned and
/// F_primary: the positive of each aligned window is the primary window at the
/// same place; every other window in the batch is a negative.
pub fn align_terms(
    aligned: Tensor<5>,
    primary: Tensor<5>,
    window: usize,
    temperature: f64,
) -> (Tensor<1>, Tensor<1>) {
    let a = l2_normalise(pooled(aligned, window));
    let p = l2_normalise(pooled(primary, window));
    let [m, _] = a.dims();
    let logits = a
        .clone()
        .matmul(p.clone().transpose())
        .div_scalar(temperature);
    let eye: Vec<f32> = (0..m * m)
        .map(|i| if i / m == i % m { 1.0 } else { 0.0 })
        .collect();
    let eye = Tensor::<2>::from_data(TensorData::new(eye, [m, m]), &logits.device());
    let infonce = (log_softmax(logits, 1) * eye).sum_dim(1).mean().neg();
    let cos = (a * p).sum_dim(1).mean();
    (infonce, cos.neg() + 1.0)
}

/// eq. 17 for one module.
pub fn align_loss(aligned: Tensor<5>, primary: Tensor<5>, cfg: &LossConfig) -> Tensor<1> {
    let primary = if cfg.align_detach_primary {
        primary.detach()
    } else {
        primary
    };
    let (nce, cos) = align_terms(aligned, primary, cfg.align_window, cfg.infonce_temperature);
    nce.mul_scalar(cfg.align_alpha) + cos.mul_scalar(cfg.align_beta)
}

/// AGWD (eqs 18–19) for one pair of branch losses; the EMAs persist across steps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Agwd {
    /// EMA of the CT and MRI branch losses (None before the first step).
    pub ema: [Option<f64>; 2],
}

impl Agwd {
    /// Update the EMAs with this step's values; return (w, whether CT is the slow branch).
    pub fn weight(&mut self, l_ct: f64, l_mr: f64, cfg: &LossConfig) -> (f64, bool) {
        for (e, l) in self.ema.iter_mut().zip([l_ct, l_mr]) {
            *e = Some(match *e {
                None => l,
                Some(prev) => cfg.agwd_ema * prev + (1.0 - cfg.agwd_ema) * l,
            });
        }
        let (ect, emr) = (self.ema[0].unwrap_or(l_ct), self.ema[1].unwrap_or(l_mr));
        let ct_slow = ect >= emr;
        let (slow, fast) = if ct_slow { (ect, emr) } else { (emr, ect) };
        (
            (cfg.agwd_gamma * (slow - fast - cfg.agwd_delta)).tanh(),
            ct_slow,
        ) // eq. 18, detached
    }

    /// L_bal = L_fast(1 − w) + L_slow(1 + w) (eq. 19).
    pub fn balance(&mut self, l_ct: Tensor<1>, l_mr: Tensor<1>, cfg: &LossConfig) -> Tensor<1> {
        let v_ct = l_ct.clone().into_scalar::<f32>() as f64;
        let v_mr = l_mr.clone().into_scalar::<f32>() as f64;
        let (w, ct_slow) = self.weight(v_ct, v_mr, cfg);
        let (slow, fast) = if ct_slow { (l_ct, l_mr) } else { (l_mr, l_ct) };
        fast.mul_scalar(1.0 - w) + slow.mul_scalar(1.0 + w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn dev() -> Device {
        Device::flex()
    }
    fn scalar(t: Tensor<1>) -> f64 {
        t.into_scalar::<f32>() as f64
    }

    #[test]
    fn dice_of_a_perfect_one_hot_prediction_is_zero_and_of_a_disjoint_one_is_one() {
        let labels: Vec<u8> = (0..64).map(|i| (i % 4) as u8).collect();
        let g = one_hot(&labels, 1, 4, [4, 4, 4], &dev());
        assert!(scalar(soft_dice_from_probs(g.clone(), g.clone(), 1e-5)).abs() < 1e-7);
        let shifted: Vec<u8> = labels.iter().map(|&c| (c + 1) % 4).collect();
        let h = one_hot(&shifted, 1, 4, [4, 4, 4], &dev());
        assert!((scalar(soft_dice_from_probs(h, g, 1e-5)) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn cross_entropy_matches_a_hand_computation() {
        // two voxels, three classes; logits (1, 2, 3) with class 2 and (0, 0, 0) with class 0:
        // CE = [−log(e³/(e+e²+e³)) − log(1/3)]/2 = [0.40760596 + 1.09861229]/2 = 0.75310912
        let logits = Tensor::<5>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 2.0, 0.0, 3.0, 0.0], [1, 3, 2, 1, 1]),
            &dev(),
        );
        let t = one_hot(&[2, 0], 1, 3, [2, 1, 1], &dev());
        assert!((scalar(ce_loss(logits, t)) - 0.753_109_12).abs() < 1e-6);
    }

    #[test]
    fn agwd_weights_for_a_hand_picked_pair() {
        // first step: EMAs = the losses; CT (0.8) is slow, MRI (0.5) fast:
        // w = tanh(2·(0.8 − 0.5 − 0.05)) = tanh(0.5) = 0.46211716
        // L_bal = 0.5·(1 − w) + 0.8·(1 + w) = 1.43863515
        let cfg = LossConfig::default();
        let mut a = Agwd::default();
        let l = a.balance(
            Tensor::from_data([0.8f32], &dev()),
            Tensor::from_data([0.5f32], &dev()),
            &cfg,
        );
        assert!((scalar(l) - 1.438_635_15).abs() < 1e-6);
        // second step: MRI 0.9, CT 0.4 → EMAs 0.76 / 0.54, CT still slow:
        // w = tanh(2·(0.76 − 0.54 − 0.05)) = tanh(0.34) = 0.32755
        let (w, ct_slow) = a.weight(0.4, 0.9, &cfg);
        assert!(ct_slow);
        assert!((w - 0.34f64.tanh()).abs() < 1e-6, "{w}");
    }

    #[test]
    fn infonce_equals_a_naive_reference() {
        let a = Tensor::<5>::random([2, 3, 4, 4, 8], Distribution::Normal(0.0, 1.0), &dev());
        let p = Tensor::<5>::random([2, 3, 4, 4, 8], Distribution::Normal(0.0, 1.0), &dev());
        let (nce, cos) = align_terms(a.clone(), p.clone(), 4, 0.1);
        // naive: mean over each 4³ window, normalise, loop over pairs
        let av: Vec<f32> = a.into_data().try_to_vec().unwrap();
        let pv: Vec<f32> = p.into_data().try_to_vec().unwrap();
        let emb = |v: &[f32]| -> Vec<Vec<f64>> {
            let mut out = Vec::new();
            for b in 0..2 {
                for wz in 0..2 {
                    let mut e = [0.0f64; 3];
                    for c in 0..3 {
                        for x in 0..4 {
                            for y in 0..4 {
                                for z in 0..4 {
                                    e[c] += v[(((b * 3 + c) * 4 + x) * 4 + y) * 8 + wz * 4 + z]
                                        as f64
                                        / 64.0;
                                }
                            }
                        }
                    }
                    let n = e.iter().map(|x| x * x).sum::<f64>().sqrt();
                    out.push(e.iter().map(|x| x / n).collect());
                }
            }
            out
        };
        let (ea, ep) = (emb(&av), emb(&pv));
        let m = ea.len();
        let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
        let mut want = 0.0;
        let mut want_cos = 0.0;
        for i in 0..m {
            let logits: Vec<f64> = (0..m).map(|j| dot(&ea[i], &ep[j]) / 0.1).collect();
            let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
            want += (lse - logits[i]) / m as f64;
            want_cos += dot(&ea[i], &ep[i]) / m as f64;
        }
        assert!((scalar(nce) - want).abs() < 1e-4, "{want}");
        assert!((scalar(cos) - (1.0 - want_cos)).abs() < 1e-5);
    }
}
