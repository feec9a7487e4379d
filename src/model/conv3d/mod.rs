//! 3D convolution as this crate's own operation on the CPU backend, forward and
//! backward, with Burn's convolution everywhere else.
//!
//! For f32 tensors of the CPU backend with stride 1, dilation 1, one group and symmetric
//! padding below the kernel size (every convolution of the network but the strided patch
//! embedding), the forward pass and the gradients of the input, the weight and the bias
//! are computed here: by a direct AVX-512 kernel for 3×3×3, padding 1, on rows of 16·k
//! voxels (`direct.rs`), otherwise by im2col + GEMM (`gemm.rs`). Every other case, and
//! every other backend (the GPU), calls Burn's `conv3d`. The weights stay Burn's
//! `Conv3d` record, so checkpoints are the same whichever path runs.
//!
//! The bias gradient is burn-backend's own (`conv3d_bias_backward`), so that the
//! numbers are those of Burn's autodiff convolution over the same kernels.
//! `tests/conv_grad.rs` checks every path against plain loops and a finite difference.

mod direct;
mod gemm;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::ops::ModuleOps;
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn_dispatch::backends::Flex;
use burn_dispatch::backends::flex::FlexTensor;

use super::flex_op::{self, Ad, AdTensor, Place};
use gemm::Geom;

/// Whether 3×3×3 convolutions may use the direct kernel (on by default).
static DIRECT: AtomicBool = AtomicBool::new(true);

/// Lets 3×3×3, padding-1 convolutions use the direct AVX-512 kernel (`true`, the
/// default) or sends them through im2col + GEMM (`false`, for comparing the two). The
/// setting applies to the whole process from the next convolution on.
pub fn set_direct_kernel(on: bool) {
    DIRECT.store(on, Ordering::Relaxed);
}

fn direct_on() -> bool {
    DIRECT.load(Ordering::Relaxed)
}

/// Which kernel a convolution of these shapes runs on the CPU backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The direct AVX-512 3×3×3 kernel.
    Direct,
    /// im2col + GEMM.
    Gemm,
    /// Burn's own convolution (strided, dilated, grouped, asymmetric padding).
    Burn,
}

/// The kernel that `conv3d` runs for input `x` and weight `w` shapes with `options` on
/// f32 CPU tensors, with the current [`set_direct_kernel`] setting.
pub fn kernel_for(x: [usize; 5], w: [usize; 5], options: &ConvOptions<3>) -> Kernel {
    match geometry(x, w, options) {
        Some(g) if g.direct(direct_on()).is_some() => Kernel::Direct,
        Some(_) => Kernel::Gemm,
        None => Kernel::Burn,
    }
}

/// The geometry when this module's kernels apply to these shapes and options.
fn geometry(x: [usize; 5], w: [usize; 5], o: &ConvOptions<3>) -> Option<Geom> {
    let plain = o.stride == [1, 1, 1] && o.dilation == [1, 1, 1] && o.groups == 1;
    if !plain || o.is_asymmetric() {
        return None;
    }
    Geom::new(x, w, o.padding_begin())
}

/// `conv3d(x, weight) + bias` (`x` `[n, ci, d, h, w]`, `weight` `[co, ci, kd, kh, kw]`,
/// `bias` `[co]`), as Burn's `burn::tensor::module::conv3d` computes it.
pub fn conv3d(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<3>,
) -> Tensor<5> {
    if let Some(g) = geometry(x.dims(), weight.dims(), &options) {
        let bias_place = bias.as_ref().map(flex_op::place);
        match (flex_op::place(&x), flex_op::place(&weight), bias_place) {
            (Some(Place::Autodiff(px)), Some(Place::Autodiff(pw)), None) => {
                return Tensor::from_primitive::<Ad>(on_autodiff(px, pw, None, g));
            }
            (
                Some(Place::Autodiff(px)),
                Some(Place::Autodiff(pw)),
                Some(Some(Place::Autodiff(pb))),
            ) => {
                return Tensor::from_primitive::<Ad>(on_autodiff(px, pw, Some(pb), g));
            }
            (Some(Place::Plain(px)), Some(Place::Plain(pw)), None) => {
                return Tensor::from_primitive::<Flex>(plain(&px, &pw, None, &g));
            }
            (Some(Place::Plain(px)), Some(Place::Plain(pw)), Some(Some(Place::Plain(pb)))) => {
                return Tensor::from_primitive::<Flex>(plain(&px, &pw, Some(&pb), &g));
            }
            _ => {}
        }
    }
    burn::tensor::module::conv3d(x, weight, bias, options)
}

/// The output `[n, co, od, oh, ow]` with the bias added to each channel's plane.
fn output(mut y: Vec<f32>, bias: Option<&FlexTensor>, g: &Geom) -> FlexTensor {
    if let Some(b) = bias {
        let b = flex_op::contiguous(b);
        let bv = flex_op::values(&b);
        assert_eq!(bv.len(), g.co, "bias size");
        for (i, plane) in y.chunks_mut(g.spatial_out()).enumerate() {
            let v = bv[i % g.co];
            plane.iter_mut().for_each(|o| *o += v);
        }
    }
    let [od, oh, ow] = g.out;
    flex_op::from_values(y, vec![g.n, g.co, od, oh, ow])
}

fn plain(x: &FlexTensor, w: &FlexTensor, bias: Option<&FlexTensor>, g: &Geom) -> FlexTensor {
    let (x, w) = (flex_op::contiguous(x), flex_op::contiguous(w));
    let y = gemm::forward(flex_op::values(&x), flex_op::values(&w), g, direct_on());
    output(y, bias, g)
}

/// What the backward pass needs: the contiguous input and weight, the bias (for its
/// shape), the geometry and the kernel setting of the forward pass.
#[derive(Clone, Debug)]
struct ConvState {
    x: FlexTensor,
    w: FlexTensor,
    bias: Option<FlexTensor>,
    geom: Geom,
    direct: bool,
}

#[derive(Debug)]
struct ConvBackward;

impl<const N: usize> Backward<Flex, N> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (g, dyv) = (&st.geom, flex_op::values(&dy));
        let mut parents = ops.parents.into_iter();
        if let Some(node) = parents.next().flatten() {
            let dx = gemm::x_backward(flex_op::values(&st.w), dyv, g, st.direct);
            let shape = flex_op::shape_of(&st.x);
            grads.register::<Flex>(node.id, flex_op::from_values(dx, shape));
        }
        if let Some(node) = parents.next().flatten() {
            let dw = gemm::weight_backward(flex_op::values(&st.x), dyv, g, st.direct);
            let shape = flex_op::shape_of(&st.w);
            grads.register::<Flex>(node.id, flex_op::from_values(dw, shape));
        }
        if let (Some(node), Some(bias)) = (parents.next().flatten(), st.bias) {
            let db = <Flex as ModuleOps<Flex>>::conv3d_bias_backward(st.x, bias, dy);
            grads.register::<Flex>(node.id, db);
        }
    }
}

/// The operation on the CPU backend's tensors, tracked by autodiff.
fn on_autodiff(x: AdTensor, w: AdTensor, bias: Option<AdTensor>, g: Geom) -> AdTensor {
    let xv = flex_op::contiguous(x.primitive());
    let wv = flex_op::contiguous(w.primitive());
    let bv = bias.as_ref().map(|b| b.primitive().clone());
    let direct = direct_on();
    let y = gemm::forward(flex_op::values(&xv), flex_op::values(&wv), &g, direct);
    let out = output(y, bv.as_ref(), &g);
    let state = ConvState {
        x: xv,
        w: wv,
        bias: bv,
        geom: g,
        direct,
    };
    match bias {
        Some(b) => tracked([x.node(), w.node(), b.node()], state, out),
        None => tracked([x.node(), w.node()], state, out),
    }
}

/// `out`, recorded in the graph with its parents (input, weight and the bias if any).
fn tracked<const N: usize>(parents: [NodeGuard; N], state: ConvState, out: FlexTensor) -> AdTensor {
    match ConvBackward
        .prepare::<NoCheckpointing>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
