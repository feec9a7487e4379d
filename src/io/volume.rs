//! The `Volume`: a 3D voxel array with its spacing and voxel-to-world affine.

use nalgebra::{Matrix4, Vector4};
use ndarray::Array3;

/// A 3D volume. `data[[i, j, k]]` is the voxel at index (i, j, k) of the file's
/// voxel grid; `affine` maps (i, j, k, 1) to world millimetres (NIfTI RAS+
/// world: +x right, +y anterior, +z superior); `spacing` is the voxel size in mm
/// along i, j, k (NIfTI `pixdim[1..4]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Volume<T> {
    pub data: Array3<T>,
    pub spacing: [f64; 3],
    pub affine: Matrix4<f64>,
}

impl<T> Volume<T> {
    pub fn new(data: Array3<T>, spacing: [f64; 3], affine: Matrix4<f64>) -> Self {
        Volume {
            data,
            spacing,
            affine,
        }
    }

    /// A volume whose affine is the diagonal of its spacing (origin at voxel 0).
    pub fn with_spacing(data: Array3<T>, spacing: [f64; 3]) -> Self {
        let mut affine = Matrix4::identity();
        for (a, s) in spacing.iter().enumerate() {
            affine[(a, a)] = *s;
        }
        Volume {
            data,
            spacing,
            affine,
        }
    }

    pub fn shape(&self) -> [usize; 3] {
        let s = self.data.shape();
        [s[0], s[1], s[2]]
    }

    /// World coordinates (mm) of a voxel position (may be fractional).
    pub fn world_of(&self, ijk: [f64; 3]) -> [f64; 3] {
        let v = self.affine * Vector4::new(ijk[0], ijk[1], ijk[2], 1.0);
        [v[0], v[1], v[2]]
    }

    /// Same data, another element type.
    pub fn map<U>(&self, f: impl FnMut(&T) -> U) -> Volume<U> {
        Volume {
            data: self.data.map(f),
            spacing: self.spacing,
            affine: self.affine,
        }
    }

    /// Same grid (spacing, affine), new data.
    pub fn with_data<U>(&self, data: Array3<U>) -> Volume<U> {
        Volume {
            data,
            spacing: self.spacing,
            affine: self.affine,
        }
    }
}

impl Volume<f32> {
    /// (min, max) over all voxels, NaN ignored; None when every voxel is NaN.
    pub fn intensity_range(&self) -> Option<(f32, f32)> {
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        for &v in self.data.iter() {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        (lo <= hi).then_some((lo, hi))
    }
}

/// The voxel-to-world affine with its columns normalised: the direction of each voxel axis.
pub fn axis_directions(affine: &Matrix4<f64>) -> [[f64; 3]; 3] {
    std::array::from_fn(|c| {
        let col = [affine[(0, c)], affine[(1, c)], affine[(2, c)]];
        let n = (col[0] * col[0] + col[1] * col[1] + col[2] * col[2]).sqrt();
        if n > 0.0 { col.map(|x| x / n) } else { col }
    })
}
