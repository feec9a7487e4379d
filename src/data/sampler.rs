//! Paired cubic patches for training: case pairing, foreground oversampling,
//! spatial and intensity augmentation, modality self-pairing. A batch depends only
//! on (seed, step), so it is reproducible, thread-independent and resumable.

use std::ops::Range;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::data::pairing::partner_start;
use crate::data::synth::anatomy::Displacement;
use crate::data::synth::render::derive_seed;
use crate::geometry::{SignedPerm, euler_rotation_deg, mat3_mul, mat3_vec, perm_matrix_f64};
use crate::preprocess::cache::PreparedCase;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pairing {
    /// Paired data sets (SynthWHS default): case i of CT with case i of MRI.
    Index,
    /// MM-WHS: CT and MRI from different patients, paired at random each time.
    Random,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    pub p_flip: f64,
    pub p_rotate: f64,
    pub max_rotation_deg: f64,
    pub p_scale: f64,
    pub scale_range: (f64, f64),
    pub p_gamma: f64,
    pub gamma_range: (f64, f64),
    pub p_noise: f64,
    pub max_noise_std: f64,
    /// Probability of a smooth non-rigid warp of a patch (drawn per patch): a cubic
    /// B-spline displacement whose control points are `elastic_control_vox` voxels
    /// apart, at most `max_elastic_vox` voxels long: a smooth local distortion of the
    /// patch, blind to the labels (it does not move one structure against another).
    pub p_elastic: f64,
    pub max_elastic_vox: f64,
    pub elastic_control_vox: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        // nnU-Net's probabilities, with rotations kept small and no mirroring
        AugmentConfig {
            // the heart is chiral: a mirror image swaps how left and right look
            p_flip: 0.0,
            p_rotate: 0.2,
            max_rotation_deg: 15.0,
            p_scale: 0.2,
            scale_range: (0.85, 1.25),
            p_gamma: 0.3,
            gamma_range: (0.7, 1.5),
            p_noise: 0.1,
            max_noise_std: 0.1,
            p_elastic: 0.0,
            max_elastic_vox: 2.0,
            elastic_control_vox: 8.0,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all (the `tiny` preset: at a ten-minute budget the network
    /// has not yet fitted the unaugmented patches, and no augmentation tried there
    /// helped; measured in docs/method-notes.md).
    pub fn none() -> Self {
        AugmentConfig {
            p_flip: 0.0,
            p_rotate: 0.0,
            p_scale: 0.0,
            p_gamma: 0.0,
            p_noise: 0.0,
            p_elastic: 0.0,
            ..AugmentConfig::default()
        }
    }

    /// Rotations alone, with probability `p_rotate` per item and up to
    /// `max_rotation_deg` about each axis (the `cpu` preset: 0.5 and 30°, chosen on the
    /// held-out checks, where its hour gained 0.14 CT Dice on held-out orientation and
    /// 0.08 on the full check, MRI unchanged; docs/method-notes.md).
    pub fn rotations(p_rotate: f64, max_rotation_deg: f64) -> Self {
        AugmentConfig {
            p_rotate,
            max_rotation_deg,
            ..AugmentConfig::none()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    pub batch_size: usize,
    /// Fraction of patches centred on a foreground voxel of a random present class.
    pub foreground_fraction: f64,
    /// Probability that both branches get the same patch of one modality.
    pub p_self_pair: f64,
    pub augment: AugmentConfig,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            batch_size: 1,
            foreground_fraction: 1.0 / 3.0,
            p_self_pair: 0.2,
            augment: AugmentConfig::default(),
        }
    }
}

/// One training batch: `[B, 1, P, P, P]` images and `[B, P, P, P]` classes per branch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub patch: usize,
    pub ct: Vec<f32>,
    pub mr: Vec<f32>,
    pub ct_labels: Vec<u8>,
    pub mr_labels: Vec<u8>,
    /// Per item: the names of the cases that fed the CT and MRI branch.
    pub sources: Vec<(String, String)>,
    /// Both branches got the same patches (the relative pose is the identity).
    pub self_paired: bool,
    /// The central windows `[1, 1, P, P, P]` of the first item's CT and MRI volumes,
    /// unaugmented (None when self-paired): where the same normalised position is
    /// the same anatomy whatever the pose offset, so the PPO reward is measured there.
    pub probe: Option<(Vec<f32>, Vec<f32>)>,
}

const IDENTITY: [[f64; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// One draw of spatial augmentation: the matrix that maps patch offsets (voxels,
/// from the patch centre) to volume offsets, of the CT patch; the MRI patch's is
/// [`partner_matrix`] of it, so the pair keeps its relative pose.
fn draw_spatial(aug: &AugmentConfig, rng: &mut impl Rng) -> [[f64; 3]; 3] {
    let mut m = IDENTITY;
    if rng.random_bool(aug.p_rotate) {
        let r = aug.max_rotation_deg;
        m = euler_rotation_deg([0; 3].map(|_| rng.random_range(-r..=r)));
    }
    if rng.random_bool(aug.p_scale) {
        let s = rng.random_range(aug.scale_range.0..aug.scale_range.1);
        for row in m.iter_mut() {
            for x in row.iter_mut() {
                *x /= s;
            }
        }
    }
    for a in 0..3 {
        if rng.random_bool(aug.p_flip) {
            for row in m.iter_mut() {
                row[a] = -row[a];
            }
        }
    }
    m
}

/// One draw of the non-rigid warp of a patch of edge `p` (patch voxels), or none.
/// Nothing is drawn when `p_elastic` is 0, so a configuration without it samples
/// the same batches as before the warp existed.
fn draw_warp(aug: &AugmentConfig, p: usize, rng: &mut impl Rng) -> Option<Displacement> {
    if aug.p_elastic <= 0.0 || !rng.random_bool(aug.p_elastic.min(1.0)) {
        return None;
    }
    let amplitude = rng.random_range(0.0..=aug.max_elastic_vox);
    // the field is zero outside its cube: cover the patch with a voxel to spare
    let half = p as f64 / 2.0 + 1.0;
    Some(Displacement::random(
        rng,
        amplitude,
        aug.elastic_control_vox.max(2.0),
        half,
    ))
}

/// Cut a cubic patch of edge `p` starting at voxel `start` (it may reach outside
/// the volume, which reads as zero, the normalised mean), resampled through the
/// spatial matrix `m` about the patch centre, after the patch offsets are moved by
/// `warp` (patch voxels). With `m` the identity and no warp the patch is an exact
/// copy of the voxels `start..start + p` and their labels.
fn extract(
    case: &PreparedCase,
    start: [i64; 3],
    p: usize,
    m: &[[f64; 3]; 3],
    warp: Option<&Displacement>,
) -> (Vec<f32>, Vec<u8>) {
    let img = &case.image.data;
    let lab = case.labels.as_ref().map(|l| &l.data);
    let s = img.shape();
    let half = (p as f64 - 1.0) / 2.0;
    let centre = start.map(|v| v as f64 + half);
    let inside = |q: [f64; 3]| (0..3).all(|a| q[a] >= 0.0 && q[a] < s[a] as f64);
    let mut out = vec![0.0f32; p * p * p];
    let mut out_l = vec![0u8; p * p * p];
    for i in 0..p {
        for j in 0..p {
            for k in 0..p {
                let mut o = [i as f64 - half, j as f64 - half, k as f64 - half];
                if let Some(w) = warp {
                    let u = w.at(o);
                    o = [o[0] + u[0], o[1] + u[1], o[2] + u[2]];
                }
                let d = mat3_vec(m, o);
                let x = [centre[0] + d[0], centre[1] + d[1], centre[2] + d[2]];
                let idx = (i * p + j) * p + k;
                // nearest for labels
                let n = x.map(|v| v.round());
                if inside(n)
                    && let Some(l) = lab
                {
                    out_l[idx] = l[[n[0] as usize, n[1] as usize, n[2] as usize]];
                }
                // trilinear for the image
                let f = x.map(|v| v.floor());
                let mut acc = 0.0f32;
                for c in 0..8usize {
                    let q = [
                        f[0] + (c & 1) as f64,
                        f[1] + ((c >> 1) & 1) as f64,
                        f[2] + ((c >> 2) & 1) as f64,
                    ];
                    if inside(q) {
                        let w: f64 = (0..3).map(|a| 1.0 - (x[a] - q[a]).abs()).product();
                        if w != 0.0 {
                            acc += w as f32 * img[[q[0] as usize, q[1] as usize, q[2] as usize]];
                        }
                    }
                }
                out[idx] = acc;
            }
        }
    }
    (out, out_l)
}

/// Gamma and Gaussian noise, drawn per patch (the modalities differ in contrast anyway).
fn augment_intensity(out: &mut [f32], aug: &AugmentConfig, rng: &mut impl Rng) {
    if rng.random_bool(aug.p_gamma) {
        let g = rng.random_range(aug.gamma_range.0..aug.gamma_range.1) as f32;
        let lo = out.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = out.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let range = (hi - lo).max(1e-6);
        for v in out.iter_mut() {
            *v = ((*v - lo) / range).powf(g) * range + lo;
        }
    }
    if rng.random_bool(aug.p_noise) {
        let sd = rng.random_range(0.0..aug.max_noise_std) as f32;
        if sd > 0.0 {
            let nd = Normal::new(0.0f32, sd).unwrap();
            for v in out.iter_mut() {
                *v += nd.sample(rng);
            }
        }
    }
}

/// A patch start: one time in `1/foreground_fraction` the patch is centred on a
/// voxel of a random present class, otherwise placed uniformly inside the volume
/// (centred where the volume is shorter than the patch).
fn patch_start(case: &PreparedCase, p: usize, fg_fraction: f64, rng: &mut impl Rng) -> [i64; 3] {
    let s = case.image.data.shape();
    let present: Vec<usize> = (1..case.class_voxels.len())
        .filter(|&c| !case.class_voxels[c].is_empty())
        .collect();
    if !present.is_empty() && rng.random_bool(fg_fraction) {
        let c = present[rng.random_range(0..present.len())];
        let v = case.class_voxels[c][rng.random_range(0..case.class_voxels[c].len())] as usize;
        let at = [v / (s[1] * s[2]), (v / s[2]) % s[1], v % s[2]];
        return at.map(|x| x as i64 - (p / 2) as i64);
    }
    std::array::from_fn(|a| {
        if s[a] >= p {
            rng.random_range(0..=(s[a] - p) as i64)
        } else {
            -(((p - s[a]) / 2) as i64)
        }
    })
}

/// The spatial matrix of the MRI patch when the CT patch is drawn through `m`, for
/// MRI volumes that `pose` turns onto the CT (`rotate_spatial(MRI, pose) ≈ CT`):
/// `pose⁻¹ · m · pose`, so that the augmented pair keeps the relative pose the
/// alignment undoes. The same `m` for both would leave them at `m⁻¹ · pose⁻¹ · m`,
/// another pose for every augmented item unless `pose` commutes with `m`.
pub fn partner_matrix(m: &[[f64; 3]; 3], pose: &SignedPerm) -> [[f64; 3]; 3] {
    let r = perm_matrix_f64(pose);
    mat3_mul(&mat3_mul(&perm_matrix_f64(&pose.inverse()), m), &r)
}

/// The pairs training batches are drawn from: each modality's prepared cases (shared,
/// not copied, with the loader's thread), how they pair, and the relative pose the
/// spatial augmentation keeps: the cube rotation that turns the MRI onto the CT
/// ([`partner_matrix`]; the identity when nothing spatial is augmented).
#[derive(Clone, Debug)]
pub struct TrainingPairs {
    pub ct: Arc<[PreparedCase]>,
    pub mr: Arc<[PreparedCase]>,
    pub pairing: Pairing,
    pub pose: SignedPerm,
}

/// The batch of training step `step`. The auxiliary (MRI) patch of each item sits
/// at the same normalised position as the primary (CT) one, as inference pairs its
/// windows ([`partner_start`]); one spatial augmentation serves both, conjugated by
/// the pairs' pose for the MRI patch.
pub fn sample_batch(
    pairs: &TrainingPairs,
    cfg: &SamplerConfig,
    patch: usize,
    seed: u64,
    step: u64,
) -> Batch {
    let (ct, mr, pose) = (&pairs.ct, &pairs.mr, &pairs.pose);
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &[0x5a3, step]));
    let n = patch * patch * patch;
    // self-pairing is decided per batch: its relative pose is the identity
    let self_paired = rng.random_bool(cfg.p_self_pair);
    let mut b = Batch {
        patch,
        ct: Vec::with_capacity(cfg.batch_size * n),
        mr: Vec::with_capacity(cfg.batch_size * n),
        ct_labels: Vec::with_capacity(cfg.batch_size * n),
        mr_labels: Vec::with_capacity(cfg.batch_size * n),
        sources: Vec::new(),
        self_paired,
        probe: None,
    };
    for _ in 0..cfg.batch_size {
        let ci = rng.random_range(0..ct.len());
        let mi = match pairs.pairing {
            Pairing::Index if ci < mr.len() => ci,
            _ => rng.random_range(0..mr.len()),
        };
        let (c_case, m_case) = (&ct[ci], &mr[mi]);
        let m = draw_spatial(&cfg.augment, &mut rng);
        if self_paired {
            // one modality feeds both branches (single-modality inference is trained for)
            let case = if rng.random_bool(0.5) { c_case } else { m_case };
            let st = patch_start(case, patch, cfg.foreground_fraction, &mut rng);
            let warp = draw_warp(&cfg.augment, patch, &mut rng);
            let (mut img, lab) = extract(case, st, patch, &m, warp.as_ref());
            augment_intensity(&mut img, &cfg.augment, &mut rng);
            b.ct.extend_from_slice(&img);
            b.mr.extend_from_slice(&img);
            b.ct_labels.extend_from_slice(&lab);
            b.mr_labels.extend_from_slice(&lab);
            b.sources.push((case.name.clone(), case.name.clone()));
            continue;
        }
        let cs = patch_start(c_case, patch, cfg.foreground_fraction, &mut rng);
        let (c_shape, m_shape) = (c_case.image.data.shape(), m_case.image.data.shape());
        let ms: [i64; 3] =
            std::array::from_fn(|a| partner_start(cs[a], patch, c_shape[a], m_shape[a]));
        let (c_warp, m_warp) = (
            draw_warp(&cfg.augment, patch, &mut rng),
            draw_warp(&cfg.augment, patch, &mut rng),
        );
        let (mut ci_img, ci_lab) = extract(c_case, cs, patch, &m, c_warp.as_ref());
        let m_mr = partner_matrix(&m, pose);
        let (mut mi_img, mi_lab) = extract(m_case, ms, patch, &m_mr, m_warp.as_ref());
        augment_intensity(&mut ci_img, &cfg.augment, &mut rng);
        augment_intensity(&mut mi_img, &cfg.augment, &mut rng);
        b.ct.extend_from_slice(&ci_img);
        b.mr.extend_from_slice(&mi_img);
        b.ct_labels.extend_from_slice(&ci_lab);
        b.mr_labels.extend_from_slice(&mi_lab);
        b.sources.push((c_case.name.clone(), m_case.name.clone()));
        if b.probe.is_none() {
            b.probe = Some(probe_pair(c_case, m_case, patch));
        }
    }
    b
}

/// The probe pair of the PPO reward (unaugmented): in each image the window centred
/// on its heart (the centroid of its labelled voxels), so that a rotation of the MRI
/// window turns its heart about the heart's own centre; an image without labels
/// falls back to the volume's central window.
pub fn probe_pair(ct: &PreparedCase, mr: &PreparedCase, p: usize) -> (Vec<f32>, Vec<f32>) {
    let window = |c: &PreparedCase| match heart_centre(c) {
        Some(centre) => {
            extract(
                c,
                centre.map(|x| (x - (p as f64 - 1.0) / 2.0).round() as i64),
                p,
                &IDENTITY,
                None,
            )
            .0
        }
        None => {
            let s = c.image.data.shape();
            let start: [i64; 3] = std::array::from_fn(|a| (s[a] as i64 - p as i64).div_euclid(2));
            extract(c, start, p, &IDENTITY, None).0
        }
    };
    (window(ct), window(mr))
}

/// The centroid (voxel coordinates) of a case's labelled voxels, if it has any.
fn heart_centre(c: &PreparedCase) -> Option<[f64; 3]> {
    let s = c.image.data.shape();
    let (mut sum, mut n) = ([0.0f64; 3], 0usize);
    for voxels in c.class_voxels.iter().skip(1) {
        for &f in voxels {
            let f = f as usize;
            let ijk = [f / (s[1] * s[2]), (f / s[2]) % s[1], f % s[2]];
            (0..3).for_each(|a| sum[a] += ijk[a] as f64);
            n += 1;
        }
    }
    (n > 0).then(|| sum.map(|x| x / n as f64))
}

/// Prepares the batch of the next step on a background thread while the current
/// step runs.
///
/// The thread is a plain one, and `sample_batch` must not use rayon: the training loop
/// waits in [`Prefetcher::next`] on one of the pool's threads (every command runs inside
/// the pool, `cli::run`), so with `--threads 1` a parallel loop here would wait for the
/// only pool thread, which waits for it. A debug assertion checks it.
pub struct Prefetcher {
    rx: std::sync::mpsc::Receiver<(u64, Batch)>,
    _handle: std::thread::JoinHandle<()>,
}

impl Prefetcher {
    /// The batches of `steps`, one ahead.
    pub fn start(
        pairs: TrainingPairs,
        cfg: SamplerConfig,
        patch: usize,
        seed: u64,
        steps: Range<u64>,
    ) -> Prefetcher {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let handle = std::thread::spawn(move || {
            for step in steps {
                let b = sample_batch(&pairs, &cfg, patch, seed, step);
                if tx.send((step, b)).is_err() {
                    break;
                }
            }
        });
        Prefetcher {
            rx,
            _handle: handle,
        }
    }

    pub fn next(&self) -> Option<(u64, Batch)> {
        self.rx.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::layout::Modality;
    use crate::io::Volume;
    use ndarray::Array3;

    fn case(name: &str, modality: Modality, seed: u32) -> PreparedCase {
        let img = Array3::from_shape_fn((20, 18, 16), |(i, j, k)| {
            ((i * 7 + j * 3 + k + seed as usize) % 11) as f32
        });
        let lab = Array3::from_shape_fn((20, 18, 16), |(i, j, _)| {
            if (5..12).contains(&i) && (4..9).contains(&j) {
                3
            } else {
                0
            }
        });
        PreparedCase::new(
            name.into(),
            modality,
            Volume::with_spacing(img, [4.0; 3]),
            Some(Volume::with_spacing(lab, [4.0; 3])),
        )
    }

    #[test]
    fn same_seed_same_batches_and_steps_differ() {
        let ct = vec![case("a", Modality::Ct, 0), case("b", Modality::Ct, 1)];
        let mr = vec![case("c", Modality::Mr, 2), case("d", Modality::Mr, 3)];
        let cfg = SamplerConfig {
            batch_size: 2,
            ..SamplerConfig::default()
        };
        let a = batch(&ct, &mr, Pairing::Random, &cfg, 8, 42, 5);
        let b = batch(&ct, &mr, Pairing::Random, &cfg, 8, 42, 5);
        assert_eq!(a, b);
        let c = batch(&ct, &mr, Pairing::Random, &cfg, 8, 42, 6);
        assert_ne!(a.ct, c.ct);
        assert_eq!(a.ct.len(), 2 * 512);
        // the prefetching thread yields the same batches
        let p = Prefetcher::start(pairs(&ct, &mr, Pairing::Random), cfg, 8, 42, 5..7);
        assert_eq!(p.next().unwrap(), (5, a));
        assert_eq!(p.next().unwrap().1, c);
        assert!(p.next().is_none());
    }

    #[test]
    fn the_probe_window_is_centred_on_the_labelled_voxels() {
        // `case` labels i in 5..12, j in 4..9, every k: centroid (8, 6, 7.5)
        let c = case("a", Modality::Ct, 0);
        let (win, _) = probe_pair(&c, &c, 4);
        // a window of 4 centred at (8, 6, 7.5) starts at round(centre − 1.5) = (7, 5, 6)
        let (want, _) = extract(&c, [7, 5, 6], 4, &IDENTITY, None);
        assert_eq!(win, want);
        // without labels: the volume's central window (start (20−4)/2, (18−4)/2, (16−4)/2)
        let mut u = case("b", Modality::Mr, 1);
        u.labels = None;
        u.class_voxels = vec![Vec::new(); 8];
        let (_, central) = probe_pair(&c, &u, 4);
        assert_eq!(central, extract(&u, [8, 7, 6], 4, &IDENTITY, None).0);
    }

    #[test]
    fn an_unaugmented_patch_copies_the_volume_and_its_labels() {
        let c = case("a", Modality::Ct, 0);
        // a patch of 4 starting at 6 covers voxels 6..10 exactly, and padding reads 0
        for start in [[6i64, 6, 6], [-2, 3, 14]] {
            let (img, lab) = extract(&c, start, 4, &IDENTITY, None);
            for i in 0..4 {
                for j in 0..4 {
                    for k in 0..4 {
                        let n = (i * 4 + j) * 4 + k;
                        let v = [i, j, k].map(|x| x as i64);
                        let q: [i64; 3] = std::array::from_fn(|a| start[a] + v[a]);
                        let s = c.image.data.shape();
                        let inside = (0..3).all(|a| q[a] >= 0 && q[a] < s[a] as i64);
                        let at = q.map(|x| x.max(0) as usize);
                        let (want_i, want_l) = if inside {
                            (c.image.data[at], c.labels.as_ref().unwrap().data[at])
                        } else {
                            (0.0, 0)
                        };
                        assert_eq!(img[n], want_i);
                        assert_eq!(lab[n], want_l);
                    }
                }
            }
        }
    }

    /// Pairs of MRI volumes at the CT's pose.
    fn pairs(ct: &[PreparedCase], mr: &[PreparedCase], pairing: Pairing) -> TrainingPairs {
        TrainingPairs {
            ct: ct.into(),
            mr: mr.into(),
            pairing,
            pose: SignedPerm::IDENTITY,
        }
    }

    /// `sample_batch` for MRI volumes at the CT's pose.
    fn batch(
        ct: &[PreparedCase],
        mr: &[PreparedCase],
        pairing: Pairing,
        cfg: &SamplerConfig,
        patch: usize,
        seed: u64,
        step: u64,
    ) -> Batch {
        sample_batch(&pairs(ct, mr, pairing), cfg, patch, seed, step)
    }

    /// A case whose image is ten times its label map, so image and labels can be checked
    /// against each other voxel by voxel.
    fn labelled_image(
        name: &str,
        modality: Modality,
        shape: (usize, usize, usize),
    ) -> PreparedCase {
        let lab = Array3::from_shape_fn(shape, |(i, j, k)| ((i / 3 + j / 4 + k / 5) % 8) as u8);
        let img = lab.mapv(|c| c as f32 * 10.0);
        PreparedCase::new(
            name.into(),
            modality,
            Volume::with_spacing(img, [4.0; 3]),
            Some(Volume::with_spacing(lab, [4.0; 3])),
        )
    }

    /// The warp against its own field: on an image that is linear in position, trilinear
    /// sampling is exact, so each warped voxel must read the ramp at its displaced offset.
    #[test]
    fn a_warped_patch_reads_the_image_at_the_displaced_offsets() {
        let shape = (40, 40, 40);
        let ramp = |i: f64, j: f64, k: f64| (2.0 * i + 0.5 * j - k) as f32;
        let img = Array3::from_shape_fn(shape, |(i, j, k)| ramp(i as f64, j as f64, k as f64));
        let c = PreparedCase::new(
            "ramp".into(),
            Modality::Ct,
            Volume::with_spacing(img, [4.0; 3]),
            None,
        );
        let aug = AugmentConfig {
            p_elastic: 1.0,
            max_elastic_vox: 2.0,
            ..AugmentConfig::none()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (p, start) = (16usize, [12i64, 11, 12]);
        let half = (p as f64 - 1.0) / 2.0;
        let mut largest: f64 = 0.0;
        for _ in 0..4 {
            let w = draw_warp(&aug, p, &mut rng).expect("p_elastic = 1 always warps");
            let (out, _) = extract(&c, start, p, &IDENTITY, Some(&w));
            for i in 0..p {
                for j in 0..p {
                    for k in 0..p {
                        let o = [i, j, k].map(|v| v as f64 - half);
                        let u = w.at(o);
                        largest = largest.max(u.iter().map(|x| x.abs()).fold(0.0, f64::max));
                        assert!(u.iter().all(|x| x.abs() <= 2.0 + 1e-9), "{u:?}");
                        let x: [f64; 3] =
                            std::array::from_fn(|a| start[a] as f64 + half + o[a] + u[a]);
                        let want = ramp(x[0], x[1], x[2]);
                        let got = out[(i * p + j) * p + k];
                        assert!((got - want).abs() < 1e-3, "({i},{j},{k}): {got} vs {want}");
                    }
                }
            }
        }
        // the warp really moved something (a zero field would pass the check above)
        assert!(largest > 0.2, "largest displacement {largest}");
        // with p_elastic = 0 nothing is drawn: the random stream is untouched
        let (mut a, b) = (ChaCha8Rng::seed_from_u64(8), ChaCha8Rng::seed_from_u64(8));
        assert!(draw_warp(&AugmentConfig::none(), p, &mut a).is_none());
        assert_eq!(a, b);
    }

    #[test]
    fn sampled_patches_sit_on_whole_voxels_with_their_labels() {
        let ct = vec![labelled_image("a", Modality::Ct, (30, 26, 22))];
        let mr = vec![labelled_image("a", Modality::Mr, (40, 20, 24))];
        let cfg = SamplerConfig {
            batch_size: 3,
            p_self_pair: 0.3,
            // mirroring keeps the grid; rotation and scaling resample it
            augment: AugmentConfig {
                p_flip: 0.5,
                p_rotate: 0.0,
                p_scale: 0.0,
                p_gamma: 0.0,
                p_noise: 0.0,
                ..AugmentConfig::default()
            },
            ..SamplerConfig::default()
        };
        for step in 0..40 {
            let b = batch(&ct, &mr, Pairing::Index, &cfg, 8, 3, step);
            for (img, lab) in [(&b.ct, &b.ct_labels), (&b.mr, &b.mr_labels)] {
                for (v, l) in img.iter().zip(lab.iter()) {
                    assert_eq!(*v, *l as f32 * 10.0, "step {step}: image off its labels");
                }
            }
        }
    }

    #[test]
    fn the_auxiliary_patch_sits_at_the_same_normalised_position() {
        // identical volumes: the two patches are identical, whatever the spatial augmentation
        let ct = vec![labelled_image("a", Modality::Ct, (30, 26, 22))];
        let mr = vec![labelled_image("a", Modality::Mr, (30, 26, 22))];
        let mut cfg = SamplerConfig {
            batch_size: 2,
            p_self_pair: 0.0,
            augment: AugmentConfig {
                p_flip: 0.5,
                p_rotate: 1.0,
                p_scale: 0.5,
                p_gamma: 0.0,
                p_noise: 0.0,
                ..AugmentConfig::default()
            },
            ..SamplerConfig::default()
        };
        for step in 0..20 {
            let b = batch(&ct, &mr, Pairing::Index, &cfg, 8, 9, step);
            assert_eq!(b.ct, b.mr, "step {step}");
            assert_eq!(b.ct_labels, b.mr_labels, "step {step}");
        }
        // an MRI volume twice as long on axis 0: the patch moves with the normalised centre
        let mr2 = vec![labelled_image("a", Modality::Mr, (60, 26, 22))];
        cfg.augment = AugmentConfig {
            p_rotate: 0.0,
            p_scale: 0.0,
            p_gamma: 0.0,
            p_noise: 0.0,
            ..AugmentConfig::default()
        };
        cfg.foreground_fraction = 0.0;
        for step in 0..20 {
            let b = batch(&ct, &mr2, Pairing::Index, &cfg, 8, 9, step);
            // replay the first item's draws
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(9, &[0x5a3, step]));
            let _self_pair = rng.random_bool(0.0);
            let _ci = rng.random_range(0..1usize);
            let _m = draw_spatial(&cfg.augment, &mut rng);
            let cs = patch_start(&ct[0], 8, 0.0, &mut rng);
            let ms = [0, 1, 2].map(|a| partner_start(cs[a], 8, [30, 26, 22][a], [60, 26, 22][a]));
            assert_eq!(ms[1..], cs[1..]);
            assert_eq!(b.ct[..512], extract(&ct[0], cs, 8, &IDENTITY, None).0);
            assert_eq!(b.mr[..512], extract(&mr2[0], ms, 8, &IDENTITY, None).0);
        }
    }

    /// An MRI volume that `pose` turns onto the CT exactly (a cube of the patch's size,
    /// so both patches are centred on the volume's centre): through `partner_matrix`
    /// the augmented MRI patch, turned by `pose`, is the augmented CT patch; through
    /// the CT's own matrix (what the sampler did before) it is not.
    #[test]
    fn the_augmented_pair_keeps_its_relative_pose() {
        let n = 10;
        let ct_img = Array3::from_shape_fn((n, n, n), |(i, j, k)| {
            i as f32 + 3.7 * j as f32 + 0.21 * (k * k) as f32
        });
        let c = (n as f64 - 1.0) / 2.0;
        let ct = labelled_image("a", Modality::Ct, (n, n, n));
        let ct = PreparedCase {
            image: Volume::with_spacing(ct_img.clone(), [4.0; 3]),
            ..ct
        };
        let idx = |v: [f64; 3]| v.map(|x| (x + c).round() as usize);
        for pose in [
            SignedPerm::from_matrix([[0, 0, 1], [1, 0, 0], [0, 1, 0]]).unwrap(),
            SignedPerm::from_matrix([[0, -1, 0], [1, 0, 0], [0, 0, 1]]).unwrap(),
        ] {
            // rotate_spatial(mr, pose) = ct: mr[y] = ct[c + pose·(y − c)]
            let mr_img = Array3::from_shape_fn((n, n, n), |(i, j, k)| {
                let [a, b, d] = idx(pose.apply([i, j, k].map(|v| v as f64 - c)));
                ct_img[[a, b, d]]
            });
            let mr = PreparedCase {
                image: Volume::with_spacing(mr_img, [4.0; 3]),
                ..ct.clone()
            };
            let m = euler_rotation_deg([25.0, -10.0, 17.0]).map(|r| r.map(|x| x / 1.1));
            let (ct_p, _) = extract(&ct, [0; 3], n, &m, None);
            let turned = |mr_p: &[f32]| {
                // out[pose·(j − c) + c] = mr_p[j]
                let mut out = vec![0.0f32; n * n * n];
                for (flat, v) in mr_p.iter().enumerate() {
                    let j = [flat / (n * n), flat / n % n, flat % n].map(|x| x as f64 - c);
                    let [a, b, d] = idx(pose.apply(j));
                    out[(a * n + b) * n + d] = *v;
                }
                out
            };
            let (kept, _) = extract(&mr, [0; 3], n, &partner_matrix(&m, &pose), None);
            let worst = turned(&kept)
                .iter()
                .zip(&ct_p)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-3, "{pose:?}: off by {worst}");
            let (same_m, _) = extract(&mr, [0; 3], n, &m, None);
            let off = turned(&same_m)
                .iter()
                .zip(&ct_p)
                .filter(|(a, b)| (*a - *b).abs() > 0.5)
                .count();
            assert!(
                off > n * n * n / 4,
                "{pose:?}: the plain matrix kept the pose too"
            );
        }
        // the identity pose leaves the matrix alone
        let m = euler_rotation_deg([5.0, 6.0, 7.0]);
        assert_eq!(partner_matrix(&m, &SignedPerm::IDENTITY), m);
    }

    #[test]
    fn paired_index_pairs_same_case_numbers() {
        let ct = vec![case("ct_1", Modality::Ct, 0), case("ct_2", Modality::Ct, 1)];
        let mr = vec![case("mr_1", Modality::Mr, 2), case("mr_2", Modality::Mr, 3)];
        let cfg = SamplerConfig {
            batch_size: 8,
            p_self_pair: 0.0,
            ..SamplerConfig::default()
        };
        let b = batch(&ct, &mr, Pairing::Index, &cfg, 4, 1, 0);
        for (c, m) in &b.sources {
            assert_eq!(c[3..], m[3..]);
        }
    }
}
