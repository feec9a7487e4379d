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

/// A volume from an array handed over by a caller (the Python package): any number of
/// dimensions as long as those past the third are 1 (as the NIfTI reader takes a file),
/// a voxel-to-world `affine` (RAS mm, as NIfTI's), and the voxel sizes — by default the
/// lengths of the affine's columns. Every voxel must be finite, as the readers require.
/// `name` names the array in errors.
pub fn volume_from_array(
    data: ndarray::ArrayD<f32>,
    affine: [[f64; 4]; 4],
    spacing: Option<[f64; 3]>,
    name: &std::path::Path,
) -> Result<Volume<f32>, super::VolumeError> {
    let bad = |problem: String| super::VolumeError::new(name, problem);
    let shape = data.shape().to_vec();
    if shape.len() < 3 || shape[3..].iter().any(|&d| d != 1) {
        return Err(bad(format!(
            "a 3D volume is needed, the array is {}D with shape {shape:?}; extract one volume first",
            shape.len()
        )));
    }
    if shape[..3].contains(&0) {
        return Err(bad(format!("the array is empty (shape {shape:?})")));
    }
    let m = Matrix4::from_fn(|r, c| affine[r][c]);
    let invertible = m.fixed_view::<3, 3>(0, 0).determinant().abs() > 1e-12;
    if !m.iter().all(|x| x.is_finite()) || !invertible || m.row(3) != Matrix4::identity().row(3) {
        return Err(bad(format!(
            "the affine must be a finite 4×4 voxel-to-world matrix with an invertible 3×3 part and a last row of 0 0 0 1, got {affine:?}"
        )));
    }
    let spacing = spacing.unwrap_or_else(|| axis_lengths(&m));
    if !spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(bad(format!(
            "voxel spacing must be positive, got {spacing:?}"
        )));
    }
    let mut data = data;
    while data.ndim() > 3 {
        data = data.index_axis_move(ndarray::Axis(3), 0);
    }
    let data = data
        .into_dimensionality::<ndarray::Ix3>()
        .map_err(|e| bad(format!("cannot take the array as 3D: {e}")))?;
    let data = if data.is_standard_layout() {
        data
    } else {
        data.as_standard_layout().into_owned()
    };
    super::check_finite(&data).map_err(bad)?;
    Ok(Volume::new(data, spacing, m))
}

/// The length of each voxel axis in world units (the affine's column norms).
pub fn axis_lengths(affine: &Matrix4<f64>) -> [f64; 3] {
    std::array::from_fn(|c| affine.fixed_view::<3, 1>(0, c).norm())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ShapeBuilder;
    use std::path::Path;

    fn affine() -> [[f64; 4]; 4] {
        [
            [0.0, 0.0, -2.0, 10.0],
            [1.5, 0.0, 0.0, -3.0],
            [0.0, 0.5, 0.0, 7.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    #[test]
    fn an_array_in_either_memory_order_gives_the_same_volume() {
        let c =
            ndarray::Array3::from_shape_fn((4, 3, 2), |(i, j, k)| (i * 100 + j * 10 + k) as f32);
        let mut f = ndarray::Array3::<f32>::zeros((4, 3, 2).f());
        f.assign(&c);
        assert!(f.as_slice().is_none(), "Fortran order");
        let name = Path::new("<array>");
        let a = volume_from_array(c.clone().into_dyn(), affine(), None, name).unwrap();
        let b = volume_from_array(f.into_dyn(), affine(), None, name).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.data[[3, 2, 1]], 321.0);
        // the spacing is the affine's column lengths, unless given
        assert_eq!(a.spacing, [1.5, 0.5, 2.0]);
        assert_eq!(a.world_of([1.0, 0.0, 0.0]), [10.0, -1.5, 7.0]);
        let s = volume_from_array(c.into_dyn(), affine(), Some([1.0, 2.0, 3.0]), name).unwrap();
        assert_eq!(s.spacing, [1.0, 2.0, 3.0]);
    }

    #[test]
    fn trailing_dimensions_of_one_are_dropped_and_others_refused() {
        let name = Path::new("<ct array>");
        let four = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[4, 3, 2, 1]));
        assert_eq!(
            volume_from_array(four, affine(), None, name)
                .unwrap()
                .shape(),
            [4, 3, 2]
        );
        let t2 = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[4, 3, 2, 2]));
        let e = volume_from_array(t2, affine(), None, name)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("<ct array>: a 3D volume is needed, the array is 4D"),
            "{e}"
        );
        let flat = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[4, 3]));
        assert!(volume_from_array(flat, affine(), None, name).is_err());
        let mut singular = affine();
        singular[0] = [0.0; 4];
        let ok = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[4, 3, 2]));
        let e = volume_from_array(ok.clone(), singular, None, name)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invertible"), "{e}");
        let mut nan = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[4, 3, 2]));
        nan[[1, 2, 0]] = f32::NAN;
        let e = volume_from_array(nan, affine(), None, name)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 voxel(s) are NaN or infinite (the first at voxel [1, 2, 0])"),
            "{e}"
        );
        let mut projective = affine();
        projective[3] = [0.0, 0.0, 1.0, 1.0];
        assert!(volume_from_array(ok, projective, None, name).is_err());
    }
}
