//! Stride-1 3D convolution and its gradients by im2col + GEMM, with the column matrix
//! laid out kernel-offset-major so that it fills by contiguous runs.
//!
//! Burn's CPU backend fills its im2col buffer one element at a time and has no kernels
//! of its own for the two gradients (it runs burn-backend's generic fallbacks: a
//! direct-gather transposed convolution for the input gradient and a convolution whose
//! kernel is the whole output gradient for the weight gradient). For f32, stride 1,
//! dilation 1, groups 1 and symmetric padding p ≤ k − 1 this module computes
//!
//! - the forward pass as W · cols (cols = im2col of the input, K × T per tile);
//! - the input gradient as the forward pass of the output gradient with the
//!   spatially flipped, channel-swapped kernel and padding k − 1 − p (exact);
//! - the weight gradient as Σ_n Σ_tiles G_n · colsᵀ, accumulated by GEMM.
//!
//! Tiles run in parallel, each worker filling its own columns (about 1 MiB, so they stay
//! in L2) and running a single-threaded GEMM; the weight gradient's parts are summed per
//! fixed group of tiles in group order, so the result does not depend on scheduling and
//! training stays bit-reproducible. 3×3×3 kernels with padding 1 on rows of 16·k voxels
//! go to the direct AVX-512 kernel instead (`direct.rs`).

use rayon::prelude::*;

use super::direct;

/// Column-matrix elements per tile (K × positions): about 1 MiB of f32, so a tile's
/// columns stay in the L2 cache while its GEMM runs.
const TILE_ELEMS: usize = 1 << 18;
/// Fewest output positions per tile (GEMM efficiency).
const TILE_MIN: usize = 256;
/// Tiles per work item; each item's weight-gradient part is summed in a fixed order.
const TILES_PER_GROUP: usize = 2;

/// The geometry of one stride-1 convolution (one item of the batch).
#[derive(Clone, Copy, Debug)]
pub struct Geom {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub inp: [usize; 3],
    pub out: [usize; 3],
    pub k: [usize; 3],
    pub p: [usize; 3],
}

impl Geom {
    /// From the input `[n, ci, d, h, w]` and weight `[co, ci, kd, kh, kw]` shapes and
    /// the padding, or `None` when the shapes do not fit (channel counts differ, a
    /// padding not below its kernel size, an empty map).
    pub fn new(x: [usize; 5], w: [usize; 5], p: [usize; 3]) -> Option<Geom> {
        let inp = [x[2], x[3], x[4]];
        let k = [w[2], w[3], w[4]];
        let fits = x[1] == w[1]
            && x.iter().chain(&w).all(|&s| s > 0)
            && (0..3).all(|a| p[a] < k[a] && inp[a] + 2 * p[a] >= k[a]);
        fits.then(|| Geom {
            n: x[0],
            ci: x[1],
            co: w[0],
            inp,
            out: std::array::from_fn(|a| inp[a] + 2 * p[a] + 1 - k[a]),
            k,
            p,
        })
    }
    fn k_cols(&self) -> usize {
        self.ci * self.k[0] * self.k[1] * self.k[2]
    }
    fn spatial_in(&self) -> usize {
        self.inp.iter().product()
    }
    pub fn spatial_out(&self) -> usize {
        self.out.iter().product()
    }
    /// The sizes for the direct kernel, where it applies (and is switched on).
    pub fn direct(&self, enabled: bool) -> Option<direct::Dims> {
        let [d, h, w] = self.inp;
        (enabled && direct::applies(self.k, self.p, self.out[2])).then_some(direct::Dims {
            n: self.n,
            ci: self.ci,
            co: self.co,
            d,
            h,
            w,
        })
    }
    /// Output rows (of `out[2]` positions) per tile.
    fn rows_per_tile(&self) -> usize {
        let positions = (TILE_ELEMS / self.k_cols().max(1)).max(TILE_MIN);
        (positions / self.out[2].max(1)).max(1)
    }
    fn check(&self, x: &[f32], other: &[f32], other_len: usize) {
        assert_eq!(
            x.len(),
            self.n * self.ci * self.spatial_in(),
            "input size for {self:?}"
        );
        assert_eq!(
            other.len(),
            other_len,
            "weight or gradient size for {self:?}"
        );
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

impl Tile {
    /// The first output position and the number of positions.
    fn span(&self, g: &Geom) -> (usize, usize) {
        (self.row0 * g.out[2], self.rows * g.out[2])
    }
}

fn tiles(g: &Geom) -> Vec<Tile> {
    let rows_total = g.out[0] * g.out[1];
    let rpt = g.rows_per_tile();
    let mut v = Vec::new();
    for b in 0..g.n {
        let mut row0 = 0;
        while row0 < rows_total {
            let rows = rpt.min(rows_total - row0);
            v.push(Tile { b, row0, rows });
            row0 += rows;
        }
    }
    v
}

/// Visit every tile with its filled column matrix, `f(tile, cols, acc)`, where `acc` is
/// a zeroed accumulator of `acc_len` values private to a fixed group of tiles. Groups
/// run in parallel; their accumulators are summed in group order and returned, so the
/// sum is the same however the groups ran.
fn map_tiles(
    x: &[f32],
    g: &Geom,
    acc_len: usize,
    f: impl Fn(Tile, &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let item = g.ci * g.spatial_in();
    let k_cols = g.k_cols();
    let cap = k_cols * g.rows_per_tile() * g.out[2];
    let parts: Vec<Vec<f32>> = tiles(g)
        .par_chunks(TILES_PER_GROUP)
        .map_init(
            || vec![0.0f32; cap],
            |cols, group| {
                let mut acc = vec![0.0f32; acc_len];
                for &tile in group {
                    let (_, t) = tile.span(g);
                    let c = &mut cols[..k_cols * t];
                    fill_columns(c, t, &x[tile.b * item..][..item], g, tile.row0);
                    f(tile, c, &mut acc);
                }
                acc
            },
        )
        .collect();
    let mut total = vec![0.0f32; acc_len];
    for p in parts {
        total.iter_mut().zip(&p).for_each(|(x, y)| *x += y);
    }
    total
}

/// The forward pass's output buffer, which the tiles write at disjoint places.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the pointer is only written through by tiles at disjoint positions (each
// tile its own columns of every (item, channel) plane), while the buffer it points into
// outlives the parallel loop and is not otherwise accessed
unsafe impl Send for OutPtr {}
// SAFETY: as for Send
unsafe impl Sync for OutPtr {}

/// `conv3d(x, w)` (no bias) for `x` `[n, ci, d, h, w]` and `w` `[co, ci, kd, kh, kw]`:
/// `[n, co, od, oh, ow]`, by the direct kernel where it applies (and `direct` is on),
/// otherwise by im2col + GEMM.
///
/// # Panics
/// If the buffers do not match `g`.
pub fn forward(x: &[f32], w: &[f32], g: &Geom, direct: bool) -> Vec<f32> {
    g.check(x, w, g.co * g.k_cols());
    if let Some(dims) = g.direct(direct) {
        return direct::forward(x, w, &dims);
    }
    let (co, k_cols, s_out) = (g.co, g.k_cols(), g.spatial_out());
    let mut out = vec![0.0f32; g.n * co * s_out];
    let len = out.len();
    let dst = OutPtr(out.as_mut_ptr());
    map_tiles(x, g, 0, |tile, cols, _| {
        let (start, t) = tile.span(g);
        let off = tile.b * co * s_out + start;
        assert!(off + (co - 1) * s_out + t <= len && cols.len() == k_cols * t);
        // SAFETY: the tile's co rows of t values, s_out apart from `off`, lie inside the
        // buffer (asserted); no other tile writes positions start .. start + t of this
        // item; `w` holds co × K values (checked) and `cols` K × t (asserted)
        unsafe {
            gemm_raw(
                dst.get().add(off),
                s_out as isize,
                w.as_ptr(),
                cols,
                co,
                k_cols,
                t,
            )
        }
    });
    out
}

/// `dst[m × t] (row stride rs) = a[m × k] · cols[k × t]`, single-threaded.
///
/// # Safety
/// `dst` points at m rows of t writable values, `rs` apart, that nothing else accesses
/// during the call; `a` at m × k readable values; `cols` holds k × t values.
unsafe fn gemm_raw(
    dst: *mut f32,
    rs: isize,
    a: *const f32,
    cols: &[f32],
    m: usize,
    k: usize,
    t: usize,
) {
    // SAFETY: the caller's guarantees, and `cols` is k × t row-major
    unsafe {
        gemm::gemm(
            m,
            t,
            k,
            dst,
            1,
            rs,
            false,
            a,
            1,
            k as isize,
            cols.as_ptr(),
            1,
            t as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The gradient `[n, ci, d, h, w]` with respect to the input of `conv3d(x, w)`, from `w`
/// and the output gradient `[n, co, od, oh, ow]`: the forward pass of the output gradient
/// with the flipped, channel-swapped kernel and padding k − 1 − p.
pub fn x_backward(w: &[f32], output_grad: &[f32], g: &Geom, direct: bool) -> Vec<f32> {
    let (co, ci, [kd, kh, kw]) = (g.co, g.ci, g.k);
    assert_eq!(w.len(), co * g.k_cols(), "weight size for {g:?}");
    let ks = kd * kh * kw;
    // w_t[ci, co, a, b, c] = w[co, ci, kd-1-a, kh-1-b, kw-1-c]
    let mut wt = vec![0.0f32; w.len()];
    for o in 0..co {
        for i in 0..ci {
            let src = &w[(o * ci + i) * ks..(o * ci + i + 1) * ks];
            let dst = &mut wt[(i * co + o) * ks..(i * co + o + 1) * ks];
            for (j, v) in dst.iter_mut().enumerate() {
                *v = src[ks - 1 - j];
            }
        }
    }
    let back = Geom {
        n: g.n,
        ci: co,
        co: ci,
        inp: g.out,
        out: g.inp,
        k: g.k,
        p: std::array::from_fn(|a| g.k[a] - 1 - g.p[a]),
    };
    forward(output_grad, &wt, &back, direct)
}

/// The gradient `[co, ci, kd, kh, kw]` with respect to the weight of `conv3d(x, w)`, from
/// `x` and the output gradient `[n, co, od, oh, ow]`.
///
/// # Panics
/// If the buffers do not match `g`.
pub fn weight_backward(x: &[f32], output_grad: &[f32], g: &Geom, direct: bool) -> Vec<f32> {
    let (co, k_cols, s_out) = (g.co, g.k_cols(), g.spatial_out());
    g.check(x, output_grad, g.n * co * s_out);
    if let Some(dims) = g.direct(direct) {
        return direct::weight_backward(x, output_grad, &dims);
    }
    map_tiles(x, g, co * k_cols, |tile, cols, acc| {
        let (start, t) = tile.span(g);
        let gr = &output_grad[tile.b * co * s_out + start..];
        assert!(gr.len() >= (co - 1) * s_out + t && acc.len() == co * k_cols);
        // SAFETY: acc[co × K] += G[co × t] · colsᵀ: `acc` is co × K, G's co rows of t
        // values lie s_out apart inside `gr` (asserted), `cols` is K × t
        unsafe {
            gemm::gemm(
                co,
                k_cols,
                t,
                acc.as_mut_ptr(),
                1,
                k_cols as isize,
                true,
                gr.as_ptr(),
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
            )
        }
    })
}
