//! The 3D Swin Transformer encoder (SwinUNETR style): patch embedding, windowed
//! self-attention with relative position bias, shifted windows with their mask,
//! MLP, and patch merging (8C → 2C).

use burn::module::Param;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::config::ModelConfig;
use super::layers::{
    channels_first, channels_last, pad_to_windows, window_and_shift, window_partition,
    window_reverse,
};
use super::window_attention::window_attention;

/// Relative-position index of every token pair of a `ws` window into a bias table
/// built for windows of edge `w` ((2w−1)³ rows). Exact for windows shrunk below `w`.
pub fn relative_position_index(ws: [usize; 3], w: usize) -> Vec<i64> {
    let coords: Vec<[i64; 3]> = (0..ws[0])
        .flat_map(|a| {
            (0..ws[1]).flat_map(move |b| (0..ws[2]).map(move |c| [a as i64, b as i64, c as i64]))
        })
        .collect();
    let m = 2 * w as i64 - 1;
    let mut idx = Vec::with_capacity(coords.len() * coords.len());
    for p in &coords {
        for q in &coords {
            let r: Vec<i64> = (0..3).map(|a| p[a] - q[a] + w as i64 - 1).collect();
            idx.push(r[0] * m * m + r[1] * m + r[2]);
        }
    }
    idx
}

/// SwinUNETR's attention mask for shifted windows on a padded map of `dims`:
/// `[nW, n, n]`, 0 where two tokens come from the same region before the cyclic
/// shift and −100 where the shift made them neighbours across the wrap-around.
pub fn shifted_window_mask(dims: [usize; 3], ws: [usize; 3], ss: [usize; 3]) -> Vec<f32> {
    let region = |n: usize, w: usize, s: usize, x: usize| -> usize {
        // slices (0, -w), (-w, -s), (-s, None)
        if x < n - w {
            0
        } else if x < n - s {
            1
        } else {
            2
        }
    };
    let nwin = [dims[0] / ws[0], dims[1] / ws[1], dims[2] / ws[2]];
    let n = ws[0] * ws[1] * ws[2];
    let mut out = Vec::with_capacity(nwin.iter().product::<usize>() * n * n);
    for wa in 0..nwin[0] {
        for wb in 0..nwin[1] {
            for wc in 0..nwin[2] {
                let mut ids = Vec::with_capacity(n);
                for a in 0..ws[0] {
                    for b in 0..ws[1] {
                        for c in 0..ws[2] {
                            let x = [wa * ws[0] + a, wb * ws[1] + b, wc * ws[2] + c];
                            let id = region(dims[0], ws[0], ss[0], x[0]) * 9
                                + region(dims[1], ws[1], ss[1], x[1]) * 3
                                + region(dims[2], ws[2], ss[2], x[2]);
                            ids.push(id);
                        }
                    }
                }
                for i in 0..n {
                    for j in 0..n {
                        out.push(if ids[i] == ids[j] { 0.0 } else { -100.0 });
                    }
                }
            }
        }
    }
    out
}

/// Windowed multi-head self-attention with a learned relative-position bias.
#[derive(Module, Debug)]
pub struct WindowAttention {
    pub qkv: Linear,
    pub proj: Linear,
    /// [(2w−1)³, heads]
    pub bias_table: Param<Tensor<2>>,
    pub heads: usize,
    pub window: usize,
}

impl WindowAttention {
    pub fn new(dim: usize, heads: usize, window: usize, device: &Device) -> Self {
        let rows = (2 * window - 1).pow(3);
        WindowAttention {
            qkv: LinearConfig::new(dim, 3 * dim).init(device),
            proj: LinearConfig::new(dim, dim).init(device),
            // trunc_normal(std=0.02) in SwinUNETR
            bias_table: Param::from_tensor(Tensor::random(
                [rows, heads],
                burn::tensor::Distribution::Normal(0.0, 0.02),
                device,
            )),
            heads,
            window,
        }
    }

    /// x: [B·nW, n, C] windows of size `ws`; mask: [nW, n, n].
    pub fn forward(&self, x: Tensor<3>, ws: [usize; 3], mask: Option<Tensor<3>>) -> Tensor<3> {
        let [_, n, c] = x.dims();
        let h = self.heads;
        let d = c / h;
        let device = x.device();
        let qkv = self.qkv.forward(x); // [B·nW, n, 3C]: q, k, v, head h at h·d
        let q = qkv.clone().narrow(2, 0, c);
        let k = qkv.clone().narrow(2, c, c);
        let v = qkv.narrow(2, 2 * c, c);
        let index = relative_position_index(ws, self.window);
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [n * n]), &device);
        let bias = self
            .bias_table
            .val()
            .select(0, index)
            .reshape([n, n, h])
            .permute([2, 0, 1]);
        let out = window_attention(q, k, v, h, 1.0 / (d as f64).sqrt(), Some(bias), mask);
        self.proj.forward(out)
    }
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(dim: usize, ratio: usize, device: &Device) -> Self {
        Mlp {
            fc1: LinearConfig::new(dim, dim * ratio).init(device),
            fc2: LinearConfig::new(dim * ratio, dim).init(device),
        }
    }
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}

#[derive(Module, Debug)]
pub struct SwinBlock {
    pub norm1: LayerNorm,
    pub attn: WindowAttention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    pub window: usize,
    pub shift: usize,
}

impl SwinBlock {
    pub fn new(
        dim: usize,
        heads: usize,
        window: usize,
        shifted: bool,
        mlp_ratio: usize,
        device: &Device,
    ) -> Self {
        SwinBlock {
            norm1: LayerNormConfig::new(dim).init(device),
            attn: WindowAttention::new(dim, heads, window, device),
            norm2: LayerNormConfig::new(dim).init(device),
            mlp: Mlp::new(dim, mlp_ratio, device),
            window,
            shift: if shifted { window / 2 } else { 0 },
        }
    }

    /// x: [B, D, H, W, C]
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, d, h, w, _] = x.dims();
        let (ws, ss) = window_and_shift([d, h, w], self.window, self.shift);
        let shortcut = x.clone();
        let y = pad_to_windows(self.norm1.forward(x), ws);
        let [_, dp, hp, wp, _] = y.dims();
        let shifted = ss.iter().any(|&s| s > 0);
        let (y, mask) = if shifted {
            let shifts = [-(ss[0] as i64), -(ss[1] as i64), -(ss[2] as i64)];
            let mask = shifted_window_mask([dp, hp, wp], ws, ss);
            let nw = (dp / ws[0]) * (hp / ws[1]) * (wp / ws[2]);
            let n = ws[0] * ws[1] * ws[2];
            let mask = Tensor::<3>::from_data(TensorData::new(mask, [nw, n, n]), &y.device());
            (y.roll(&shifts, &[1, 2, 3]), Some(mask))
        } else {
            (y, None)
        };
        let win = self.attn.forward(window_partition(y, ws), ws, mask);
        let mut y = window_reverse(win, ws, b, [dp, hp, wp]);
        if shifted {
            y = y.roll(&[ss[0] as i64, ss[1] as i64, ss[2] as i64], &[1, 2, 3]);
        }
        if [dp, hp, wp] != [d, h, w] {
            y = y.narrow(1, 0, d).narrow(2, 0, h).narrow(3, 0, w);
        }
        let x = shortcut + y;
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}

/// Patch merging: 2×2×2 neighbours concatenated (8C), LayerNorm, linear to 2C.
#[derive(Module, Debug)]
pub struct PatchMerging {
    pub norm: LayerNorm,
    pub reduction: Linear,
}

impl PatchMerging {
    pub fn new(dim: usize, device: &Device) -> Self {
        PatchMerging {
            norm: LayerNormConfig::new(8 * dim).init(device),
            reduction: LinearConfig::new(8 * dim, 2 * dim)
                .with_bias(false)
                .init(device),
        }
    }

    /// [B, D, H, W, C] → [B, ⌈D/2⌉, ⌈H/2⌉, ⌈W/2⌉, 2C]
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let x = pad_to_windows(x, [2, 2, 2]);
        let [b, d, h, w, c] = x.dims();
        let x = x
            .reshape([b, d / 2, 2, h / 2, 2, w / 2, 2, c])
            .permute([0, 1, 3, 5, 2, 4, 6, 7])
            .reshape([b, d / 2, h / 2, w / 2, 8 * c]);
        self.reduction.forward(self.norm.forward(x))
    }
}

/// One stage: `depth` Swin blocks (shift on odd blocks), then patch merging.
#[derive(Module, Debug)]
pub struct SwinStage {
    pub blocks: Vec<SwinBlock>,
    pub merge: PatchMerging,
}

impl SwinStage {
    /// [B, C, D, H, W] → [B, 2C, D/2, H/2, W/2]
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let mut y = channels_last(x);
        for blk in &self.blocks {
            y = blk.forward(y);
        }
        channels_first(self.merge.forward(y))
    }
}

#[derive(Module, Debug)]
pub struct SwinEncoder {
    pub patch_embed: Conv3d,
    pub stages: Vec<SwinStage>,
}

impl SwinEncoder {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let c = cfg.feature_size;
        let stages = (0..4)
            .map(|l| {
                let dim = cfg.channels(l);
                SwinStage {
                    blocks: (0..cfg.depths[l])
                        .map(|j| {
                            SwinBlock::new(
                                dim,
                                cfg.heads[l],
                                cfg.window,
                                j % 2 == 1,
                                cfg.mlp_ratio,
                                device,
                            )
                        })
                        .collect(),
                    merge: PatchMerging::new(dim, device),
                }
            })
            .collect();
        SwinEncoder {
            patch_embed: Conv3dConfig::new([cfg.in_channels, c], [2, 2, 2])
                .with_stride([2, 2, 2])
                .init(device),
            stages,
        }
    }

    /// [B, in, D, H, W] → [B, C, D/2, H/2, W/2]
    pub fn embed(&self, x: Tensor<5>) -> Tensor<5> {
        super::conv::forward(&self.patch_embed, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_mask_blocks_exactly_the_wrapped_tokens_hand_checked() {
        // map 8×4×4, window 4, shift 2: only the first axis is shifted (the others are
        // no larger than the window). Along it the regions are d∈[0,4)→0, [4,6)→1,
        // [6,8)→2; window 0 holds d=0..3 (one region: no masking), window 1 holds d=4,5
        // (region 1, tokens 0..32) and d=6,7 (region 2, tokens 32..64).
        let dims = [8, 4, 4];
        let (ws, ss) = window_and_shift(dims, 4, 2);
        assert_eq!(ws, [4, 4, 4]);
        assert_eq!(ss, [2, 0, 0]);
        let m = shifted_window_mask(dims, ws, ss);
        let n = 64;
        assert_eq!(m.len(), 2 * n * n);
        assert!(m[..n * n].iter().all(|&v| v == 0.0));
        for i in 0..n {
            for j in 0..n {
                let same = (i < 32) == (j < 32);
                let want = if same { 0.0 } else { -100.0 };
                assert_eq!(m[n * n + i * n + j], want, "({i},{j})");
            }
        }
    }

    #[test]
    fn relative_index_is_symmetric_and_centred() {
        let w = 4;
        let idx = relative_position_index([2, 3, 4], w);
        let n = 24;
        let m = (2 * w - 1) as i64;
        let centre = (w as i64 - 1) * m * m + (w as i64 - 1) * m + (w as i64 - 1);
        for i in 0..n {
            assert_eq!(idx[i * n + i], centre);
            for j in 0..n {
                // index(i,j) + index(j,i) = 2·centre
                assert_eq!(idx[i * n + j] + idx[j * n + i], 2 * centre);
                assert!(idx[i * n + j] >= 0 && idx[i * n + j] < m * m * m);
            }
        }
    }

    #[test]
    fn swin_block_keeps_shape_for_padded_and_small_maps() {
        let dev = Device::flex();
        let blk = SwinBlock::new(8, 2, 4, true, 2, &dev);
        for dims in [[8usize, 8, 8], [6, 5, 7], [2, 2, 2], [1, 1, 1]] {
            let x = Tensor::<5>::random(
                [2, dims[0], dims[1], dims[2], 8],
                burn::tensor::Distribution::Default,
                &dev,
            );
            assert_eq!(blk.forward(x).dims(), [2, dims[0], dims[1], dims[2], 8]);
        }
        let pm = PatchMerging::new(8, &dev);
        let x = Tensor::<5>::random([1, 5, 4, 3, 8], burn::tensor::Distribution::Default, &dev);
        assert_eq!(pm.forward(x).dims(), [1, 3, 2, 2, 16]);
    }
}
