//! Imaging a subject: the voxel grid, CT and bSSFP-like MRI appearance,
//! texture, partial-volume blur, noise and bias field.

use nalgebra::Matrix4;
use ndarray::{Array3, Axis, Zip};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::anatomy::{NUM_TISSUES, Subject, Tissue};
use crate::data::layout::Modality;
use crate::geometry::{SignedPerm, mat3_transpose, mat3_vec};
use crate::io::Volume;

/// A voxel grid: shape, spacing, orientation and where its centre sits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Grid {
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    /// Voxel axis v points along world axis `orientation.perm[v]` with sign `orientation.sign[v]`.
    pub orientation: SignedPerm,
    pub orientation_code: String,
    /// World position of the grid's centre.
    pub centre: [f64; 3],
}

impl Grid {
    pub fn affine(&self) -> Matrix4<f64> {
        let mut m = Matrix4::identity();
        for v in 0..3 {
            for w in 0..3 {
                m[(w, v)] = 0.0;
            }
            m[(self.orientation.perm[v], v)] = self.orientation.sign[v] as f64 * self.spacing[v];
        }
        // the centre voxel (n-1)/2 maps to `centre`
        for w in 0..3 {
            let mut c = self.centre[w];
            for v in 0..3 {
                c -= m[(w, v)] * (self.shape[v] as f64 - 1.0) / 2.0;
            }
            m[(w, 3)] = c;
        }
        m
    }

    pub fn n_voxels(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Per-subject appearance: a mean intensity per tissue plus texture and noise levels.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Appearance {
    /// Mean intensity of [air, lung, fat, soft tissue, Myo, left blood, right blood, bone].
    pub tissue_mean: [f64; NUM_TISSUES],
    /// Texture amplitude: HU for CT, a fraction of the local signal for MRI.
    pub texture: f64,
    /// Partial-volume blur σ in voxels.
    pub blur_sigma_vox: f64,
    /// CT: white-noise σ in HU; MRI: Rician σ as a fraction of the blood signal.
    pub noise: f64,
    /// MRI only: bias-field coefficients (exponent of a quadratic polynomial).
    pub bias: Option<[f64; 9]>,
    /// synthwhs-2: the variation of a case beyond synthwhs-1's (`artefacts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub varied: Option<VariedAppearance>,
}

/// Tissue means and per-subject spreads (docs/synthwhs.md).
const CT_TABLE: [(f64, f64); NUM_TISSUES] = [
    (-1000.0, 0.0),
    (-850.0, 50.0),
    (-100.0, 20.0),
    (40.0, 10.0),
    (100.0, 15.0),
    (350.0, 50.0),
    (250.0, 60.0),
    (700.0, 150.0),
];
const MR_TABLE: [f64; NUM_TISSUES] = [0.0, 40.0, 700.0, 300.0, 250.0, 800.0, 780.0, 400.0];

impl Appearance {
    pub fn random(modality: Modality, rng: &mut impl Rng) -> Appearance {
        match modality {
            Modality::Ct => {
                let mut tissue_mean = [0.0; NUM_TISSUES];
                for (t, (m, s)) in CT_TABLE.iter().enumerate() {
                    tissue_mean[t] = if *s > 0.0 {
                        Normal::new(*m, *s).unwrap().sample(rng)
                    } else {
                        *m
                    };
                }
                // blood pools keep their contrast above the myocardium
                let myo = tissue_mean[Tissue::Myo as usize];
                for t in [Tissue::LeftBlood, Tissue::RightBlood] {
                    tissue_mean[t as usize] = tissue_mean[t as usize].max(myo + 60.0);
                }
                Appearance {
                    tissue_mean,
                    texture: rng.random_range(10.0..20.0),
                    blur_sigma_vox: rng.random_range(0.5..0.7),
                    noise: rng.random_range(20.0..40.0),
                    bias: None,
                    varied: None,
                }
            }
            Modality::Mr => {
                let mut tissue_mean = [0.0; NUM_TISSUES];
                for (t, m) in MR_TABLE.iter().enumerate() {
                    tissue_mean[t] = m * (1.0 + 0.05 * Normal::new(0.0, 1.0).unwrap().sample(rng));
                }
                let bias = std::array::from_fn(|_| rng.random_range(-0.12..0.12));
                Appearance {
                    tissue_mean,
                    texture: 0.05,
                    blur_sigma_vox: rng.random_range(0.5..0.7),
                    noise: rng.random_range(0.02..0.04),
                    bias: Some(bias),
                    varied: None,
                }
            }
        }
    }
}

pub use super::artefacts::VariedAppearance;
pub use crate::seed::derive_seed;

/// Where a subject sits in one scanner's world.
pub struct Placement {
    /// World position of the heart centre.
    pub heart_centre: [f64; 3],
    /// World = heart_centre + pose · subject.
    pub pose: [[f64; 3]; 3],
}

/// The label classes and the noise-free tissue image of a subject on a grid.
pub fn sample_subject(
    subject: &Subject,
    grid: &Grid,
    placement: &Placement,
    app: &Appearance,
) -> (Array3<u8>, Array3<f32>) {
    let affine = grid.affine();
    let pose_t = mat3_transpose(&placement.pose);
    let [nx, ny, nz] = grid.shape;
    let varied = app.varied.as_ref();
    let shifts = varied.map_or(vec![[0.0; 3]; nz], |v| v.slice_shifts(grid));
    let class_offset = varied.map_or([0.0; 8], |v| v.class_offset);
    let mut classes = Array3::<u8>::zeros((nx, ny, nz));
    let mut image = Array3::<f32>::zeros((nx, ny, nz));
    // parallel over i-slabs; each voxel is independent, so the result is deterministic
    classes
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(image.axis_iter_mut(Axis(0)).into_par_iter())
        .enumerate()
        .for_each(|(i, (mut cls, mut img))| {
            for j in 0..ny {
                for k in 0..nz {
                    let mut w = [0.0; 3];
                    for r in 0..3 {
                        w[r] = affine[(r, 0)] * i as f64
                            + affine[(r, 1)] * j as f64
                            + affine[(r, 2)] * k as f64
                            + affine[(r, 3)]
                            - placement.heart_centre[r]
                            - shifts[k][r];
                    }
                    let p = mat3_vec(&pose_t, w);
                    let (c, t) = subject.sample(p);
                    cls[[j, k]] = c;
                    img[[j, k]] = (app.tissue_mean[t as usize] + class_offset[c as usize]) as f32;
                }
            }
        });
    (classes, image)
}

/// Smooth texture: unit Gaussian noise on a lattice of about `cell_mm`, trilinearly interpolated.
fn texture_field(shape: [usize; 3], spacing: [f64; 3], cell_mm: f64, seed: u64) -> Array3<f32> {
    let step = spacing.map(|s| (cell_mm / s).max(1.0));
    let ln = [0, 1, 2].map(|a| (shape[a] as f64 / step[a]).ceil() as usize + 2);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let lattice = Array3::from_shape_simple_fn((ln[0], ln[1], ln[2]), || normal.sample(&mut rng));
    // trilinear interpolation of a white lattice has variance ~0.3; rescale towards 1
    let gain = 1.0 / 0.55;
    let mut out = Array3::<f32>::zeros((shape[0], shape[1], shape[2]));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut sl)| {
            let xi = i as f64 / step[0];
            let i0 = xi as usize;
            let fi = (xi - i0 as f64) as f32;
            for j in 0..shape[1] {
                let xj = j as f64 / step[1];
                let j0 = xj as usize;
                let fj = (xj - j0 as f64) as f32;
                for k in 0..shape[2] {
                    let xk = k as f64 / step[2];
                    let k0 = xk as usize;
                    let fk = (xk - k0 as f64) as f32;
                    let l = |a: usize, b: usize, c: usize| lattice[[i0 + a, j0 + b, k0 + c]];
                    let v00 = l(0, 0, 0) * (1.0 - fk) + l(0, 0, 1) * fk;
                    let v01 = l(0, 1, 0) * (1.0 - fk) + l(0, 1, 1) * fk;
                    let v10 = l(1, 0, 0) * (1.0 - fk) + l(1, 0, 1) * fk;
                    let v11 = l(1, 1, 0) * (1.0 - fk) + l(1, 1, 1) * fk;
                    let v0 = v00 * (1.0 - fj) + v01 * fj;
                    let v1 = v10 * (1.0 - fj) + v11 * fj;
                    sl[[j, k]] = (v0 * (1.0 - fi) + v1 * fi) * gain;
                }
            }
        });
    out
}

/// Separable Gaussian blur with σ in voxels (same σ on every axis), edges clamped.
pub fn gaussian_blur(img: &mut Array3<f32>, sigma: f64) {
    gaussian_blur_axes(img, [sigma; 3]);
}

/// Separable Gaussian blur with its own σ (voxels) along each axis, edges clamped.
pub fn gaussian_blur_axes(img: &mut Array3<f32>, sigma: [f64; 3]) {
    for (axis, &sigma) in sigma.iter().enumerate() {
        if sigma <= 0.0 {
            continue;
        }
        let r = (3.0 * sigma).ceil() as isize;
        let mut k: Vec<f32> = (-r..=r)
            .map(|x| (-(x * x) as f64 / (2.0 * sigma * sigma)).exp() as f32)
            .collect();
        let s: f32 = k.iter().sum();
        k.iter_mut().for_each(|x| *x /= s);
        let n = img.shape()[axis];
        let mut lanes: Vec<_> = img.lanes_mut(Axis(axis)).into_iter().collect();
        lanes.par_iter_mut().for_each(|lane| {
            let src: Vec<f32> = lane.iter().copied().collect();
            for (i, out) in lane.iter_mut().enumerate() {
                let mut acc = 0.0;
                for (t, w) in k.iter().enumerate() {
                    let j = (i as isize + t as isize - r).clamp(0, n as isize - 1) as usize;
                    acc += w * src[j];
                }
                *out = acc;
            }
        });
    }
}

/// Noise (CT: Gaussian, rounded and clamped to int16 HU; MRI: Rician) and, for MRI,
/// the bias field, per i-slab with its own seeded generator.
fn add_noise_and_bias(
    image: &mut Array3<f32>,
    modality: Modality,
    grid: &Grid,
    app: &Appearance,
    seed: u64,
) {
    let blood = match &app.varied {
        Some(v) => v.noise_reference as f32,
        None => app.tissue_mean[Tissue::LeftBlood as usize] as f32,
    };
    let (bias_lo, bias_hi) = match &app.varied {
        Some(_) => (0.5, 1.6),
        None => (0.7, 1.3),
    };
    image
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut sl)| {
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &[2, i as u64]));
            let normal = Normal::new(0.0f32, 1.0).unwrap();
            for ((j, k), v) in sl.indexed_iter_mut() {
                match modality {
                    Modality::Ct => {
                        *v = (*v + app.noise as f32 * normal.sample(&mut rng))
                            .round()
                            .clamp(-1024.0, 3071.0);
                    }
                    Modality::Mr => {
                        let bias = app.bias.expect("MRI appearance has a bias field");
                        // normalised position in [-1, 1] within the grid
                        let idx = [i, j, k];
                        let u: [f64; 3] = std::array::from_fn(|a| {
                            2.0 * idx[a] as f64 / (grid.shape[a].max(2) - 1) as f64 - 1.0
                        });
                        let e = bias[0] * u[0]
                            + bias[1] * u[1]
                            + bias[2] * u[2]
                            + bias[3] * u[0] * u[0]
                            + bias[4] * u[1] * u[1]
                            + bias[5] * u[2] * u[2]
                            + bias[6] * u[0] * u[1]
                            + bias[7] * u[1] * u[2]
                            + bias[8] * u[0] * u[2];
                        let b = e.exp().clamp(bias_lo, bias_hi) as f32;
                        let s = *v * b;
                        let sigma = app.noise as f32 * blood;
                        let n1 = sigma * normal.sample(&mut rng);
                        let n2 = sigma * normal.sample(&mut rng);
                        *v = ((s + n1) * (s + n1) + n2 * n2).sqrt();
                    }
                }
            }
        });
}

/// Render a subject on a grid: labels (classes) and the final image.
pub fn render(
    subject: &Subject,
    modality: Modality,
    grid: &Grid,
    placement: &Placement,
    app: &Appearance,
    seed: u64,
) -> (Volume<u8>, Volume<f32>) {
    let (classes, mut image) = sample_subject(subject, grid, placement, app);
    let air = app.tissue_mean[Tissue::Air as usize] as f32;
    // texture on every tissue but air
    let tex = texture_field(grid.shape, grid.spacing, 2.0, derive_seed(seed, &[1]));
    let texture = app.texture as f32;
    Zip::from(&mut image).and(&tex).par_for_each(|v, &t| {
        if *v != air {
            *v += match modality {
                Modality::Ct => texture * t,
                Modality::Mr => texture * t * *v,
            };
        }
    });
    match &app.varied {
        Some(v) => {
            let sigma = [
                app.blur_sigma_vox,
                app.blur_sigma_vox,
                v.blur_sigma_slice_vox,
            ];
            gaussian_blur_axes(&mut image, sigma);
            v.add_ghost(&mut image);
        }
        None => gaussian_blur(&mut image, app.blur_sigma_vox),
    }

    add_noise_and_bias(&mut image, modality, grid, app, seed);
    let affine = grid.affine();
    let spacing = grid.spacing;
    (
        Volume::new(classes, spacing, affine),
        Volume::new(image, spacing, affine),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_preserves_a_constant_and_the_mean_of_an_impulse() {
        let mut c = Array3::from_elem((6, 7, 8), 3.5f32);
        gaussian_blur(&mut c, 0.6);
        assert!(c.iter().all(|v| (v - 3.5).abs() < 1e-5));
        let mut d = Array3::<f32>::zeros((9, 9, 9));
        d[[4, 4, 4]] = 1.0;
        gaussian_blur(&mut d, 0.6);
        assert!((d.sum() - 1.0).abs() < 1e-5);
        assert!(d[[4, 4, 4]] < 1.0 && d[[4, 4, 5]] > 0.0);
    }

    #[test]
    fn grid_centre_maps_to_centre() {
        let g = Grid {
            shape: [11, 21, 5],
            spacing: [0.5, 0.7, 2.0],
            orientation: SignedPerm {
                perm: [1, 0, 2],
                sign: [-1, 1, -1],
            },
            orientation_code: String::new(),
            centre: [10.0, -20.0, 5.0],
        };
        let v = Volume::new(Array3::<u8>::zeros((11, 21, 5)), g.spacing, g.affine());
        let w = v.world_of([5.0, 10.0, 2.0]);
        for a in 0..3 {
            assert!((w[a] - g.centre[a]).abs() < 1e-12);
        }
        assert_eq!(crate::io::Orientation::of_affine(&g.affine()).code(), "PRI");
    }

    #[test]
    fn derived_seeds_differ() {
        let a = derive_seed(1, &[0, 1]);
        let b = derive_seed(1, &[1, 0]);
        let c = derive_seed(2, &[0, 1]);
        assert!(a != b && a != c && b != c);
        assert_eq!(a, derive_seed(1, &[0, 1]));
    }
}
