//! Preprocessing (docs/method.md §1): RAS reorientation, resampling to the target
//! spacing (images trilinear, labels nearest), and intensity normalisation with
//! statistics fitted on the training set (CT) or per volume (MRI).

pub mod cache;
pub mod plan;

use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::io::layout::Modality;
use crate::io::{Reorientation, Volume, to_ras};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Isotropic target spacing in mm.
    pub spacing: f64,
    /// Percentiles of foreground intensities to clip to.
    pub clip_percentiles: (f64, f64),
    /// Foreground voxels sampled per CT training case for the statistics (nnU-Net: 10 000).
    pub samples_per_case: usize,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            spacing: 3.0,
            clip_percentiles: (0.5, 99.5),
            samples_per_case: 10_000,
        }
    }
}

/// CT intensity statistics fitted on the training set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CtStats {
    pub clip_low: f64,
    pub clip_high: f64,
    pub mean: f64,
    pub std: f64,
}

/// Linear-interpolated percentile (numpy's default) of sorted values, p in [0, 100].
pub fn percentile_sorted(sorted: &[f32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let f = pos - lo as f64;
    sorted[lo] as f64 * (1.0 - f) + sorted[hi] as f64 * f
}

/// Sample up to `n` foreground intensities (label > 0) of one case, deterministically.
pub fn sample_foreground(
    image: &Array3<f32>,
    labels: &Array3<u8>,
    n: usize,
    seed: u64,
) -> Vec<f32> {
    let fg: Vec<f32> = image
        .iter()
        .zip(labels.iter())
        .filter(|(_, l)| **l > 0)
        .map(|(v, _)| *v)
        .collect();
    if fg.len() <= n {
        return fg;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| fg[rng.random_range(0..fg.len())]).collect()
}

/// nnU-Net's CT scheme: clip to the foreground percentiles, then z-score with the
/// clipped foreground's mean and std.
pub fn fit_ct_stats(mut samples: Vec<f32>, cfg: &PreprocessConfig) -> anyhow::Result<CtStats> {
    anyhow::ensure!(
        !samples.is_empty(),
        "no foreground voxels in the CT training labels: cannot fit CT intensity statistics"
    );
    samples.sort_by(f32::total_cmp);
    let lo = percentile_sorted(&samples, cfg.clip_percentiles.0);
    let hi = percentile_sorted(&samples, cfg.clip_percentiles.1);
    let clipped: Vec<f64> = samples.iter().map(|&v| (v as f64).clamp(lo, hi)).collect();
    let n = clipped.len() as f64;
    let mean = clipped.iter().sum::<f64>() / n;
    let std = (clipped.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    Ok(CtStats {
        clip_low: lo,
        clip_high: hi,
        mean,
        std: std.max(1e-8),
    })
}

pub fn normalise_ct(image: &mut Array3<f32>, s: &CtStats) {
    let (lo, hi, m, sd) = (
        s.clip_low as f32,
        s.clip_high as f32,
        s.mean as f32,
        s.std as f32,
    );
    image.par_mapv_inplace(|v| (v.clamp(lo, hi) - m) / sd);
}

/// MRI: clip to the volume's own percentiles, z-score over its non-zero voxels.
pub fn normalise_mr(image: &mut Array3<f32>, cfg: &PreprocessConfig) {
    let mut v: Vec<f32> = image.iter().copied().filter(|x| *x != 0.0).collect();
    if v.is_empty() {
        return;
    }
    v.sort_by(f32::total_cmp);
    let lo = percentile_sorted(&v, cfg.clip_percentiles.0) as f32;
    let hi = percentile_sorted(&v, cfg.clip_percentiles.1) as f32;
    let clipped: Vec<f64> = v.iter().map(|&x| x.clamp(lo, hi) as f64).collect();
    let n = clipped.len() as f64;
    let mean = clipped.iter().sum::<f64>() / n;
    let std = (clipped.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n)
        .sqrt()
        .max(1e-8);
    let (m, sd) = (mean as f32, std as f32);
    image.par_mapv_inplace(|x| (x.clamp(lo, hi) - m) / sd);
}

/// An image on the working grid, and the way back to its own.
#[derive(Clone, Debug)]
pub struct Working {
    /// RAS, at the isotropic working spacing, normalised.
    pub image: Volume<f32>,
    /// From the image's own axes to RAS.
    pub reorientation: Reorientation,
    /// The RAS grid before resampling.
    pub ras_spacing: [f64; 3],
    pub ras_shape: [usize; 3],
}

/// The preprocessing of an image, one function for the training cache and for inference
/// alike (nnU-Net's `run_case`): RAS reorientation, trilinear resampling to
/// `cfg.spacing` in every direction, and the modality's normalisation (CT with the
/// run's fitted statistics, which must be given; MRI per volume).
pub fn to_working_grid(
    image: &Volume<f32>,
    modality: Modality,
    cfg: &PreprocessConfig,
    ct_stats: Option<&CtStats>,
) -> anyhow::Result<Working> {
    let (ras, reorientation) = to_ras(image);
    let mut work = resample_linear(&ras, [cfg.spacing; 3]);
    match modality {
        Modality::Ct => {
            let stats = ct_stats.ok_or_else(|| {
                anyhow::anyhow!("CT statistics must be fitted before CT cases are prepared")
            })?;
            normalise_ct(&mut work.data, stats)
        }
        Modality::Mr => normalise_mr(&mut work.data, cfg),
    }
    Ok(Working {
        image: work,
        reorientation,
        ras_spacing: ras.spacing,
        ras_shape: ras.shape(),
    })
}

/// A class map on the working grid of its image: RAS, nearest-neighbour resampled.
pub fn labels_to_working_grid(classes: &Volume<u8>, cfg: &PreprocessConfig) -> Volume<u8> {
    let (ras, _) = to_ras(classes);
    resample_nearest(&ras, [cfg.spacing; 3])
}

/// The grid a volume of `shape` and `spacing` gets at `target` spacing: same first
/// voxel centre, `round(n·s/t)` voxels per axis.
pub fn resampled_shape(shape: [usize; 3], spacing: [f64; 3], target: [f64; 3]) -> [usize; 3] {
    std::array::from_fn(|a| ((shape[a] as f64 * spacing[a] / target[a]).round() as usize).max(1))
}

/// Per output index along one axis: the two source neighbours and the weight of the
/// second, output voxel `i` sitting at `i · scale` source voxels (edges clamped).
pub fn linear_axis_weights(n_out: usize, scale: f64, n_src: usize) -> Vec<(usize, usize, f32)> {
    (0..n_out)
        .map(|i| {
            let x = (i as f64 * scale).min((n_src - 1) as f64);
            let i0 = x.floor() as usize;
            let i1 = (i0 + 1).min(n_src - 1);
            (i0, i1, (x - i0 as f64) as f32)
        })
        .collect()
}

/// Resample an axis-aligned (e.g. RAS) volume to `target` spacing. Images are
/// interpolated trilinearly (edges clamped); the affine's columns are rescaled.
pub fn resample_linear(vol: &Volume<f32>, target: [f64; 3]) -> Volume<f32> {
    let shape = vol.shape();
    let out_shape = resampled_shape(shape, vol.spacing, target);
    let scale: [f64; 3] = std::array::from_fn(|a| target[a] / vol.spacing[a]);
    let src = &vol.data;
    let axis = |a: usize| linear_axis_weights(out_shape[a], scale[a], shape[a]);
    let (ax, ay, az) = (axis(0), axis(1), axis(2));
    let mut out = Array3::<f32>::zeros((out_shape[0], out_shape[1], out_shape[2]));
    out.axis_iter_mut(ndarray::Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut sl)| {
            let (x0, x1, fx) = ax[i];
            for (j, &(y0, y1, fy)) in ay.iter().enumerate() {
                for (k, &(z0, z1, fz)) in az.iter().enumerate() {
                    let c =
                        |x: usize, y: usize| src[[x, y, z0]] * (1.0 - fz) + src[[x, y, z1]] * fz;
                    let v0 = c(x0, y0) * (1.0 - fy) + c(x0, y1) * fy;
                    let v1 = c(x1, y0) * (1.0 - fy) + c(x1, y1) * fy;
                    sl[[j, k]] = v0 * (1.0 - fx) + v1 * fx;
                }
            }
        });
    Volume::new(out, target, rescaled_affine(vol, scale))
}

/// Resample labels with nearest neighbour (same grid as [`resample_linear`]).
pub fn resample_nearest(vol: &Volume<u8>, target: [f64; 3]) -> Volume<u8> {
    let shape = vol.shape();
    let out_shape = resampled_shape(shape, vol.spacing, target);
    let scale: [f64; 3] = std::array::from_fn(|a| target[a] / vol.spacing[a]);
    let idx = |a: usize, i: usize| ((i as f64 * scale[a]).round() as usize).min(shape[a] - 1);
    let out = Array3::from_shape_fn((out_shape[0], out_shape[1], out_shape[2]), |(i, j, k)| {
        vol.data[[idx(0, i), idx(1, j), idx(2, k)]]
    });
    Volume::new(out, target, rescaled_affine(vol, scale))
}

fn rescaled_affine<T>(vol: &Volume<T>, scale: [f64; 3]) -> nalgebra::Matrix4<f64> {
    let mut m = vol.affine;
    for c in 0..3 {
        for r in 0..3 {
            m[(r, c)] *= scale[c];
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn resampling_to_own_spacing_is_identity() {
        let data = Array3::from_shape_fn((5, 6, 7), |(i, j, k)| (i * 31 + j * 7 + k) as f32 * 0.5);
        let v = Volume::with_spacing(data, [0.8, 1.2, 2.0]);
        let r = resample_linear(&v, v.spacing);
        assert_eq!(r.data, v.data);
        assert_eq!(r.affine, v.affine);
        let l = Volume::with_spacing(v.data.mapv(|x| (x as u32 % 8) as u8), v.spacing);
        assert_eq!(resample_nearest(&l, l.spacing).data, l.data);
    }

    #[test]
    fn downsampling_a_linear_ramp_matches_the_analytic_values() {
        // v(x, y, z) = 2x + 3y − z in mm on a 1 mm grid; at 2 mm spacing voxel (i, j, k)
        // sits at (2i, 2j, 2k) mm, so it must hold 4i + 6j − 2k exactly
        let data = Array3::from_shape_fn((10, 8, 6), |(i, j, k)| {
            2.0 * i as f32 + 3.0 * j as f32 - k as f32
        });
        let v = Volume::with_spacing(data, [1.0; 3]);
        let r = resample_linear(&v, [2.0; 3]);
        assert_eq!(r.shape(), [5, 4, 3]);
        for ((i, j, k), &x) in r.data.indexed_iter() {
            let want = 4.0 * i as f32 + 6.0 * j as f32 - 2.0 * k as f32;
            assert!((x - want).abs() < 1e-5, "({i},{j},{k}): {x} vs {want}");
        }
        // and a 1.5× upsampling hits half-voxel positions: v at x = 0.5 mm is 1.0
        let up = resample_linear(&v, [0.5, 1.0, 1.0]);
        assert!((up.data[[1, 0, 0]] - 1.0).abs() < 1e-6);
        assert_eq!(up.spacing, [0.5, 1.0, 1.0]);
        assert!((up.affine[(0, 0)] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn fitted_ct_statistics_of_a_known_distribution() {
        // foreground ~ N(300, 40²), background ~ N(−800, 10²)
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let fg = Normal::new(300.0f32, 40.0).unwrap();
        let bg = Normal::new(-800.0f32, 10.0).unwrap();
        let labels = Array3::from_shape_fn((60, 60, 60), |(i, _, _)| u8::from(i < 30));
        let image = Array3::from_shape_fn((60, 60, 60), |(i, _, _)| {
            if i < 30 {
                fg.sample(&mut rng)
            } else {
                bg.sample(&mut rng)
            }
        });
        let samples = sample_foreground(&image, &labels, 50_000, 1);
        let s = fit_ct_stats(samples, &PreprocessConfig::default()).unwrap();
        // N(300, 40): the 0.5/99.5 percentiles are 300 ∓ 2.5758·40 = 196.97 / 403.03;
        // clipping there barely moves the mean and shrinks the std to 39.63 (numpy, 5 M samples)
        assert!((s.clip_low - 196.97).abs() < 3.0, "{s:?}");
        assert!((s.clip_high - 403.03).abs() < 3.0, "{s:?}");
        assert!((s.mean - 300.0).abs() < 1.0, "{s:?}");
        assert!((s.std - 39.63).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [1.0f32, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], 50) = 2.5; 10 → 1.3
        assert!((percentile_sorted(&v, 50.0) - 2.5).abs() < 1e-12);
        assert!((percentile_sorted(&v, 10.0) - 1.3).abs() < 1e-6);
    }
}
