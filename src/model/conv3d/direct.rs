//! Direct 3×3×3 convolution (stride 1, padding 1) and its weight gradient, vectorised
//! along the output rows with AVX-512.
//!
//! im2col writes 27 copies of the input before the GEMM reads them; with few channels
//! (the full-resolution decoder blocks: 8–16 channels on 32³–64³) that copy costs
//! more than the arithmetic, and a GEMM with 8 output rows leaves most of its
//! registers empty. Here the input is padded once, and each output row of 32 voxels
//! for 8 output channels (16 vector accumulators) is summed over the input channels and
//! the 27 taps straight from the padded rows. The weight gradient sums, per (input
//! channel, tap row), the products of the output gradient's rows with the three
//! shifted input rows over the whole map, in a fixed order per task (the result does
//! not depend on the scheduling). The input gradient is the forward pass with the
//! flipped, channel-swapped kernel (`gemm::x_backward`), so it takes this path too.
//!
//! Used when the kernel is 3×3×3 with padding 1, stride 1, no groups, the CPU has
//! AVX-512F and the output rows are a multiple of 16 voxels wide ([`supported`]); the
//! two safe entry points check all of it and the buffer sizes before any `unsafe` code.

use rayon::prelude::*;

/// Vector lanes (one AVX-512 register of f32).
const V: usize = 16;
/// Output channels per block.
const CB: usize = 8;
/// Taps of a 3×3×3 kernel.
const TAPS: usize = 27;

/// Sizes of one direct convolution (input and output maps are `d × h × w`).
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub d: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    /// Width of a padded row: one zero on each side.
    fn wp(&self) -> usize {
        self.w + 2
    }
    fn padded_item(&self) -> usize {
        self.ci * (self.d + 2) * (self.h + 2) * self.wp()
    }
    fn spatial(&self) -> usize {
        self.d * self.h * self.w
    }
    fn co_blocks(&self) -> usize {
        self.co.div_ceil(CB)
    }
    fn strides(&self) -> Strides {
        let row = self.wp();
        let plane = (self.h + 2) * row;
        Strides {
            row,
            plane,
            chan: (self.d + 2) * plane,
        }
    }
}

/// Whether the direct path applies to this kernel, padding and output row width on
/// this CPU.
pub fn applies(kernel: [usize; 3], padding: [usize; 3], w_out: usize) -> bool {
    kernel == [3, 3, 3] && padding == [1, 1, 1] && supported(w_out)
}

/// The CPU has AVX-512F and a row of `w` voxels is a whole number of vectors: what the
/// kernels' unchecked loads and stores rely on.
fn supported(w: usize) -> bool {
    w >= V && w.is_multiple_of(V) && has_avx512()
}

/// Every precondition of the `unsafe` kernels, checked at the safe entry points.
fn check(g: &Dims, x: &[f32], other: &[f32], other_len: usize) {
    assert!(
        supported(g.w) && g.n > 0 && g.ci > 0 && g.co > 0 && g.d > 0 && g.h > 0,
        "direct 3×3×3 kernel called for {g:?} (needs AVX-512F and rows of 16·k voxels)"
    );
    assert_eq!(x.len(), g.n * g.ci * g.spatial(), "input size for {g:?}");
    assert_eq!(other.len(), other_len, "weight or gradient size for {g:?}");
}

/// `[n, ci, d, h, w]` → `[n, ci, d+2, h+2, w+2]` with a zero border.
fn pad(x: &[f32], g: &Dims) -> Vec<f32> {
    let (d, h, w, wp) = (g.d, g.h, g.w, g.wp());
    let mut out = vec![0.0f32; g.n * g.padded_item()];
    for (plane, dst) in x
        .chunks(d * h * w)
        .zip(out.chunks_mut((d + 2) * (h + 2) * wp))
    {
        for z in 0..d {
            for y in 0..h {
                let s = (z * h + y) * w;
                let t = ((z + 1) * (h + 2) + y + 1) * wp + 1;
                dst[t..t + w].copy_from_slice(&plane[s..s + w]);
            }
        }
    }
    out
}

/// Weights `[co, ci, 27]` → `[co_blocks, ci, 27, CB]`, the missing channels of the last
/// block zero, so that a block's 8 weights of one tap are adjacent.
fn pack_weights(w: &[f32], g: &Dims) -> Vec<f32> {
    let mut out = vec![0.0f32; g.co_blocks() * g.ci * TAPS * CB];
    for o in 0..g.co {
        let (blk, cb) = (o / CB, o % CB);
        for i in 0..g.ci {
            for t in 0..TAPS {
                out[((blk * g.ci + i) * TAPS + t) * CB + cb] = w[(o * g.ci + i) * TAPS + t];
            }
        }
    }
    out
}

/// Strides of the padded input: a padded row, plane and channel.
#[derive(Clone, Copy)]
struct Strides {
    row: usize,
    plane: usize,
    chan: usize,
}

/// One output plane `(item, channel block, z)`: the task's `CB` rows of `h × w` values
/// per output channel, which no other task writes.
struct PlaneOut<'a> {
    /// `[cbn][h·w]` destination rows, each one channel's plane `z`.
    planes: Vec<&'a mut [f32]>,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{CB, Dims, PlaneOut, TAPS, V};
    use core::arch::x86_64::*;

    /// Output voxels `x0 .. x0 + 16·NX` of row (z, y) for one block of 8 output
    /// channels, summed over the input channels and taps.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `xp` is one padded item of `g` (`ci` channels of
    /// `(d+2)(h+2)(w+2)` values), `wblk` the block's packed weights (`ci · 27 · 8`
    /// values), `z < d`, `y < h` and `x0 + 16·NX ≤ w`.
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const NX: usize>(
        xp: &[f32],
        wblk: &[f32],
        g: &Dims,
        z: usize,
        y: usize,
        x0: usize,
    ) -> [[__m512; NX]; CB] {
        let st = g.strides();
        let mut acc = [[_mm512_setzero_ps(); NX]; CB];
        for ci in 0..g.ci {
            for a in 0..3 {
                for bb in 0..3 {
                    let row0 = ci * st.chan + (z + a) * st.plane + (y + bb) * st.row + x0;
                    let row = &xp[row0..row0 + NX * V + 2];
                    for c in 0..3 {
                        let wt = &wblk[((ci * 9 + a * 3 + bb) * 3 + c) * CB..][..CB];
                        let v: [__m512; NX] = core::array::from_fn(|j| {
                            // SAFETY: `row` holds NX·16 + 2 values and j·16 + c + 16 ≤ NX·16 + 2
                            unsafe { _mm512_loadu_ps(row[j * V + c..].as_ptr()) }
                        });
                        for (k, acc_k) in acc.iter_mut().enumerate() {
                            let s = _mm512_set1_ps(wt[k]);
                            for j in 0..NX {
                                acc_k[j] = _mm512_fmadd_ps(s, v[j], acc_k[j]);
                            }
                        }
                    }
                }
            }
        }
        acc
    }

    /// Output plane `z` of one item for channel block `blk`, every row, into `out`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and `g.w` is a multiple of 16; `xp` is one padded item,
    /// `wk` all packed weights, `z < d`, and `out` holds the block's planes of `h·w`
    /// values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn plane(
        xp: &[f32],
        wk: &[f32],
        g: &Dims,
        blk: usize,
        z: usize,
        out: &mut PlaneOut,
    ) {
        let w = g.w;
        let wblk = &wk[blk * g.ci * TAPS * CB..(blk + 1) * g.ci * TAPS * CB];
        let store = |dst: &mut [f32], v: __m512| {
            assert!(dst.len() >= V);
            // SAFETY: `dst` holds at least 16 values (checked above)
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) }
        };
        for y in 0..g.h {
            let mut x0 = 0;
            while x0 + 2 * V <= w {
                // SAFETY: x0 + 32 ≤ w, z < d, y < h; the caller's guarantees for the rest
                let acc = unsafe { block::<2>(xp, wblk, g, z, y, x0) };
                for (p, a) in out.planes.iter_mut().zip(&acc) {
                    store(&mut p[y * w + x0..], a[0]);
                    store(&mut p[y * w + x0 + V..], a[1]);
                }
                x0 += 2 * V;
            }
            if x0 < w {
                // SAFETY: w is a multiple of 16, so x0 + 16 ≤ w
                let acc = unsafe { block::<1>(xp, wblk, g, z, y, x0) };
                for (p, a) in out.planes.iter_mut().zip(&acc) {
                    store(&mut p[y * w + x0..], a[0]);
                }
            }
        }
    }

    /// Σ over the map of the output gradient of the 8 channels of block `blk` times the
    /// input channel `ci` shifted by (a, bb, c), c = 0, 1, 2: `res[k·3 + c]`
    /// (`zero_row` stands in for the channels past the last of a partial block).
    ///
    /// # Safety
    /// The CPU has AVX-512F and `g.w` is a multiple of 16; `xp` is the padded input of
    /// all `n` items, `gr` the output gradient `[n, co, d, h, w]`, `zero_row` `w` zeros,
    /// `blk < co_blocks`, `ci < g.ci`, `a, bb < 3`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_task(
        xp: &[f32],
        gr: &[f32],
        zero_row: &[f32],
        g: &Dims,
        [blk, ci, a, bb]: [usize; 4],
    ) -> [f32; CB * 3] {
        let st = g.strides();
        let (h, w, s) = (g.h, g.w, g.d * g.h * g.w);
        let cbn = CB.min(g.co - blk * CB);
        let mut acc = [[_mm512_setzero_ps(); 3]; CB];
        for b in 0..g.n {
            let xb = &xp[b * g.padded_item() + ci * st.chan..][..st.chan];
            let gb = &gr[(b * g.co + blk * CB) * s..];
            for z in 0..g.d {
                for y in 0..h {
                    // bounds checked once per row; the loads below stay inside them
                    let xrow = xb[(z + a) * st.plane + (y + bb) * st.row..][..w + 2].as_ptr();
                    let off = (z * h + y) * w;
                    let grow: [*const f32; CB] = core::array::from_fn(|k| {
                        if k < cbn {
                            gb[k * s + off..][..w].as_ptr()
                        } else {
                            zero_row[..w].as_ptr()
                        }
                    });
                    for x0 in (0..w).step_by(V) {
                        // SAFETY: x0 + 16 ≤ w (w a multiple of 16) and the padded row
                        // holds w + 2 values, so x0 + c + 16 ≤ w + 2
                        let xs: [__m512; 3] =
                            core::array::from_fn(|c| unsafe { _mm512_loadu_ps(xrow.add(x0 + c)) });
                        for (k, acc_k) in acc.iter_mut().enumerate() {
                            // SAFETY: each gradient row holds w values and x0 + 16 ≤ w
                            let gv = unsafe { _mm512_loadu_ps(grow[k].add(x0)) };
                            for c in 0..3 {
                                acc_k[c] = _mm512_fmadd_ps(gv, xs[c], acc_k[c]);
                            }
                        }
                    }
                }
            }
        }
        let mut res = [0.0f32; CB * 3];
        for (k, acc_k) in acc.iter().enumerate() {
            for c in 0..3 {
                res[k * 3 + c] = _mm512_reduce_add_ps(acc_k[c]);
            }
        }
        res
    }
}

#[cfg(target_arch = "x86_64")]
use avx512::{plane, weight_task};

/// Stand-ins where there is no AVX-512 ([`supported`] is false, so never called).
#[cfg(not(target_arch = "x86_64"))]
mod fallback {
    /// # Safety
    /// Never called: [`super::supported`] is false on this architecture.
    pub(super) unsafe fn plane(
        _: &[f32],
        _: &[f32],
        _: &super::Dims,
        _: usize,
        _: usize,
        _: &mut super::PlaneOut,
    ) {
        unreachable!("no direct 3×3×3 kernel on this architecture")
    }
    /// # Safety
    /// Never called: [`super::supported`] is false on this architecture.
    pub(super) unsafe fn weight_task(
        _: &[f32],
        _: &[f32],
        _: &[f32],
        _: &super::Dims,
        _: [usize; 4],
    ) -> [f32; super::CB * 3] {
        unreachable!("no direct 3×3×3 kernel on this architecture")
    }
}
#[cfg(not(target_arch = "x86_64"))]
use fallback::{plane, weight_task};

/// Whether this CPU runs the kernels (AVX-512F; checked once).
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `conv3d(x, w)` for `x` `[n, ci, d, h, w]`, `w` `[co, ci, 3, 3, 3]`, padding 1:
/// `[n, co, d, h, w]` (no bias).
///
/// # Panics
/// If the kernel does not apply ([`applies`]) or the buffers do not match `g`.
pub fn forward(x: &[f32], w: &[f32], g: &Dims) -> Vec<f32> {
    check(g, x, w, g.co * g.ci * TAPS);
    let xp = pad(x, g);
    let wk = pack_weights(w, g);
    let mut out = vec![0.0f32; g.n * g.co * g.spatial()];
    let (s, hw, item) = (g.spatial(), g.h * g.w, g.padded_item());
    // tasks (item, block, z), each with its own output rows: channel planes `z` of the block
    let mut tasks: Vec<(usize, usize, usize, PlaneOut)> = Vec::new();
    for (b, item_out) in out.chunks_mut(g.co * s).enumerate() {
        let mut per_z: Vec<Vec<Vec<&mut [f32]>>> = (0..g.co_blocks())
            .map(|_| (0..g.d).map(|_| Vec::with_capacity(CB)).collect())
            .collect();
        for (o, chan) in item_out.chunks_mut(s).enumerate() {
            for (z, p) in chan.chunks_mut(hw).enumerate() {
                per_z[o / CB][z].push(p);
            }
        }
        for (blk, zs) in per_z.into_iter().enumerate() {
            for (z, planes) in zs.into_iter().enumerate() {
                tasks.push((b, blk, z, PlaneOut { planes }));
            }
        }
    }
    tasks.par_iter_mut().for_each(|(b, blk, z, dst)| {
        // SAFETY: `check` established AVX-512F, w a multiple of 16 and the buffer sizes;
        // the task's planes are the block's `h·w` rows of plane z
        unsafe { plane(&xp[*b * item..][..item], &wk, g, *blk, *z, dst) }
    });
    out
}

/// The gradient `[co, ci, 3, 3, 3]` of `conv3d(x, w)` (padding 1) with respect to `w`,
/// from `x` `[n, ci, d, h, w]` and the output gradient `[n, co, d, h, w]`.
///
/// # Panics
/// If the kernel does not apply ([`applies`]) or the buffers do not match `g`.
pub fn weight_backward(x: &[f32], grad: &[f32], g: &Dims) -> Vec<f32> {
    check(g, x, grad, g.n * g.co * g.spatial());
    let xp = pad(x, g);
    let tasks: Vec<[usize; 4]> = (0..g.co_blocks())
        .flat_map(|k| (0..g.ci).flat_map(move |i| (0..9).map(move |t| [k, i, t / 3, t % 3])))
        .collect();
    let zero_row = vec![0.0f32; g.w];
    let run = |&t: &[usize; 4]| {
        // SAFETY: `check` established AVX-512F, w a multiple of 16 and the buffer sizes;
        // the task indices are in range by construction
        unsafe { weight_task(&xp, grad, &zero_row, g, t) }
    };
    let parts: Vec<[f32; CB * 3]> = tasks.par_iter().map(run).collect();
    let mut out = vec![0.0f32; g.co * g.ci * TAPS];
    for (&[blk, ci, a, bb], res) in tasks.iter().zip(&parts) {
        for k in 0..CB.min(g.co - blk * CB) {
            for c in 0..3 {
                out[((blk * CB + k) * g.ci + ci) * TAPS + (a * 3 + bb) * 3 + c] = res[k * 3 + c];
            }
        }
    }
    out
}
