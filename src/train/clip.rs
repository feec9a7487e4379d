//! Clipping by the global norm of all gradients (Burn's own clipping works per tensor).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

use crate::model::RlU2Net;

/// Squared global gradient norm, then scaling, over every float parameter.
struct GradNorm<'a> {
    grads: &'a GradientsParams,
    sq: f64,
}
impl ModuleVisitor for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.sq += g.powi_scalar(2).sum().into_scalar::<f32>() as f64;
        }
    }
}
struct GradScale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}
impl ModuleVisitor for GradScale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Clip the global norm of all gradients (Burn's own clipping works per tensor).
pub fn clip_global_norm(model: &RlU2Net, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut n = GradNorm { grads, sq: 0.0 };
    model.visit(&mut n);
    let norm = n.sq.sqrt();
    if norm > max_norm && norm.is_finite() {
        let mut s = GradScale {
            grads,
            factor: max_norm / norm,
        };
        model.visit(&mut s);
    }
    norm
}
