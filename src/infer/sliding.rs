//! MONAI-compatible sliding-window placement and Gaussian importance map, and
//! the weighted accumulation of window predictions (eqs 14–16).

use ndarray::{Array3, Array4, s};

/// Window starts along one axis, as MONAI's `_get_scan_interval` + `dense_patch_slices`.
pub fn window_starts(size: usize, roi: usize, overlap: f64) -> Vec<usize> {
    if size <= roi {
        return vec![0];
    }
    let interval = ((roi as f64 * (1.0 - overlap)) as usize).max(1);
    let num = (size as f64 / interval as f64).ceil() as usize;
    let scan = (0..num)
        .find(|d| d * interval + roi >= size)
        .map(|d| d + 1)
        .unwrap_or(1);
    (0..scan)
        .map(|i| {
            let st = i * interval;
            st - (st + roi).saturating_sub(size)
        })
        .collect()
}

/// MONAI's `compute_importance_map(mode="gaussian", sigma_scale=0.125)`: separable
/// exp(−x²/2σ²) with σ = 0.125·roi and x centred, clamped below at 1e-3.
pub fn importance_map(roi: [usize; 3], sigma_scale: f64) -> Array3<f32> {
    let g = |n: usize| -> Vec<f64> {
        let sigma = sigma_scale * n as f64;
        (0..n)
            .map(|i| {
                let x = i as f64 - (n as f64 - 1.0) / 2.0;
                (-(x * x) / (2.0 * sigma * sigma)).exp()
            })
            .collect()
    };
    let (a, b, c) = (g(roi[0]), g(roi[1]), g(roi[2]));
    let mut m = Array3::from_shape_fn((roi[0], roi[1], roi[2]), |(i, j, k)| a[i] * b[j] * c[k]);
    let min_non_zero = m.iter().cloned().fold(f64::INFINITY, f64::min).max(1e-3);
    m.mapv_inplace(|v| v.max(min_non_zero));
    m.mapv(|v| v as f32)
}

/// Symmetric padding that brings each axis up to `roi` (MONAI pads (d/2, d − d/2)).
pub fn padding(shape: [usize; 3], roi: usize) -> [(usize, usize); 3] {
    shape.map(|n| {
        let d = roi.saturating_sub(n);
        (d / 2, d - d / 2)
    })
}

/// Every window start of a padded volume.
pub fn windows(shape: [usize; 3], roi: usize, overlap: f64) -> Vec<[usize; 3]> {
    let (a, b, c) = (
        window_starts(shape[0], roi, overlap),
        window_starts(shape[1], roi, overlap),
        window_starts(shape[2], roi, overlap),
    );
    let mut out = Vec::with_capacity(a.len() * b.len() * c.len());
    for &i in &a {
        for &j in &b {
            for &k in &c {
                out.push([i, j, k]);
            }
        }
    }
    out
}

/// The weighted sum of window predictions over a (padded) volume, normalised by the
/// summed weights: the only full-size float buffers are these two.
pub struct Accumulator {
    pub sum: Array4<f32>,
    pub weight: Array3<f32>,
    pub importance: Array3<f32>,
}

impl Accumulator {
    pub fn new(classes: usize, shape: [usize; 3], roi: usize) -> Accumulator {
        Accumulator {
            sum: Array4::zeros((classes, shape[0], shape[1], shape[2])),
            weight: Array3::zeros((shape[0], shape[1], shape[2])),
            importance: importance_map([roi; 3], 0.125),
        }
    }

    /// Add one window's prediction `[K, roi, roi, roi]` (flat, row-major) at `start`.
    pub fn add(&mut self, start: [usize; 3], pred: &[f32]) {
        let r = self.importance.dim().0;
        let k = self.sum.dim().0;
        let n = r * r * r;
        let [i0, j0, l0] = start;
        {
            let mut w = self
                .weight
                .slice_mut(s![i0..i0 + r, j0..j0 + r, l0..l0 + r]);
            w += &self.importance;
        }
        for c in 0..k {
            let src = ndarray::ArrayView3::from_shape((r, r, r), &pred[c * n..(c + 1) * n])
                .expect("window shape");
            let mut dst = self
                .sum
                .slice_mut(s![c, i0..i0 + r, j0..j0 + r, l0..l0 + r]);
            ndarray::Zip::from(&mut dst)
                .and(&src)
                .and(&self.importance)
                .for_each(|d, &p, &w| *d += p * w);
        }
    }

    /// True when the window at `start` holds a voxel of the unpadded region (inside
    /// `pad`) that no window has reached yet.
    pub fn has_gap(&self, start: [usize; 3], pad: [(usize, usize); 3]) -> bool {
        let r = self.importance.dim().0;
        let (x, y, z) = self.weight.dim();
        let lo: [usize; 3] = std::array::from_fn(|a| start[a].max(pad[a].0));
        let hi = [
            (start[0] + r).min(x - pad[0].1),
            (start[1] + r).min(y - pad[1].1),
            (start[2] + r).min(z - pad[2].1),
        ];
        (0..3).all(|a| lo[a] < hi[a])
            && self
                .weight
                .slice(s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]])
                .iter()
                .any(|&w| w == 0.0)
    }

    /// The normalised output (eqs 15–16), cropped by `pad`.
    pub fn finish(mut self, pad: [(usize, usize); 3]) -> Array4<f32> {
        let (k, x, y, z) = self.sum.dim();
        for c in 0..k {
            let mut sc = self.sum.slice_mut(s![c, .., .., ..]);
            ndarray::Zip::from(&mut sc)
                .and(&self.weight)
                .for_each(|v, &w| *v /= w);
        }
        self.sum
            .slice(s![
                ..,
                pad[0].0..x - pad[0].1,
                pad[1].0..y - pad[1].1,
                pad[2].0..z - pad[2].1
            ])
            .to_owned()
    }
}

/// Pad a volume symmetrically with `value`.
pub fn pad_volume(v: &Array3<f32>, pad: [(usize, usize); 3], value: f32) -> Array3<f32> {
    if pad.iter().all(|p| *p == (0, 0)) {
        return v.clone();
    }
    let (x, y, z) = v.dim();
    let mut out = Array3::from_elem(
        (
            x + pad[0].0 + pad[0].1,
            y + pad[1].0 + pad[1].1,
            z + pad[2].0 + pad[2].1,
        ),
        value,
    );
    out.slice_mut(s![
        pad[0].0..pad[0].0 + x,
        pad[1].0..pad[1].0 + y,
        pad[2].0..pad[2].0 + z
    ])
    .assign(v);
    out
}

/// Sliding-window inference of a single volume with a window predictor
/// `f(windows [n·roi³]) → [n·K·roi³]`, `batch` windows at a time.
pub fn sliding_window(
    volume: &Array3<f32>,
    roi: usize,
    overlap: f64,
    classes: usize,
    batch: usize,
    mut f: impl FnMut(&[f32], usize) -> Vec<f32>,
) -> Array4<f32> {
    let (x, y, z) = volume.dim();
    let pad = padding([x, y, z], roi);
    let v = pad_volume(volume, pad, 0.0);
    let (px, py, pz) = v.dim();
    let mut acc = Accumulator::new(classes, [px, py, pz], roi);
    let wins = windows([px, py, pz], roi, overlap);
    for chunk in wins.chunks(batch.max(1)) {
        let mut input = Vec::with_capacity(chunk.len() * roi * roi * roi);
        for st in chunk {
            input.extend(
                v.slice(s![
                    st[0]..st[0] + roi,
                    st[1]..st[1] + roi,
                    st[2]..st[2] + roi
                ])
                .iter(),
            );
        }
        let out = f(&input, chunk.len());
        let per = classes * roi * roi * roi;
        for (i, st) in chunk.iter().enumerate() {
            acc.add(*st, &out[i * per..(i + 1) * per]);
        }
    }
    acc.finish(pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_starts_equal_monais() {
        assert_eq!(window_starts(300, 96, 0.5), vec![0, 48, 96, 144, 192, 204]);
        assert_eq!(window_starts(300, 96, 0.25), vec![0, 72, 144, 204]);
        assert_eq!(window_starts(96, 96, 0.5), vec![0]);
        assert_eq!(window_starts(40, 96, 0.5), vec![0]);
    }

    #[test]
    fn importance_map_matches_the_closed_form() {
        let m = importance_map([32, 32, 32], 0.125);
        let sigma = 4.0f64;
        for (i, j, k) in [
            (15usize, 15usize, 16usize),
            (10, 20, 12),
            (0, 0, 0),
            (31, 5, 17),
        ] {
            let x = |a: usize| a as f64 - 15.5;
            let want = (-(x(i).powi(2) + x(j).powi(2) + x(k).powi(2)) / (2.0 * sigma * sigma))
                .exp()
                .max(1e-3);
            assert!(
                (m[[i, j, k]] as f64 - want).abs() < 1e-6 * want.max(1.0),
                "({i},{j},{k})"
            );
        }
        assert!((m[[0, 0, 0]] - 1e-3).abs() < 1e-9);
    }

    #[test]
    fn an_identity_network_reproduces_the_input() {
        // "network": class 0 = the input, class 1 = its negation
        let v = Array3::from_shape_fn((37, 20, 50), |(i, j, k)| {
            (i * 3 + j * 5 + k * 7) as f32 % 13.0 - 6.0
        });
        let out = sliding_window(&v, 16, 0.5, 2, 3, |w, n| {
            let m = 16 * 16 * 16;
            let mut o = Vec::with_capacity(n * 2 * m);
            for i in 0..n {
                o.extend_from_slice(&w[i * m..(i + 1) * m]);
                o.extend(w[i * m..(i + 1) * m].iter().map(|x| -x));
            }
            o
        });
        assert_eq!(out.dim(), (2, 37, 20, 50));
        for ((c, i, j, k), &o) in out.indexed_iter() {
            let want = if c == 0 { v[[i, j, k]] } else { -v[[i, j, k]] };
            assert!((o - want).abs() < 1e-4, "({c},{i},{j},{k}): {o} vs {want}");
        }
    }
}
