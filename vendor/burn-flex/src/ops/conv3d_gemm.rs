//! rlu2net patch: 3D convolution and its gradients by im2col + GEMM, with the
//! column matrix laid out kernel-offset-major so that it fills by contiguous runs.
//!
//! Upstream burn-flex 0.22.1 has no kernels of its own for `conv3d_x_backward` and
//! `conv3d_weight_backward`, so burn-backend's generic fallbacks run: the input
//! gradient as a direct-gather `conv_transpose3d`, and the weight gradient as a
//! `conv3d` whose kernel is the whole output gradient; and its forward im2col fills
//! one element at a time. For the common case (f32, stride 1, dilation 1, groups 1,
//! symmetric padding p ≤ k − 1) this module computes
//!
//! - the forward pass as W · cols (cols = im2col of the input, K × T per tile);
//! - the input gradient as the forward pass of the output gradient with the
//!   spatially flipped, channel-swapped kernel and padding k − 1 − p (exact);
//! - the weight gradient as Σ_n Σ_tiles G_n · colsᵀ, accumulated by GEMM.
//!
//! Every other case returns `None` and the caller takes upstream's path.

use alloc::vec;
use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

/// Column-matrix elements per tile (K × positions): about 1 MiB of f32, so a tile's
/// columns stay in the L2 cache while its GEMM runs.
const TILE_ELEMS: usize = 1 << 18;
/// Fewest output positions per tile (GEMM efficiency).
const TILE_MIN: usize = 256;
/// Tiles per work item; each item's weight-gradient part is summed in a fixed order.
const TILES_PER_GROUP: usize = 2;

/// The direct kernel is on unless `RLU2NET_CONV=im2col` (for comparing the two).
fn direct_enabled() -> bool {
    #[cfg(feature = "std")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var("RLU2NET_CONV").map_or(true, |v| v != "im2col"))
    }
    #[cfg(not(feature = "std"))]
    true
}

/// Whether the fast path applies.
fn applies(dtype: DType, w_shape: &[usize], options: &ConvOptions<3>) -> bool {
    dtype == DType::F32
        && options.stride == [1, 1, 1]
        && options.dilation == [1, 1, 1]
        && options.groups == 1
        && !options.is_asymmetric()
        && (0..3).all(|a| options.padding[a].0 < w_shape[2 + a])
}

/// The geometry of one stride-1 convolution.
#[derive(Clone, Copy)]
struct Geom {
    ci: usize,
    inp: [usize; 3],
    out: [usize; 3],
    k: [usize; 3],
    p: [usize; 3],
}

impl Geom {
    fn new(x_shape: &[usize], w_shape: &[usize], p: [usize; 3]) -> Geom {
        let inp = [x_shape[2], x_shape[3], x_shape[4]];
        let k = [w_shape[2], w_shape[3], w_shape[4]];
        Geom {
            ci: x_shape[1],
            inp,
            out: core::array::from_fn(|a| inp[a] + 2 * p[a] + 1 - k[a]),
            k,
            p,
        }
    }
    fn k_cols(&self) -> usize {
        self.ci * self.k[0] * self.k[1] * self.k[2]
    }
    fn spatial_out(&self) -> usize {
        self.out[0] * self.out[1] * self.out[2]
    }
    /// The sizes for the direct kernel (conv3d_direct.rs), where it applies.
    fn direct(&self, n: usize, co: usize) -> Option<super::conv3d_direct::Dims> {
        let [d, h, w] = self.inp;
        (super::conv3d_direct::applies(self.k, self.p, self.out[2]) && direct_enabled()).then_some(
            super::conv3d_direct::Dims { n, ci: self.ci, co, d, h, w },
        )
    }
    /// Output rows (of `out[2]` positions) per tile.
    fn rows_per_tile(&self) -> usize {
        let positions = (TILE_ELEMS / self.k_cols().max(1)).max(TILE_MIN);
        (positions / self.out[2].max(1)).max(1)
    }
}

/// Fill `cols` (K × t, row-major) with the im2col of one item's input `x` for the
/// output positions `row0 * out[2] ..` (whole output rows): row (c, a, b, d) holds, for
/// each position, the input voxel that kernel offset reads (0 in the padding).
fn fill_columns(cols: &mut [f32], t: usize, x: &[f32], g: &Geom, row0: usize) {
    let [d, h, w] = g.inp;
    let [_, oh, ow] = g.out;
    let [kd, kh, kw] = g.k;
    let p = g.p;
    let fill_row = |kk: usize, dst: &mut [f32]| {
        let cc = kk % kw;
        let bb = (kk / kw) % kh;
        let a = (kk / (kw * kh)) % kd;
        let c = kk / (kw * kh * kd);
        let plane = &x[c * d * h * w..(c + 1) * d * h * w];
        // the x range of output positions that read inside the input along w
        let lo = p[2].saturating_sub(cc).min(ow);
        let hi = (w + p[2]).saturating_sub(cc).min(ow).max(lo);
        for (r, seg) in dst[..t].chunks_mut(ow).enumerate() {
            let row = row0 + r;
            let (z, y) = (row / oh, row % oh);
            let iz = (z + a) as isize - p[0] as isize;
            let iy = (y + bb) as isize - p[1] as isize;
            if iz < 0 || iy < 0 || iz as usize >= d || iy as usize >= h {
                seg.fill(0.0);
                continue;
            }
            let base = (iz as usize * h + iy as usize) * w;
            seg[..lo].fill(0.0);
            let from = base + lo + cc - p[2];
            seg[lo..hi].copy_from_slice(&plane[from..from + (hi - lo)]);
            seg[hi..].fill(0.0);
        }
    };
    for (kk, dst) in cols.chunks_mut(t).enumerate() {
        fill_row(kk, dst);
    }
}

/// One column tile: item `b`, output rows `row0 .. row0 + rows` (of `out[2]` positions).
#[derive(Clone, Copy)]
struct Tile {
    b: usize,
    row0: usize,
    rows: usize,
}

fn tiles(n: usize, g: &Geom) -> Vec<Tile> {
    let rows_total = g.out[0] * g.out[1];
    let rpt = g.rows_per_tile();
    let mut v = Vec::new();
    for b in 0..n {
        let mut row0 = 0;
        while row0 < rows_total {
            let rows = rpt.min(rows_total - row0);
            v.push(Tile { b, row0, rows });
            row0 += rows;
        }
    }
    v
}

/// Visit every tile with its filled column matrix, `f(tile, first position,
/// positions, cols, acc)`, where `acc` is a zeroed accumulator of `acc_len` values
/// private to a fixed group of tiles. Groups run in parallel (each worker fills its
/// own columns and runs a single-threaded GEMM); the groups' accumulators are summed
/// in group order and returned, so the sum is the same however the groups ran.
fn map_tiles(
    x: &[f32],
    n: usize,
    g: &Geom,
    acc_len: usize,
    f: impl Fn(Tile, usize, usize, &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let [d, h, w] = g.inp;
    let item = g.ci * d * h * w;
    let k_cols = g.k_cols();
    let cap = k_cols * g.rows_per_tile() * g.out[2];
    let run = |cols: &mut Vec<f32>, acc: &mut [f32], tile: Tile| {
        let t = tile.rows * g.out[2];
        let c = &mut cols[..k_cols * t];
        fill_columns(c, t, &x[tile.b * item..(tile.b + 1) * item], g, tile.row0);
        f(tile, tile.row0 * g.out[2], t, c, acc);
    };
    let all = tiles(n, g);
    let sum_in_order = |parts: Vec<Vec<f32>>| {
        let mut total = vec![0.0f32; acc_len];
        for p in parts {
            total.iter_mut().zip(&p).for_each(|(x, y)| *x += y);
        }
        total
    };
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        // fixed groups of tiles, summed in order: the result does not depend on how the
        // work was scheduled (training stays bit-reproducible)
        let parts: Vec<Vec<f32>> = all
            .par_chunks(TILES_PER_GROUP)
            .map_init(
                || vec![0.0f32; cap],
                |cols, group| {
                    let mut acc = vec![0.0f32; acc_len];
                    for &tile in group {
                        run(cols, &mut acc, tile);
                    }
                    acc
                },
            )
            .collect();
        sum_in_order(parts)
    }
    #[cfg(not(feature = "rayon"))]
    {
        let mut cols = vec![0.0f32; cap];
        let parts: Vec<Vec<f32>> = all
            .chunks(TILES_PER_GROUP)
            .map(|group| {
                let mut acc = vec![0.0f32; acc_len];
                for &tile in group {
                    run(&mut cols, &mut acc, tile);
                }
                acc
            })
            .collect();
        sum_in_order(parts)
    }
}

/// A raw output pointer that workers write disjoint parts of.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `conv3d(x, weight) + bias` for the fast case.
pub(crate) fn forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    options: &ConvOptions<3>,
) -> Option<FlexTensor> {
    let w_shape = weight.layout().shape().to_vec();
    if !applies(x.dtype(), &w_shape, options) || weight.dtype() != DType::F32 {
        return None;
    }
    if bias.is_some_and(|b| b.dtype() != DType::F32) {
        return None;
    }
    let x = x.to_contiguous();
    let weight = weight.to_contiguous();
    let xs = x.layout().shape().to_vec();
    let g = Geom::new(&xs, &w_shape, options.padding_begin());
    let (n, co, s_out) = (xs[0], w_shape[0], g.spatial_out());
    let w_data: &[f32] = weight.storage();
    let mut out = match g.direct(n, co) {
        Some(dims) => super::conv3d_direct::forward(x.storage(), w_data, &dims),
        None => gemm_forward(x.storage(), w_data, &g, n, co),
    };
    add_bias(&mut out, bias, co, s_out);
    Some(FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(Shape::from(vec![n, co, g.out[0], g.out[1], g.out[2]])),
        DType::F32,
    ))
}

fn add_bias(out: &mut [f32], bias: Option<&FlexTensor>, co: usize, s_out: usize) {
    if let Some(bias) = bias {
        let bias = bias.to_contiguous();
        let bv: &[f32] = bias.storage();
        for (i, plane) in out.chunks_mut(s_out).enumerate() {
            let v = bv[i % co];
            plane.iter_mut().for_each(|o| *o += v);
        }
    }
}

/// `conv3d(x, w)` by im2col + GEMM, tile by tile.
fn gemm_forward(x: &[f32], w_data: &[f32], g: &Geom, n: usize, co: usize) -> Vec<f32> {
    let (k_cols, s_out) = (g.k_cols(), g.spatial_out());
    let mut out = vec![0.0f32; n * co * s_out];
    let dst = OutPtr(out.as_mut_ptr());
    map_tiles(x, n, g, 0, |tile, start, t, cols, _| unsafe {
        // out[b][co × t] = W[co × K] · cols[K × t]; tiles write disjoint columns
        let dst = dst;
        gemm::gemm(
            co,
            t,
            k_cols,
            dst.0.add(tile.b * co * s_out + start),
            1,
            s_out as isize,
            false,
            w_data.as_ptr(),
            1,
            k_cols as isize,
            cols.as_ptr(),
            1,
            t as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    });
    out
}

/// Gradient with respect to the input `x` of `conv3d(x, weight)`.
pub(crate) fn x_backward(
    x_dtype: DType,
    weight: &FlexTensor,
    output_grad: &FlexTensor,
    options: &ConvOptions<3>,
) -> Option<FlexTensor> {
    let w_shape = weight.layout().shape().to_vec();
    if !applies(x_dtype, &w_shape, options) || output_grad.dtype() != DType::F32 {
        return None;
    }
    let (co, ci, kd, kh, kw) = (w_shape[0], w_shape[1], w_shape[2], w_shape[3], w_shape[4]);
    let w = weight.to_contiguous();
    let w_data: &[f32] = w.storage();
    // w_t[ci, co, a, b, c] = w[co, ci, kd-1-a, kh-1-b, kw-1-c]
    let mut wt = vec![0.0f32; w_data.len()];
    let ks = kd * kh * kw;
    for o in 0..co {
        for i in 0..ci {
            let src = &w_data[(o * ci + i) * ks..(o * ci + i + 1) * ks];
            let dst = &mut wt[(i * co + o) * ks..(i * co + o + 1) * ks];
            for (j, v) in dst.iter_mut().enumerate() {
                *v = src[ks - 1 - j];
            }
        }
    }
    let wt = FlexTensor::new(
        Bytes::from_elems(wt),
        Layout::contiguous(Shape::from(vec![ci, co, kd, kh, kw])),
        DType::F32,
    );
    let p = options.padding_begin();
    let opts = ConvOptions::new([1, 1, 1], [kd - 1 - p[0], kh - 1 - p[1], kw - 1 - p[2]], [1, 1, 1], 1);
    forward(output_grad, &wt, None, &opts)
}

/// Gradient with respect to `weight` of `conv3d(x, weight)`.
pub(crate) fn weight_backward(
    x: &FlexTensor,
    w_shape: &[usize],
    output_grad: &FlexTensor,
    options: &ConvOptions<3>,
) -> Option<FlexTensor> {
    if !applies(x.dtype(), w_shape, options) || output_grad.dtype() != DType::F32 {
        return None;
    }
    let x = x.to_contiguous();
    let gr = output_grad.to_contiguous();
    let xs = x.layout().shape().to_vec();
    let g = Geom::new(&xs, w_shape, options.padding_begin());
    let (n, co, k_cols, s_out) = (xs[0], w_shape[0], g.k_cols(), g.spatial_out());
    let g_data: &[f32] = gr.storage();
    if let Some(dims) = g.direct(n, co) {
        let grad = super::conv3d_direct::weight_backward(x.storage(), g_data, &dims);
        return Some(FlexTensor::new(
            Bytes::from_elems(grad),
            Layout::contiguous(Shape::from(w_shape.to_vec())),
            DType::F32,
        ));
    }
    let grad = map_tiles(x.storage(), n, &g, co * k_cols, |tile, start, t, cols, acc| unsafe {
        // acc[co × K] += G[co × t] · colsᵀ (cols is K × t)
        gemm::gemm(
            co,
            k_cols,
            t,
            acc.as_mut_ptr(),
            1,
            k_cols as isize,
            true,
            g_data.as_ptr().add(tile.b * co * s_out + start),
            1,
            s_out as isize,
            cols.as_ptr(),
            t as isize,
            1,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    });
    Some(FlexTensor::new(
        Bytes::from_elems(grad),
        Layout::contiguous(Shape::from(vec![co, g.ci, w_shape[2], w_shape[3], w_shape[4]])),
        DType::F32,
    ))
}
