//! Small DICOM series made in the test (dicom-object writes them), and the byte-level
//! surgery that makes hostile ones: the same helpers for the hostile-input tests, the
//! fuzz test and the regression fixtures.
#![allow(dead_code)]

use std::path::Path;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

pub const ROWS: usize = 12;
pub const COLS: usize = 10;

fn put(o: &mut InMemDicomObject, tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) {
    o.put(DataElement::new(tag, vr, v.into()));
}

/// Stored value of pixel (r, c) of slice k.
pub fn stored(k: usize, r: usize, c: usize) -> i16 {
    (k * 37 + r * 11 + c * 3) as i16 % 400
}

/// One axial CT slice (k-th, 2.5 mm apart) as an object, before `edit`.
pub fn slice_object(k: usize, edit: &dyn Fn(&mut InMemDicomObject)) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(
        &mut o,
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.2",
    );
    put(
        &mut o,
        tags::SOP_INSTANCE_UID,
        VR::UI,
        format!("1.2.3.7.{k}"),
    );
    put(&mut o, tags::MODALITY, VR::CS, "CT");
    put(&mut o, tags::PATIENT_NAME, VR::PN, "Test^Hostile");
    put(&mut o, tags::PATIENT_ID, VR::LO, "H1");
    put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3.4");
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.6");
    put(&mut o, tags::FRAME_OF_REFERENCE_UID, VR::UI, "1.2.3.5");
    let ds = |v: &[f64]| PrimitiveValue::Strs(v.iter().map(|x| format!("{x}")).collect());
    put(
        &mut o,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        ds(&[-5.0, -6.0, 2.5 * k as f64]),
    );
    put(
        &mut o,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        ds(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
    );
    put(&mut o, tags::PIXEL_SPACING, VR::DS, ds(&[0.8, 0.9]));
    put(&mut o, tags::RESCALE_SLOPE, VR::DS, "1");
    put(&mut o, tags::RESCALE_INTERCEPT, VR::DS, "-1024");
    put(&mut o, tags::ROWS, VR::US, ROWS as u16);
    put(&mut o, tags::COLUMNS, VR::US, COLS as u16);
    put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
    put(
        &mut o,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put(&mut o, tags::BITS_ALLOCATED, VR::US, 16u16);
    put(&mut o, tags::BITS_STORED, VR::US, 16u16);
    put(&mut o, tags::HIGH_BIT, VR::US, 15u16);
    put(&mut o, tags::PIXEL_REPRESENTATION, VR::US, 1u16);
    let px: Vec<i16> = (0..ROWS * COLS)
        .map(|i| stored(k, i / COLS, i % COLS))
        .collect();
    put(
        &mut o,
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::I16(px.into()),
    );
    edit(&mut o);
    o
}

/// The file bytes of an object (preamble, DICM, meta, data set) in `ts`.
pub fn file_bytes(o: InMemDicomObject, ts: &str) -> Vec<u8> {
    let f = o
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
        .unwrap();
    let mut b = Vec::new();
    f.write_all(&mut b).unwrap();
    b
}

pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

pub fn slice_bytes(k: usize, edit: &dyn Fn(&mut InMemDicomObject)) -> Vec<u8> {
    file_bytes(slice_object(k, edit), EXPLICIT_LE)
}

/// A folder of `n` slices; slice 0's bytes are passed through `damage`.
pub fn write_series(dir: &Path, n: usize, damage: &dyn Fn(Vec<u8>) -> Vec<u8>) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 0..n {
        let b = slice_bytes(k, &|_| {});
        let b = if k == 0 { damage(b) } else { b };
        std::fs::write(dir.join(format!("IM{k:04}.dcm")), b).unwrap();
    }
}

/// The offset of the data set (after the meta group) in a file's bytes.
pub fn data_set_start(b: &[u8]) -> usize {
    let mut pos = 132;
    while u16::from_le_bytes([b[pos], b[pos + 1]]) == 0x0002 {
        let vr = [b[pos + 4], b[pos + 5]];
        let long = matches!(&vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT" | b"UC" | b"UR");
        pos += if long {
            12 + u32::from_le_bytes([b[pos + 8], b[pos + 9], b[pos + 10], b[pos + 11]]) as usize
        } else {
            8 + u16::from_le_bytes([b[pos + 6], b[pos + 7]]) as usize
        };
    }
    pos
}

/// Insert raw data-set bytes at the start of the data set.
pub fn insert_at_data_start(mut b: Vec<u8>, raw: &[u8]) -> Vec<u8> {
    let at = data_set_start(&b);
    b.splice(at..at, raw.iter().copied());
    b
}

/// An explicit VR LE sequence (0008,1115) nested `depth` levels deep, each level
/// one undefined-length item.
pub fn nested_sequence(depth: usize) -> Vec<u8> {
    let open = [
        0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, // SQ, undefined
        0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF, // item, undefined
    ];
    let close = [
        0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0, // item delimiter
        0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0, // sequence delimiter
    ];
    let mut v = Vec::with_capacity(depth * (open.len() + close.len()));
    for _ in 0..depth {
        v.extend_from_slice(&open);
    }
    for _ in 0..depth {
        v.extend_from_slice(&close);
    }
    v
}

/// A UT element (0010,4000) whose header claims `len` bytes, followed by 4 bytes.
pub fn long_element(len: u32) -> Vec<u8> {
    let mut v = vec![0x10, 0x00, 0x00, 0x40, b'U', b'T', 0, 0];
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(b"abcd");
    v
}

/// A `.zip` holding `files` (name, bytes), deflated.
pub fn zip_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in files {
            z.start_file(name.as_str(), opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}
