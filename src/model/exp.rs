//! exp of f32 values, branch-free so the compiler vectorises it (the attention and
//! class-softmax kernels call it inside their own SIMD loops).
//!
//! x = n·ln2 + r with |r| ≤ ln2/2; exp(r) by Cephes' degree-6 polynomial (relative error
//! about 1e-7); 2ⁿ written into the exponent bits. Below −87.3 the result is 0, above
//! 88.7 it is +inf, NaN stays NaN. The integer n of 2ⁿ is read from the bits of
//! n + 1.5·2²³ (integer arithmetic that vectorises): `n as i32` (a saturating conversion)
//! made the compiler run that step lane by lane.

/// exp of every value of `x`, in place.
#[inline(always)]
pub fn exp_in_place(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = exp(*v);
    }
}

/// exp(x), within a few ulp of the correctly rounded value.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let xc = x.clamp(-87.336_55, 88.722_83);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2ⁿ: n in [−126, 128]; n = 128 (x near 88.72) is split as 2·2¹²⁷
    let ni = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let half = ni >> 1;
    let s1 = f32::from_bits(((half + 127) as u32) << 23);
    let s2 = f32::from_bits(((ni - half + 127) as u32) << 23);
    let y = er * s1 * s2;
    let y = if x > 88.722_83 { f32::INFINITY } else { y };
    let y = if x < -87.336_55 { 0.0 } else { y };
    if x.is_nan() { x } else { y }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp_of(values: &[f32]) -> Vec<f32> {
        let mut v = values.to_vec();
        exp_in_place(&mut v);
        v
    }

    #[test]
    fn within_a_few_ulp_of_f64_over_the_f32_range() {
        // 200 001 points from −87 to 88
        let xs: Vec<f32> = (0..=200_000)
            .map(|i| -87.0 + 175.0 * i as f32 / 200_000.0)
            .collect();
        let got = exp_of(&xs);
        let mut worst = 0.0f64;
        for (&x, &y) in xs.iter().zip(&got) {
            let want = (x as f64).exp();
            worst = worst.max(((y as f64) - want).abs() / want);
        }
        assert!(worst < 5e-7, "largest relative error {worst:e}");
    }

    #[test]
    fn edges_zero_infinity_and_nan() {
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
}
