//! Per-frame geometry and values of DICOM image objects: a classic object is one
//! frame; an enhanced multi-frame object (Enhanced CT/MR) gives each frame its
//! position, orientation, spacing and rescale from the per-frame functional groups,
//! falling back to the shared ones.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::files::DicomFile;
use crate::io::VolumeError;

/// One 2D frame: where it lies (LPS millimetres, as DICOM gives them) and how its
/// stored values become modality values.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Index of its file in the list read.
    pub file: usize,
    /// 0-based frame number inside that file.
    pub frame: u32,
    pub sop_instance_uid: String,
    /// ImagePositionPatient: the centre of the first transmitted pixel.
    pub position: [f64; 3],
    /// ImageOrientationPatient: row direction (along a row, column index rising), then
    /// column direction (down a column, row index rising).
    pub orientation: [f64; 6],
    /// PixelSpacing: (between rows, between columns).
    pub pixel_spacing: [f64; 2],
    pub rows: usize,
    pub cols: usize,
    pub slope: f64,
    pub intercept: f64,
}

pub fn string(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.element_opt(tag).ok().flatten()?.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!s.is_empty()).then(|| s.to_string())
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.element_opt(tag).ok().flatten()?.to_multi_float64().ok()
}

fn first_item(obj: &InMemDicomObject, seq: Tag) -> Option<&InMemDicomObject> {
    obj.element_opt(seq).ok().flatten()?.items()?.first()
}

/// A value from a functional group macro: the frame's own group first, then the shared.
fn group_floats(groups: [Option<&InMemDicomObject>; 2], seq: Tag, tag: Tag) -> Option<Vec<f64>> {
    groups
        .into_iter()
        .flatten()
        .find_map(|g| first_item(g, seq).and_then(|i| floats(i, tag)))
}

fn fixed<const N: usize>(v: Option<Vec<f64>>) -> Option<[f64; N]> {
    let v = v?;
    (v.len() == N && v.iter().all(|x| x.is_finite())).then(|| std::array::from_fn(|i| v[i]))
}

/// The frames of every file, in file order.
pub fn frames_of(files: &[DicomFile]) -> Result<Vec<Frame>, VolumeError> {
    let mut out = Vec::new();
    for (fi, f) in files.iter().enumerate() {
        let err = |p: String| VolumeError::new(&f.name, p);
        let file = FileFrames::of(&f.object).map_err(err)?;
        for k in 0..file.n {
            let mut frame = file.frame(k).map_err(err)?;
            frame.file = fi;
            out.push(frame);
        }
    }
    Ok(out)
}

/// What one file says of all its frames: the image size, the frame count, and where
/// each frame's geometry and rescaling stand (the enhanced multi-frame functional
/// groups, or the file itself).
struct FileFrames<'a> {
    obj: &'a InMemDicomObject,
    rows: usize,
    cols: usize,
    n: usize,
    sop: String,
    shared: Option<&'a InMemDicomObject>,
    per: Vec<&'a InMemDicomObject>,
}

/// A frame's values as read, before they are checked.
struct RawGeometry {
    position: Option<Vec<f64>>,
    orientation: Option<Vec<f64>>,
    spacing: Option<Vec<f64>>,
    slope: Option<Vec<f64>>,
    intercept: Option<Vec<f64>>,
}

impl<'a> FileFrames<'a> {
    fn of(obj: &'a InMemDicomObject) -> Result<FileFrames<'a>, String> {
        let spp = string(obj, tags::SAMPLES_PER_PIXEL).unwrap_or_else(|| "1".into());
        if spp != "1" {
            return Err(format!(
                "{spp} samples per pixel (colour): only greyscale CT or MR series are segmented"
            ));
        }
        let rows = uint(obj, tags::ROWS).ok_or("no Rows (0028,0010)")?;
        let cols = uint(obj, tags::COLUMNS).ok_or("no Columns (0028,0011)")?;
        let n = uint(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
        pixel_module(obj, rows, cols, n)?;
        let per: Vec<&InMemDicomObject> = obj
            .element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
            .ok()
            .flatten()
            .and_then(|e| e.items())
            .map(|items| items.iter().collect())
            .unwrap_or_default();
        let file = FileFrames {
            obj,
            rows,
            cols,
            n,
            sop: string(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
            shared: first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE),
            per,
        };
        if file.enhanced() && file.per.len() != n {
            return Err(format!(
                "{n} frames but {} per-frame functional groups",
                file.per.len()
            ));
        }
        Ok(file)
    }

    fn enhanced(&self) -> bool {
        self.shared.is_some() || !self.per.is_empty()
    }

    /// Frame k's values, from its functional groups or from the file.
    fn raw(&self, k: usize) -> RawGeometry {
        let obj = self.obj;
        if !self.enhanced() {
            return RawGeometry {
                position: floats(obj, tags::IMAGE_POSITION_PATIENT),
                orientation: floats(obj, tags::IMAGE_ORIENTATION_PATIENT),
                spacing: floats(obj, tags::PIXEL_SPACING),
                slope: floats(obj, tags::RESCALE_SLOPE),
                intercept: floats(obj, tags::RESCALE_INTERCEPT),
            };
        }
        let g = [Some(self.per[k]), self.shared];
        let transform = tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE;
        RawGeometry {
            position: group_floats(
                g,
                tags::PLANE_POSITION_SEQUENCE,
                tags::IMAGE_POSITION_PATIENT,
            ),
            orientation: group_floats(
                g,
                tags::PLANE_ORIENTATION_SEQUENCE,
                tags::IMAGE_ORIENTATION_PATIENT,
            ),
            spacing: group_floats(g, tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING),
            slope: group_floats(g, transform, tags::RESCALE_SLOPE),
            intercept: group_floats(g, transform, tags::RESCALE_INTERCEPT),
        }
    }

    /// Where a RescaleSlope/Intercept that is no number would stand for frame k.
    fn rescale_holders(&self, k: usize) -> Vec<&InMemDicomObject> {
        if !self.enhanced() {
            return vec![self.obj];
        }
        [Some(self.per[k]), self.shared]
            .into_iter()
            .flatten()
            .filter_map(|g| first_item(g, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE))
            .collect()
    }

    /// Frame k, checked (its `file` index is the caller's to set).
    fn frame(&self, k: usize) -> Result<Frame, String> {
        let raw = self.raw(k);
        let note = if self.n > 1 {
            format!(" (frame {})", k + 1)
        } else {
            String::new()
        };
        let position = fixed::<3>(raw.position).ok_or_else(|| {
            format!("no usable ImagePositionPatient (0020,0032){note}: not a slice of a volume")
        })?;
        let orientation = fixed::<6>(raw.orientation)
            .ok_or_else(|| format!("no usable ImageOrientationPatient (0020,0037){note}"))?;
        let pixel_spacing = fixed::<2>(raw.spacing)
            .filter(|s| s.iter().all(|&x| x > 0.0))
            .ok_or_else(|| {
                format!(
                    "no usable PixelSpacing (0028,0030){note}: positive row and column spacing needed"
                )
            })?;
        let holders = self.rescale_holders(k);
        let slope = rescale(&holders, tags::RESCALE_SLOPE, raw.slope, 1.0)
            .map_err(|p| format!("{p}{note}"))?;
        let intercept = rescale(&holders, tags::RESCALE_INTERCEPT, raw.intercept, 0.0)
            .map_err(|p| format!("{p}{note}"))?;
        Ok(Frame {
            file: 0,
            frame: k as u32,
            sop_instance_uid: self.sop.clone(),
            position,
            orientation,
            pixel_spacing,
            rows: self.rows,
            cols: self.cols,
            slope: if slope == 0.0 { 1.0 } else { slope },
            intercept,
        })
    }
}

/// At most this many voxels in one file (4 GiB as f32): a larger claim is a damaged
/// header, not a scan.
pub const MAX_VOXELS_PER_FILE: u64 = 1 << 30;
/// Compressed pixel data may decode to at most this many times its size.
const MAX_COMPRESSION_RATIO: u64 = 1000;

/// The image pixel module of one object checked before any pixel is decoded:
/// greyscale, a bit depth the decoder reads, and Rows × Columns × NumberOfFrames ×
/// BitsAllocated within [`MAX_VOXELS_PER_FILE`] and within the pixel data present
/// (native: at least that many bytes; encapsulated: a fragment per frame and a
/// compression ratio of at most 1000).
fn pixel_module(
    obj: &InMemDicomObject,
    rows: usize,
    cols: usize,
    frames: usize,
) -> Result<(), String> {
    if let Some(pi) = string(obj, tags::PHOTOMETRIC_INTERPRETATION)
        && pi != "MONOCHROME1"
        && pi != "MONOCHROME2"
    {
        return Err(format!(
            "PhotometricInterpretation {pi}: only greyscale (MONOCHROME1, MONOCHROME2) CT or MR series are segmented"
        ));
    }
    let bits = uint(obj, tags::BITS_ALLOCATED).ok_or("no usable BitsAllocated (0028,0100)")?;
    if ![8, 16, 32].contains(&bits) {
        return Err(format!(
            "BitsAllocated {bits}: only 8, 16 or 32 bits per pixel are read"
        ));
    }
    let voxels = (rows as u64)
        .checked_mul(cols as u64)
        .and_then(|v| v.checked_mul(frames as u64))
        .filter(|&v| v <= MAX_VOXELS_PER_FILE)
        .ok_or_else(|| {
            format!(
                "Rows {rows} × Columns {cols} × NumberOfFrames {frames} is more than {MAX_VOXELS_PER_FILE} voxels in one file: a damaged header"
            )
        })?;
    let need = voxels * bits as u64 / 8;
    let pixels = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .ok_or("no pixel data (7FE0,0010)")?;
    match pixels.value().fragments() {
        Some(fragments) => {
            let present: u64 = fragments.iter().map(|f| f.len() as u64).sum();
            if (fragments.len() as u64) < frames as u64 {
                return Err(format!(
                    "NumberOfFrames {frames}, but its compressed pixel data has {} fragment(s)",
                    fragments.len()
                ));
            }
            if need > present.saturating_mul(MAX_COMPRESSION_RATIO) {
                return Err(format!(
                    "{rows} × {cols} × {frames} pixels of {bits} bits ({need} bytes) from {present} bytes of compressed data: a damaged header"
                ));
            }
        }
        None => {
            let present = pixels
                .value()
                .primitive()
                .map_or(0, |p| p.calculate_byte_len()) as u64;
            if present < need {
                return Err(format!(
                    "its pixel data holds {present} bytes, but Rows {rows} × Columns {cols} × NumberOfFrames {frames} × {bits} bits need {need}"
                ));
            }
        }
    }
    Ok(())
}

/// RescaleSlope / RescaleIntercept: `default` when absent, else one finite number.
fn rescale(
    holders: &[&InMemDicomObject],
    tag: Tag,
    parsed: Option<Vec<f64>>,
    default: f64,
) -> Result<f64, String> {
    let name = if tag == tags::RESCALE_SLOPE {
        "RescaleSlope (0028,1053)"
    } else {
        "RescaleIntercept (0028,1052)"
    };
    match parsed {
        Some(v) if v.len() == 1 && v[0].is_finite() => Ok(v[0]),
        Some(v) => Err(format!("{name} {v:?} is not one finite number")),
        // present (here or in a functional group) but not a number, or absent
        None => match holders.iter().find_map(|h| string(h, tag)) {
            Some(text) => Err(format!("{name} {text:?} is not a number")),
            None => Ok(default),
        },
    }
}

fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<usize> {
    let v: i64 = obj.element_opt(tag).ok().flatten()?.to_int().ok()?;
    usize::try_from(v).ok().filter(|&x| x > 0)
}

/// The stored values of every frame of one file (no rescale), frames after each other.
pub fn stored_values(f: &DicomFile) -> Result<Vec<f32>, VolumeError> {
    let ts = f.object.meta().transfer_syntax().to_string();
    let ts_name = TransferSyntaxRegistry
        .get(&ts)
        .map(|t| t.name().to_string())
        .unwrap_or_else(|| "unknown".into());
    let decoded = f.object.decode_pixel_data().map_err(|e| {
        VolumeError::new(
            &f.name,
            format!(
                "its pixel data cannot be decoded: transfer syntax {ts} ({ts_name}) ({e}); \
                 convert the series to an uncompressed transfer syntax first \
                 (e.g. `gdcmconv --raw` or `dcmdjpeg`)"
            ),
        )
    })?;
    let opts = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
    decoded
        .to_vec_with_options::<f32>(&opts)
        .map_err(|e| VolumeError::new(&f.name, format!("its pixel data cannot be read: {e}")))
}
