//! `LeakyReLU(a + b)` (the end of each residual block) as one operation with its own
//! backward on the CPU backend: one pass forward, one backward, instead of an add, a
//! relu, two scalings and an add, each with its own buffer and its own backward.

use burn::prelude::*;
use burn::tensor::activation::relu;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_dispatch::backends::Flex;
use burn_dispatch::backends::flex::FlexTensor;
use rayon::prelude::*;

use super::flex_op::{self, AdTensor, Place};

const CHUNK: usize = 1 << 14;

fn forward_values(a: &[f32], b: &[f32], slope: f32) -> Vec<f32> {
    let mut y = vec![0.0f32; a.len()];
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (x, z))| {
            for ((o, &u), &v) in o.iter_mut().zip(x).zip(z) {
                let s = u + v;
                *o = s.max(0.0) + slope * s.min(0.0);
            }
        });
    y
}

/// dy·act'(z), read off the output's sign (y > 0 exactly where z > 0).
fn backward_values(y: &[f32], dy: &[f32], slope: f32) -> Vec<f32> {
    let mut d = vec![0.0f32; y.len()];
    d.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(o, (yc, gc))| {
            for ((o, &yv), &g) in o.iter_mut().zip(yc).zip(gc) {
                *o = if yv > 0.0 { g } else { slope * g };
            }
        });
    d
}

#[derive(Debug)]
struct AddActBackward;

impl Backward<Flex, 2> for AddActBackward {
    /// The output and the slope.
    type State = (FlexTensor, f32);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, slope) = ops.state;
        let dy = flex_op::contiguous(&grads.consume::<Flex>(&ops.node));
        let shape = flex_op::shape_of(&y);
        let dz = flex_op::from_values(
            backward_values(flex_op::values(&y), flex_op::values(&dy), slope),
            shape,
        );
        let [pa, pb] = ops.parents;
        if let Some(node) = pa {
            grads.register::<Flex>(node.id, dz.clone());
        }
        if let Some(node) = pb {
            grads.register::<Flex>(node.id, dz);
        }
    }
}

fn on_autodiff(a: AdTensor, b: AdTensor, slope: f32) -> AdTensor {
    let av = flex_op::contiguous(a.primitive());
    let bv = flex_op::contiguous(b.primitive());
    let shape = flex_op::shape_of(&av);
    let y = flex_op::from_values(
        forward_values(flex_op::values(&av), flex_op::values(&bv), slope),
        shape,
    );
    match AddActBackward
        .prepare::<NoCheckpointing>([a.node(), b.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((y.clone(), slope), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// LeakyReLU(slope) as tensor operations, written as (1 − s)·relu(z) + s·z: on the CPU
/// backend about 8× faster forward + backward than Burn's `leaky_relu` (a mask and a
/// select per call).
pub fn leaky_relu_ops<const D: usize>(z: Tensor<D>, slope: f32) -> Tensor<D> {
    relu(z.clone()).mul_scalar(1.0 - slope as f64) + z.mul_scalar(slope as f64)
}

/// The same function as tensor operations: the tests' reference and other backends' path.
pub fn add_lrelu_reference<const D: usize>(a: Tensor<D>, b: Tensor<D>, slope: f32) -> Tensor<D> {
    leaky_relu_ops(a + b, slope)
}

/// LeakyReLU(slope)(a + b) for `a`, `b` of the same shape (0 ≤ slope < 1).
pub fn add_lrelu<const D: usize>(a: Tensor<D>, b: Tensor<D>, slope: f32) -> Tensor<D> {
    if a.dims() == b.dims() {
        match (flex_op::place(&a), flex_op::place(&b)) {
            (Some(Place::Autodiff(x)), Some(Place::Autodiff(y))) => {
                return Tensor::from_primitive::<flex_op::Ad>(on_autodiff(x, y, slope));
            }
            (Some(Place::Plain(x)), Some(Place::Plain(y))) => {
                let (x, y) = (flex_op::contiguous(&x), flex_op::contiguous(&y));
                let shape = flex_op::shape_of(&x);
                let out = forward_values(flex_op::values(&x), flex_op::values(&y), slope);
                return Tensor::from_primitive::<Flex>(flex_op::from_values(out, shape));
            }
            _ => {}
        }
    }
    add_lrelu_reference(a, b, slope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::vals;

    /// (output, da, db) of Σ w·f(a, b), a ± b spread over both signs.
    fn run(f: fn(Tensor<2>, Tensor<2>, f32) -> Tensor<2>, autodiff: bool) -> [Vec<f32>; 3] {
        let dev = if autodiff {
            Device::flex().autodiff()
        } else {
            Device::flex()
        };
        let a: Vec<f32> = (0..60).map(|i| ((i * 7 % 11) as f32 - 5.0) / 2.0).collect();
        let b: Vec<f32> = (0..60).map(|i| ((i * 5 % 13) as f32 - 6.5) / 3.0).collect();
        let w: Vec<f32> = (0..60).map(|i| ((i * 3 % 7) as f32 - 3.0) / 2.0).collect();
        let at = Tensor::<1>::from_floats(a.as_slice(), &dev).reshape([6, 10]);
        let bt = Tensor::<1>::from_floats(b.as_slice(), &dev).reshape([6, 10]);
        if !autodiff {
            return [vals(f(at, bt, 0.1)), vec![], vec![]];
        }
        let (at, bt) = (at.require_grad(), bt.require_grad());
        let wt = Tensor::<1>::from_floats(w.as_slice(), &dev).reshape([6, 10]);
        let y = f(at.clone(), bt.clone(), 0.1);
        let g = (y.clone() * wt).sum().backward();
        [
            vals(y),
            vals(at.grad(&g).unwrap()),
            vals(bt.grad(&g).unwrap()),
        ]
    }

    #[test]
    fn equals_tensor_operations_forward_and_backward() {
        for autodiff in [false, true] {
            let ours = run(add_lrelu, autodiff);
            let refr = run(add_lrelu_reference, autodiff);
            for (x, y) in ours.iter().zip(&refr) {
                assert_eq!(x.len(), y.len());
                for (u, v) in x.iter().zip(y) {
                    assert!((u - v).abs() < 1e-6, "{u} against {v}");
                }
            }
        }
        // by hand, element 0: a + b = −2.5 − 13/6 < 0, so y = 0.1·(a + b) and da = 0.1·w = 0.1·(−1.5)
        let [y, da, _] = run(add_lrelu, true);
        let a0 = -5.0 / 2.0;
        let b0 = -6.5 / 3.0;
        assert!((y[0] - 0.1 * (a0 + b0)).abs() < 1e-6);
        assert!((da[0] - 0.1 * (-3.0 / 2.0)).abs() < 1e-6);
    }
}
