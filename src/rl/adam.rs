//! Adam (Kingma & Ba) over a flat parameter vector, with its moments kept so a
//! checkpoint restores it exactly.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub m: Vec<f64>,
    pub v: Vec<f64>,
    pub t: u64,
}

impl Adam {
    pub fn new(n: usize, lr: f64) -> Adam {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    /// One descent step on `params` along `grad`.
    pub fn step(&mut self, params: &mut [f64], grad: &[f64]) {
        assert_eq!(params.len(), grad.len());
        self.t += 1;
        let b1t = 1.0 - self.beta1.powi(self.t as i32);
        let b2t = 1.0 - self.beta2.powi(self.t as i32);
        for i in 0..params.len() {
            self.m[i] = self.beta1 * self.m[i] + (1.0 - self.beta1) * grad[i];
            self.v[i] = self.beta2 * self.v[i] + (1.0 - self.beta2) * grad[i] * grad[i];
            let mh = self.m[i] / b1t;
            let vh = self.v[i] / b2t;
            params[i] -= self.lr * mh / (vh.sqrt() + self.eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_adam_step_moves_each_parameter_by_lr_against_its_gradient_sign() {
        // with bias correction the first step is lr·g/(|g| + eps)
        let mut a = Adam::new(3, 0.1);
        let mut p = vec![1.0, 2.0, 3.0];
        a.step(&mut p, &[0.5, -2.0, 0.0]);
        assert!(
            (p[0] - 0.9).abs() < 1e-7 && (p[1] - 2.1).abs() < 1e-7 && p[2] == 3.0,
            "{p:?}"
        );
    }

    #[test]
    fn adam_minimises_a_quadratic() {
        let mut a = Adam::new(2, 0.05);
        let mut p = vec![3.0, -4.0];
        for _ in 0..2000 {
            let g = [2.0 * (p[0] - 1.0), 2.0 * (p[1] + 0.5)];
            a.step(&mut p, &g);
        }
        assert!(
            (p[0] - 1.0).abs() < 1e-3 && (p[1] + 0.5).abs() < 1e-3,
            "{p:?}"
        );
    }
}
