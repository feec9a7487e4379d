//! rlu2net patch: direct 3×3×3 convolution (stride 1, padding 1) and its weight
//! gradient, vectorised along the output rows.
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
//! flipped, channel-swapped kernel (conv3d_gemm::x_backward), so it takes this path too.
//!
//! Used when the kernel is 3×3×3 with padding 1, stride 1, no groups and the output
//! rows are a multiple of 16 voxels wide; everything else goes through im2col.

use alloc::vec;
use alloc::vec::Vec;

use super::conv3d_gemm::OutPtr;

/// Vector lanes (one AVX-512 register of f32).
const V: usize = 16;
/// Output channels per block.
const CB: usize = 8;
/// Taps of a 3×3×3 kernel.
const TAPS: usize = 27;

/// Sizes of one direct convolution (input and output maps are `d × h × w`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
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

/// Whether the direct path applies to this shape.
pub(crate) fn applies(kernel: [usize; 3], padding: [usize; 3], w_out: usize) -> bool {
    kernel == [3, 3, 3]
        && padding == [1, 1, 1]
        && w_out >= V
        && w_out.is_multiple_of(V)
        && has_avx512()
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


#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{CB, Dims, OutPtr, TAPS, V};
    use core::arch::x86_64::*;

    /// Output voxels `x0 .. x0 + 16·NX` of row (z, y) for one block of 8 output
    /// channels, summed over the input channels and taps (`xp` one padded item, `wblk`
    /// the block's packed weights `[ci, 27, 8]`).
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const NX: usize>(
        xp: *const f32,
        wblk: *const f32,
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
                    // SAFETY (all reads): the padded item holds rows of w + 2 voxels,
                    // and x0 + 16·NX ≤ w, so the 3 shifted vectors stay in the row
                    let row = unsafe { xp.add(ci * st.chan + (z + a) * st.plane + (y + bb) * st.row + x0) };
                    for c in 0..3 {
                        let wt = unsafe { wblk.add(((ci * 9 + a * 3 + bb) * 3 + c) * CB) };
                        let v: [__m512; NX] =
                            core::array::from_fn(|j| unsafe { _mm512_loadu_ps(row.add(j * V + c)) });
                        for (k, acc_k) in acc.iter_mut().enumerate() {
                            let s = _mm512_set1_ps(unsafe { *wt.add(k) });
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

    /// Output plane `z` of item `b` for channel block `blk`, every row.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn plane(xp: &[f32], wk: &[f32], g: &Dims, blk: usize, z: usize, out: OutPtr, b: usize) {
        let (h, w) = (g.h, g.w);
        let cbn = CB.min(g.co - blk * CB);
        let wblk = wk[blk * g.ci * TAPS * CB..(blk + 1) * g.ci * TAPS * CB].as_ptr();
        let xp = xp.as_ptr();
        let dst = |k: usize, y: usize, x: usize| {
            // SAFETY: inside the output; each (item, block, z) plane is one task's
            unsafe { out.0.add(((b * g.co + blk * CB + k) * g.d + z) * h * w + y * w + x) }
        };
        for y in 0..h {
            let mut x0 = 0;
            while x0 + 2 * V <= w {
                let acc = unsafe { block::<2>(xp, wblk, g, z, y, x0) };
                for (k, a) in acc.iter().enumerate().take(cbn) {
                    unsafe {
                        _mm512_storeu_ps(dst(k, y, x0), a[0]);
                        _mm512_storeu_ps(dst(k, y, x0 + V), a[1]);
                    }
                }
                x0 += 2 * V;
            }
            if x0 < w {
                let acc = unsafe { block::<1>(xp, wblk, g, z, y, x0) };
                for (k, a) in acc.iter().enumerate().take(cbn) {
                    unsafe { _mm512_storeu_ps(dst(k, y, x0), a[0]) };
                }
            }
        }
    }

    /// Σ over the map of the output gradient of the 8 channels of block `blk` times the
    /// input channel `ci` shifted by (a, bb, c), c = 0, 1, 2: `res[k·3 + c]`
    /// (`zero_row` stands in for the channels past the last of a partial block).
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
            let xb = xp[b * g.padded_item() + ci * st.chan..].as_ptr();
            let gb = &gr[(b * g.co + blk * CB) * s..];
            for z in 0..g.d {
                for y in 0..h {
                    let xrow = unsafe { xb.add((z + a) * st.plane + (y + bb) * st.row) };
                    let off = (z * h + y) * w;
                    let grow: [*const f32; CB] = core::array::from_fn(|k| {
                        if k < cbn { gb[k * s + off..].as_ptr() } else { zero_row.as_ptr() }
                    });
                    for x0 in (0..w).step_by(V) {
                        // SAFETY: x0 + 16 ≤ w; the padded row has w + 2 voxels
                        let xs: [__m512; 3] =
                            core::array::from_fn(|c| unsafe { _mm512_loadu_ps(xrow.add(x0 + c)) });
                        for (k, acc_k) in acc.iter_mut().enumerate() {
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

/// Whether this CPU runs the kernels (AVX-512F; checked once).
fn has_avx512() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
    false
}

/// `conv3d(x, w)` for `x` `[n, ci, d, h, w]`, `w` `[co, ci, 3, 3, 3]`, padding 1:
/// `[n, co, d, h, w]` (no bias).
pub(crate) fn forward(x: &[f32], w: &[f32], g: &Dims) -> Vec<f32> {
    let xp = pad(x, g);
    let wk = pack_weights(w, g);
    let mut out = vec![0.0f32; g.n * g.co * g.spatial()];
    let dst = OutPtr(out.as_mut_ptr());
    let tasks: Vec<(usize, usize, usize)> = (0..g.n)
        .flat_map(|b| (0..g.co_blocks()).flat_map(move |k| (0..g.d).map(move |z| (b, k, z))))
        .collect();
    let item = g.padded_item();
    let run = |&(b, blk, z): &(usize, usize, usize)| {
        // SAFETY: `applies` checked that the CPU has AVX-512F
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx512::plane(&xp[b * item..], &wk, g, blk, z, dst, b)
        };
    };
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        tasks.par_iter().for_each(run);
    }
    #[cfg(not(feature = "rayon"))]
    tasks.iter().for_each(run);
    out
}

/// The gradient `[co, ci, 3, 3, 3]` of `conv3d(x, w)` (padding 1) with respect to `w`,
/// from `x` `[n, ci, d, h, w]` and the output gradient `[n, co, d, h, w]`.
pub(crate) fn weight_backward(x: &[f32], grad: &[f32], g: &Dims) -> Vec<f32> {
    let xp = pad(x, g);
    let tasks: Vec<[usize; 4]> = (0..g.co_blocks())
        .flat_map(|k| (0..g.ci).flat_map(move |i| (0..9).map(move |t| [k, i, t / 3, t % 3])))
        .collect();
    let zero_row = vec![0.0f32; g.w];
    // SAFETY: `applies` checked that the CPU has AVX-512F
    #[cfg(target_arch = "x86_64")]
    let run = |&t: &[usize; 4]| unsafe { avx512::weight_task(&xp, grad, &zero_row, g, t) };
    #[cfg(not(target_arch = "x86_64"))]
    let run = |_: &[usize; 4]| -> [f32; CB * 3] { unreachable!("no direct kernel here") };
    #[cfg(feature = "rayon")]
    let parts: Vec<[f32; CB * 3]> = {
        use rayon::prelude::*;
        tasks.par_iter().map(run).collect()
    };
    #[cfg(not(feature = "rayon"))]
    let parts: Vec<[f32; CB * 3]> = tasks.iter().map(run).collect();
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
