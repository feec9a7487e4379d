//! Reorientation to RAS by axis permutation and flips only (no resampling).

use nalgebra::Matrix4;
use ndarray::{Array3, Axis};

use super::volume::{Volume, axis_directions};

/// Which world axis each voxel axis points along, and whether it points the
/// negative way (towards L, P or I).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Orientation {
    pub world_axis: [usize; 3],
    pub negative: [bool; 3],
}

impl Orientation {
    pub const RAS: Orientation = Orientation {
        world_axis: [0, 1, 2],
        negative: [false, false, false],
    };

    /// The closest axis-aligned orientation of an affine (nibabel's
    /// `io_orientation`: voxel axes are assigned to world axes greedily by the
    /// largest absolute direction cosine).
    pub fn of_affine(affine: &Matrix4<f64>) -> Orientation {
        let dirs = axis_directions(affine);
        let mut world_axis = [usize::MAX; 3];
        let mut negative = [false; 3];
        let mut used_voxel = [false; 3];
        let mut used_world = [false; 3];
        for _ in 0..3 {
            let mut best = (-1.0, 0, 0);
            for (v, dir) in dirs.iter().enumerate() {
                if used_voxel[v] {
                    continue;
                }
                for (w, &c) in dir.iter().enumerate() {
                    if !used_world[w] && c.abs() > best.0 {
                        best = (c.abs(), v, w);
                    }
                }
            }
            let (_, v, w) = best;
            used_voxel[v] = true;
            used_world[w] = true;
            world_axis[v] = w;
            negative[v] = dirs[v][w] < 0.0;
        }
        Orientation {
            world_axis,
            negative,
        }
    }

    /// The usual three-letter code, e.g. "RAS", "LPS", "PIR".
    pub fn code(&self) -> String {
        const POS: [char; 3] = ['R', 'A', 'S'];
        const NEG: [char; 3] = ['L', 'P', 'I'];
        (0..3)
            .map(|v| {
                let w = self.world_axis[v];
                if self.negative[v] { NEG[w] } else { POS[w] }
            })
            .collect()
    }

    /// Parse a code such as "LPS". Returns None for anything that is not a valid orientation.
    pub fn from_code(code: &str) -> Option<Orientation> {
        let chars: Vec<char> = code.to_ascii_uppercase().chars().collect();
        if chars.len() != 3 {
            return None;
        }
        let mut world_axis = [0; 3];
        let mut negative = [false; 3];
        let mut seen = [false; 3];
        for (v, ch) in chars.iter().enumerate() {
            let (w, neg) = match ch {
                'R' => (0, false),
                'L' => (0, true),
                'A' => (1, false),
                'P' => (1, true),
                'S' => (2, false),
                'I' => (2, true),
                _ => return None,
            };
            if seen[w] {
                return None;
            }
            seen[w] = true;
            world_axis[v] = w;
            negative[v] = neg;
        }
        Some(Orientation {
            world_axis,
            negative,
        })
    }

    /// All 48 orientations.
    pub fn all48() -> Vec<Orientation> {
        crate::geometry::SignedPerm::all48()
            .into_iter()
            .map(|p| {
                // voxel axis v points along world axis perm[v], sign[v]
                Orientation {
                    world_axis: p.perm,
                    negative: p.sign.map(|s| s < 0),
                }
            })
            .collect()
    }
}

/// What `to_ras` did, so `from_ras` can undo it exactly.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reorientation {
    /// The orientation of the original voxel grid.
    pub original: Orientation,
    /// The original voxel grid's shape.
    pub original_shape: [usize; 3],
}

/// out axis `p` = in axis `src[p]`, reversed where `flip[p]`.
fn permute_flip<T: Clone>(data: &Array3<T>, src: [usize; 3], flip: [bool; 3]) -> Array3<T> {
    let mut view = data.view().permuted_axes(src);
    for (p, &f) in flip.iter().enumerate() {
        if f {
            view.invert_axis(Axis(p));
        }
    }
    view.as_standard_layout().into_owned()
}

/// The affine of a grid whose index n maps to the old index o by o = M·n + b.
fn affine_after(
    affine: &Matrix4<f64>,
    src: [usize; 3],
    flip: [bool; 3],
    in_shape: [usize; 3],
) -> Matrix4<f64> {
    // out axis p reads in axis src[p]: o[src[p]] = flip[p] ? (N-1-n[p]) : n[p]
    let mut t = Matrix4::zeros();
    t[(3, 3)] = 1.0;
    for p in 0..3 {
        let o = src[p];
        if flip[p] {
            t[(o, p)] = -1.0;
            t[(o, 3)] = (in_shape[o] as f64) - 1.0;
        } else {
            t[(o, p)] = 1.0;
        }
    }
    affine * t
}

/// Reorient a volume so its voxel axes point R, A, S. Exact: only permutes and flips.
pub fn to_ras<T: Clone>(vol: &Volume<T>) -> (Volume<T>, Reorientation) {
    let o = Orientation::of_affine(&vol.affine);
    let shape = vol.shape();
    // out axis w (world axis) reads the voxel axis that points along w
    let mut src = [0; 3];
    let mut flip = [false; 3];
    for v in 0..3 {
        src[o.world_axis[v]] = v;
        flip[o.world_axis[v]] = o.negative[v];
    }
    let out = Volume {
        data: permute_flip(&vol.data, src, flip),
        spacing: [0, 1, 2].map(|p| vol.spacing[src[p]]),
        affine: affine_after(&vol.affine, src, flip, shape),
    };
    (
        out,
        Reorientation {
            original: o,
            original_shape: shape,
        },
    )
}

/// Undo [`to_ras`]: back to the original voxel order, shape and affine.
pub fn from_ras<T: Clone>(vol: &Volume<T>, r: &Reorientation) -> Volume<T> {
    let src = r.original.world_axis;
    let flip = r.original.negative;
    Volume {
        data: permute_flip(&vol.data, src, flip),
        spacing: [0, 1, 2].map(|p| vol.spacing[src[p]]),
        affine: affine_after(&vol.affine, src, flip, vol.shape()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::euler_rotation_deg;

    /// An affine whose voxel axes follow `o`, with spacing and a small oblique tilt.
    fn affine_for(o: &Orientation, spacing: [f64; 3], tilt_deg: [f64; 3]) -> Matrix4<f64> {
        let tilt = euler_rotation_deg(tilt_deg);
        let mut m = Matrix4::identity();
        for v in 0..3 {
            let mut dir = [0.0; 3];
            dir[o.world_axis[v]] = if o.negative[v] { -1.0 } else { 1.0 };
            let d = crate::geometry::mat3_vec(&tilt, dir);
            for w in 0..3 {
                m[(w, v)] = d[w] * spacing[v];
            }
        }
        m[(0, 3)] = -12.5;
        m[(1, 3)] = 40.25;
        m[(2, 3)] = 7.0;
        m
    }

    #[test]
    fn code_round_trips_for_all_48() {
        for o in Orientation::all48() {
            assert_eq!(Orientation::from_code(&o.code()), Some(o));
            let a = affine_for(&o, [0.7, 1.1, 2.5], [4.0, -6.0, 8.0]);
            assert_eq!(Orientation::of_affine(&a), o, "{}", o.code());
        }
        assert_eq!(Orientation::from_code("LPS").unwrap().code(), "LPS");
        assert!(Orientation::from_code("LRS").is_none());
    }

    #[test]
    fn to_ras_then_back_is_identity_for_all_48_codes() {
        let shape = (5, 4, 3);
        let data = Array3::from_shape_fn(shape, |(i, j, k)| (i * 100 + j * 10 + k) as f32);
        for o in Orientation::all48() {
            let vol = Volume::new(
                data.clone(),
                [0.7, 1.1, 2.5],
                affine_for(&o, [0.7, 1.1, 2.5], [3.0, -5.0, 2.0]),
            );
            let (ras, r) = to_ras(&vol);
            assert_eq!(
                Orientation::of_affine(&ras.affine),
                Orientation::RAS,
                "{}",
                o.code()
            );
            // every voxel keeps its world position
            for ((i, j, k), v) in vol.data.indexed_iter() {
                let w = vol.world_of([i as f64, j as f64, k as f64]);
                let inv = ras.affine.try_inverse().unwrap();
                let n = inv * nalgebra::Vector4::new(w[0], w[1], w[2], 1.0);
                let idx = [
                    n[0].round() as usize,
                    n[1].round() as usize,
                    n[2].round() as usize,
                ];
                assert!((n[0] - idx[0] as f64).abs() < 1e-9);
                assert_eq!(ras.data[idx], *v);
            }
            let back = from_ras(&ras, &r);
            assert_eq!(back.data, vol.data, "{}", o.code());
            assert_eq!(back.spacing, vol.spacing);
            assert!(
                (back.affine - vol.affine).abs().max() < 1e-12,
                "{}",
                o.code()
            );
        }
    }
}
