//! Validation on the held-out training pairs by the inference code path itself:
//! the cross-modal Gaussian sliding window over each whole volume, Dice on the
//! working grid. The best checkpoint is chosen by it.

use crate::data::labels::{NUM_CLASSES, NUM_STRUCTURES};
use crate::infer::{Predictor, argmax_labels};
use crate::preprocess::cache::PreparedCase;

/// Per-structure Dice of class maps (hard), structures absent from both skipped (NaN).
pub fn hard_dice<'a>(
    pred: impl IntoIterator<Item = &'a u8>,
    truth: impl IntoIterator<Item = &'a u8>,
) -> [f64; NUM_STRUCTURES] {
    let mut inter = [0usize; NUM_CLASSES];
    let mut np = [0usize; NUM_CLASSES];
    let mut nt = [0usize; NUM_CLASSES];
    for (&p, &t) in pred.into_iter().zip(truth) {
        np[p as usize] += 1;
        nt[t as usize] += 1;
        if p == t {
            inter[p as usize] += 1;
        }
    }
    std::array::from_fn(|s| {
        let c = s + 1;
        if np[c] + nt[c] == 0 {
            f64::NAN
        } else {
            2.0 * inter[c] as f64 / (np[c] + nt[c]) as f64
        }
    })
}

/// Mean Dice per structure over the validation volumes, CT and MRI: each volume
/// is predicted whole, paired with its partner of the same index as `infer` pairs
/// a test folder.
pub fn validate(
    p: &Predictor,
    ct: &[PreparedCase],
    mr: &[PreparedCase],
) -> ([f64; NUM_STRUCTURES], [f64; NUM_STRUCTURES]) {
    // nothing asks this one to stop, so the windows' loop cannot end early
    let hidden = crate::progress::Progress::hidden();
    let mut sums = [[0.0f64; NUM_STRUCTURES]; 2];
    let mut counts = [[0usize; NUM_STRUCTURES]; 2];
    for i in 0..ct.len().max(mr.len()) {
        let (c, m) = (ct.get(i), mr.get(i));
        // a pair in one pass, as `infer` predicts it; a volume without partner alone
        let probs = p
            .probabilities_any(c.map(|c| &c.image.data), m.map(|m| &m.image.data), &hidden)
            .expect("a progress nothing stops");
        for (k, (case, probs)) in [c, m].into_iter().zip(probs).enumerate() {
            let (Some(case), Some(probs)) = (case, probs) else {
                continue;
            };
            let Some(truth) = &case.labels else { continue };
            let d = hard_dice(argmax_labels(&probs).iter(), truth.data.iter());
            for s in 0..NUM_STRUCTURES {
                if d[s].is_finite() {
                    sums[k][s] += d[s];
                    counts[k][s] += 1;
                }
            }
        }
    }
    let mean = |k: usize| {
        std::array::from_fn(|s| {
            if counts[k][s] > 0 {
                sums[k][s] / counts[k][s] as f64
            } else {
                f64::NAN
            }
        })
    };
    (mean(0), mean(1))
}

pub fn nanmean(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().cloned().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        f64::NAN
    } else {
        f.iter().sum::<f64>() / f.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_of_a_map_with_itself_is_one_and_hand_counts_hold() {
        let a = [0u8, 1, 1, 2, 2, 2, 3, 0];
        let d = hard_dice(&a, &a);
        assert_eq!(&d[..3], &[1.0, 1.0, 1.0]);
        assert!(d[3..].iter().all(|x| x.is_nan()));
        // class 1: pred {1,2}, truth {1}: 2·1 / (2 + 1)
        let t = [0u8, 1, 0, 2, 2, 2, 3, 0];
        let d = hard_dice(&a, &t);
        assert!((d[0] - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn argmax_picks_the_largest_class() {
        let mut p = ndarray::Array4::<f32>::zeros((3, 1, 1, 2));
        p[[2, 0, 0, 0]] = 0.7;
        p[[0, 0, 0, 0]] = 0.3;
        p[[1, 0, 0, 1]] = 0.9;
        assert_eq!(
            argmax_labels(&p).iter().copied().collect::<Vec<u8>>(),
            vec![2, 1]
        );
    }
}
