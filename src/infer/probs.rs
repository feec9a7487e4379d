//! Class probabilities of a batch of windows, computed in place on the logits.

/// Softmax over the class axis of `[n, k, s]` logits (n windows, k classes, s voxels),
/// in place: each voxel's k values, `s` apart, become their softmax.
pub use crate::loss::class_softmax::softmax_in_place as softmax_classes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_softmax_of_each_voxel_computed_in_f64() {
        let (n, k, s) = (2, 3, 5000); // more voxels than one work item
        let x: Vec<f32> = (0..n * k * s)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        let mut y = x.clone();
        softmax_classes(&mut y, k, s);
        for w in 0..n {
            for v in (0..s).step_by(13) {
                let at = |c: usize| w * k * s + c * s + v;
                let z: f64 = (0..k).map(|c| (x[at(c)] as f64).exp()).sum();
                for c in 0..k {
                    let want = (x[at(c)] as f64).exp() / z;
                    assert!(
                        (y[at(c)] as f64 - want).abs() < 1e-6,
                        "window {w} voxel {v} class {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn large_logits_do_not_overflow() {
        // voxel 0: classes (1000, 999); voxel 1: (0, 0)
        let mut y = vec![1000.0, 0.0, 999.0, 0.0];
        softmax_classes(&mut y, 2, 2);
        let p = 1.0 / (1.0 + (-1.0f32).exp());
        for (got, want) in y.iter().zip([p, 0.5, 1.0 - p, 0.5]) {
            assert!((got - want).abs() < 1e-6, "{y:?}");
        }
        assert!(y.iter().all(|v| v.is_finite()));
    }
}
