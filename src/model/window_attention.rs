//! Windowed multi-head attention as one operation: `softmax(scale·Q Kᵀ + B + M) V`
//! for every window and head, with its own backward on the CPU backend.
//!
//! As tensor operations a window's attention is a split into heads (a copy), a scaling,
//! a batched matrix product whose every 64 × 12 × 64 product pays the GEMM library's
//! packing, the bias and mask added by broadcasting, a softmax, a second batched product
//! and a copy back: at the `cpu` network's finest level that is most of the Swin
//! blocks' and the cross-modal attention's time. Here one pass over the windows does it
//! all, each (window, head) inside the L1 cache (`attn_kernel`), forward and backward.
//! Other backends (the GPU) run [`window_attention_reference`]; the tests check the two
//! against each other and against finite differences.

use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_dispatch::backends::Flex;
use burn_dispatch::backends::flex::FlexTensor;

use super::attn_kernel::{self, AttnInputs, AttnShape};
use super::flex_op::{self, Ad, AdTensor, Place};

/// The same function as tensor operations (any backend): the reference of the tests
/// and the path of backends without the fused kernel. Arguments as [`window_attention`].
pub fn window_attention_reference(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    scale: f64,
    bias: Option<Tensor<3>>,
    mask: Option<Tensor<3>>,
) -> Tensor<3> {
    let [bq, n, c] = q.dims();
    let b = k.dims()[0];
    let reps = b / bq;
    let d = c / heads;
    let split = |t: Tensor<3>, m: usize| t.reshape([m, n, heads, d]).swap_dims(1, 2); // [m, h, n, d]
    let q = split(q, bq);
    let q = if reps == 1 {
        q
    } else {
        Tensor::cat(vec![q; reps], 0)
    };
    let mut att = q.mul_scalar(scale).matmul(split(k, b).swap_dims(2, 3));
    if let Some(bias) = bias {
        att = att + bias.unsqueeze::<4>();
    }
    if let Some(mask) = mask {
        let nw = mask.dims()[0];
        att = (att.reshape([b / nw, nw, heads, n, n]) + mask.unsqueeze_dims::<5>(&[0, 2]))
            .reshape([b, heads, n, n]);
    }
    softmax(att, 3)
        .matmul(split(v, b))
        .swap_dims(1, 2)
        .reshape([b, n, c])
}

/// What the backward pass needs: the inputs (contiguous) and the layout.
#[derive(Clone, Debug)]
struct AttnState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    bias: Option<FlexTensor>,
    mask: Option<FlexTensor>,
    scale: f32,
    shape: AttnShape,
}

impl AttnState {
    fn inputs(&self) -> AttnInputs<'_> {
        AttnInputs {
            q: flex_op::values(&self.q),
            k: flex_op::values(&self.k),
            v: flex_op::values(&self.v),
            bias: self.bias.as_ref().map(flex_op::values),
            mask: self.mask.as_ref().map(flex_op::values),
            scale: self.scale,
        }
    }

    /// Gradients of q, k, v and (when `want_bias`) the bias, as tensors.
    fn grads(&self, go: &FlexTensor, want_bias: bool) -> [Option<FlexTensor>; 4] {
        let go = flex_op::contiguous(go);
        let g = attn_kernel::backward(&self.inputs(), flex_op::values(&go), &self.shape, want_bias);
        let shape_of = |t: &FlexTensor| flex_op::shape_of(t);
        [
            Some(flex_op::from_values(g.dq, shape_of(&self.q))),
            Some(flex_op::from_values(g.dk, shape_of(&self.k))),
            Some(flex_op::from_values(g.dv, shape_of(&self.v))),
            g.dbias
                .zip(self.bias.as_ref())
                .map(|(db, b)| flex_op::from_values(db, shape_of(b))),
        ]
    }
}

fn register<const N: usize>(ops: Ops<AttnState, N>, grads: &mut Gradients) {
    let go = grads.consume::<Flex>(&ops.node);
    let want_bias = N == 4 && ops.parents.get(3).is_some_and(|p| p.is_some());
    let g = ops.state.grads(&go, want_bias);
    for (parent, grad) in ops.parents.iter().zip(g) {
        if let (Some(node), Some(grad)) = (parent, grad) {
            grads.register::<Flex>(node.id, grad);
        }
    }
}

/// Parents q, k, v.
#[derive(Debug)]
struct AttnBackward3;
/// Parents q, k, v and the bias.
#[derive(Debug)]
struct AttnBackward4;

impl Backward<Flex, 3> for AttnBackward3 {
    type State = AttnState;
    fn backward(self, ops: Ops<AttnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        register(ops, grads);
    }
}

impl Backward<Flex, 4> for AttnBackward4 {
    type State = AttnState;
    fn backward(self, ops: Ops<AttnState, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        register(ops, grads);
    }
}

/// The layout of a call, checked.
fn shape_of(q: &[usize], k: &[usize], heads: usize, mask: Option<&[usize]>) -> AttnShape {
    let (bq, n, c) = (q[0], q[1], q[2]);
    assert!(
        heads > 0 && c.is_multiple_of(heads),
        "{c} channels into {heads} heads"
    );
    assert!(
        k[0].is_multiple_of(bq) && k[1] == n && k[2] == c,
        "keys {k:?} against queries {q:?}"
    );
    AttnShape {
        bq,
        reps: k[0] / bq,
        n,
        heads,
        d: c / heads,
        mask_windows: mask.map_or(0, |m| m[0]),
    }
}

fn plain_of(t: &Tensor<3>) -> Option<FlexTensor> {
    match flex_op::place(t)? {
        Place::Plain(p) => Some(flex_op::contiguous(&p)),
        Place::Autodiff(a) => Some(flex_op::contiguous(a.primitive())),
    }
}

/// The contiguous inputs of one call and their layout.
fn state_of(
    [q, k, v]: [&FlexTensor; 3],
    bias: Option<&FlexTensor>,
    mask: Option<FlexTensor>,
    heads: usize,
    scale: f32,
) -> AttnState {
    let c = flex_op::contiguous;
    let (q, k, v) = (c(q), c(k), c(v));
    let shape = shape_of(
        &flex_op::shape_of(&q),
        &flex_op::shape_of(&k),
        heads,
        mask.as_ref().map(flex_op::shape_of).as_deref(),
    );
    AttnState {
        q,
        k,
        v,
        bias: bias.map(c),
        mask,
        scale,
        shape,
    }
}

impl AttnState {
    /// The output `[Bq·r, n, C]`.
    fn forward(&self) -> FlexTensor {
        flex_op::from_values(
            attn_kernel::forward(&self.inputs(), &self.shape),
            flex_op::shape_of(&self.k),
        )
    }
}

fn on_autodiff(
    [q, k, v]: [AdTensor; 3],
    bias: Option<AdTensor>,
    mask: Option<FlexTensor>,
    heads: usize,
    scale: f32,
) -> AdTensor {
    let state = state_of(
        [q.primitive(), k.primitive(), v.primitive()],
        bias.as_ref().map(|b| b.primitive()),
        mask,
        heads,
        scale,
    );
    let out = state.forward();
    match bias {
        Some(b) => match AttnBackward4
            .prepare::<NoCheckpointing>([q.node(), k.node(), v.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
        None => match AttnBackward3
            .prepare::<NoCheckpointing>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
    }
}

/// Multi-head attention inside windows: `q` `[Bq, n, C]` (C = heads·d, head h in
/// channels h·d..(h+1)·d); `k`, `v` `[Bq·r, n, C]`, window i attending with query
/// window `i mod Bq`; `bias` `[heads, n, n]` added to every window's weights (it gets a
/// gradient); `mask` `[nW, n, n]` added to window i's as mask `i mod nW` (constant).
/// Returns `[Bq·r, n, C]`: softmax(scale·Q Kᵀ + bias + mask) V per window and head.
/// One operation on the CPU backend (f32), [`window_attention_reference`] elsewhere.
pub fn window_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    scale: f64,
    bias: Option<Tensor<3>>,
    mask: Option<Tensor<3>>,
) -> Tensor<3> {
    use Place::{Autodiff as A, Plain as P};
    // the mask is a constant: its values are all the operation needs from it
    let mask_plain = match mask.as_ref().map(plain_of) {
        Some(None) => return window_attention_reference(q, k, v, heads, scale, bias, mask),
        m => m.flatten(),
    };
    let places = (flex_op::place(&q), flex_op::place(&k), flex_op::place(&v));
    let scale32 = scale as f32;
    match (places, bias.as_ref().map(flex_op::place)) {
        ((Some(A(pq)), Some(A(pk)), Some(A(pv))), b @ (None | Some(Some(A(_))))) => {
            let b = b.flatten().and_then(|p| match p {
                A(t) => Some(t),
                P(_) => None,
            });
            let out = on_autodiff([pq, pk, pv], b, mask_plain, heads, scale32);
            Tensor::from_primitive::<Ad>(out)
        }
        ((Some(P(pq)), Some(P(pk)), Some(P(pv))), b @ (None | Some(Some(P(_))))) => {
            let b = b.flatten().and_then(|p| match p {
                P(t) => Some(t),
                A(_) => None,
            });
            let state = state_of([&pq, &pk, &pv], b.as_ref(), mask_plain, heads, scale32);
            Tensor::from_primitive::<Flex>(state.forward())
        }
        _ => window_attention_reference(q, k, v, heads, scale, bias, mask),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{max_diff, vals};
    use burn::tensor::Distribution;

    /// A case: (bq, reps, n, heads, d, mask windows or 0, with bias).
    type Case = (usize, usize, usize, usize, usize, usize, bool);

    const CASES: [Case; 4] = [
        (4, 1, 64, 1, 12, 2, true),  // a shifted Swin block: bias and mask
        (3, 4, 27, 2, 5, 0, false),  // cross-modal attention: 4 auxiliaries per query
        (2, 1, 8, 3, 4, 0, true),    // bias, no mask
        (17, 1, 20, 2, 6, 17, true), // more windows than one work group
    ];

    struct Inputs {
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        bias: Option<Vec<f32>>,
        mask: Option<Vec<f32>>,
        w: Vec<f32>,
    }

    fn inputs(case: Case) -> Inputs {
        let (bq, reps, n, heads, d, nw, with_bias) = case;
        let dev = Device::flex();
        let r = |len: usize, sd: f64| {
            vals(Tensor::<1>::random(
                [len],
                Distribution::Normal(0.0, sd),
                &dev,
            ))
        };
        let c = heads * d;
        let mask = (nw > 0).then(|| {
            // Swin-like: 0 or −100
            r(nw * n * n, 1.0)
                .into_iter()
                .map(|x| if x > 0.8 { -100.0 } else { 0.0 })
                .collect()
        });
        Inputs {
            q: r(bq * n * c, 1.0),
            k: r(bq * reps * n * c, 1.0),
            v: r(bq * reps * n * c, 1.0),
            bias: with_bias.then(|| r(heads * n * n, 0.5)),
            mask,
            w: r(bq * reps * n * c, 1.0),
        }
    }

    type AttnFn = fn(
        Tensor<3>,
        Tensor<3>,
        Tensor<3>,
        usize,
        f64,
        Option<Tensor<3>>,
        Option<Tensor<3>>,
    ) -> Tensor<3>;

    /// (output, d/dq, d/dk, d/dv, d/dbias) of Σ w ⊙ f(...) on `dev`.
    fn run(f: AttnFn, case: Case, x: &Inputs, ad: bool) -> [Vec<f32>; 5] {
        let (bq, reps, n, heads, d, nw, _) = case;
        let c = heads * d;
        let dev = &if ad {
            Device::flex().autodiff()
        } else {
            Device::flex()
        };
        let t = |v: &[f32], s: [usize; 3]| {
            let t = Tensor::<1>::from_floats(v, dev).reshape(s);
            if ad { t.require_grad() } else { t }
        };
        let q = t(&x.q, [bq, n, c]);
        let k = t(&x.k, [bq * reps, n, c]);
        let v = t(&x.v, [bq * reps, n, c]);
        let bias = x.bias.as_ref().map(|b| t(b, [heads, n, n]));
        let mask = x
            .mask
            .as_ref()
            .map(|m| Tensor::<1>::from_floats(m.as_slice(), dev).reshape([nw, n, n]));
        let scale = 1.0 / (d as f64).sqrt();
        let y = f(
            q.clone(),
            k.clone(),
            v.clone(),
            heads,
            scale,
            bias.clone(),
            mask,
        );
        let w = Tensor::<1>::from_floats(x.w.as_slice(), dev).reshape([bq * reps, n, c]);
        let out = vals(y.clone());
        if !ad {
            return [out, vec![], vec![], vec![], vec![]];
        }
        let g = (y * w).sum().backward();
        [
            out,
            vals(q.grad(&g).unwrap()),
            vals(k.grad(&g).unwrap()),
            vals(v.grad(&g).unwrap()),
            bias.map(|b| vals(b.grad(&g).unwrap())).unwrap_or_default(),
        ]
    }

    #[test]
    fn forward_and_gradients_equal_tensor_operations() {
        for case in CASES {
            let x = inputs(case);
            for ad in [false, true] {
                let got = run(window_attention, case, &x, ad);
                let want = run(window_attention_reference, case, &x, ad);
                for (what, (a, b)) in ["output", "dq", "dk", "dv", "dbias"]
                    .iter()
                    .zip(got.iter().zip(&want))
                {
                    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                    let err = max_diff(a, b);
                    assert!(err <= 2e-5 * scale, "{case:?} {what}: max difference {err}");
                }
            }
        }
    }

    /// Σ w ⊙ attention in f64 by plain loops (independent of both paths).
    fn objective(case: Case, x: &Inputs, q: &[f64], k: &[f64], v: &[f64], bias: &[f64]) -> f64 {
        let (bq, reps, n, heads, d, nw, _) = case;
        let c = heads * d;
        let scale = 1.0 / (d as f64).sqrt();
        let mut total = 0.0;
        for i in 0..bq * reps {
            let iq = i % bq;
            for h in 0..heads {
                for r in 0..n {
                    let mut s: Vec<f64> = (0..n)
                        .map(|j| {
                            let qk: f64 = (0..d)
                                .map(|t| {
                                    q[(iq * n + r) * c + h * d + t] * k[(i * n + j) * c + h * d + t]
                                })
                                .sum();
                            let b = if bias.is_empty() {
                                0.0
                            } else {
                                bias[(h * n + r) * n + j]
                            };
                            let m = x
                                .mask
                                .as_ref()
                                .map_or(0.0, |m| m[((i % nw) * n + r) * n + j] as f64);
                            scale * qk + b + m
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    s.iter_mut().for_each(|e| *e = (*e - mx).exp());
                    let z: f64 = s.iter().sum();
                    for t in 0..d {
                        let o: f64 = (0..n)
                            .map(|j| s[j] / z * v[(i * n + j) * c + h * d + t])
                            .sum();
                        total += x.w[(i * n + r) * c + h * d + t] as f64 * o;
                    }
                }
            }
        }
        total
    }

    #[test]
    fn gradients_match_finite_differences() {
        let case: Case = (2, 2, 8, 2, 3, 2, true);
        let x = inputs(case);
        let got = run(window_attention, case, &x, true);
        let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let base = [
            f64s(&x.q),
            f64s(&x.k),
            f64s(&x.v),
            f64s(x.bias.as_ref().unwrap()),
        ];
        let h = 1e-5;
        for (which, grad) in got[1..].iter().enumerate() {
            for idx in (0..base[which].len()).step_by(7) {
                let eval = |delta: f64| {
                    let mut p = base.clone();
                    p[which][idx] += delta;
                    objective(case, &x, &p[0], &p[1], &p[2], &p[3])
                };
                let fd = (eval(h) - eval(-h)) / (2.0 * h);
                let g = grad[idx] as f64;
                assert!(
                    (g - fd).abs() <= 1e-3 * fd.abs().max(1e-2),
                    "input {which}, element {idx}: analytic {g}, finite difference {fd}"
                );
            }
        }
    }
}
