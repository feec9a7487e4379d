//! Res-Fusion of the two branches' skips, and the ResU-Net decoder of one branch.

use burn::nn::conv::{Conv3d, Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig};
use burn::prelude::*;

use super::config::ModelConfig;
use super::layers::{Norm3d, ResBlock, conv3};

/// Res-Fusion: own skip + conv3³(LReLU(norm(conv1³([own, other])))) → norm, as a residual.
#[derive(Module, Debug)]
pub struct ResFusion {
    pub conv1: Conv3d,
    pub norm1: Norm3d,
    pub conv2: Conv3d,
    pub norm2: Norm3d,
}

impl ResFusion {
    pub fn new(channels: usize, device: &Device) -> Self {
        ResFusion {
            conv1: conv3(2 * channels, channels, 1, device),
            norm1: Norm3d::new(channels, false, device),
            conv2: conv3(channels, channels, 3, device),
            norm2: Norm3d::new(channels, false, device),
        }
    }

    /// `other` is already turned into this branch's pose.
    pub fn forward(&self, own: Tensor<5>, other: Tensor<5>) -> Tensor<5> {
        let y = super::conv::forward(&self.conv1, Tensor::cat(vec![own.clone(), other], 1));
        let y = self.norm1.forward_lrelu(y);
        own + self.norm2.forward(super::conv::forward(&self.conv2, y))
    }
}

/// Transposed conv ×2 up, concat the skip, residual conv block.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub up: ConvTranspose3d,
    pub block: ResBlock,
}

impl UpBlock {
    pub fn new(cin: usize, cout: usize, device: &Device) -> Self {
        UpBlock {
            up: ConvTranspose3dConfig::new([cin, cout], [2, 2, 2])
                .with_stride([2, 2, 2])
                .with_bias(false)
                .init(device),
            block: ResBlock::new(2 * cout, cout, false, device),
        }
    }

    pub fn forward(&self, x: Tensor<5>, skip: Tensor<5>) -> Tensor<5> {
        self.block
            .forward(Tensor::cat(vec![upsample2(&self.up, x), skip], 1))
    }
}

/// `up.forward(x)` for a transposed convolution with kernel 2 and stride 2 (the
/// decoder's): the 2×2×2 outputs of each input voxel do not overlap, so it is one
/// pointwise matmul to C_out·8 channels followed by depth-to-space. Exact, with the
/// same weights (checkpoints load unchanged), and a GEMM instead of the backends'
/// direct transposed-convolution kernels.
pub fn upsample2(up: &ConvTranspose3d, x: Tensor<5>) -> Tensor<5> {
    let [b, ci, d, h, w] = x.dims();
    let wt = up.weight.val(); // [C_in, C_out, 2, 2, 2]
    let [wci, co, kd, kh, kw] = wt.dims();
    assert!(
        wci == ci && [kd, kh, kw] == [2, 2, 2] && up.stride == [2, 2, 2],
        "upsample2 needs a kernel-2, stride-2 transposed convolution"
    );
    let y = x
        .permute([0, 2, 3, 4, 1])
        .reshape([b * d * h * w, ci])
        .matmul(wt.reshape([ci, co * 8]))
        .reshape([b, d, h, w, co, 2, 2, 2])
        .permute([0, 4, 1, 5, 2, 6, 3, 7])
        .reshape([b, co, 2 * d, 2 * h, 2 * w]);
    match &up.bias {
        Some(bias) => y + bias.val().reshape([1, co, 1, 1, 1]),
        None => y,
    }
}

/// One branch's decoder (SwinUNETR's layout with ResU-Net blocks).
#[derive(Module, Debug)]
pub struct Decoder {
    /// Full-resolution skip from the raw input (in → C).
    pub enc0: ResBlock,
    /// Skips at 1/2, 1/4, 1/8, 1/16 (C·2^l → C·2^l).
    pub skips: Vec<ResBlock>,
    /// Bottleneck at 1/32 (16C → 16C).
    pub bottleneck: ResBlock,
    /// 16C→8C, 8C→4C, 4C→2C, 2C→C, C→C.
    pub ups: Vec<UpBlock>,
    pub head: Conv3d,
}

impl Decoder {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let c = cfg.feature_size;
        Decoder {
            enc0: ResBlock::new(cfg.in_channels, c, false, device),
            skips: (0..4)
                .map(|l| ResBlock::new(cfg.channels(l), cfg.channels(l), false, device))
                .collect(),
            // the 1/32 map is a single voxel at 32³ patches (`tiny`)
            bottleneck: ResBlock::new(
                cfg.channels(4),
                cfg.channels(4),
                cfg.patch / 32 == 1,
                device,
            ),
            ups: vec![
                UpBlock::new(cfg.channels(4), cfg.channels(3), device),
                UpBlock::new(cfg.channels(3), cfg.channels(2), device),
                UpBlock::new(cfg.channels(2), cfg.channels(1), device),
                UpBlock::new(cfg.channels(1), c, device),
                UpBlock::new(c, c, device),
            ],
            head: Conv3dConfig::new([c, cfg.num_classes], [1, 1, 1]).init(device),
        }
    }

    /// `skips` (after Res-Fusion) at 1/2…1/16, `bottom` at 1/32, `enc0` at full resolution.
    pub fn forward(&self, enc0: Tensor<5>, skips: Vec<Tensor<5>>, bottom: Tensor<5>) -> Tensor<5> {
        let mut x = self.bottleneck.forward(bottom);
        for (i, skip) in skips.into_iter().rev().enumerate() {
            x = self.ups[i].forward(x, skip);
        }
        x = self.ups[4].forward(x, enc0);
        super::conv::forward(&self.head, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
        x.into_data().iter::<f32>().collect()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (p, q)) in a.iter().zip(b).enumerate() {
            assert!(
                (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                "{what}[{i}]: {p} vs {q}"
            );
        }
    }

    #[test]
    fn upsample2_equals_the_transposed_convolution_with_gradients() {
        let ad = Device::flex().autodiff();
        for bias in [false, true] {
            let up = ConvTranspose3dConfig::new([3, 5], [2, 2, 2])
                .with_stride([2, 2, 2])
                .with_bias(bias)
                .init(&ad);
            let x = Tensor::<5>::random([2, 3, 3, 4, 2], Distribution::Normal(0.0, 1.0), &ad)
                .require_grad();
            let r = Tensor::<5>::random([2, 5, 6, 8, 4], Distribution::Normal(0.0, 1.0), &ad);
            let ours = upsample2(&up, x.clone());
            let theirs = up.forward(x.clone());
            assert_eq!(ours.dims(), theirs.dims());
            close(&values(ours.clone()), &values(theirs.clone()), "forward");
            let g1 = (ours * r.clone()).sum().backward();
            let g2 = (theirs * r.clone()).sum().backward();
            let gx = |g| values(x.grad(g).unwrap());
            close(&gx(&g1), &gx(&g2), "x gradient");
            let gw = |g| values(up.weight.val().grad(g).unwrap());
            close(&gw(&g1), &gw(&g2), "weight gradient");
        }
    }
}
