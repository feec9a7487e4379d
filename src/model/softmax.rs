//! Softmax over the last axis (the attention weights) as one operation with its own
//! backward on the CPU backend.
//!
//! Under autodiff Burn computes softmax as max, subtract, exp, sum and divide, each a
//! pass over the whole attention tensor with its own buffer, and differentiates each of
//! them; at the `cpu` network's finest level the attention tensors hold tens of millions
//! of weights per step. Here the forward pass is the backend's fused row kernel and the
//! backward pass is the closed form `dx = y ⊙ (dy − Σ_row dy ⊙ y)`, one sweep per row.

use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_dispatch::backends::Flex;
use burn_dispatch::backends::flex::FlexTensor;
use burn_dispatch::backends::flex::ops::activation as flex_activation;
use rayon::prelude::*;

use super::flex_op::{self, AdTensor, Place};

/// Rows per parallel work item.
const ROWS_PER_TASK: usize = 256;

/// dx = y ⊙ (dy − Σ dy ⊙ y) row by row (rows of `len`).
fn backward_rows(y: &[f32], dy: &[f32], len: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; y.len()];
    let chunk = ROWS_PER_TASK * len;
    dx.par_chunks_mut(chunk)
        .zip(y.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .for_each(|(o, (yc, gc))| {
            for ((orow, yrow), grow) in o.chunks_mut(len).zip(yc.chunks(len)).zip(gc.chunks(len)) {
                let dot: f32 = yrow.iter().zip(grow).map(|(a, b)| a * b).sum();
                for ((d, &yv), &gv) in orow.iter_mut().zip(yrow).zip(grow) {
                    *d = yv * (gv - dot);
                }
            }
        });
    dx
}

#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    /// The output y (contiguous).
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let y = ops.state;
        let dy = flex_op::contiguous(&grads.consume::<Flex>(&ops.node));
        let shape = flex_op::shape_of(&y);
        let len = *shape.last().expect("softmax of a tensor with axes");
        let dx = backward_rows(flex_op::values(&y), flex_op::values(&dy), len);
        if let [Some(node)] = ops.parents {
            grads.register::<Flex>(node.id, flex_op::from_values(dx, shape));
        }
    }
}

fn on_autodiff(x: AdTensor, last: usize) -> AdTensor {
    let y = flex_op::contiguous(&flex_activation::softmax(x.primitive().clone(), last));
    match SoftmaxBackward
        .prepare::<NoCheckpointing>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// Softmax over the last axis: one operation with a closed-form backward on the CPU
/// backend, Burn's `softmax` elsewhere (and without autodiff, where the backend
/// already fuses it).
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match flex_op::place(&x) {
        Some(Place::Autodiff(t)) => Tensor::from_primitive::<flex_op::Ad>(on_autodiff(t, D - 1)),
        _ => softmax(x, D - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// (output, gradient of Σ w·softmax(x)) by `f`.
    fn run(f: fn(Tensor<3>) -> Tensor<3>, x: &[f32], w: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let dev = Device::flex().autodiff();
        let xt = Tensor::<1>::from_floats(x, &dev)
            .reshape([3, 4, 7])
            .require_grad();
        let wt = Tensor::<1>::from_floats(w, &dev).reshape([3, 4, 7]);
        let y = f(xt.clone());
        let g = (y.clone() * wt).sum().backward();
        (vals(y), vals(xt.grad(&g).unwrap()))
    }

    #[test]
    fn equals_burn_softmax_forward_and_backward() {
        let dev = Device::flex();
        let x = vals(Tensor::<1>::random(
            [84],
            Distribution::Normal(0.0, 3.0),
            &dev,
        ));
        let w = vals(Tensor::<1>::random(
            [84],
            Distribution::Normal(0.0, 1.0),
            &dev,
        ));
        let (y, dx) = run(softmax_last, &x, &w);
        let (yr, dxr) = run(|t| softmax(t, 2), &x, &w);
        for (a, b) in y.iter().zip(&yr).chain(dx.iter().zip(&dxr)) {
            assert!((a - b).abs() < 1e-6, "{a} against {b}");
        }
        // rows sum to 1; the gradient of a row's sum is zero
        for row in y.chunks(7) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        let (_, d1) = run(softmax_last, &x, &[1.0; 84]);
        assert!(d1.iter().all(|v| v.abs() < 1e-6));
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // f64 reference of Σ w·softmax(x) over rows of 7, independent of both implementations
        let x: Vec<f32> = (0..84)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0)
            .collect();
        let w: Vec<f32> = (0..84)
            .map(|i| ((i * 17 % 13) as f32 - 6.0) / 3.0)
            .collect();
        let loss = |x: &[f32]| -> f64 {
            x.chunks(7)
                .zip(w.chunks(7))
                .map(|(r, wr)| {
                    let m = r.iter().cloned().fold(f32::MIN, f32::max) as f64;
                    let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
                    let s: f64 = e.iter().sum();
                    e.iter()
                        .zip(wr)
                        .map(|(a, &b)| a / s * b as f64)
                        .sum::<f64>()
                })
                .sum()
        };
        let (_, dx) = run(softmax_last, &x, &w);
        let h = 1e-3f32;
        for i in [0, 5, 13, 40, 83] {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (loss(&up) - loss(&down)) / (2.0 * h as f64);
            assert!(
                (fd - dx[i] as f64).abs() < 1e-3,
                "x[{i}]: {fd} against {}",
                dx[i]
            );
        }
    }
}
