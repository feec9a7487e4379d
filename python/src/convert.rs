//! Arrays between numpy and the library's volumes. A voxel array `a[i, j, k]` is voxel
//! (i, j, k) of the grid its affine maps to world millimetres (RAS+, as NIfTI and
//! nibabel): the same axes a NIfTI file has, in either memory order.

use std::path::{Path, PathBuf};

use numpy::{PyArray2, PyArrayDyn, PyReadonlyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use rlu2net::io::Volume;

/// An input as the Python side hands it over: a file or DICOM series, or a float32
/// array with its affine, optionally its voxel sizes, and a name for messages.
#[derive(FromPyObject)]
pub enum Source<'py> {
    Path(PathBuf),
    Array(
        PyReadonlyArrayDyn<'py, f32>,
        PyReadonlyArray2<'py, f64>,
        Option<[f64; 3]>,
        String,
    ),
}

/// An input read into memory (an array) or still on disk (a path), ready to leave the GIL.
pub enum Loaded {
    Path(PathBuf),
    Volume(Box<Volume<f32>>, PathBuf),
}

impl Source<'_> {
    /// Copy an array into a volume (in the library's memory order); a path stays a path.
    pub fn load(self) -> anyhow::Result<Loaded> {
        match self {
            Source::Path(p) => Ok(Loaded::Path(p)),
            Source::Array(data, affine, spacing, name) => {
                let name = PathBuf::from(name);
                let v = volume(&data, &affine, spacing, &name)?;
                Ok(Loaded::Volume(Box::new(v), name))
            }
        }
    }
}

/// The 4×4 affine of a numpy array.
pub fn affine_of(a: &PyReadonlyArray2<'_, f64>, name: &Path) -> anyhow::Result<[[f64; 4]; 4]> {
    let v = a.as_array();
    anyhow::ensure!(
        v.dim() == (4, 4),
        "{}: the affine must be 4×4, got shape {:?}",
        name.display(),
        a.shape()
    );
    Ok(std::array::from_fn(|r| std::array::from_fn(|c| v[[r, c]])))
}

/// A volume from a voxel array and its affine (see `rlu2net::io::volume::volume_from_array`).
pub fn volume(
    data: &PyReadonlyArrayDyn<'_, f32>,
    affine: &PyReadonlyArray2<'_, f64>,
    spacing: Option<[f64; 3]>,
    name: &Path,
) -> anyhow::Result<Volume<f32>> {
    let affine = affine_of(affine, name)?;
    // one copy, into the library's (C) memory order whatever the array's
    let owned = data.as_array().as_standard_layout().into_owned();
    Ok(rlu2net::io::volume::volume_from_array(
        owned, affine, spacing, name,
    )?)
}

/// A 4×4 matrix as a numpy array.
pub fn affine_array<'py>(py: Python<'py>, m: &nalgebra::Matrix4<f64>) -> Bound<'py, PyArray2<f64>> {
    let a = ndarray::Array2::from_shape_fn((4, 4), |(r, c)| m[(r, c)]);
    PyArray2::from_owned_array(py, a)
}

/// An owned array handed to numpy without a copy.
pub fn array<'py, T: numpy::Element, D: ndarray::Dimension>(
    py: Python<'py>,
    a: ndarray::Array<T, D>,
) -> Bound<'py, PyArrayDyn<T>> {
    PyArrayDyn::from_owned_array(py, a.into_dyn())
}
