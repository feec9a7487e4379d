//! Paired cubic patches for training: case pairing, foreground oversampling,
//! spatial and intensity augmentation, modality self-pairing. A batch depends only
//! on (seed, step), so it is reproducible, thread-independent and resumable.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::data::synth::render::derive_seed;
use crate::geometry::{euler_rotation_deg, mat3_vec};
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
}

impl Default for AugmentConfig {
    fn default() -> Self {
        // nnU-Net's probabilities, with rotations kept small
        AugmentConfig {
            p_flip: 0.5,
            p_rotate: 0.2,
            max_rotation_deg: 15.0,
            p_scale: 0.2,
            scale_range: (0.85, 1.25),
            p_gamma: 0.3,
            gamma_range: (0.7, 1.5),
            p_noise: 0.1,
            max_noise_std: 0.1,
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
}

/// Cut an augmented cubic patch of edge `p` around `centre` (voxel coordinates).
fn extract(
    case: &PreparedCase,
    centre: [f64; 3],
    p: usize,
    aug: &AugmentConfig,
    rng: &mut impl Rng,
) -> (Vec<f32>, Vec<u8>) {
    let mut m = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
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
    let flip: [bool; 3] = [0; 3].map(|_| rng.random_bool(aug.p_flip));
    let img = &case.image.data;
    let lab = case.labels.as_ref().map(|l| &l.data);
    let s = img.shape();
    let half = (p as f64 - 1.0) / 2.0;
    let mut out = vec![0.0f32; p * p * p];
    let mut out_l = vec![0u8; p * p * p];
    for i in 0..p {
        for j in 0..p {
            for k in 0..p {
                let mut o = [i as f64 - half, j as f64 - half, k as f64 - half];
                for a in 0..3 {
                    if flip[a] {
                        o[a] = -o[a];
                    }
                }
                let d = mat3_vec(&m, o);
                let x = [centre[0] + d[0], centre[1] + d[1], centre[2] + d[2]];
                let idx = (i * p + j) * p + k;
                // nearest for labels
                let n = x.map(|v| v.round());
                if (0..3).all(|a| n[a] >= 0.0 && n[a] < s[a] as f64)
                    && let Some(l) = lab
                {
                    out_l[idx] = l[[n[0] as usize, n[1] as usize, n[2] as usize]];
                }
                // trilinear for the image, zero (the normalised mean) outside
                let f = x.map(|v| v.floor());
                let mut acc = 0.0f32;
                for c in 0..8usize {
                    let q = [
                        f[0] + (c & 1) as f64,
                        f[1] + ((c >> 1) & 1) as f64,
                        f[2] + ((c >> 2) & 1) as f64,
                    ];
                    if (0..3).all(|a| q[a] >= 0.0 && q[a] < s[a] as f64) {
                        let w: f64 = (0..3).map(|a| 1.0 - (x[a] - q[a]).abs()).product();
                        acc += w as f32 * img[[q[0] as usize, q[1] as usize, q[2] as usize]];
                    }
                }
                out[idx] = acc;
            }
        }
    }
    if rng.random_bool(aug.p_gamma) {
        let g = rng.random_range(aug.gamma_range.0..aug.gamma_range.1) as f32;
        let lo = out.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = out.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let range = (hi - lo).max(1e-6);
        for v in &mut out {
            *v = ((*v - lo) / range).powf(g) * range + lo;
        }
    }
    if rng.random_bool(aug.p_noise) {
        let sd = rng.random_range(0.0..aug.max_noise_std) as f32;
        if sd > 0.0 {
            let nd = Normal::new(0.0f32, sd).unwrap();
            for v in &mut out {
                *v += nd.sample(rng);
            }
        }
    }
    (out, out_l)
}

/// A patch centre: one time in `1/foreground_fraction` on a voxel of a random present class.
fn centre(case: &PreparedCase, p: usize, fg_fraction: f64, rng: &mut impl Rng) -> [f64; 3] {
    let s = case.image.data.shape();
    let present: Vec<usize> = (1..case.class_voxels.len())
        .filter(|&c| !case.class_voxels[c].is_empty())
        .collect();
    if !present.is_empty() && rng.random_bool(fg_fraction) {
        let c = present[rng.random_range(0..present.len())];
        let v = case.class_voxels[c][rng.random_range(0..case.class_voxels[c].len())] as usize;
        return [
            (v / (s[1] * s[2])) as f64,
            ((v / s[2]) % s[1]) as f64,
            (v % s[2]) as f64,
        ];
    }
    // uniform, keeping the patch inside the volume where it fits
    std::array::from_fn(|a| {
        let half = p as f64 / 2.0;
        let (lo, hi) = (half - 0.5, s[a] as f64 - half - 0.5);
        if lo < hi {
            rng.random_range(lo..hi)
        } else {
            (s[a] as f64 - 1.0) / 2.0
        }
    })
}

/// The batch of training step `step`.
pub fn sample_batch(
    ct: &[PreparedCase],
    mr: &[PreparedCase],
    pairing: Pairing,
    cfg: &SamplerConfig,
    patch: usize,
    seed: u64,
    step: u64,
) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &[0x5a3, step]));
    let n = patch * patch * patch;
    let mut b = Batch {
        patch,
        ct: Vec::with_capacity(cfg.batch_size * n),
        mr: Vec::with_capacity(cfg.batch_size * n),
        ct_labels: Vec::with_capacity(cfg.batch_size * n),
        mr_labels: Vec::with_capacity(cfg.batch_size * n),
        sources: Vec::new(),
    };
    for _ in 0..cfg.batch_size {
        let ci = rng.random_range(0..ct.len());
        let mi = match pairing {
            Pairing::Index if ci < mr.len() => ci,
            _ => rng.random_range(0..mr.len()),
        };
        let c_case = &ct[ci];
        let m_case = &mr[mi];
        let cc = centre(c_case, patch, cfg.foreground_fraction, &mut rng);
        let (ci_img, ci_lab) = extract(c_case, cc, patch, &cfg.augment, &mut rng);
        let mc = centre(m_case, patch, cfg.foreground_fraction, &mut rng);
        let (mi_img, mi_lab) = extract(m_case, mc, patch, &cfg.augment, &mut rng);
        if rng.random_bool(cfg.p_self_pair) {
            // one modality feeds both branches (single-modality inference is trained for)
            let (img, lab, name) = if rng.random_bool(0.5) {
                (ci_img, ci_lab, &c_case.name)
            } else {
                (mi_img, mi_lab, &m_case.name)
            };
            b.ct.extend_from_slice(&img);
            b.mr.extend_from_slice(&img);
            b.ct_labels.extend_from_slice(&lab);
            b.mr_labels.extend_from_slice(&lab);
            b.sources.push((name.clone(), name.clone()));
        } else {
            b.ct.extend_from_slice(&ci_img);
            b.mr.extend_from_slice(&mi_img);
            b.ct_labels.extend_from_slice(&ci_lab);
            b.mr_labels.extend_from_slice(&mi_lab);
            b.sources.push((c_case.name.clone(), m_case.name.clone()));
        }
    }
    b
}

/// Prepares the batch of the next step on a background thread while the current
/// step runs.
pub struct Prefetcher {
    rx: std::sync::mpsc::Receiver<(u64, Batch)>,
    _handle: std::thread::JoinHandle<()>,
}

impl Prefetcher {
    /// Batches for steps `first..last`, one ahead.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        ct: std::sync::Arc<Vec<PreparedCase>>,
        mr: std::sync::Arc<Vec<PreparedCase>>,
        pairing: Pairing,
        cfg: SamplerConfig,
        patch: usize,
        seed: u64,
        first: u64,
        last: u64,
    ) -> Prefetcher {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let handle = std::thread::spawn(move || {
            for step in first..last {
                let b = sample_batch(&ct, &mr, pairing, &cfg, patch, seed, step);
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
        let labels = Some(Volume::with_spacing(lab, [4.0; 3]));
        let mut cv = vec![Vec::new(); 8];
        for (n, &c) in labels.as_ref().unwrap().data.iter().enumerate() {
            if c > 0 {
                cv[c as usize].push(n as u32);
            }
        }
        PreparedCase {
            name: name.into(),
            modality,
            image: Volume::with_spacing(img, [4.0; 3]),
            labels,
            class_voxels: cv,
        }
    }

    #[test]
    fn same_seed_same_batches_and_steps_differ() {
        let ct = vec![case("a", Modality::Ct, 0), case("b", Modality::Ct, 1)];
        let mr = vec![case("c", Modality::Mr, 2), case("d", Modality::Mr, 3)];
        let cfg = SamplerConfig {
            batch_size: 2,
            ..SamplerConfig::default()
        };
        let a = sample_batch(&ct, &mr, Pairing::Random, &cfg, 8, 42, 5);
        let b = sample_batch(&ct, &mr, Pairing::Random, &cfg, 8, 42, 5);
        assert_eq!(a, b);
        let c = sample_batch(&ct, &mr, Pairing::Random, &cfg, 8, 42, 6);
        assert_ne!(a.ct, c.ct);
        assert_eq!(a.ct.len(), 2 * 512);
        // the prefetching thread yields the same batches
        let p = Prefetcher::start(ct.into(), mr.into(), Pairing::Random, cfg, 8, 42, 5, 7);
        assert_eq!(p.next().unwrap(), (5, a));
        assert_eq!(p.next().unwrap().1, c);
        assert!(p.next().is_none());
    }

    #[test]
    fn an_unaugmented_patch_copies_the_volume_and_its_labels() {
        let c = case("a", Modality::Ct, 0);
        let aug = AugmentConfig {
            p_flip: 0.0,
            p_rotate: 0.0,
            p_scale: 0.0,
            p_gamma: 0.0,
            p_noise: 0.0,
            ..AugmentConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        // an even patch of 4 around centre 7.5 covers voxels 6..10
        let (img, lab) = extract(&c, [7.5, 7.5, 7.5], 4, &aug, &mut rng);
        for i in 0..4 {
            for j in 0..4 {
                for k in 0..4 {
                    let n = (i * 4 + j) * 4 + k;
                    assert_eq!(img[n], c.image.data[[6 + i, 6 + j, 6 + k]]);
                    assert_eq!(
                        lab[n],
                        c.labels.as_ref().unwrap().data[[6 + i, 6 + j, 6 + k]]
                    );
                }
            }
        }
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
        let b = sample_batch(&ct, &mr, Pairing::Index, &cfg, 4, 1, 0);
        for (c, m) in &b.sources {
            assert_eq!(c[3..], m[3..]);
        }
    }
}
