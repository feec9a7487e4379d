//! Small building blocks shared by the network's parts.

use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{InstanceNorm, InstanceNormConfig, PaddingConfig3d};
use burn::prelude::*;

use super::{add_act, norm_act};
use crate::geometry::SignedPerm;

/// Rotate the spatial part of `[B, C, D, H, W]` (D = H = W) about its centre by a
/// cube rotation: `out[R·(x − c) + c] = in[x]`. Exact: a permutation and flips.
pub fn rotate_spatial(x: Tensor<5>, r: &SignedPerm) -> Tensor<5> {
    let [_, _, d, h, w] = x.dims();
    debug_assert!(
        d == h && h == w,
        "rotations need a cubic map, got {d}x{h}x{w}"
    );
    let p = r.perm;
    let x = if p == [0, 1, 2] {
        x
    } else {
        x.permute([0, 1, 2 + p[0], 2 + p[1], 2 + p[2]])
    };
    let flips: Vec<usize> = (0..3).filter(|&a| r.sign[a] < 0).map(|a| a + 2).collect();
    match flips.len() {
        0 => x,
        1 => x.flip([flips[0]]),
        2 => x.flip([flips[0], flips[1]]),
        _ => x.flip([flips[0], flips[1], flips[2]]),
    }
}

/// `[B, C, D, H, W]` → `[B, D, H, W, C]`.
pub fn channels_last(x: Tensor<5>) -> Tensor<5> {
    x.permute([0, 2, 3, 4, 1])
}

/// `[B, D, H, W, C]` → `[B, C, D, H, W]`.
pub fn channels_first(x: Tensor<5>) -> Tensor<5> {
    x.permute([0, 4, 1, 2, 3])
}

/// Window size and shift per axis for a map (MONAI's `get_window_size`): an axis no
/// larger than the window uses its whole extent and no shift.
pub fn window_and_shift(dims: [usize; 3], window: usize, shift: usize) -> ([usize; 3], [usize; 3]) {
    let mut ws = [window; 3];
    let mut ss = [shift; 3];
    for a in 0..3 {
        if dims[a] <= window {
            ws[a] = dims[a];
            ss[a] = 0;
        }
    }
    (ws, ss)
}

/// Pad `[B, D, H, W, C]` at the far end so each spatial size is a multiple of `ws`.
pub fn pad_to_windows(x: Tensor<5>, ws: [usize; 3]) -> Tensor<5> {
    let [_, d, h, w, _] = x.dims();
    let pad = [d, h, w]
        .iter()
        .zip(ws)
        .map(|(&n, s)| (s - n % s) % s)
        .collect::<Vec<_>>();
    if pad.iter().all(|&p| p == 0) {
        return x;
    }
    // (before, after) pairs for the last four dims: D, H, W, C
    x.pad(
        [(0, pad[0]), (0, pad[1]), (0, pad[2]), (0, 0)],
        burn::tensor::ops::PadMode::Constant(0.0),
    )
}

/// `[B, D, H, W, C]` (divisible by ws) → `[B·nW, ws0·ws1·ws2, C]`.
pub fn window_partition(x: Tensor<5>, ws: [usize; 3]) -> Tensor<3> {
    let [b, d, h, w, c] = x.dims();
    x.reshape([b, d / ws[0], ws[0], h / ws[1], ws[1], w / ws[2], ws[2], c])
        .permute([0, 1, 3, 5, 2, 4, 6, 7])
        .reshape([
            b * (d / ws[0]) * (h / ws[1]) * (w / ws[2]),
            ws[0] * ws[1] * ws[2],
            c,
        ])
}

/// Inverse of [`window_partition`] for a map of `dims` and batch `b`.
pub fn window_reverse(windows: Tensor<3>, ws: [usize; 3], b: usize, dims: [usize; 3]) -> Tensor<5> {
    let [_, _, c] = windows.dims();
    let [d, h, w] = dims;
    windows
        .reshape([b, d / ws[0], h / ws[1], w / ws[2], ws[0], ws[1], ws[2], c])
        .permute([0, 1, 4, 2, 5, 3, 6, 7])
        .reshape([b, d, h, w, c])
}

/// Layer normalisation over the last dimension without learned parameters
/// (SwinUNETR's normalisation of the hidden states it hands to the decoder).
pub fn plain_layer_norm<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let mean = x.clone().mean_dim(D - 1);
    let centred = x - mean;
    let var = centred.clone().powi_scalar(2).mean_dim(D - 1);
    centred / (var + 1e-5).sqrt()
}

/// Instance normalisation that is the identity on maps of a single voxel, where it
/// is undefined (docs/method.md §2: the `tiny` bottleneck). A layer built for such a map
/// has no parameters at all, so none is left without a gradient.
#[derive(Module, Debug)]
pub struct Norm3d {
    pub norm: Option<InstanceNorm>,
}

impl Norm3d {
    pub fn new(channels: usize, single_voxel: bool, device: &Device) -> Self {
        Norm3d {
            norm: (!single_voxel).then(|| InstanceNormConfig::new(channels).init(device)),
        }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        self.forward_act(x, None)
    }

    /// LeakyReLU(0.01)(norm(x)), as one operation on the CPU backend.
    pub fn forward_lrelu(&self, x: Tensor<5>) -> Tensor<5> {
        self.forward_act(x, Some(norm_act::SLOPE))
    }

    fn forward_act(&self, x: Tensor<5>, slope: Option<f32>) -> Tensor<5> {
        let [_, _, d, h, w] = x.dims();
        match &self.norm {
            Some(n) if d * h * w > 1 => {
                let (gamma, beta) = match (&n.gamma, &n.beta) {
                    (Some(g), Some(b)) => (g.val(), b.val()),
                    _ => {
                        let dev = x.device();
                        (
                            Tensor::ones([n.num_channels], &dev),
                            Tensor::zeros([n.num_channels], &dev),
                        )
                    }
                };
                norm_act::instance_norm_act(x, gamma, beta, n.epsilon, slope)
            }
            _ => match slope {
                Some(_) => lrelu(x),
                None => x,
            },
        }
    }
}

/// LeakyReLU with slope 0.01 as tensor operations (see `add_act::leaky_relu_ops`).
pub fn lrelu(x: Tensor<5>) -> Tensor<5> {
    add_act::leaky_relu_ops(x, norm_act::SLOPE)
}

pub fn conv3(cin: usize, cout: usize, k: usize, device: &Device) -> Conv3d {
    let p = k / 2;
    Conv3dConfig::new([cin, cout], [k, k, k])
        .with_padding(PaddingConfig3d::Explicit(p, p, p))
        .with_bias(false)
        .init(device)
}

/// MONAI's `UnetResBlock`: conv3 → IN → LReLU → conv3 → IN, plus a 1×1 conv + IN
/// shortcut when the channels change, then LReLU(0.01).
#[derive(Module, Debug)]
pub struct ResBlock {
    pub conv1: Conv3d,
    pub norm1: Norm3d,
    pub conv2: Conv3d,
    pub norm2: Norm3d,
    pub shortcut: Option<Conv3d>,
    pub norm3: Option<Norm3d>,
}

impl ResBlock {
    /// `single_voxel`: the block will run on 1×1×1 maps (its norms are the identity).
    pub fn new(cin: usize, cout: usize, single_voxel: bool, device: &Device) -> Self {
        let (shortcut, norm3) = if cin != cout {
            (
                Some(conv3(cin, cout, 1, device)),
                Some(Norm3d::new(cout, single_voxel, device)),
            )
        } else {
            (None, None)
        };
        ResBlock {
            conv1: conv3(cin, cout, 3, device),
            norm1: Norm3d::new(cout, single_voxel, device),
            conv2: conv3(cout, cout, 3, device),
            norm2: Norm3d::new(cout, single_voxel, device),
            shortcut,
            norm3,
        }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let y = self
            .norm1
            .forward_lrelu(super::conv::forward(&self.conv1, x.clone()));
        let y = self.norm2.forward(super::conv::forward(&self.conv2, y));
        let res = match (&self.shortcut, &self.norm3) {
            (Some(c), Some(n)) => n.forward(super::conv::forward(c, x)),
            _ => x,
        };
        add_act::add_lrelu(y, res, norm_act::SLOPE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::cube_rotations;
    use burn::tensor::Distribution;

    fn dev() -> Device {
        Device::flex()
    }

    fn values(x: Tensor<5>) -> Vec<f32> {
        x.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn lrelu_equals_leaky_relu_with_its_gradient() {
        let ad = dev().autodiff();
        let x = Tensor::<5>::random([1, 2, 3, 4, 5], Distribution::Normal(0.0, 1.0), &ad)
            .require_grad();
        let w = Tensor::<5>::random([1, 2, 3, 4, 5], Distribution::Normal(0.0, 1.0), &ad);
        let ours = lrelu(x.clone());
        let theirs = burn::tensor::activation::leaky_relu(x.clone(), 0.01);
        let g1 = (ours.clone() * w.clone()).sum().backward();
        let gx1 = values(x.grad(&g1).unwrap());
        let g2 = (theirs.clone() * w.clone()).sum().backward();
        let gx2 = values(x.grad(&g2).unwrap());
        let (a, b) = (values(ours.inner()), values(theirs.inner()));
        for (p, q) in a.iter().zip(&b).chain(gx1.iter().zip(&gx2)) {
            assert!((p - q).abs() <= 1e-6 * (1.0 + q.abs()), "{p} vs {q}");
        }
        // slope on the negative side, identity on the positive
        assert!(b.iter().any(|v| *v < 0.0) && gx2.iter().any(|g| g.abs() > 0.0));
    }

    #[test]
    fn rotating_by_r_then_its_inverse_is_exact_for_all_24() {
        let x = Tensor::<5>::random([2, 3, 5, 5, 5], Distribution::Normal(0.0, 1.0), &dev());
        let want = values(x.clone());
        for r in cube_rotations() {
            let back = rotate_spatial(rotate_spatial(x.clone(), r), &r.inverse());
            assert_eq!(values(back), want, "{r:?}");
        }
    }

    #[test]
    fn a_hot_voxel_moves_to_r_times_its_position_about_the_centre() {
        let n = 5usize;
        let c = (n as i64 - 1) / 2;
        let pos = [0i64, 1, 4];
        for r in cube_rotations() {
            let mut v = vec![0.0f32; n * n * n];
            v[(pos[0] as usize * n + pos[1] as usize) * n + pos[2] as usize] = 1.0;
            let x = Tensor::<5>::from_data(TensorData::new(v, [1, 1, n, n, n]), &dev());
            let out = values(rotate_spatial(x, r));
            let rel = [pos[0] - c, pos[1] - c, pos[2] - c];
            let q = r.apply_i(rel).map(|v| (v + c) as usize);
            let hot: Vec<usize> = out
                .iter()
                .enumerate()
                .filter(|(_, v)| **v == 1.0)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(hot, vec![(q[0] * n + q[1]) * n + q[2]], "{r:?}");
        }
    }

    #[test]
    fn window_partition_then_reverse_is_identity_divisible_and_padded() {
        for (dims, w) in [([8usize, 8, 8], 4usize), ([6, 7, 5], 4), ([3, 2, 9], 4)] {
            let x = Tensor::<5>::random(
                [2, dims[0], dims[1], dims[2], 3],
                Distribution::Normal(0.0, 1.0),
                &dev(),
            );
            let (ws, _) = window_and_shift(dims, w, w / 2);
            let padded = pad_to_windows(x.clone(), ws);
            let [_, pd, ph, pw, _] = padded.dims();
            let win = window_partition(padded.clone(), ws);
            assert_eq!(win.dims()[1], ws[0] * ws[1] * ws[2]);
            let back = window_reverse(win, ws, 2, [pd, ph, pw]);
            assert_eq!(values(back.clone()), values(padded));
            let cropped = back
                .narrow(1, 0, dims[0])
                .narrow(2, 0, dims[1])
                .narrow(3, 0, dims[2]);
            assert_eq!(values(cropped), values(x));
        }
    }

    #[test]
    fn window_partition_groups_neighbouring_voxels() {
        // value = linear index; the first window of a 4³ map with 2³ windows holds
        // the voxels (0..2)³ in row-major order
        let v: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let x = Tensor::<5>::from_data(TensorData::new(v, [1, 4, 4, 4, 1]), &dev());
        let w = window_partition(x, [2, 2, 2]);
        let first: Vec<f32> = w.narrow(0, 0, 1).into_data().try_to_vec().unwrap();
        assert_eq!(first, vec![0.0, 1.0, 4.0, 5.0, 16.0, 17.0, 20.0, 21.0]);
    }
}
