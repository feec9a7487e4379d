//! Instance normalisation with an optional LeakyReLU, as one operation.
//!
//! Written with tensor operations (Burn's `InstanceNorm`, then `relu`, two scalings and
//! an add), a norm + activation is eleven passes over the map forward and more than
//! twenty backward, each with its own buffer: on a `[1, 12, 64³]` map that cost as much
//! as the 3×3×3 convolution before it. Here, on the CPU backend, the forward pass reads
//! the map three times (mean, variance, output) and the backward pass twice, with the
//! gradients of x, γ and β in closed form:
//!
//! ```text
//! x̂ = (x − μ)·r,  r = 1/√(σ² + ε),  z = γ·x̂ + β,  y = act(z)
//! dz = dy·act'(z),  dβ = Σ dz,  dγ = Σ dz·x̂,  dx = r·γ·(dz − dβ/N − x̂·dγ/N)
//! ```
//!
//! (μ, σ² per sample and channel over the N voxels, σ² biased, as PyTorch and Burn.)
//! Other backends (the GPU) run the same function as tensor operations; the tests check
//! both paths against each other and against finite differences.

use std::sync::Arc;

use burn::prelude::*;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_dispatch::backends::Flex;
use burn_dispatch::backends::flex::FlexTensor;
use rayon::prelude::*;

use super::flex_op::{self, Ad, AdTensor, Place};
use super::simd::multiversioned;

/// The LeakyReLU slope of MONAI's `UnetResBlock`.
pub const SLOPE: f32 = 0.01;

/// Per row (one sample, one channel): mean and 1/√(σ² + ε).
#[derive(Clone, Copy, Debug)]
struct RowStats {
    mean: f32,
    rstd: f32,
}

/// What the backward pass needs: the input, γ, β and each row's statistics.
#[derive(Clone, Debug)]
struct NormState {
    x: FlexTensor,
    gamma: Arc<Vec<f32>>,
    beta: Arc<Vec<f32>>,
    stats: Arc<Vec<RowStats>>,
    slope: Option<f32>,
}

const LANES: usize = 16;
/// Elements summed in f32 lanes before the partial sum moves to f64.
const BLOCK: usize = 4096;

/// Σ f(v) over `x`: f32 lanes the compiler can vectorise, f64 between blocks.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0.0f64;
    for block in x.chunks(BLOCK) {
        let mut acc = [0.0f32; LANES];
        let mut it = block.chunks_exact(LANES);
        for ch in &mut it {
            for (a, &v) in acc.iter_mut().zip(ch) {
                *a += f(v);
            }
        }
        let tail: f32 = it.remainder().iter().map(|&v| f(v)).sum();
        total += acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64;
    }
    total
}

/// Mean and 1/√(σ² + ε) of one row, two passes.
#[inline(always)]
fn row_stats_body(x: &[f32], eps: f64) -> RowStats {
    let n = x.len() as f64;
    let mean = lane_sum(x, |v| v) / n;
    let m = mean as f32;
    let var = lane_sum(x, |v| (v - m) * (v - m)) / n;
    RowStats {
        mean: m,
        rstd: (1.0 / (var + eps).sqrt()) as f32,
    }
}
multiversioned!(row_stats, (x: &[f32], eps: f64) -> RowStats, row_stats_body);

/// What one row's element-wise loops need: its statistics, its channel's γ and β, and
/// the activation's slope below zero (1 without activation: act' = 1 everywhere).
#[derive(Clone, Copy)]
struct RowCoef {
    mean: f32,
    rstd: f32,
    gamma: f32,
    beta: f32,
    slope: f32,
}

impl RowCoef {
    /// dy·act'(z) and x̂ at one voxel, branch-free (a select the compiler vectorises).
    #[inline(always)]
    fn dz_xh(&self, v: f32, dy: f32) -> (f32, f32) {
        let xh = (v - self.mean) * self.rstd;
        let z = self.gamma * xh + self.beta;
        (dy * if z > 0.0 { 1.0 } else { self.slope }, xh)
    }
}

/// One row of y = act(γ·(x − μ)·r + β).
#[inline(always)]
fn forward_row_body(out: &mut [f32], row: &[f32], k: RowCoef, act: bool) {
    // (x − μ) first: folding μ into a shift (x·scale + shift) cancels catastrophically
    // when |μ| ≫ σ
    let (scale, shift, s) = (k.gamma * k.rstd, k.beta, k.slope);
    if act {
        // max(z, 0) + s·min(z, 0) = LeakyReLU(z) for s < 1, without a branch
        for (o, &v) in out.iter_mut().zip(row) {
            let z = (v - k.mean) * scale + shift;
            *o = z.max(0.0) + s * z.min(0.0);
        }
    } else {
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (v - k.mean) * scale + shift;
        }
    }
}
multiversioned!(forward_row, (out: &mut [f32], row: &[f32], k: RowCoef, act: bool) -> (), forward_row_body);

/// One row's Σ dz and Σ dz·x̂ (f32 lanes, f64 between blocks).
#[inline(always)]
fn backward_sums_body(row: &[f32], g: &[f32], k: RowCoef) -> (f64, f64) {
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for (xb, gb) in row.chunks(BLOCK).zip(g.chunks(BLOCK)) {
        let mut a1 = [0.0f32; LANES];
        let mut a2 = [0.0f32; LANES];
        let mut xi = xb.chunks_exact(LANES);
        let mut gi = gb.chunks_exact(LANES);
        for (xc, gc) in (&mut xi).zip(&mut gi) {
            for l in 0..LANES {
                let (dz, xh) = k.dz_xh(xc[l], gc[l]);
                a1[l] += dz;
                a2[l] += dz * xh;
            }
        }
        for (&v, &d) in xi.remainder().iter().zip(gi.remainder()) {
            let (dz, xh) = k.dz_xh(v, d);
            s1 += dz as f64;
            s2 += (dz * xh) as f64;
        }
        s1 += a1.iter().map(|&a| a as f64).sum::<f64>();
        s2 += a2.iter().map(|&a| a as f64).sum::<f64>();
    }
    (s1, s2)
}
multiversioned!(backward_sums, (row: &[f32], g: &[f32], k: RowCoef) -> (f64, f64), backward_sums_body);

/// One row of dx = r·γ·(dz − mean(dz) − x̂·mean(dz·x̂)).
#[inline(always)]
fn backward_dx_body(out: &mut [f32], row: &[f32], g: &[f32], k: RowCoef, m1: f32, m2: f32) {
    let kr = k.rstd * k.gamma;
    for ((o, &v), &d) in out.iter_mut().zip(row).zip(g) {
        let (dz, xh) = k.dz_xh(v, d);
        *o = kr * (dz - m1 - xh * m2);
    }
}
multiversioned!(backward_dx, (out: &mut [f32], row: &[f32], g: &[f32], k: RowCoef, m1: f32, m2: f32) -> (), backward_dx_body);

impl NormState {
    fn coef(&self, r: usize) -> RowCoef {
        let c = r % self.gamma.len();
        coef(self.stats[r], self.gamma[c], self.beta[c], self.slope)
    }
}

fn coef(s: RowStats, gamma: f32, beta: f32, slope: Option<f32>) -> RowCoef {
    RowCoef {
        mean: s.mean,
        rstd: s.rstd,
        gamma,
        beta,
        slope: slope.unwrap_or(1.0),
    }
}

/// y = act(γ·(x − μ)·r + β) for `[rows, n]` data, channel = row % channels.
fn forward_rows(
    x: &[f32],
    n: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    slope: Option<f32>,
) -> (Vec<f32>, Vec<RowStats>) {
    let channels = gamma.len();
    let stats: Vec<RowStats> = x.par_chunks(n).map(|row| row_stats(row, eps)).collect();
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .enumerate()
        .for_each(|(r, (out, row))| {
            let c = r % channels;
            let k = coef(stats[r], gamma[c], beta[c], slope);
            forward_row(out, row, k, slope.is_some());
        });
    (y, stats)
}

/// (dx, dγ, dβ) from dy for the rows of [`forward_rows`].
fn backward_rows(
    st: &NormState,
    x: &[f32],
    dy: &[f32],
    n: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let channels = st.gamma.len();
    let sums: Vec<(f64, f64)> = x
        .par_chunks(n)
        .zip(dy.par_chunks(n))
        .enumerate()
        .map(|(r, (row, g))| backward_sums(row, g, st.coef(r)))
        .collect();
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(n)
        .zip(x.par_chunks(n).zip(dy.par_chunks(n)))
        .enumerate()
        .for_each(|(r, (out, (row, g)))| {
            let m1 = (sums[r].0 / n as f64) as f32;
            let m2 = (sums[r].1 / n as f64) as f32;
            backward_dx(out, row, g, st.coef(r), m1, m2);
        });
    let mut dgamma = vec![0.0f32; channels];
    let mut dbeta = vec![0.0f32; channels];
    for (r, &(s1, s2)) in sums.iter().enumerate() {
        dbeta[r % channels] += s1 as f32;
        dgamma[r % channels] += s2 as f32;
    }
    (dx, dgamma, dbeta)
}

/// `[B, C, ...]` → (rows, voxels per row).
fn rows_of(shape: &[usize]) -> (usize, usize) {
    (shape[0] * shape[1], shape[2..].iter().product())
}

#[derive(Debug)]
struct NormActBackward;

impl Backward<Flex, 3> for NormActBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let shape = st.x.layout().shape().to_vec();
        let (_, n) = rows_of(&shape);
        let x = flex_op::values(&st.x);
        let dy_v = flex_op::values(&dy);
        let (dx, dgamma, dbeta) = backward_rows(&st, x, dy_v, n);
        let [px, pg, pb] = ops.parents;
        let c = st.gamma.len();
        if let Some(node) = px {
            grads.register::<Flex>(node.id, flex_op::from_values(dx, shape));
        }
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, flex_op::from_values(dgamma, vec![c]));
        }
        if let Some(node) = pb {
            grads.register::<Flex>(node.id, flex_op::from_values(dbeta, vec![c]));
        }
    }
}

/// The fused operation on the CPU backend's tensors, tracked by autodiff.
fn on_autodiff(
    x: AdTensor,
    gamma: AdTensor,
    beta: AdTensor,
    eps: f64,
    slope: Option<f32>,
) -> AdTensor {
    let xv = flex_op::contiguous(x.primitive());
    let g = Arc::new(values_of(gamma.primitive()));
    let b = Arc::new(values_of(beta.primitive()));
    let shape = flex_op::shape_of(&xv);
    let (_, n) = rows_of(&shape);
    let (y, stats) = forward_rows(flex_op::values(&xv), n, &g, &b, eps, slope);
    let out = flex_op::from_values(y, shape);
    match NormActBackward
        .prepare::<NoCheckpointing>([x.node(), gamma.node(), beta.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            NormState {
                x: xv,
                gamma: g,
                beta: b,
                stats: Arc::new(stats),
                slope,
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

fn values_of(t: &FlexTensor) -> Vec<f32> {
    flex_op::values(&flex_op::contiguous(t)).to_vec()
}

/// The same function as tensor operations (any backend): the reference of the tests
/// and the path of backends without the fused kernel.
pub fn norm_act_reference(
    x: Tensor<5>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
    slope: Option<f32>,
) -> Tensor<5> {
    let [b, c, d, h, w] = x.dims();
    let flat = x.reshape([b, c, d * h * w]);
    let mean = flat.clone().mean_dim(2);
    let centred = flat - mean;
    let var = centred.clone().square().mean_dim(2);
    let xh = centred / (var + eps).sqrt();
    let z = xh * gamma.reshape([1, c, 1]) + beta.reshape([1, c, 1]);
    let y = match slope {
        Some(s) => super::add_act::leaky_relu_ops(z, s),
        None => z,
    };
    y.reshape([b, c, d, h, w])
}

/// `act(γ·(x − μ)/√(σ² + ε) + β)` per sample and channel of `x` `[B, C, D, H, W]`;
/// `slope` = `Some(s)` for LeakyReLU(s), `None` for no activation. One fused
/// operation on the CPU backend (f32), tensor operations elsewhere.
pub fn instance_norm_act(
    x: Tensor<5>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
    slope: Option<f32>,
) -> Tensor<5> {
    match (
        flex_op::place(&x),
        flex_op::place(&gamma),
        flex_op::place(&beta),
    ) {
        (Some(Place::Autodiff(px)), Some(Place::Autodiff(pg)), Some(Place::Autodiff(pb))) => {
            return Tensor::from_primitive::<Ad>(on_autodiff(px, pg, pb, eps, slope));
        }
        (Some(Place::Plain(px)), Some(Place::Plain(pg)), Some(Place::Plain(pb))) => {
            let xv = flex_op::contiguous(&px);
            let shape = flex_op::shape_of(&xv);
            let (_, n) = rows_of(&shape);
            let (y, _) = forward_rows(
                flex_op::values(&xv),
                n,
                &values_of(&pg),
                &values_of(&pb),
                eps,
                slope,
            );
            return Tensor::from_primitive::<Flex>(flex_op::from_values(y, shape));
        }
        _ => {}
    }
    norm_act_reference(x, gamma, beta, eps, slope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{max_diff, vals};
    use burn::tensor::Distribution;

    fn inputs(dev: &Device) -> (Tensor<5>, Tensor<1>, Tensor<1>) {
        (
            Tensor::random([2, 3, 4, 5, 6], Distribution::Normal(0.5, 2.0), dev),
            Tensor::random([3], Distribution::Normal(1.0, 0.5), dev),
            Tensor::random([3], Distribution::Normal(0.0, 0.5), dev),
        )
    }

    #[test]
    fn forward_equals_tensor_operations_and_normalises() {
        let dev = Device::flex();
        let (x, _, _) = inputs(&dev);
        for slope in [None, Some(SLOPE)] {
            let (g, b) = (Tensor::ones([3], &dev), Tensor::zeros([3], &dev));
            let fused = vals(instance_norm_act(
                x.clone(),
                g.clone(),
                b.clone(),
                1e-5,
                slope,
            ));
            let refr = vals(norm_act_reference(x.clone(), g, b, 1e-5, slope));
            assert!(max_diff(&fused, &refr) < 1e-5, "slope {slope:?}");
            if slope.is_none() {
                // each (sample, channel) row: mean 0, variance 1
                for row in fused.chunks(120) {
                    let m = row.iter().sum::<f32>() / 120.0;
                    let v = row.iter().map(|y| (y - m) * (y - m)).sum::<f32>() / 120.0;
                    assert!(
                        m.abs() < 1e-5 && (v - 1.0).abs() < 1e-3,
                        "mean {m}, var {v}"
                    );
                }
            }
        }
    }

    /// Gradients of Σ w·y with respect to x, γ and β.
    fn grads_of(
        f: fn(Tensor<5>, Tensor<1>, Tensor<1>, f64, Option<f32>) -> Tensor<5>,
        slope: Option<f32>,
        seed_inputs: &(Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>),
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, f32) {
        let dev = Device::flex().autodiff();
        let (xv, gv, bv, wv) = seed_inputs;
        let x = Tensor::<1>::from_floats(xv.as_slice(), &dev)
            .reshape([2, 3, 4, 5, 6])
            .require_grad();
        let g = Tensor::<1>::from_floats(gv.as_slice(), &dev).require_grad();
        let b = Tensor::<1>::from_floats(bv.as_slice(), &dev).require_grad();
        let w = Tensor::<1>::from_floats(wv.as_slice(), &dev).reshape([2, 3, 4, 5, 6]);
        let loss = (f(x.clone(), g.clone(), b.clone(), 1e-5, slope) * w).sum();
        let l = vals(loss.clone())[0];
        let gr = loss.backward();
        (
            vals(x.grad(&gr).unwrap()),
            vals(g.grad(&gr).unwrap()),
            vals(b.grad(&gr).unwrap()),
            l,
        )
    }

    /// x, γ, β and the loss weights w, from a seeded generator (the same in every run).
    fn seeded() -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        use rand::SeedableRng;
        use rand_distr::{Distribution as _, Normal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut draw = |n: usize, mean: f32, sd: f32| -> Vec<f32> {
            let d = Normal::new(mean, sd).unwrap();
            (0..n).map(|_| d.sample(&mut rng)).collect()
        };
        (
            draw(720, 0.5, 2.0),
            draw(3, 1.0, 0.5),
            draw(3, 0.0, 0.5),
            draw(720, 0.0, 1.0),
        )
    }

    fn perturbed(
        d: &(Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>),
        which: usize,
        i: usize,
        delta: f32,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut p = d.clone();
        match which {
            0 => p.0[i] += delta,
            1 => p.1[i] += delta,
            _ => p.2[i] += delta,
        }
        p
    }

    #[test]
    fn gradients_equal_those_of_tensor_operations() {
        let data = seeded();
        for slope in [None, Some(SLOPE), Some(0.2)] {
            let (dx, dg, db, _) = grads_of(instance_norm_act, slope, &data);
            let (rx, rg, rb, _) = grads_of(norm_act_reference, slope, &data);
            assert!(
                max_diff(&dx, &rx) < 1e-4,
                "dx, slope {slope:?}: {}",
                max_diff(&dx, &rx)
            );
            assert!(
                max_diff(&dg, &rg) < 1e-3 * (1.0 + rg.iter().map(|v| v.abs()).fold(0.0, f32::max)),
                "dγ, slope {slope:?}"
            );
            assert!(
                max_diff(&db, &rb) < 1e-3 * (1.0 + rb.iter().map(|v| v.abs()).fold(0.0, f32::max)),
                "dβ, slope {slope:?}"
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let data = seeded();
        let slope = Some(0.2);
        let (dx, dg, db, _) = grads_of(instance_norm_act, slope, &data);
        let h = 1e-3f32;
        let loss_at = |d: &(Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)| -> f64 {
            // forward in f64 from the definition, independent of both implementations
            let (x, g, b, w) = d;
            let mut total = 0.0f64;
            for (r, (row, wr)) in x.chunks(120).zip(w.chunks(120)).enumerate() {
                let c = r % 3;
                let m = row.iter().map(|&v| v as f64).sum::<f64>() / 120.0;
                let var = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / 120.0;
                for (&v, &wi) in row.iter().zip(wr) {
                    let z = g[c] as f64 * (v as f64 - m) / (var + 1e-5).sqrt() + b[c] as f64;
                    let y = if z > 0.0 { z } else { 0.2 * z };
                    total += y * wi as f64;
                }
            }
            total
        };
        let check = |which: usize, i: usize, analytic: f32| {
            let fd = (loss_at(&perturbed(&data, which, i, h))
                - loss_at(&perturbed(&data, which, i, -h)))
                / (2.0 * h as f64);
            assert!(
                (fd - analytic as f64).abs() < 1e-2 * (1.0 + fd.abs()),
                "parameter {which}[{i}]: finite difference {fd}, analytic {analytic}"
            );
        };
        for i in [0, 17, 119, 200, 359, 700] {
            check(0, i, dx[i]);
        }
        for c in 0..3 {
            check(1, c, dg[c]);
            check(2, c, db[c]);
        }
    }
}
