//! DICOM SEG out: a binary Segmentation object (SOP class 1.2.840.10008.5.1.4.1.1.66.4)
//! on the source series' slices, one segment per structure with its SNOMED CT code,
//! referencing every source instance. Frames are written for each (segment, slice)
//! that holds the segment; pixels are packed one bit each, least significant first.

use std::path::Path;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::SeriesSource;
use crate::io::labels::{LABEL_VALUES, STRUCTURES};
use crate::io::{Volume, VolumeError};

/// The Segmentation Storage SOP class.
pub const SEG_SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// Each structure's SNOMED CT code (SegmentedPropertyType), in class order 1..7.
pub const SNOMED: [(&str, &str); 7] = [
    ("49848007", "Left Ventricle Myocardium"),
    ("82471001", "Left atrium"),
    ("87878005", "Left ventricle"),
    ("73829009", "Right atrium"),
    ("53085002", "Right ventricle"),
    ("54247002", "Ascending aorta"),
    ("81040000", "Pulmonary artery"),
];

/// A new UID under the UUID-derived root 2.25 (ITU-T X.667).
pub fn new_uid() -> String {
    format!("2.25.{}", rand::random::<u128>())
}

fn el(tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, v.into())
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn item(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    item(vec![
        el(tags::CODE_VALUE, VR::SH, value),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

fn ds(values: &[f64]) -> PrimitiveValue {
    let s: Vec<String> = values.iter().map(|v| format_ds(*v)).collect();
    PrimitiveValue::Strs(s.into())
}

/// A decimal string of at most 16 characters (the DS limit).
fn format_ds(v: f64) -> String {
    for p in (0..=10).rev() {
        let s = format!("{v:.p$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.3e}")
}

fn segment_item(class: usize) -> InMemDicomObject {
    let (value, meaning) = SNOMED[class - 1];
    item(vec![
        el(tags::SEGMENT_NUMBER, VR::US, class as u16),
        el(tags::SEGMENT_LABEL, VR::LO, STRUCTURES[class - 1]),
        el(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
        el(tags::SEGMENT_ALGORITHM_NAME, VR::LO, "RL-U2Net"),
        seq(
            tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
            vec![code("91723000", "SCT", "Anatomical Structure")],
        ),
        seq(
            tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
            vec![code(value, "SCT", meaning)],
        ),
    ])
}

/// Referenced SOP class and instance of one source slice.
fn instance_ref(s: &super::SliceRef) -> Vec<DataElement<InMemDicomObject>> {
    vec![
        el(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            s.sop_class_uid.as_str(),
        ),
        el(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            s.sop_instance_uid.as_str(),
        ),
    ]
}

/// The per-frame functional groups of frame (segment `class`, slice `k`).
fn frame_groups(src: &SeriesSource, class: usize, k: usize) -> InMemDicomObject {
    let s = &src.slices[k];
    let mut source = instance_ref(s);
    source.extend([
        // the SEG's pixels are the source's pixels: same plane, position and spacing
        el(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"),
        seq(
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            vec![code(
                "121322",
                "DCM",
                "Source image for image processing operation",
            )],
        ),
    ]);
    if let Some(f) = s.frame {
        source.push(el(tags::REFERENCED_FRAME_NUMBER, VR::IS, f.to_string()));
    }
    item(vec![
        seq(
            tags::DERIVATION_IMAGE_SEQUENCE,
            vec![item(vec![
                seq(tags::SOURCE_IMAGE_SEQUENCE, vec![item(source)]),
                seq(
                    tags::DERIVATION_CODE_SEQUENCE,
                    vec![code("113076", "DCM", "Segmentation")],
                ),
            ])],
        ),
        seq(
            tags::FRAME_CONTENT_SEQUENCE,
            vec![item(vec![el(
                tags::DIMENSION_INDEX_VALUES,
                VR::UL,
                dicom_value!(U32, [class as u32, k as u32 + 1]),
            )])],
        ),
        seq(
            tags::PLANE_POSITION_SEQUENCE,
            vec![item(vec![DataElement::new(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                ds(&s.position),
            )])],
        ),
        seq(
            tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            vec![item(vec![el(
                tags::REFERENCED_SEGMENT_NUMBER,
                VR::US,
                class as u16,
            )])],
        ),
    ])
}

fn shared_groups(src: &SeriesSource) -> InMemDicomObject {
    item(vec![
        seq(
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![item(vec![
                DataElement::new(tags::PIXEL_SPACING, VR::DS, ds(&src.pixel_spacing)),
                DataElement::new(tags::SLICE_THICKNESS, VR::DS, ds(&[src.slice_spacing])),
                DataElement::new(
                    tags::SPACING_BETWEEN_SLICES,
                    VR::DS,
                    ds(&[src.slice_spacing]),
                ),
            ])],
        ),
        seq(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![item(vec![DataElement::new(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                ds(&src.orientation),
            )])],
        ),
    ])
}

fn dimensions(org: &str) -> Vec<DataElement<InMemDicomObject>> {
    let index = |pointer: Tag, group: Tag, label: &str| {
        item(vec![
            el(tags::DIMENSION_ORGANIZATION_UID, VR::UI, org),
            el(
                tags::DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::Tags(vec![pointer].into()),
            ),
            el(
                tags::FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::Tags(vec![group].into()),
            ),
            el(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label),
        ])
    };
    vec![
        seq(
            tags::DIMENSION_ORGANIZATION_SEQUENCE,
            vec![item(vec![el(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                org,
            )])],
        ),
        seq(
            tags::DIMENSION_INDEX_SEQUENCE,
            vec![
                index(
                    tags::REFERENCED_SEGMENT_NUMBER,
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    "ReferencedSegmentNumber",
                ),
                index(
                    tags::IMAGE_POSITION_PATIENT,
                    tags::PLANE_POSITION_SEQUENCE,
                    "ImagePositionPatient",
                ),
            ],
        ),
    ]
}

/// Every source instance, once, for the Common Instance Reference module.
fn referenced_series(src: &SeriesSource) -> DataElement<InMemDicomObject> {
    let mut seen = std::collections::BTreeSet::new();
    let instances: Vec<InMemDicomObject> = src
        .slices
        .iter()
        .filter(|s| seen.insert(s.sop_instance_uid.clone()))
        .map(|s| item(instance_ref(s)))
        .collect();
    seq(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![item(vec![
            el(
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                src.series_instance_uid.as_str(),
            ),
            seq(tags::REFERENCED_INSTANCE_SEQUENCE, instances),
        ])],
    )
}

/// The (segment, slice) frames that hold their segment, and their packed bits.
fn frames_and_pixels(labels: &Volume<i16>, src: &SeriesSource) -> (Vec<(usize, usize)>, Vec<u8>) {
    let (rows, cols) = (src.rows, src.cols);
    let mut frames = Vec::new();
    let mut bits: Vec<bool> = Vec::new();
    for class in 1..=STRUCTURES.len() {
        let value = LABEL_VALUES[class] as i16;
        for k in 0..src.slices.len() {
            let mask: Vec<bool> = (0..rows)
                .flat_map(|r| (0..cols).map(move |c| (r, c)))
                .map(|(r, c)| labels.data[[c, rows - 1 - r, k]] == value)
                .collect();
            if mask.iter().any(|&b| b) {
                frames.push((class, k));
                bits.extend(mask);
            }
        }
    }
    if frames.is_empty() {
        // nothing found: one empty frame keeps the object valid (NumberOfFrames ≥ 1)
        frames.push((1, 0));
        bits.resize(rows * cols, false);
    }
    let mut bytes = vec![0u8; bits.len().div_ceil(8).next_multiple_of(2)];
    for (p, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
        bytes[p / 8] |= 1 << (p % 8);
    }
    (frames, bytes)
}

/// Write `labels` (MM-WHS values on the source series' grid, as `read_series` gives
/// it) as a DICOM SEG referencing `src`, through a temporary file and a rename.
pub fn write_seg(path: &Path, labels: &Volume<i16>, src: &SeriesSource) -> Result<(), VolumeError> {
    let want = [src.cols, src.rows, src.slices.len()];
    if labels.shape() != want {
        return Err(VolumeError::new(
            path,
            format!(
                "the label map is {:?}, the source series {want:?}: not on the series' grid",
                labels.shape()
            ),
        ));
    }
    let (frames, pixels) = frames_and_pixels(labels, src);
    let org = new_uid();
    let mut e = general_elements(src);
    e.extend(image_elements(src, frames.len()));
    e.extend([
        seq(
            tags::SEGMENT_SEQUENCE,
            (1..=STRUCTURES.len()).map(segment_item).collect(),
        ),
        seq(
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![shared_groups(src)],
        ),
        seq(
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            frames
                .iter()
                .map(|&(c, k)| frame_groups(src, c, k))
                .collect(),
        ),
        referenced_series(src),
        el(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(pixels.into())),
    ]);
    e.extend(dimensions(&org));
    for (tag, vr, value) in &src.copied {
        e.push(el(*tag, *vr, value.as_str()));
    }
    let obj = InMemDicomObject::from_element_iter(e)
        .with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
        .map_err(|e| VolumeError::new(path, format!("cannot build the DICOM SEG: {e}")))?;
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes)
        .map_err(|e| VolumeError::new(path, format!("cannot encode the DICOM SEG: {e}")))?;
    crate::io::write_atomically(path, &bytes)
        .map_err(|e| VolumeError::new(path, format!("cannot write: {e}")))
}

/// The SEG's patient-independent modules: SOP, series, equipment, frame of reference
/// and content.
fn general_elements(src: &SeriesSource) -> Vec<DataElement<InMemDicomObject>> {
    let now = chrono_now();
    let sop = new_uid();
    vec![
        el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        el(
            tags::IMAGE_TYPE,
            VR::CS,
            dicom_value!(Strs, ["DERIVED", "PRIMARY"]),
        ),
        el(tags::SOP_CLASS_UID, VR::UI, SEG_SOP_CLASS),
        el(tags::SOP_INSTANCE_UID, VR::UI, sop.as_str()),
        el(tags::CONTENT_DATE, VR::DA, now.0.as_str()),
        el(tags::CONTENT_TIME, VR::TM, now.1.as_str()),
        el(tags::MODALITY, VR::CS, "SEG"),
        el(tags::MANUFACTURER, VR::LO, "rlu2net"),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, "RL-U2Net"),
        el(tags::DEVICE_SERIAL_NUMBER, VR::LO, "0"),
        el(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        el(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            "RL-U2Net whole-heart segmentation",
        ),
        el(tags::SERIES_INSTANCE_UID, VR::UI, new_uid().as_str()),
        el(tags::SERIES_NUMBER, VR::IS, "300"),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        el(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            src.frame_of_reference_uid.as_str(),
        ),
        el(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        el(tags::CONTENT_LABEL, VR::CS, "HEART"),
        el(
            tags::CONTENT_DESCRIPTION,
            VR::LO,
            "Whole heart, 7 structures (MM-WHS)",
        ),
        el(tags::CONTENT_CREATOR_NAME, VR::PN, "rlu2net"),
    ]
}

/// The image pixel and segmentation image modules of a binary SEG of `frames` frames.
fn image_elements(src: &SeriesSource, frames: usize) -> Vec<DataElement<InMemDicomObject>> {
    vec![
        el(tags::SAMPLES_PER_PIXEL, VR::US, 1u16),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        el(tags::ROWS, VR::US, src.rows as u16),
        el(tags::COLUMNS, VR::US, src.cols as u16),
        el(tags::BITS_ALLOCATED, VR::US, 1u16),
        el(tags::BITS_STORED, VR::US, 1u16),
        el(tags::HIGH_BIT, VR::US, 0u16),
        el(tags::PIXEL_REPRESENTATION, VR::US, 0u16),
        el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        el(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        el(tags::NUMBER_OF_FRAMES, VR::IS, frames.to_string()),
    ]
}

/// (DA, TM) of now, UTC.
fn chrono_now() -> (String, String) {
    let now = chrono::Utc::now();
    (
        now.format("%Y%m%d").to_string(),
        now.format("%H%M%S").to_string(),
    )
}
