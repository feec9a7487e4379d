//! DICOM in: one CT or MR series (a folder or `.zip`; classic single-frame files or
//! one enhanced multi-frame file) as a `Volume` on the grid dcm2niix gives it, and
//! DICOM SEG out (`seg`).
//!
//! The grid: voxel (i, j, k) is column i, row `rows − 1 − j` of the k-th slice, the
//! slices sorted by their ImagePositionPatient along the slice normal
//! (row direction × column direction), ascending; the affine is built from
//! ImageOrientationPatient, PixelSpacing and the positions, then taken from DICOM's
//! LPS to RAS. This is dcm2niix's layout (rows flipped), checked against stored
//! dcm2niix output in `tests/dicom.rs`.

pub mod files;
pub mod frames;
pub mod scan;
pub mod seg;

use std::path::{Path, PathBuf};

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use nalgebra::{Matrix4, Vector3};
use ndarray::Array3;

use self::files::{DicomFile, read_objects};
use self::frames::{Frame, frames_of, stored_values, string};
use crate::io::{Volume, VolumeError};

/// A volume read from a DICOM series, with what a derived object needs of its source.
pub struct DicomSeries {
    pub volume: Volume<f32>,
    pub source: SeriesSource,
}

/// The source series of a segmentation: identity, patient and study, and the slices
/// in the volume's k order.
#[derive(Clone, Debug)]
pub struct SeriesSource {
    pub path: PathBuf,
    pub modality: String,
    pub series_instance_uid: String,
    pub frame_of_reference_uid: String,
    /// Patient and study attributes, copied into derived objects.
    pub copied: Vec<(Tag, VR, String)>,
    /// Slice k of the volume.
    pub slices: Vec<SliceRef>,
    pub rows: usize,
    pub cols: usize,
    pub orientation: [f64; 6],
    /// (between rows, between columns), as PixelSpacing.
    pub pixel_spacing: [f64; 2],
    pub slice_spacing: f64,
}

/// One source slice: its object and (for a multi-frame object) its 1-based frame.
#[derive(Clone, Debug)]
pub struct SliceRef {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub frame: Option<u32>,
    pub position: [f64; 3],
}

/// Patient and study attributes copied from the source into a derived object.
const COPIED: [(Tag, VR); 11] = [
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_INSTANCE_UID, VR::UI),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_DESCRIPTION, VR::LO),
];

/// True when `path` is DICOM input: a folder, a `.zip`, or a file with the DICOM
/// marker (an enhanced multi-frame object); NIfTI files are not.
pub fn is_series_path(path: &Path) -> bool {
    path.is_dir()
        || path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("zip"))
        || files::has_dicm_marker(path)
}

/// Read one DICOM series from a folder (searched recursively), a `.zip`, or one
/// multi-frame file.
pub fn read_series(path: &Path) -> Result<DicomSeries, VolumeError> {
    let (files, skipped) = read_objects(path)?;
    if files.is_empty() {
        return Err(VolumeError::new(
            path,
            format!(
                "no DICOM images found ({} files without the DICM marker, {} DICOM objects without pixel data)",
                skipped.not_dicom, skipped.no_pixels
            ),
        ));
    }
    one_series(path, &files)?;
    let frames = frames_of(&files)?;
    let order = slice_order(&files, &frames)?;
    let mut volume = assemble(&files, &frames, &order)?;
    if monochrome1(&files)? {
        invert(&mut volume.data);
    }
    let first = &files[0].object;
    let f0 = &frames[order[0]];
    let frames_in = |file: usize| frames.iter().filter(|f| f.file == file).count();
    let source = SeriesSource {
        path: path.to_path_buf(),
        modality: string(first, tags::MODALITY).unwrap_or_default(),
        series_instance_uid: string(first, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        frame_of_reference_uid: string(first, tags::FRAME_OF_REFERENCE_UID).unwrap_or_default(),
        copied: COPIED
            .iter()
            .map(|&(t, vr)| (t, vr, string(first, t).unwrap_or_default()))
            .collect(),
        slices: order
            .iter()
            .map(|&i| {
                let f = &frames[i];
                SliceRef {
                    sop_class_uid: string(&files[f.file].object, tags::SOP_CLASS_UID)
                        .unwrap_or_default(),
                    sop_instance_uid: f.sop_instance_uid.clone(),
                    frame: (frames_in(f.file) > 1).then_some(f.frame + 1),
                    position: f.position,
                }
            })
            .collect(),
        rows: f0.rows,
        cols: f0.cols,
        orientation: f0.orientation,
        pixel_spacing: f0.pixel_spacing,
        slice_spacing: volume.spacing[2],
    };
    Ok(DicomSeries { volume, source })
}

/// Whether the series is MONOCHROME1 (the lowest value shown white); every file must
/// say the same.
fn monochrome1(files: &[DicomFile]) -> Result<bool, VolumeError> {
    let pi = |f: &DicomFile| {
        string(&f.object, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_else(|| "MONOCHROME2".into())
    };
    let first = pi(&files[0]);
    if let Some(f) = files.iter().find(|f| pi(f) != first) {
        return Err(VolumeError::new(
            &f.name,
            format!(
                "PhotometricInterpretation {} but {} is {first}: mixed series",
                pi(f),
                files[0].name.display()
            ),
        ));
    }
    Ok(first == "MONOCHROME1")
}

/// MONOCHROME1 to MONOCHROME2: v' = min + max − v over the volume (as MONAI Deploy's
/// series-to-volume step does), so that bright means a high value as in training.
fn invert(data: &mut Array3<f32>) {
    let (lo, hi) = data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    data.mapv_inplace(|x| lo + hi - x);
}

/// Every file must belong to one series.
fn one_series(path: &Path, files: &[DicomFile]) -> Result<(), VolumeError> {
    let mut series: Vec<(String, usize, &Path)> = Vec::new();
    for f in files {
        let uid = string(&f.object, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        match series.iter_mut().find(|s| s.0 == uid) {
            Some(s) => s.1 += 1,
            None => series.push((uid, 1, &f.name)),
        }
    }
    if series.len() > 1 {
        let list: Vec<String> = series
            .iter()
            .map(|(u, n, p)| format!("{u} ({n} files, e.g. {})", p.display()))
            .collect();
        return Err(VolumeError::new(
            path,
            format!(
                "{} series mixed in one input: {}; give the folder of one series",
                series.len(),
                list.join("; ")
            ),
        ));
    }
    Ok(())
}

fn normal_of(o: &[f64; 6]) -> Vector3<f64> {
    Vector3::new(o[0], o[1], o[2]).cross(&Vector3::new(o[3], o[4], o[5]))
}

/// The frames of a series, for the checks that they form one regular volume.
struct Series<'a> {
    files: &'a [DicomFile],
    frames: &'a [Frame],
}

impl Series<'_> {
    /// A frame's name in messages: its file, and the frame number in a multi-frame file.
    fn name(&self, f: &Frame) -> String {
        let file = &self.files[f.file];
        let n = file.name.display().to_string();
        let multi = file
            .object
            .element_opt(tags::NUMBER_OF_FRAMES)
            .ok()
            .flatten()
            .is_some();
        if multi && self.frames.iter().filter(|g| g.file == f.file).count() > 1 {
            format!("{n} frame {}", f.frame + 1)
        } else {
            n
        }
    }

    fn err(&self, f: &Frame, problem: String) -> VolumeError {
        VolumeError::new(&self.files[f.file].name, problem)
    }

    /// Every frame has the first one's size, orientation and pixel spacing, and the
    /// orientation is two orthogonal unit vectors.
    fn check_uniform(&self) -> Result<(), VolumeError> {
        let f0 = &self.frames[0];
        let o = f0.orientation;
        let (r, c) = (
            Vector3::new(o[0], o[1], o[2]),
            Vector3::new(o[3], o[4], o[5]),
        );
        if (r.norm() - 1.0).abs() > 1e-3 || (c.norm() - 1.0).abs() > 1e-3 || r.dot(&c).abs() > 1e-3
        {
            return Err(self.err(
                f0,
                format!("ImageOrientationPatient {o:?} is not two orthogonal unit vectors"),
            ));
        }
        let differs =
            |a: &[f64], b: &[f64], tol: f64| a.iter().zip(b).any(|(x, y)| (x - y).abs() > tol);
        for f in self.frames {
            let problem = if (f.rows, f.cols) != (f0.rows, f0.cols) {
                format!(
                    "{} × {} pixels, but {} has {} × {}: slices of different sizes (mixed series?)",
                    f.cols,
                    f.rows,
                    self.name(f0),
                    f0.cols,
                    f0.rows
                )
            } else if differs(&f.orientation, &o, 1e-4) {
                format!(
                    "orientation {:?} differs from {}'s {o:?}: mixed orientations in one series",
                    f.orientation,
                    self.name(f0)
                )
            } else if differs(&f.pixel_spacing, &f0.pixel_spacing, 1e-3) {
                format!(
                    "pixel spacing {:?} differs from {}'s {:?}",
                    f.pixel_spacing,
                    self.name(f0),
                    f0.pixel_spacing
                )
            } else {
                continue;
            };
            return Err(self.err(f, problem));
        }
        Ok(())
    }

    /// A frame's position along the slice normal.
    fn depth(&self, f: &Frame) -> f64 {
        normal_of(&self.frames[0].orientation).dot(&Vector3::from(f.position))
    }

    /// The frame indices sorted along the slice normal, and the gaps between neighbours.
    fn sort_along_normal(&self) -> (Vec<usize>, Vec<f64>) {
        let frames = self.frames;
        let mut order: Vec<usize> = (0..frames.len()).collect();
        order.sort_by(|&a, &b| self.depth(&frames[a]).total_cmp(&self.depth(&frames[b])));
        let gaps = order
            .windows(2)
            .map(|w| self.depth(&frames[w[1]]) - self.depth(&frames[w[0]]))
            .collect();
        (order, gaps)
    }

    /// No two frames at one position, and every gap the median one (within 5 %).
    fn check_spacing(&self, order: &[usize], gaps: &[f64]) -> Result<(), VolumeError> {
        let frames = self.frames;
        for (w, &g) in order.windows(2).zip(gaps) {
            if g < 0.01 {
                let (a, b) = (&frames[w[0]], &frames[w[1]]);
                return Err(self.err(
                    b,
                    format!(
                        "lies at the same position as {} ({:.3} mm along the slice normal): several \
                         acquisitions, echoes or time points in one series; export one of them",
                        self.name(a),
                        self.depth(a)
                    ),
                ));
            }
        }
        let mut sorted = gaps.to_vec();
        sorted.sort_by(f64::total_cmp);
        let m = sorted[sorted.len() / 2];
        for (w, &g) in order.windows(2).zip(gaps) {
            let ratio = g / m;
            if (ratio - 1.0).abs() <= 0.05 {
                continue;
            }
            let (a, b) = (&frames[w[0]], &frames[w[1]]);
            let k = ratio.round();
            let problem = if k >= 2.0 && (ratio - k).abs() <= 0.05 * k {
                format!(
                    "{} slice(s) missing between {} and {} ({:.3} mm apart; the others are {m:.3} mm apart)",
                    k as usize - 1,
                    self.name(a),
                    self.name(b),
                    g
                )
            } else {
                format!(
                    "uneven slice spacing: {} and {} are {g:.3} mm apart, the others {m:.3} mm",
                    self.name(a),
                    self.name(b)
                )
            };
            return Err(self.err(a, problem));
        }
        Ok(())
    }

    /// The slices stack straight along their normal (no gantry tilt).
    fn check_tilt(&self, order: &[usize]) -> Result<(), VolumeError> {
        let n = normal_of(&self.frames[0].orientation);
        let (first, last) = (&self.frames[order[0]], &self.frames[order[order.len() - 1]]);
        let along = Vector3::from(last.position) - Vector3::from(first.position);
        let height = along.dot(&n);
        let shift = (along - n * height).norm();
        let tilt = shift.atan2(height).to_degrees();
        if tilt > 0.1 {
            return Err(self.err(
                last,
                format!(
                    "gantry tilt of {tilt:.2}°: the slices are shifted within their planes, so the \
                     volume is not a box; correct the tilt first (e.g. dcm2niix resamples tilted CT)"
                ),
            ));
        }
        Ok(())
    }
}

/// Frames sorted along the slice normal, after checking that they form one regular
/// volume: same size, orientation and pixel spacing, no repeated position, no gap,
/// even spacing, no gantry tilt.
fn slice_order(files: &[DicomFile], frames: &[Frame]) -> Result<Vec<usize>, VolumeError> {
    let series = Series { files, frames };
    series.check_uniform()?;
    if frames.len() < 2 {
        return Err(series.err(
            &frames[0],
            "a single slice: a 3D series of at least 2 slices is needed".into(),
        ));
    }
    let (order, gaps) = series.sort_along_normal();
    series.check_spacing(&order, &gaps)?;
    series.check_tilt(&order)?;
    Ok(order)
}

/// The voxels (rescaled) on dcm2niix's grid, and the RAS affine.
fn assemble(
    files: &[DicomFile],
    frames: &[Frame],
    order: &[usize],
) -> Result<Volume<f32>, VolumeError> {
    let f0 = &frames[order[0]];
    let (rows, cols, nz) = (f0.rows, f0.cols, order.len());
    let mut stored: Vec<Option<Vec<f32>>> = vec![None; files.len()];
    let mut data = Array3::<f32>::zeros((cols, rows, nz));
    for (k, &fi) in order.iter().enumerate() {
        let f = &frames[fi];
        if stored[f.file].is_none() {
            stored[f.file] = Some(stored_values(&files[f.file])?);
        }
        let v = stored[f.file].as_ref().expect("just decoded");
        let last_use = !order[k + 1..].iter().any(|&o| frames[o].file == f.file);
        let at = f.frame as usize * rows * cols;
        let px = v.get(at..at + rows * cols).ok_or_else(|| {
            VolumeError::new(
                &files[f.file].name,
                format!(
                    "pixel data too short: {} values for frame {} of {rows} × {cols}",
                    v.len(),
                    f.frame + 1
                ),
            )
        })?;
        for r in 0..rows {
            for c in 0..cols {
                let x = px[r * cols + c] as f64 * f.slope + f.intercept;
                data[[c, rows - 1 - r, k]] = x as f32;
            }
        }
        if last_use {
            // a file's decoded frames are not kept once its last slice is placed
            stored[f.file] = None;
        }
    }
    if let Some(bad) = data.iter().position(|x| !x.is_finite()) {
        let f = &frames[order[bad % nz]];
        return Err(VolumeError::new(
            &files[f.file].name,
            "non-finite values after rescaling".to_string(),
        ));
    }
    let o = f0.orientation;
    let (row_dir, col_dir) = (
        Vector3::new(o[0], o[1], o[2]),
        Vector3::new(o[3], o[4], o[5]),
    );
    let [dr, dc] = f0.pixel_spacing;
    let last = &frames[*order.last().expect("≥ 2 slices")];
    let step = (Vector3::from(last.position) - Vector3::from(f0.position)) / (nz - 1) as f64;
    let origin = Vector3::from(f0.position) + col_dir * (dr * (rows - 1) as f64);
    let cols_lps = [row_dir * dc, -col_dir * dr, step, origin];
    let mut affine = Matrix4::identity();
    for (j, v) in cols_lps.iter().enumerate() {
        affine[(0, j)] = -v[0];
        affine[(1, j)] = -v[1];
        affine[(2, j)] = v[2];
    }
    Ok(Volume::new(data, [dc, dr, step.norm()], affine))
}
