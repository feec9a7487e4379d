//! The arithmetic of windowed multi-head attention on flat f32 slices: the forward
//! pass and the closed-form backward pass, one (window, head) at a time so that its
//! queries, keys, values and the 64 × 64 weights of a 4³ window stay in the L1 cache.
//!
//! ```text
//! S = scale·Q Kᵀ + B_h + M_w,   P = softmax_row(S),   O = P V
//! dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),
//! dQ = scale·dS K,  dK = scale·dSᵀ Q,  dB_h = Σ_windows dS
//! ```
//!
//! The forward pass forms the weights transposed (Pᵀ, keys by queries) so that its loops
//! run along the queries; the backward pass works row by row. P is recomputed in the
//! backward pass instead of kept (it is `n/d` times larger than Q, K and V together).
//! No Burn here: `window_attention` wraps these for tensors.

use rayon::prelude::*;

use super::simd::multiversioned;

/// The layout of one call. Queries are `[bq, n, C]`; keys, values and the output are
/// `[bq·reps, n, C]`, window `i` attending with query window `i mod bq`; C = heads·d,
/// head `h` in channels `h·d .. (h+1)·d`. The bias is `[heads, n, n]`, the mask
/// `[mask_windows, n, n]`, window `i` taking mask `i mod mask_windows`.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub bq: usize,
    pub reps: usize,
    pub n: usize,
    pub heads: usize,
    pub d: usize,
    pub mask_windows: usize,
}

impl AttnShape {
    pub fn c(&self) -> usize {
        self.heads * self.d
    }
    /// Elements of one window's rows (`n·C`).
    fn window(&self) -> usize {
        self.n * self.c()
    }
}

/// The inputs of one call (flat, contiguous, in [`AttnShape`]'s layout).
#[derive(Clone, Copy)]
pub struct AttnInputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub mask: Option<&'a [f32]>,
    pub scale: f32,
}

/// Gradients of the inputs (dbias when asked for).
pub struct AttnGrads {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
    pub dbias: Option<Vec<f32>>,
}

/// Query windows per parallel work item. Fixed (not derived from the thread count), so
/// the bias gradient is summed in the same order however the work was scheduled.
const GROUP: usize = 8;
const LANES: usize = 16;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

#[inline(always)]
fn max_of(s: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let c = s.chunks_exact(LANES);
    let mut m = c
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for x in c {
        for l in 0..LANES {
            acc[l] = if x[l] > acc[l] { x[l] } else { acc[l] };
        }
    }
    for a in acc {
        m = if a > m { a } else { m };
    }
    m
}

/// Softmax of one row in place.
#[inline(always)]
fn softmax_row(s: &mut [f32]) {
    let m = max_of(s);
    for v in s.iter_mut() {
        *v -= m;
    }
    super::exp::exp_in_place(s);
    let mut acc = [0.0f32; LANES];
    let c = s.chunks_exact(LANES);
    let tail: f32 = c.remainder().iter().sum();
    for x in c {
        for l in 0..LANES {
            acc[l] += x[l];
        }
    }
    let inv = 1.0 / (acc.iter().sum::<f32>() + tail);
    for v in s.iter_mut() {
        *v *= inv;
    }
}

/// Per-thread buffers for one (window, head): Kᵀ and Vᵀ (d × n), a row of weights and
/// of dP, and the window's dKᵀ, dVᵀ (backward); Qᵀ and Oᵀ (d × n), the transposed
/// weights Pᵀ (n × n) and the per-query maximum and 1/sum (forward).
struct Scratch {
    kt: Vec<f32>,
    vt: Vec<f32>,
    p: Vec<f32>,
    dp: Vec<f32>,
    dkt: Vec<f32>,
    dvt: Vec<f32>,
    qt: Vec<f32>,
    ot: Vec<f32>,
    pt: Vec<f32>,
    max: Vec<f32>,
    inv: Vec<f32>,
}

impl Scratch {
    fn new(sh: &AttnShape) -> Scratch {
        let dn = sh.d * sh.n;
        Scratch {
            kt: vec![0.0; dn],
            vt: vec![0.0; dn],
            p: vec![0.0; sh.n],
            dp: vec![0.0; sh.n],
            dkt: vec![0.0; dn],
            dvt: vec![0.0; dn],
            qt: vec![0.0; dn],
            ot: vec![0.0; dn],
            pt: vec![0.0; sh.n * sh.n],
            max: vec![0.0; sh.n],
            inv: vec![0.0; sh.n],
        }
    }
}

/// `dst[t·n + j] = src[j·c + off + t]`: head columns of a window, transposed.
#[inline(always)]
fn gather_t(src: &[f32], c: usize, off: usize, d: usize, n: usize, dst: &mut [f32]) {
    for j in 0..n {
        let row = &src[j * c + off..j * c + off + d];
        for (t, &x) in row.iter().enumerate() {
            dst[t * n + j] = x;
        }
    }
}

/// `dst[j·c + off + t] = src[t·n + j]`: the inverse of [`gather_t`].
#[inline(always)]
fn scatter_t(src: &[f32], c: usize, off: usize, d: usize, n: usize, dst: &mut [f32]) {
    for j in 0..n {
        let row = &mut dst[j * c + off..j * c + off + d];
        for (t, x) in row.iter_mut().enumerate() {
            *x = src[t * n + j];
        }
    }
}

/// One row of attention weights into `p`: softmax(scale·q·Kᵀ + bias row + mask row).
#[inline(always)]
fn weights_row(
    qrow: &[f32],
    kt: &[f32],
    n: usize,
    scale: f32,
    bias_row: Option<&[f32]>,
    mask_row: Option<&[f32]>,
    p: &mut [f32],
) {
    match bias_row {
        Some(b) => p.copy_from_slice(b),
        None => p.fill(0.0),
    }
    if let Some(m) = mask_row {
        for (x, &y) in p.iter_mut().zip(m) {
            *x += y;
        }
    }
    for (t, &qv) in qrow.iter().enumerate() {
        axpy(p, scale * qv, &kt[t * n..(t + 1) * n]);
    }
    softmax_row(p);
}

/// Where window `i` and head `h` read their bias and mask rows.
#[inline(always)]
fn rows_of<'a>(
    x: &AttnInputs<'a>,
    sh: &AttnShape,
    i: usize,
    h: usize,
) -> (Option<&'a [f32]>, Option<&'a [f32]>) {
    let nn = sh.n * sh.n;
    (
        x.bias.map(|b| &b[h * nn..(h + 1) * nn]),
        x.mask.map(|m| {
            let w = i % sh.mask_windows;
            &m[w * nn..(w + 1) * nn]
        }),
    )
}

/// Forward of window `i`, head `h`, into the window's output rows `out` (n × C), with
/// the bias and mask given transposed (`[.., key, query]`). The weights are formed
/// transposed, Pᵀ[j][r], so every loop runs along the queries r: the softmax's maximum
/// and sum are element-wise across rows, and O = P V is a sum of rows of Pᵀ scaled by
/// V[j][t], all without horizontal reductions.
#[inline(always)]
fn forward_head(
    x: &AttnInputs,
    sh: &AttnShape,
    i: usize,
    h: usize,
    out: &mut [f32],
    s: &mut Scratch,
) {
    let (n, c, d, ws) = (sh.n, sh.c(), sh.d, sh.window());
    let iq = i % sh.bq;
    gather_t(&x.q[iq * ws..(iq + 1) * ws], c, h * d, d, n, &mut s.qt);
    let kw = &x.k[i * ws..(i + 1) * ws];
    let vw = &x.v[i * ws..(i + 1) * ws];
    let (bias_t, mask_t) = rows_of(x, sh, i, h);
    s.max.fill(f32::NEG_INFINITY);
    for j in 0..n {
        let row = &mut s.pt[j * n..(j + 1) * n];
        match bias_t {
            Some(b) => row.copy_from_slice(&b[j * n..(j + 1) * n]),
            None => row.fill(0.0),
        }
        if let Some(m) = mask_t {
            for (x, &y) in row.iter_mut().zip(&m[j * n..(j + 1) * n]) {
                *x += y;
            }
        }
        let krow = &kw[j * c + h * d..j * c + h * d + d];
        for (t, &kv) in krow.iter().enumerate() {
            axpy(row, x.scale * kv, &s.qt[t * n..(t + 1) * n]);
        }
        for (m, &v) in s.max.iter_mut().zip(row.iter()) {
            *m = if v > *m { v } else { *m };
        }
    }
    s.inv.fill(0.0);
    for j in 0..n {
        let row = &mut s.pt[j * n..(j + 1) * n];
        for (v, &m) in row.iter_mut().zip(&s.max) {
            *v -= m;
        }
        super::exp::exp_in_place(row);
        for (z, &v) in s.inv.iter_mut().zip(row.iter()) {
            *z += v;
        }
    }
    for z in s.inv.iter_mut() {
        *z = 1.0 / *z;
    }
    s.ot.fill(0.0);
    for j in 0..n {
        let vrow = &vw[j * c + h * d..j * c + h * d + d];
        let prow = &s.pt[j * n..(j + 1) * n];
        for (t, &vv) in vrow.iter().enumerate() {
            axpy(&mut s.ot[t * n..(t + 1) * n], vv, prow);
        }
    }
    for (r, &z) in s.inv.iter().enumerate() {
        let orow = &mut out[r * c + h * d..r * c + h * d + d];
        for (t, o) in orow.iter_mut().enumerate() {
            *o = s.ot[t * n + r] * z;
        }
    }
}

/// Backward of window `i`, head `h`: adds into the query window's `dq` rows and into
/// `dbias` (`[n, n]` of head h), and writes the window's `dk`, `dv` head columns.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_head(
    x: &AttnInputs,
    go: &[f32],
    sh: &AttnShape,
    i: usize,
    h: usize,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    mut dbias: Option<&mut [f32]>,
    s: &mut Scratch,
) {
    let (n, c, d, ws) = (sh.n, sh.c(), sh.d, sh.window());
    let iq = i % sh.bq;
    let qw = &x.q[iq * ws..(iq + 1) * ws];
    let gw = &go[i * ws..(i + 1) * ws];
    gather_t(&x.k[i * ws..(i + 1) * ws], c, h * d, d, n, &mut s.kt);
    gather_t(&x.v[i * ws..(i + 1) * ws], c, h * d, d, n, &mut s.vt);
    s.dkt.fill(0.0);
    s.dvt.fill(0.0);
    let (bias, mask) = rows_of(x, sh, i, h);
    for r in 0..n {
        let lo = r * c + h * d;
        let qrow = &qw[lo..lo + d];
        let grow = &gw[lo..lo + d];
        weights_row(
            qrow,
            &s.kt,
            n,
            x.scale,
            bias.map(|b| &b[r * n..(r + 1) * n]),
            mask.map(|m| &m[r * n..(r + 1) * n]),
            &mut s.p,
        );
        // dP row = dO row · Vᵀ
        s.dp.fill(0.0);
        for (t, &g) in grow.iter().enumerate() {
            axpy(&mut s.dp, g, &s.vt[t * n..(t + 1) * n]);
        }
        let centre = dot(&s.p, &s.dp);
        // dS row, kept in dp
        for (dpj, &pj) in s.dp.iter_mut().zip(&s.p) {
            *dpj = pj * (*dpj - centre);
        }
        if let Some(db) = dbias.as_deref_mut() {
            for (b, &g) in db[r * n..(r + 1) * n].iter_mut().zip(&s.dp) {
                *b += g;
            }
        }
        for (t, dqv) in dq[lo..lo + d].iter_mut().enumerate() {
            *dqv += x.scale * dot(&s.dp, &s.kt[t * n..(t + 1) * n]);
        }
        for t in 0..d {
            axpy(&mut s.dkt[t * n..(t + 1) * n], x.scale * qrow[t], &s.dp);
            axpy(&mut s.dvt[t * n..(t + 1) * n], grow[t], &s.p);
        }
    }
    scatter_t(&s.dkt, c, h * d, d, n, dk);
    scatter_t(&s.dvt, c, h * d, d, n, dv);
}

/// A raw pointer into an output buffer that workers write disjoint windows of.
#[derive(Clone, Copy)]
struct OutPtr {
    ptr: *mut f32,
    /// The buffer's length in elements.
    len: usize,
}

// SAFETY: the pointer is only dereferenced through `window`, whose callers hand each
// window to one worker at a time; the buffer outlives the parallel loop that uses it
unsafe impl Send for OutPtr {}
// SAFETY: as for Send
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn new(buf: &mut [f32]) -> OutPtr {
        OutPtr {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// Window `i` (`len` elements each).
    ///
    /// # Safety
    /// The buffer is alive and not otherwise accessed while the slice lives, and no two
    /// live slices cover the same window.
    ///
    /// # Panics
    /// If the window lies outside the buffer.
    #[allow(clippy::mut_from_ref)]
    unsafe fn window(&self, i: usize, len: usize) -> &mut [f32] {
        assert!(
            (i + 1) * len <= self.len,
            "window {i} of {len} outside {}",
            self.len
        );
        // SAFETY: inside the buffer (asserted); exclusive by the caller's guarantee
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * len), len) }
    }
}

/// Forward pass of the query windows in `group`.
#[inline(always)]
fn forward_group(x: &AttnInputs, sh: &AttnShape, group: std::ops::Range<usize>, out: OutPtr) {
    let mut s = Scratch::new(sh);
    for iq in group {
        for rep in 0..sh.reps {
            let i = rep * sh.bq + iq;
            // SAFETY: window i belongs to query window iq, which only this group visits
            let ow = unsafe { out.window(i, sh.window()) };
            for h in 0..sh.heads {
                forward_head(x, sh, i, h, ow, &mut s);
            }
        }
    }
}

/// Backward pass of the query windows in `group`; returns the group's bias gradient.
#[inline(always)]
fn backward_group(
    x: &AttnInputs,
    go: &[f32],
    sh: &AttnShape,
    group: std::ops::Range<usize>,
    ptrs: [OutPtr; 3],
    want_bias: bool,
) -> Vec<f32> {
    let nn = sh.n * sh.n;
    let mut dbias = vec![0.0f32; if want_bias { sh.heads * nn } else { 0 }];
    let mut s = Scratch::new(sh);
    let ws = sh.window();
    for iq in group {
        // SAFETY: windows iq (dq) and rep·bq + iq (dk, dv) are only visited here
        let dq = unsafe { ptrs[0].window(iq, ws) };
        for rep in 0..sh.reps {
            let i = rep * sh.bq + iq;
            // SAFETY: as above
            let (dk, dv) = unsafe { (ptrs[1].window(i, ws), ptrs[2].window(i, ws)) };
            for h in 0..sh.heads {
                let db = want_bias.then(|| &mut dbias[h * nn..(h + 1) * nn]);
                backward_head(x, go, sh, i, h, dq, dk, dv, db, &mut s);
            }
        }
    }
    dbias
}

multiversioned!(forward_group_mv, (x: &AttnInputs, sh: &AttnShape, group: std::ops::Range<usize>, out: OutPtr) -> (), forward_group);
multiversioned!(backward_group_mv, (x: &AttnInputs, go: &[f32], sh: &AttnShape, group: std::ops::Range<usize>, ptrs: [OutPtr; 3], want_bias: bool) -> Vec<f32>, backward_group);

fn groups(bq: usize) -> Vec<std::ops::Range<usize>> {
    (0..bq.div_ceil(GROUP))
        .map(|g| g * GROUP..((g + 1) * GROUP).min(bq))
        .collect()
}

fn check(x: &AttnInputs, sh: &AttnShape) {
    let ws = sh.window();
    assert_eq!(x.q.len(), sh.bq * ws, "queries: [bq, n, C]");
    assert_eq!(x.k.len(), sh.bq * sh.reps * ws, "keys: [bq·reps, n, C]");
    assert_eq!(x.v.len(), x.k.len(), "values: the keys' shape");
    if let Some(b) = x.bias {
        assert_eq!(b.len(), sh.heads * sh.n * sh.n, "bias: [heads, n, n]");
    }
    if let Some(m) = x.mask {
        assert!(sh.mask_windows > 0, "a mask needs its window count");
        assert_eq!(
            m.len(),
            sh.mask_windows * sh.n * sh.n,
            "mask: [windows, n, n]"
        );
    }
}

/// O = softmax(scale·Q Kᵀ + B + M) V per window and head: `[bq·reps, n, C]`.
pub fn forward(x: &AttnInputs, sh: &AttnShape) -> Vec<f32> {
    check(x, sh);
    let bias_t = x.bias.map(|b| transpose_blocks(b, sh.n));
    let mask_t = x.mask.map(|m| transpose_blocks(m, sh.n));
    let xt = AttnInputs {
        bias: bias_t.as_deref(),
        mask: mask_t.as_deref(),
        ..*x
    };
    let mut out = vec![0.0f32; sh.bq * sh.reps * sh.window()];
    let ptr = OutPtr::new(&mut out);
    groups(sh.bq)
        .into_par_iter()
        .for_each(|g| forward_group_mv(&xt, sh, g, ptr));
    out
}

/// Each `n × n` block of `x` transposed.
fn transpose_blocks(x: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(n * n)
        .zip(x.par_chunks(n * n))
        .for_each(|(o, b)| {
            for r in 0..n {
                for j in 0..n {
                    o[j * n + r] = b[r * n + j];
                }
            }
        });
    out
}

/// Gradients of Σ go ⊙ O with respect to Q, K, V (and the bias when `want_bias`).
pub fn backward(x: &AttnInputs, go: &[f32], sh: &AttnShape, want_bias: bool) -> AttnGrads {
    check(x, sh);
    assert_eq!(go.len(), x.k.len(), "output gradient: [bq·reps, n, C]");
    let mut dq = vec![0.0f32; x.q.len()];
    let mut dk = vec![0.0f32; x.k.len()];
    let mut dv = vec![0.0f32; x.v.len()];
    let ptrs = [
        OutPtr::new(&mut dq),
        OutPtr::new(&mut dk),
        OutPtr::new(&mut dv),
    ];
    let parts: Vec<Vec<f32>> = groups(sh.bq)
        .into_par_iter()
        .map(|g| backward_group_mv(x, go, sh, g, ptrs, want_bias))
        .collect();
    // the groups' bias gradients summed in group order: the same result however
    // the groups were scheduled
    let dbias = want_bias.then(|| {
        let mut total = vec![0.0f32; sh.heads * sh.n * sh.n];
        for p in &parts {
            total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
        }
        total
    });
    AttnGrads { dq, dk, dv, dbias }
}
