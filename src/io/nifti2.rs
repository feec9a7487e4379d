//! NIfTI-2 (540-byte header, 64-bit fields), which the `nifti` crate does not know:
//! the header parsed into the NIfTI-1 structure that `nifti.rs`'s checked reader
//! works with, and the writer. Files are written in the machine's byte order (readers
//! detect it from sizeof_hdr), through a temporary file and a rename.

use std::path::Path;

use nalgebra::Matrix4;
use ndarray::Array3;
use nifti::{NiftiHeader, XForm};

use super::nifti::{DType, MAX_VOXEL_BYTES, VolumeError, Voxel, cast_voxel};
use super::volume::Volume;

pub(crate) const NIFTI2_HEADER: u64 = 540;

/// `Some(big_endian)` when `raw` starts like a NIfTI-2 header (sizeof_hdr 540).
pub(crate) fn nifti2_endianness(raw: &[u8]) -> Option<bool> {
    let b: [u8; 4] = raw.get(0..4)?.try_into().ok()?;
    if i32::from_le_bytes(b) == 540 {
        Some(false)
    } else if i32::from_be_bytes(b) == 540 {
        Some(true)
    } else {
        None
    }
}

/// A NIfTI-2 header (540 bytes, 64-bit fields) as the NIfTI-1 header structure the
/// rest of the reader works with (the voxel data is read the same way). Dimensions
/// beyond NIfTI-1's 32 767 are an error, and so is a header/image pair (`ni2`).
pub(crate) fn nifti2_header(raw: &[u8], big: bool) -> Result<NiftiHeader, String> {
    if raw.len() < NIFTI2_HEADER as usize {
        return Err(format!("header cut short: {} of 540 bytes", raw.len()));
    }
    let at = |o: usize, n: usize| &raw[o..o + n];
    // a number of type $t at offset $o in the header's byte order
    macro_rules! num {
        ($t:ty, $o:expr) => {{
            let b = at($o, std::mem::size_of::<$t>()).try_into().unwrap();
            if big {
                <$t>::from_be_bytes(b)
            } else {
                <$t>::from_le_bytes(b)
            }
        }};
    }
    let i16_at = |o: usize| num!(i16, o);
    let i32_at = |o: usize| num!(i32, o);
    let i64_at = |o: usize| num!(i64, o);
    let f64_at = |o: usize| num!(f64, o);
    if at(4, 4) != b"n+2\0" {
        return Err(format!(
            "not a single-file NIfTI-2 image (magic {:?}; header/image pairs are not read)",
            String::from_utf8_lossy(at(4, 3))
        ));
    }
    let mut h = NiftiHeader {
        sizeof_hdr: 348,
        datatype: i16_at(12),
        bitpix: i16_at(14),
        ..NiftiHeader::default()
    };
    for i in 0..8 {
        let d = i64_at(16 + 8 * i);
        if !(0..=i16::MAX as i64).contains(&d) {
            return Err(format!("dim[{i}] = {d} (0 to 32767 are read)"));
        }
        h.dim[i] = d as u16;
        h.pixdim[i] = f64_at(104 + 8 * i) as f32;
    }
    let off = i64_at(168);
    // out of range: left to the common vox_offset check, which names it
    h.vox_offset = if (0..=MAX_VOXEL_BYTES as i64).contains(&off) {
        off as f32
    } else {
        f32::NAN
    };
    h.scl_slope = f64_at(176) as f32;
    h.scl_inter = f64_at(184) as f32;
    h.qform_code = i32_at(344).clamp(0, i16::MAX as i32) as i16;
    h.sform_code = i32_at(348).clamp(0, i16::MAX as i32) as i16;
    h.quatern_b = f64_at(352) as f32;
    h.quatern_c = f64_at(360) as f32;
    h.quatern_d = f64_at(368) as f32;
    h.quatern_x = f64_at(376) as f32;
    h.quatern_y = f64_at(384) as f32;
    h.quatern_z = f64_at(392) as f32;
    for c in 0..4 {
        h.srow_x[c] = f64_at(400 + 8 * c) as f32;
        h.srow_y[c] = f64_at(432 + 8 * c) as f32;
        h.srow_z[c] = f64_at(464 + 8 * c) as f32;
    }
    h.endianness = if big {
        nifti::Endianness::Big
    } else {
        nifti::Endianness::Little
    };
    Ok(h)
}

fn nifti_datatype(d: DType) -> (i16, i16) {
    match d {
        DType::Uint8 => (2, 8),
        DType::Int16 => (4, 16),
        DType::Int32 => (8, 32),
        DType::Float32 => (16, 32),
        DType::Float64 => (64, 64),
        DType::Int8 => (256, 8),
        DType::Uint16 => (512, 16),
    }
}

/// The 544 bytes before the voxels: the header and an empty extension flag.
fn header_bytes(shape: [usize; 3], spacing: [f64; 3], affine: &Matrix4<f64>, d: DType) -> Vec<u8> {
    // the quaternion and qfac as the NIfTI-1 writer computes them
    let mut q = NiftiHeader::default();
    q.set_qform(affine, XForm::ScannerAnat);
    let mut h = vec![0u8; 544];
    let put = |h: &mut Vec<u8>, o: usize, b: &[u8]| h[o..o + b.len()].copy_from_slice(b);
    put(&mut h, 0, &540i32.to_ne_bytes());
    put(&mut h, 4, b"n+2\0\r\n\x1a\n");
    let (code, bits) = nifti_datatype(d);
    put(&mut h, 12, &code.to_ne_bytes());
    put(&mut h, 14, &bits.to_ne_bytes());
    let dims = [
        3,
        shape[0] as i64,
        shape[1] as i64,
        shape[2] as i64,
        1,
        1,
        1,
        1,
    ];
    let pix = [
        q.pixdim[0] as f64,
        spacing[0],
        spacing[1],
        spacing[2],
        0.0,
        0.0,
        0.0,
        0.0,
    ];
    for i in 0..8 {
        put(&mut h, 16 + 8 * i, &dims[i].to_ne_bytes());
        put(&mut h, 104 + 8 * i, &pix[i].to_ne_bytes());
    }
    put(&mut h, 168, &544i64.to_ne_bytes()); // vox_offset
    put(&mut h, 176, &1.0f64.to_ne_bytes()); // scl_slope
    put(&mut h, 240, b"rlu2net");
    put(&mut h, 344, &1i32.to_ne_bytes()); // qform_code: scanner
    put(&mut h, 348, &1i32.to_ne_bytes()); // sform_code: scanner
    let quat = [
        q.quatern_b,
        q.quatern_c,
        q.quatern_d,
        q.quatern_x,
        q.quatern_y,
        q.quatern_z,
    ];
    for (i, v) in quat.iter().enumerate() {
        put(&mut h, 352 + 8 * i, &(*v as f64).to_ne_bytes());
    }
    for r in 0..3 {
        for c in 0..4 {
            put(&mut h, 400 + 32 * r + 8 * c, &affine[(r, c)].to_ne_bytes());
        }
    }
    put(&mut h, 500, &10i32.to_ne_bytes()); // xyzt_units: mm, s
    h
}

fn voxel_bytes<U: Voxel>(data: &Array3<U>) -> Vec<u8> {
    let (x, y, z) = data.dim();
    let mut out = Vec::with_capacity(x * y * z * std::mem::size_of::<U>());
    // NIfTI order: x fastest
    for k in 0..z {
        for j in 0..y {
            for i in 0..x {
                out.extend_from_slice(bytemuck::bytes_of(&data[[i, j, k]]));
            }
        }
    }
    out
}

/// Write a volume as NIfTI-2 (`.nii.gz` compresses) with voxel type `dtype`, the
/// affine in sform and qform (code 1) and the spacing in pixdim; integer types are
/// rounded and saturated, as [`super::write_nifti`] does.
pub fn write_nifti2<T: Voxel>(
    path: &Path,
    vol: &Volume<T>,
    dtype: DType,
) -> Result<(), VolumeError> {
    let err = |p: String| VolumeError::new(path, p);
    let name = path.to_string_lossy();
    let gz = name.ends_with(".nii.gz");
    if !gz && !name.ends_with(".nii") {
        return Err(err("output file name must end in .nii or .nii.gz".into()));
    }
    if vol.spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(err(format!(
            "cannot write a volume with spacing {:?}",
            vol.spacing
        )));
    }
    fn typed<T: Voxel, U: Voxel>(vol: &Volume<T>, integer: bool) -> Vec<u8> {
        voxel_bytes(&vol.data.map(|&v| cast_voxel::<T, U>(v, integer)))
    }
    let int = dtype.is_integer();
    let data = match dtype {
        DType::Int8 => typed::<T, i8>(vol, int),
        DType::Uint8 => typed::<T, u8>(vol, int),
        DType::Int16 => typed::<T, i16>(vol, int),
        DType::Uint16 => typed::<T, u16>(vol, int),
        DType::Int32 => typed::<T, i32>(vol, int),
        DType::Float32 => typed::<T, f32>(vol, int),
        DType::Float64 => typed::<T, f64>(vol, int),
    };
    let mut bytes = header_bytes(vol.shape(), vol.spacing, &vol.affine, dtype);
    bytes.extend_from_slice(&data);
    if gz {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&bytes)
            .and_then(|_| e.finish())
            .map(|b| bytes = b)
            .map_err(|e| err(format!("cannot compress: {e}")))?;
    }
    super::write_atomically(path, &bytes).map_err(|e| err(format!("cannot write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::read_nifti;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn raw(p: &Path) -> Vec<u8> {
        use std::io::Read;
        let b = std::fs::read(p).unwrap();
        let mut v = Vec::new();
        flate2::read::MultiGzDecoder::new(&b[..])
            .read_to_end(&mut v)
            .unwrap();
        v
    }

    #[test]
    fn written_nifti2_matches_nibabel_header_fields_and_reads_back() {
        // the nibabel NIfTI-2 file's volume (scaled int16 data, oblique LPS sform)
        let nib = fixture("nibabel_nifti2_int16.nii.gz");
        let (vol, _) = read_nifti::<f32>(&nib).unwrap();
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("ours.nii.gz");
        write_nifti2(&out, &vol, DType::Float32).unwrap();
        let (back, info) = read_nifti::<f32>(&out).unwrap();
        assert_eq!(back.data, vol.data);
        assert!((back.affine - vol.affine).abs().max() < 1e-6);
        assert_eq!(info.affine_source, "sform");
        // the header fields nibabel wrote, at the same offsets
        let (a, b) = (raw(&out), raw(&nib));
        assert_eq!(&a[0..12], &b[0..12], "sizeof_hdr and magic");
        assert_eq!(&a[16..48], &b[16..48], "dim[0..4]");
        let f = |x: &[u8], o: usize| f64::from_le_bytes(x[o..o + 8].try_into().unwrap());
        for o in [112, 120, 128] {
            assert!((f(&a, o) - f(&b, o)).abs() < 1e-6, "pixdim at {o}");
        }
        for o in (400..496).step_by(8) {
            assert!((f(&a, o) - f(&b, o)).abs() < 1e-6, "srow at {o}");
        }
        assert_eq!(i64::from_le_bytes(a[168..176].try_into().unwrap()), 544);
        // integer output, uncompressed
        let p = d.path().join("lab.nii");
        write_nifti2(&p, &vol, DType::Int16).unwrap();
        let (l, info) = read_nifti::<f32>(&p).unwrap();
        assert_eq!(info.dtype, DType::Int16);
        assert_eq!(l.data, vol.data);
        assert!(write_nifti2(&d.path().join("x.png"), &vol, DType::Int16).is_err());
    }
}
