//! The CPU backend's exp (vendored burn-flex: a vectorised polynomial, run in parallel)
//! against f64 `exp`, over the whole f32 range and at its edges.

use burn::prelude::*;

fn exp_of(values: &[f32]) -> Vec<f32> {
    let dev = Device::flex();
    Tensor::<1>::from_floats(values, &dev)
        .exp()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn exp_within_a_few_ulp_of_f64_over_the_f32_range() {
    // 200 001 points from −87 to 88 (more than one parallel chunk)
    let xs: Vec<f32> = (0..=200_000)
        .map(|i| -87.0 + 175.0 * i as f32 / 200_000.0)
        .collect();
    let got = exp_of(&xs);
    let mut worst = 0.0f64;
    for (&x, &y) in xs.iter().zip(&got) {
        let want = (x as f64).exp();
        let rel = ((y as f64) - want).abs() / want;
        worst = worst.max(rel);
    }
    assert!(worst < 5e-7, "largest relative error {worst:e}");
}

#[test]
fn exp_edges_zero_infinity_and_nan() {
    let got = exp_of(&[
        0.0,
        -0.0,
        1.0,
        -1.0,
        88.7,
        89.0,
        -88.0,
        -104.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    assert_eq!(got[0], 1.0);
    assert_eq!(got[1], 1.0);
    assert!((got[2] - std::f32::consts::E).abs() <= f32::EPSILON * 3.0);
    assert!((got[3] - 1.0 / std::f32::consts::E).abs() <= f32::EPSILON);
    assert!(got[4].is_finite() && (got[4] as f64 / (88.7f32 as f64).exp() - 1.0).abs() < 1e-6);
    assert_eq!(got[5], f32::INFINITY);
    assert!(got[6] >= 0.0 && got[6] < 1e-37);
    assert_eq!(got[7], 0.0);
    assert_eq!(got[8], f32::INFINITY);
    assert_eq!(got[9], 0.0);
    assert!(got[10].is_nan());
}
