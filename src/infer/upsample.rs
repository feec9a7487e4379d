//! Labels on the input's grid from the working grid's class probabilities.
//!
//! Each class's probability is interpolated trilinearly at every input voxel, then the
//! argmax is taken there, as nnU-Net resamples the softmax rather than the labels. A
//! boundary then falls between working voxels where the probabilities cross, instead of
//! on the staircase that nearest-neighbour labels from a coarse grid leave
//! (docs/method-notes.md, "Back to the input grid").

use ndarray::{Array3, Array4, Axis};
use rayon::prelude::*;

use crate::preprocess::linear_axis_weights;

/// The argmax over classes of `probs` `[K, X, Y, Z]` (on a grid of `work_spacing` mm)
/// interpolated trilinearly onto a grid of `out_shape` voxels of `out_spacing` mm with
/// the same first voxel centre. Ties go to the lower class, as `argmax_labels`.
pub fn upsample_argmax(
    probs: &Array4<f32>,
    work_spacing: f64,
    out_shape: [usize; 3],
    out_spacing: [f64; 3],
) -> Array3<u8> {
    let (k, x, y, z) = probs.dim();
    let n = [x, y, z];
    // output voxel i sits at i · out_spacing / work_spacing working voxels, the inverse
    // of `preprocess::resample_linear`'s mapping
    let [ax, ay, az] = std::array::from_fn(|a| {
        linear_axis_weights(out_shape[a], out_spacing[a] / work_spacing, n[a])
    });
    let mut out = Array3::<u8>::zeros((out_shape[0], out_shape[1], out_shape[2]));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut plane)| {
            let (x0, x1, fx) = ax[i];
            let mut p = vec![0f32; k];
            for (j, &(y0, y1, fy)) in ay.iter().enumerate() {
                for (l, &(z0, z1, fz)) in az.iter().enumerate() {
                    for (c, pc) in p.iter_mut().enumerate() {
                        let v = |a: usize, b: usize| {
                            probs[[c, a, b, z0]] * (1.0 - fz) + probs[[c, a, b, z1]] * fz
                        };
                        let v0 = v(x0, y0) * (1.0 - fy) + v(x0, y1) * fy;
                        let v1 = v(x1, y0) * (1.0 - fy) + v(x1, y1) * fy;
                        *pc = v0 * (1.0 - fx) + v1 * fx;
                    }
                    let mut best = 0;
                    for c in 1..k {
                        if p[c] > p[best] {
                            best = c;
                        }
                    }
                    plane[[j, l]] = best as u8;
                }
            }
        });
    out
}

/// Make `probs` one-hot wherever post-processing changed the argmax label (`cleaned`
/// against the raw argmax), so that what the working grid removed stays removed after
/// interpolation.
pub fn impose_labels(probs: &mut Array4<f32>, raw: &Array3<u8>, cleaned: &Array3<u8>) {
    for ((i, j, l), &c) in cleaned.indexed_iter() {
        if raw[[i, j, l]] != c {
            let mut col = probs.slice_mut(ndarray::s![.., i, j, l]);
            col.fill(0.0);
            col[c as usize] = 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::argmax_labels;

    fn two_class(x: usize, f: impl Fn(usize) -> f32) -> Array4<f32> {
        Array4::from_shape_fn(
            (2, x, 3, 3),
            |(c, i, _, _)| if c == 1 { f(i) } else { 1.0 - f(i) },
        )
    }

    #[test]
    fn the_same_grid_gives_the_argmax() {
        let probs = Array4::from_shape_fn((3, 4, 5, 6), |(c, i, j, l)| {
            (((c * 7 + i * 3 + j * 5 + l) % 11) as f32) / 11.0
        });
        let up = upsample_argmax(&probs, 2.0, [4, 5, 6], [2.0; 3]);
        assert_eq!(up, argmax_labels(&probs));
    }

    #[test]
    fn a_boundary_lands_where_the_interpolated_probabilities_cross() {
        // class 1 rises linearly 0, 0.25, 0.5, 0.75, 1 over working voxels 0..5 (4 mm):
        // it wins beyond 8 mm; on a 1 mm grid, voxels 9.. are class 1 (8 mm is a tie → 0)
        let probs = two_class(5, |i| i as f32 * 0.25);
        let up = upsample_argmax(&probs, 4.0, [17, 3, 3], [1.0; 3]);
        let line: Vec<u8> = (0..17).map(|i| up[[i, 1, 1]]).collect();
        let want: Vec<u8> = (0..17).map(|i| u8::from(i > 8)).collect();
        assert_eq!(line, want);
        // nearest-neighbour labels would put it at 6 mm (voxel 1.5 rounds to 2 = 0.5, a tie → 0; 3 wins)
    }

    #[test]
    fn a_sharp_step_stays_within_half_a_working_voxel() {
        // probabilities 0 | 1 between working voxels 2 and 3 (3 mm): the crossing is at 7.5 mm
        let probs = two_class(6, |i| if i >= 3 { 1.0 } else { 0.0 });
        let up = upsample_argmax(&probs, 3.0, [16, 3, 3], [1.0; 3]);
        for i in 0..16 {
            assert_eq!(up[[i, 0, 2]], u8::from(i as f64 > 7.5), "voxel {i}");
        }
    }

    #[test]
    fn imposed_labels_survive_interpolation() {
        let mut probs = two_class(4, |i| if i == 0 { 0.9 } else { 0.1 });
        let raw = argmax_labels(&probs);
        let mut cleaned = raw.clone();
        cleaned.slice_mut(ndarray::s![0, .., ..]).fill(0);
        impose_labels(&mut probs, &raw, &cleaned);
        let up = upsample_argmax(&probs, 2.0, [7, 3, 3], [1.0; 3]);
        assert!(up.iter().all(|&c| c == 0));
    }
}
