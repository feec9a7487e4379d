//! The alignment term of the PPO reward (docs/method.md §3, as changed in
//! docs/method-notes.md): how well each of the 24 rotations lines up the MRI with
//! the CT on a probe pair.
//!
//! Two scores: the mutual information of the two probe windows' intensities (the
//! default, `ppo.score = "mutual-information"`), which does not depend on the
//! network (`rl::PoseScore` chooses), so it neither drifts as the network trains nor depends on how CT and
//! MRI contrasts relate (a black-blood MRI inverts them); and the correlation of
//! the encoder's features (`"features"`, the first version).

use burn::prelude::*;

use crate::data::sampler::probe_pair;
use crate::geometry::{SignedPerm, cube_rotations};
use crate::model::RlU2Net;
use crate::model::pose_align::pose_similarities;
use crate::preprocess::cache::PreparedCase;

/// For each of the 24 cube rotations R: the similarity (`pose_similarities`) of the
/// CT features and the MRI features rotated by R, at the input of every RL-XAlign
/// module whose map is at least 4 voxels wide, averaged over those levels. `probe`
/// is a CT and an MRI window of edge `p` (`data::sampler::probe_pair`). No
/// gradient; `model` should be a non-autodiff copy on `device`.
pub fn rotation_scores(
    model: &RlU2Net,
    probe: &(Vec<f32>, Vec<f32>),
    p: usize,
    device: &Device,
) -> [f64; 24] {
    let t =
        |v: &[f32]| Tensor::<5>::from_data(TensorData::new(v.to_vec(), [1, 1, p, p, p]), device);
    let f_ct = model.level_features(t(&probe.0), false);
    let f_mr = model.level_features(t(&probe.1), true);
    let usable: Vec<usize> = (0..f_ct.len())
        .filter(|&l| f_ct[l].dims()[2] >= 4)
        .collect();
    let mut sum = [0.0f64; 24];
    for &l in &usable {
        let s = pose_similarities(&f_ct[l], &f_mr[l], cube_rotations());
        sum.iter_mut().zip(s).for_each(|(t, v)| *t += v);
    }
    sum.map(|t| t / usable.len().max(1) as f64)
}

/// The rotation that turns the MRI onto the CT by the mutual-information score,
/// summed over the first (at most 16) index pairs' probe windows
/// ([`crate::data::sampler::probe_pair`]): the score the agents maximise, and
/// independent of the network. The sampler conjugates its spatial augmentation by it
/// ([`crate::data::sampler::partner_matrix`]) so that an augmented pair keeps its
/// relative pose. Identity when either list is empty.
pub fn estimated_pose(ct: &[PreparedCase], mr: &[PreparedCase], p: usize) -> SignedPerm {
    let mut sum = [0.0f64; 24];
    for (c, m) in ct.iter().zip(mr).take(16) {
        let s = mutual_information_scores(&probe_pair(c, m, p), p);
        sum.iter_mut().zip(s).for_each(|(t, v)| *t += v);
    }
    // on a tie the lower index (the identity first)
    let best = (0..24)
        .max_by(|&a, &b| sum[a].total_cmp(&sum[b]).then(b.cmp(&a)))
        .unwrap_or(0);
    cube_rotations()[best]
}

/// Histogram bins per window in `mutual_information`.
const MI_BINS: usize = 16;

/// For each of the 24 cube rotations R: the mutual information (nats) of the CT
/// window's intensities and the MRI window's rotated by R (as `rotate_spatial`
/// rotates a map). Invariant to any one-to-one remapping of either window's
/// intensity bins, so it does not care which tissue is bright in which modality.
pub fn mutual_information_scores(probe: &(Vec<f32>, Vec<f32>), p: usize) -> [f64; 24] {
    let a = bin_indices(&probe.0);
    let b = bin_indices(&probe.1);
    let rots = cube_rotations();
    std::array::from_fn(|r| mutual_information(&a, &rotate_cube(&b, p, &rots[r])))
}

/// Each value's bin among `MI_BINS` equal-width bins between the window's 1st and
/// 99th percentiles (values outside go to the end bins).
fn bin_indices(v: &[f32]) -> Vec<u8> {
    let mut s: Vec<f32> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return vec![0; v.len()];
    }
    s.sort_by(f32::total_cmp);
    let q = |f: f64| s[((s.len() - 1) as f64 * f).round() as usize];
    let (lo, hi) = (q(0.01), q(0.99));
    let width = (hi - lo).max(f32::MIN_POSITIVE);
    v.iter()
        .map(|&x| {
            let t = ((x - lo) / width * MI_BINS as f32).floor();
            t.clamp(0.0, (MI_BINS - 1) as f32) as u8
        })
        .collect()
}

/// Mutual information (nats) of two equally long sequences of bin indices.
pub fn mutual_information(a: &[u8], b: &[u8]) -> f64 {
    let mut joint = [[0u32; MI_BINS]; MI_BINS];
    for (&x, &y) in a.iter().zip(b) {
        joint[x as usize][y as usize] += 1;
    }
    let n = a.len().min(b.len()) as f64;
    let pa: Vec<f64> = joint
        .iter()
        .map(|r| r.iter().sum::<u32>() as f64 / n)
        .collect();
    let pb: Vec<f64> = (0..MI_BINS)
        .map(|j| joint.iter().map(|r| r[j]).sum::<u32>() as f64 / n)
        .collect();
    let mut mi = 0.0;
    for (i, row) in joint.iter().enumerate() {
        for (j, &c) in row.iter().enumerate() {
            if c > 0 {
                let pij = c as f64 / n;
                mi += pij * (pij / (pa[i] * pb[j])).ln();
            }
        }
    }
    mi
}

/// A `p`³ cube (C order) rotated as `model::layers::rotate_spatial` rotates a map:
/// the axes permuted by `r.perm`, then those with a negative sign flipped.
pub fn rotate_cube<T: Copy>(v: &[T], p: usize, r: &SignedPerm) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    let stride = [p * p, p, 1];
    for i0 in 0..p {
        for i1 in 0..p {
            for i2 in 0..p {
                let mut i = [i0, i1, i2];
                for (a, ia) in i.iter_mut().enumerate() {
                    if r.sign[a] < 0 {
                        *ia = p - 1 - *ia;
                    }
                }
                // permute: out[i] = in[j] with j[perm[a]] = i[a]
                let mut src = 0;
                for a in 0..3 {
                    src += i[a] * stride[r.perm[a]];
                }
                out.push(v[src]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::rotate_spatial;

    #[test]
    fn rotate_cube_equals_rotate_spatial() {
        let p = 5;
        let v: Vec<f32> = (0..p * p * p).map(|i| i as f32).collect();
        let dev = Device::flex();
        let t = Tensor::<5>::from_data(TensorData::new(v.clone(), [1, 1, p, p, p]), &dev);
        for r in cube_rotations() {
            let want: Vec<f32> = rotate_spatial(t.clone(), r)
                .into_data()
                .try_to_vec()
                .unwrap();
            assert_eq!(rotate_cube(&v, p, r), want, "{r:?}");
        }
    }

    /// A structured cube: a few blobs of different intensity, off centre.
    fn phantom(p: usize) -> Vec<f32> {
        let blobs = [
            ([3.0, 4.0, 9.0], 2.5, 1.0),
            ([9.0, 5.0, 4.0], 3.0, 2.0),
            ([6.0, 10.0, 6.0], 2.0, 3.0),
        ];
        let mut v = vec![0.0f32; p * p * p];
        for i in 0..p {
            for j in 0..p {
                for k in 0..p {
                    let x = [i as f64, j as f64, k as f64];
                    for (c, r, val) in blobs {
                        let d2: f64 = (0..3).map(|a| (x[a] - c[a]).powi(2)).sum();
                        if d2 < r * r {
                            v[(i * p + j) * p + k] = val;
                        }
                    }
                }
            }
        }
        v
    }

    #[test]
    fn mutual_information_finds_the_inverse_pose_under_any_contrast() {
        let p = 13;
        let ct = phantom(p);
        let inv = crate::geometry::rotation_inverse_table();
        let rots = cube_rotations();
        for pose in [1usize, 9, 13, 19, 23] {
            let moved = rotate_cube(&ct, p, &rots[pose]);
            // the MRI: another, non-monotone contrast of the same tissues, plus a ramp
            let mr: Vec<f32> = moved
                .iter()
                .enumerate()
                .map(|(i, &x)| [5.0, 1.0, 9.0, 3.0][x as usize] + (i % 7) as f32 * 0.01)
                .collect();
            let s = mutual_information_scores(&(ct.clone(), mr), p);
            let best = (0..24).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
            assert_eq!(best, inv[pose], "pose {pose}: {s:?}");
        }
    }

    /// The pose the augmentation keeps, from whole cases: volumes the size of the probe
    /// window, the MRI the CT turned by a cube rotation (labels with it).
    #[test]
    fn estimated_pose_is_the_rotation_that_turns_the_mri_onto_the_ct() {
        use crate::data::layout::Modality;
        use crate::io::Volume;
        use ndarray::Array3;
        let p = 13;
        let case = |v: Vec<f32>, modality| {
            let lab = v.iter().map(|&x| x as u8).collect();
            let image = Array3::from_shape_vec((p, p, p), v).unwrap();
            let labels = Array3::from_shape_vec((p, p, p), lab).unwrap();
            PreparedCase::new(
                "a".into(),
                modality,
                Volume::with_spacing(image, [4.0; 3]),
                Some(Volume::with_spacing(labels, [4.0; 3])),
            )
        };
        let ct = phantom(p);
        let rots = cube_rotations();
        let inv = crate::geometry::rotation_inverse_table();
        for pose in [9usize, 13, 19] {
            // rotate_cube(mr, R_pose) = ct
            let mr = rotate_cube(&ct, p, &rots[inv[pose]]);
            let got = estimated_pose(
                &[case(ct.clone(), Modality::Ct)],
                &[case(mr, Modality::Mr)],
                p,
            );
            assert_eq!(got, rots[pose], "pose {pose}");
        }
        assert_eq!(estimated_pose(&[], &[], p), SignedPerm::IDENTITY);
    }

    #[test]
    fn mutual_information_of_independent_sequences_is_near_zero_and_of_a_copy_its_entropy() {
        let a: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 16) as u8).collect();
        let b: Vec<u8> = (0..20_000u32)
            .map(|i| ((i / 16) * 104_729 % 16) as u8)
            .collect();
        assert!(mutual_information(&a, &b).abs() < 0.02);
        // a copy: MI = H(a) = ln 16 for uniform bins
        let mi = mutual_information(&a, &a);
        assert!((mi - 16f64.ln()).abs() < 1e-3, "{mi}");
    }
}
