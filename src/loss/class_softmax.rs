//! Softmax and log-softmax over the class axis of `[B, K, D, H, W]` logits, each as one
//! operation on the CPU backend, forward and backward.
//!
//! Burn builds them from tensor operations (a max, a subtraction, an exp, a sum, a
//! division or a log), and its CPU backend's exp is libm's scalar `expf` on one thread:
//! the losses of a `tiny` step take 2 × 2 of them over `[2, 8, 32³]`. Here one pass per
//! voxel chunk reads the K planes, with the vectorised exp of `model::exp` (one exp per
//! value), and the gradients are closed-form:
//!
//! ```text
//! p = softmax(x):      dx = p ⊙ (dy − Σ_k p_k dy_k)
//! y = log_softmax(x):  dx = dy − p · Σ_k dy_k
//! ```
//!
//! Other backends (the GPU) use Burn's `softmax` / `log_softmax`; the tests check both
//! against each other and against finite differences.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_dispatch::backends::Flex;
use burn_dispatch::backends::flex::FlexTensor;
use rayon::prelude::*;

use crate::model::exp::exp_in_place;
use crate::model::flex_op::{self, Ad, AdTensor, Place};

/// Voxels per parallel work item.
const CHUNK: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Softmax,
    LogSoftmax,
}

/// Softmax over dim 1 of `x` `[B, K, D, H, W]`.
pub fn softmax_classes(x: Tensor<5>) -> Tensor<5> {
    classes(x, Kind::Softmax)
}

/// Log-softmax over dim 1 of `x` `[B, K, D, H, W]`.
pub fn log_softmax_classes(x: Tensor<5>) -> Tensor<5> {
    classes(x, Kind::LogSoftmax)
}

fn classes(x: Tensor<5>, kind: Kind) -> Tensor<5> {
    match flex_op::place(&x) {
        Some(Place::Autodiff(t)) => Tensor::from_primitive::<Ad>(on_autodiff(t, kind)),
        Some(Place::Plain(t)) => {
            let t = flex_op::contiguous(&t);
            let shape = flex_op::shape_of(&t);
            let (y, _) = forward(flex_op::values(&t), &shape, kind);
            Tensor::from_primitive::<Flex>(y)
        }
        None => match kind {
            Kind::Softmax => softmax(x, 1),
            Kind::LogSoftmax => log_softmax(x, 1),
        },
    }
}

/// `[B, K, S]` of a 5-D shape.
fn bks(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2..].iter().product())
}

/// For every (item, voxel chunk), the chunk of each of the K planes of `buf`.
fn chunk_planes(buf: &mut [f32], k: usize, s: usize) -> Vec<Vec<&mut [f32]>> {
    let mut tasks = Vec::new();
    for item in buf.chunks_mut(k * s) {
        let mut per: Vec<Vec<&mut [f32]>> = (0..s.div_ceil(CHUNK))
            .map(|_| Vec::with_capacity(k))
            .collect();
        for plane in item.chunks_mut(s) {
            for (i, part) in plane.chunks_mut(CHUNK).enumerate() {
                per[i].push(part);
            }
        }
        tasks.extend(per);
    }
    tasks
}

/// Softmax over the class axis of `[n, k, s]` values (n items, k classes, s voxels), in
/// place: each voxel's k values, `s` apart, become their softmax. Inference's class
/// probabilities (`infer::probs`) and the losses' softmax are this one function.
pub fn softmax_in_place(x: &mut [f32], k: usize, s: usize) {
    assert_eq!(x.len() % (k * s).max(1), 0, "logits: [n, {k}, {s}]");
    chunk_planes(x, k, s)
        .into_par_iter()
        .for_each(|mut planes| softmax_chunk(&mut planes));
}

/// (y, p): the result and the softmax itself (the same tensor for `Softmax`, kept for
/// the backward pass).
fn forward(x: &[f32], shape: &[usize], kind: Kind) -> (FlexTensor, FlexTensor) {
    let (_, k, s) = bks(shape);
    let mut y = x.to_vec();
    match kind {
        Kind::Softmax => {
            softmax_in_place(&mut y, k, s);
            let y = flex_op::from_values(y, shape.to_vec());
            (y.clone(), y)
        }
        Kind::LogSoftmax => {
            let mut p = vec![0.0f32; x.len()];
            chunk_planes(&mut y, k, s)
                .into_par_iter()
                .zip(chunk_planes(&mut p, k, s))
                .for_each(|(mut planes, mut probs)| log_softmax_chunk(&mut planes, &mut probs));
            (
                flex_op::from_values(y, shape.to_vec()),
                flex_op::from_values(p, shape.to_vec()),
            )
        }
    }
}

/// Each voxel's largest value over `planes`.
fn max_over(planes: &[&mut [f32]]) -> Vec<f32> {
    let mut m = vec![f32::NEG_INFINITY; planes[0].len()];
    for p in planes {
        for (a, &b) in m.iter_mut().zip(p.iter()) {
            *a = if b > *a { b } else { *a };
        }
    }
    m
}

/// The softmax across `planes` (one per class) at each voxel, in place.
fn softmax_chunk(planes: &mut [&mut [f32]]) {
    let m = max_over(planes);
    let mut sum = vec![0.0f32; m.len()];
    for p in planes.iter_mut() {
        for (v, &mx) in p.iter_mut().zip(&m) {
            *v -= mx;
        }
        exp_in_place(p);
        for (z, &v) in sum.iter_mut().zip(p.iter()) {
            *z += v;
        }
    }
    for z in sum.iter_mut() {
        *z = 1.0 / *z;
    }
    for p in planes.iter_mut() {
        for (v, &r) in p.iter_mut().zip(&sum) {
            *v *= r;
        }
    }
}

/// The log-softmax across `planes` at each voxel, in place, and the softmax into `probs`
/// (one exp per value).
fn log_softmax_chunk(planes: &mut [&mut [f32]], probs: &mut [&mut [f32]]) {
    let m = max_over(planes);
    let mut sum = vec![0.0f32; m.len()];
    for (p, q) in planes.iter_mut().zip(probs.iter_mut()) {
        for (v, &mx) in p.iter_mut().zip(&m) {
            *v -= mx;
        }
        q.copy_from_slice(p);
        exp_in_place(q);
        for (z, &v) in sum.iter_mut().zip(q.iter()) {
            *z += v;
        }
    }
    let ln: Vec<f32> = sum.iter().map(|z| z.ln()).collect();
    for z in sum.iter_mut() {
        *z = 1.0 / *z;
    }
    for (p, q) in planes.iter_mut().zip(probs.iter_mut()) {
        for (v, &r) in q.iter_mut().zip(&sum) {
            *v *= r;
        }
        for (v, &l) in p.iter_mut().zip(&ln) {
            *v -= l;
        }
    }
}

/// dx from dy and the softmax p.
fn backward(p: &[f32], dy: &[f32], shape: &[usize], kind: Kind) -> Vec<f32> {
    let (b, k, s) = bks(shape);
    let mut dx = vec![0.0f32; p.len()];
    let items: Vec<(usize, usize)> = (0..b)
        .flat_map(|i| (0..s.div_ceil(CHUNK)).map(move |c| (i, c)))
        .collect();
    chunk_planes(&mut dx, k, s)
        .into_par_iter()
        .zip(items)
        .for_each(|(mut out, (item, c))| {
            let lo = c * CHUNK;
            let len = out[0].len();
            // plane kk's part of this chunk in p and dy
            let at = |kk: usize| {
                let start = (item * k + kk) * s + lo;
                start..start + len
            };
            // per voxel: Σ_k p_k dy_k (softmax) or Σ_k dy_k (log-softmax)
            let mut acc = vec![0.0f32; len];
            for kk in 0..k {
                let (pk, gk) = (&p[at(kk)], &dy[at(kk)]);
                match kind {
                    Kind::Softmax => acc
                        .iter_mut()
                        .zip(pk.iter().zip(gk))
                        .for_each(|(a, (&q, &g))| *a += q * g),
                    Kind::LogSoftmax => acc.iter_mut().zip(gk).for_each(|(a, &g)| *a += g),
                }
            }
            for (kk, o) in out.iter_mut().enumerate() {
                let (pk, gk) = (&p[at(kk)], &dy[at(kk)]);
                for (((o, &q), &g), &a) in o.iter_mut().zip(pk).zip(gk).zip(&acc) {
                    *o = match kind {
                        Kind::Softmax => q * (g - a),
                        Kind::LogSoftmax => g - q * a,
                    };
                }
            }
        });
    dx
}

#[derive(Clone, Debug)]
struct State {
    /// The softmax (for `Softmax`, the output tensor itself).
    p: FlexTensor,
    kind: Kind,
}

#[derive(Debug)]
struct ClassSoftmaxBackward;

impl Backward<Flex, 1> for ClassSoftmaxBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [px] = ops.parents;
        if let Some(node) = px {
            let shape = flex_op::shape_of(&st.p);
            let dx = backward(
                flex_op::values(&st.p),
                flex_op::values(&dy),
                &shape,
                st.kind,
            );
            grads.register::<Flex>(node.id, flex_op::from_values(dx, shape));
        }
    }
}

fn on_autodiff(x: AdTensor, kind: Kind) -> AdTensor {
    let xv = flex_op::contiguous(x.primitive());
    let shape = flex_op::shape_of(&xv);
    let (out, p) = forward(flex_op::values(&xv), &shape, kind);
    match ClassSoftmaxBackward
        .prepare::<NoCheckpointing>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(State { p, kind }, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn vals(t: Tensor<5>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Two items, 5 classes, 4 × 5 × 410 voxels (two chunks of 4096 and a partial one).
    const SHAPE: [usize; 5] = [2, 5, 4, 5, 410];

    #[test]
    fn equal_to_burns_softmax_and_log_softmax_with_gradients() {
        let dev = Device::flex().autodiff();
        let x = Tensor::<5>::random(SHAPE, Distribution::Normal(0.0, 3.0), &dev).require_grad();
        let r = Tensor::<5>::random(SHAPE, Distribution::Normal(0.0, 1.0), &dev);
        for (ours, burns) in [
            (
                softmax_classes as fn(Tensor<5>) -> Tensor<5>,
                (|t| softmax(t, 1)) as fn(Tensor<5>) -> Tensor<5>,
            ),
            (log_softmax_classes, |t| log_softmax(t, 1)),
        ] {
            let (a, b) = (ours(x.clone()), burns(x.clone()));
            assert!(max_diff(&vals(a.clone()), &vals(b.clone())) < 2e-6);
            let ga = x.grad(&(a * r.clone()).sum().backward()).unwrap();
            let gb = x.grad(&(b * r.clone()).sum().backward()).unwrap();
            let (ga, gb) = (vals(ga), vals(gb));
            let scale = gb.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            assert!(
                max_diff(&ga, &gb) / scale < 1e-5,
                "{}",
                max_diff(&ga, &gb) / scale
            );
        }
    }

    #[test]
    fn softmax_sums_to_one_and_without_autodiff_too() {
        let dev = Device::flex();
        let x = Tensor::<5>::random([1, 8, 3, 3, 3], Distribution::Normal(0.0, 10.0), &dev);
        let p = vals(softmax_classes(x.clone()));
        for v in 0..27 {
            let s: f32 = (0..8).map(|c| p[c * 27 + v]).sum();
            assert!((s - 1.0).abs() < 1e-6, "{s}");
        }
        let l = vals(log_softmax_classes(x));
        assert!(max_diff(&l.iter().map(|v| v.exp()).collect::<Vec<_>>(), &p) < 1e-6);
    }

    #[test]
    fn gradient_matches_a_finite_difference() {
        let dev = Device::flex().autodiff();
        let shape = [1, 3, 2, 2, 3];
        let x0: Vec<f32> = (0..36)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.4)
            .collect();
        let r: Vec<f32> = (0..36).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.3).collect();
        let rt = Tensor::<5>::from_data(TensorData::new(r.clone(), shape), &dev);
        for f in [softmax_classes, log_softmax_classes] {
            let x = Tensor::<5>::from_data(TensorData::new(x0.clone(), shape), &dev).require_grad();
            let g = vals(
                x.grad(&(f(x.clone()) * rt.clone()).sum().backward())
                    .unwrap(),
            );
            let loss = |v: &[f32]| -> f64 {
                let t = Tensor::<5>::from_data(TensorData::new(v.to_vec(), shape), &dev);
                vals(f(t))
                    .iter()
                    .zip(&r)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum()
            };
            for i in [0, 7, 20, 35] {
                let (mut p, mut m) = (x0.clone(), x0.clone());
                p[i] += 1e-2;
                m[i] -= 1e-2;
                let fd = (loss(&p) - loss(&m)) / 2e-2;
                assert!(
                    (fd - g[i] as f64).abs() < 2e-3 * (1.0 + fd.abs()),
                    "{i}: {fd} vs {}",
                    g[i]
                );
            }
        }
    }
}
