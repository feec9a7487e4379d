//! The alignment term of the PPO reward (docs/method.md §3, as changed in
//! docs/method-notes.md): how well each of the 24 rotations lines up the MRI with
//! the CT on a probe pair, measured on the plain encoder's features.

use burn::prelude::*;

use crate::geometry::cube_rotations;
use crate::model::RlU2Net;
use crate::model::pose_align::pose_similarities;

/// For each of the 24 cube rotations R: the similarity (`pose_similarities`) of the
/// CT features and the MRI features rotated by R, at the input of every RL-XAlign
/// module whose map is at least 4 voxels wide, averaged over those levels. `probe`
/// is a CT and an MRI window of edge `p` (`data::sampler::central_pair`). No
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
