//! The critic V_φ(s): an MLP 3 → 64 → 64 → 1 with tanh, and its exact gradient.

use rand::Rng;
use serde::{Deserialize, Serialize};

pub const STATE_DIM: usize = 3;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Critic {
    pub hidden: usize,
    /// Flat parameters: W1 [h×3], b1 [h], W2 [h×h], b2 [h], W3 [h], b3 [1].
    pub params: Vec<f64>,
}

struct Offsets {
    w1: usize,
    b1: usize,
    w2: usize,
    b2: usize,
    w3: usize,
    b3: usize,
    len: usize,
}

impl Critic {
    fn offsets(h: usize) -> Offsets {
        let w1 = 0;
        let b1 = w1 + h * STATE_DIM;
        let w2 = b1 + h;
        let b2 = w2 + h * h;
        let w3 = b2 + h;
        let b3 = w3 + h;
        Offsets {
            w1,
            b1,
            w2,
            b2,
            w3,
            b3,
            len: b3 + 1,
        }
    }

    /// PyTorch's default initialisation: U(−1/√fan_in, 1/√fan_in) for weights and biases.
    pub fn new(hidden: usize, rng: &mut impl Rng) -> Critic {
        let o = Critic::offsets(hidden);
        let mut params = vec![0.0; o.len];
        let mut fill = |range: std::ops::Range<usize>, fan_in: usize| {
            let b = 1.0 / (fan_in as f64).sqrt();
            for p in &mut params[range] {
                *p = rng.random_range(-b..b);
            }
        };
        fill(o.w1..o.b1, STATE_DIM);
        fill(o.b1..o.w2, STATE_DIM);
        fill(o.w2..o.b2, hidden);
        fill(o.b2..o.w3, hidden);
        fill(o.w3..o.b3, hidden);
        fill(o.b3..o.len, hidden);
        Critic { hidden, params }
    }

    fn layers(&self, s: &[f64; STATE_DIM]) -> (Vec<f64>, Vec<f64>, f64) {
        let h = self.hidden;
        let o = Critic::offsets(h);
        let p = &self.params;
        let a1: Vec<f64> = (0..h)
            .map(|i| {
                (p[o.b1 + i]
                    + (0..STATE_DIM)
                        .map(|j| p[o.w1 + i * STATE_DIM + j] * s[j])
                        .sum::<f64>())
                .tanh()
            })
            .collect();
        let a2: Vec<f64> = (0..h)
            .map(|i| {
                (p[o.b2 + i] + (0..h).map(|j| p[o.w2 + i * h + j] * a1[j]).sum::<f64>()).tanh()
            })
            .collect();
        let v = p[o.b3] + (0..h).map(|i| p[o.w3 + i] * a2[i]).sum::<f64>();
        (a1, a2, v)
    }

    pub fn value(&self, s: &[f64; STATE_DIM]) -> f64 {
        self.layers(s).2
    }

    /// Adds dV(s)/dφ · `scale` into `grad`.
    pub fn accumulate_grad(&self, s: &[f64; STATE_DIM], scale: f64, grad: &mut [f64]) {
        let h = self.hidden;
        let o = Critic::offsets(h);
        let p = &self.params;
        let (a1, a2, _) = self.layers(s);
        grad[o.b3] += scale;
        let mut d2 = vec![0.0; h];
        for i in 0..h {
            grad[o.w3 + i] += scale * a2[i];
            d2[i] = scale * p[o.w3 + i] * (1.0 - a2[i] * a2[i]);
        }
        let mut d1 = vec![0.0; h];
        for i in 0..h {
            grad[o.b2 + i] += d2[i];
            for j in 0..h {
                grad[o.w2 + i * h + j] += d2[i] * a1[j];
                d1[j] += d2[i] * p[o.w2 + i * h + j];
            }
        }
        for j in 0..h {
            let dz = d1[j] * (1.0 - a1[j] * a1[j]);
            grad[o.b1 + j] += dz;
            for k in 0..STATE_DIM {
                grad[o.w1 + j * STATE_DIM + k] += dz * s[k];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn critic_gradient_matches_finite_differences() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let c = Critic::new(8, &mut rng);
        let s = [0.3, -0.7, 0.5];
        let mut g = vec![0.0; c.params.len()];
        c.accumulate_grad(&s, 1.0, &mut g);
        let eps = 1e-6;
        for i in (0..c.params.len()).step_by(7) {
            let mut p = c.clone();
            p.params[i] += eps;
            let mut m = c.clone();
            m.params[i] -= eps;
            let fd = (p.value(&s) - m.value(&s)) / (2.0 * eps);
            assert!((fd - g[i]).abs() < 1e-7, "param {i}: {} vs {fd}", g[i]);
        }
    }
}
