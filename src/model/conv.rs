//! The network's 3D convolutions: a Burn `Conv3d` (its record is what checkpoints hold)
//! applied by [`forward`]. On the CPU backend: this crate's own convolution operation
//! (`conv3d`: direct and im2col + GEMM kernels, forward and backward). On other backends
//! (the GPU): Burn's convolution, cut into slabs along depth (and height) so that no
//! slab has more than [`MAX_SLAB_VOXELS`] output voxels, with the same result.
//!
//! Why: Burn 0.22.1's GPU backend computes a convolution's weight gradient as a
//! convolution of the input by the output gradient, so that gradient's spatial size is
//! the kernel size; its direct convolution kernel (cubek-convolution 0.3.1, the one that
//! runs on Mesa's lavapipe) returns wrong sums once that kernel has more than about
//! 20 000 elements: the weight gradient of a 3×3×3 convolution on a 32 × 32 × 20 map is
//! right, on 32 × 32 × 24 it is off by 43 %, on 32³ by 63 % (`tests/gpu.rs`,
//! `conv3d_of_the_full_resolution_input`). A slab's weight gradient uses only its own
//! output gradient, and autodiff sums the slabs' gradients, so each stays below the size
//! that fails. The forward values are identical; the cost is a few slices and one
//! concatenation per convolution on maps above the limit. Strided convolutions (the patch
//! embedding) go the same way: their weight gradient is computed alike, though only the
//! stride-1 failure was measured.

use burn::nn::PaddingConfig3d;
use burn::nn::conv::Conv3d;
use burn::prelude::*;
use burn::tensor::module::conv3d;
use burn::tensor::ops::ConvOptions;

use super::flex_op;

/// The largest slab (output voxels) a GPU convolution is computed in (2¹⁴: 16 384
/// passed, 24 576 failed, on lavapipe with Burn 0.22.1).
pub const MAX_SLAB_VOXELS: usize = 1 << 14;

/// `conv.forward(x)`: by this crate's kernels on the CPU backend, in slabs on other
/// backends (see the module note).
pub fn forward(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    let explicit = match conv.padding {
        PaddingConfig3d::Explicit(a, b, c) => Some([a, b, c]),
        PaddingConfig3d::Valid => Some([0, 0, 0]),
        _ => None,
    };
    let Some(pad) = explicit else {
        return conv.forward(x);
    };
    if flex_op::place(&x).is_some() {
        let options = ConvOptions::new(conv.stride, pad, conv.dilation, conv.groups);
        let bias = conv.bias.as_ref().map(|b| b.val());
        return super::conv3d::conv3d(x, conv.weight.val(), bias, options);
    }
    let big = out_dims(conv, &x.dims(), pad).iter().product::<usize>() > MAX_SLAB_VOXELS;
    if conv.dilation == [1, 1, 1] && big {
        in_slabs(conv, x, pad)
    } else {
        conv.forward(x)
    }
}

/// The output's spatial size (dilation 1).
fn out_dims(conv: &Conv3d, dims: &[usize; 5], pad: [usize; 3]) -> [usize; 3] {
    std::array::from_fn(|i| (dims[2 + i] + 2 * pad[i] - conv.kernel_size[i]) / conv.stride[i] + 1)
}

fn zeros_along(x: &Tensor<5>, dim: usize, n: usize) -> Tensor<5> {
    let mut shape = x.dims();
    shape[dim] = n;
    Tensor::zeros(shape, &x.device())
}

/// Zero padding of `p` on both sides of `dim`.
fn pad_dim(x: Tensor<5>, dim: usize, p: usize) -> Tensor<5> {
    if p == 0 {
        return x;
    }
    let z = zeros_along(&x, dim, p);
    Tensor::cat(vec![z.clone(), x, z], dim)
}

/// Output ranges of at most `step` along one axis of `n`.
fn ranges(n: usize, step: usize) -> Vec<(usize, usize)> {
    (0..n)
        .step_by(step.max(1))
        .map(|a| (a, step.max(1).min(n - a)))
        .collect()
}

fn in_slabs(conv: &Conv3d, x: Tensor<5>, pad: [usize; 3]) -> Tensor<5> {
    let [kd, kh, _] = conv.kernel_size;
    let [sd, sh, _] = conv.stride;
    let [od, oh, ow] = out_dims(conv, &x.dims(), pad);
    // depth and height padded here; width by the convolution itself. Output rows
    // [a, a + n) read the padded input rows [a·s, a·s + (n − 1)·s + k).
    let xp = pad_dim(pad_dim(x, 2, pad[0]), 3, pad[1]);
    let rows = (MAX_SLAB_VOXELS / ow.max(1)).max(1);
    let (slab_h, slab_d) = if oh <= rows {
        (oh, (rows / oh).max(1))
    } else {
        (rows, 1)
    };
    let weight = conv.weight.val();
    let opts = ConvOptions::new(conv.stride, [0, 0, pad[2]], [1, 1, 1], conv.groups);
    let mut planes = Vec::new();
    for (d0, nd) in ranges(od, slab_d) {
        let slab = xp.clone().narrow(2, d0 * sd, (nd - 1) * sd + kd);
        let mut strips = Vec::new();
        for (h0, nh) in ranges(oh, slab_h) {
            let piece = slab.clone().narrow(3, h0 * sh, (nh - 1) * sh + kh);
            strips.push(conv3d(piece, weight.clone(), None, opts.clone()));
        }
        planes.push(if strips.len() == 1 {
            strips.remove(0)
        } else {
            Tensor::cat(strips, 3)
        });
    }
    let y = if planes.len() == 1 {
        planes.remove(0)
    } else {
        Tensor::cat(planes, 2)
    };
    match &conv.bias {
        Some(b) => {
            let b = b.val();
            let c = b.dims()[0];
            y + b.reshape([1, c, 1, 1, 1])
        }
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv3dConfig;

    /// The slabs themselves (forced on the CPU): the same values and gradients as one
    /// convolution, for a kernel of 3 and of 1, with a bias, and a map that needs both
    /// depth and height cuts.
    #[test]
    fn slabs_equal_one_convolution_with_gradients() {
        let dev = Device::flex().autodiff();
        for (k, stride, bias, shape) in [
            (3, 1, true, [1, 2, 5, 40, 520]),
            (1, 1, false, [2, 3, 6, 9, 300]),
            (3, 1, false, [1, 1, 9, 30, 70]),
            // the patch embedding: kernel 2, stride 2, no padding, a bias
            (2, 2, true, [1, 1, 8, 70, 600]),
        ] {
            let p = if stride == 1 { k / 2 } else { 0 };
            let conv = Conv3dConfig::new([shape[1], 3], [k, k, k])
                .with_stride([stride; 3])
                .with_padding(PaddingConfig3d::Explicit(p, p, p))
                .with_bias(bias)
                .init(&dev);
            let x = Tensor::<5>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &dev)
                .require_grad();
            let a = conv.forward(x.clone());
            let b = in_slabs(&conv, x.clone(), [p; 3]);
            assert_eq!(a.dims(), b.dims());
            let r =
                Tensor::<5>::random(a.dims(), burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
            let ga = (a.clone() * r.clone()).sum().backward();
            let gb = (b.clone() * r).sum().backward();
            let vals = |t: Tensor<5>| -> Vec<f32> { t.into_data().iter::<f32>().collect() };
            let diff = |p: Vec<f32>, q: Vec<f32>| {
                let s = p.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                p.iter()
                    .zip(&q)
                    .map(|(u, v)| (u - v).abs())
                    .fold(0.0, f32::max)
                    / s
            };
            assert!(diff(vals(a), vals(b)) < 1e-5, "k {k}: forward");
            let (wa, wb) = (
                conv.weight.val().grad(&ga).unwrap(),
                conv.weight.val().grad(&gb).unwrap(),
            );
            assert!(diff(vals(wa), vals(wb)) < 1e-4, "k {k}: weight gradient");
            let (xa, xb) = (x.grad(&ga).unwrap(), x.grad(&gb).unwrap());
            assert!(diff(vals(xa), vals(xb)) < 1e-5, "k {k}: input gradient");
        }
    }

    #[test]
    fn ranges_cover_the_axis_once() {
        assert_eq!(ranges(10, 4), vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(ranges(3, 8), vec![(0, 3)]);
        assert_eq!(ranges(5, 0), vec![(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]);
    }
}
