//! Volumes on disk: the `Volume` type, NIfTI-1/2 read/write, DICOM series in and
//! DICOM SEG out, RAS reorientation.

pub mod dicom;
pub mod header;
pub mod labels;
pub mod layout;
pub mod nifti;
pub mod nifti2;
pub mod orientation;
pub mod volume;

pub use self::nifti::{
    DType, NiftiInfo, Problem, VolumeError, Voxel, check_finite, read_nifti, read_nifti_bytes,
    write_nifti,
};
pub use nifti2::write_nifti2;
pub use orientation::{Orientation, Reorientation, from_ras, to_ras};
pub use volume::Volume;

/// What kind of problem an error is: the first cause in its chain that says decides (a
/// [`VolumeError`]'s kind, or an I/O error's: nothing there, refused by the system, or
/// bytes that are not what they should be); anything else is [`Problem::Invalid`].
pub fn problem_of(e: &anyhow::Error) -> Problem {
    for c in e.chain() {
        if let Some(v) = c.downcast_ref::<VolumeError>() {
            return v.kind;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::NotFound => Problem::NotFound,
                K::InvalidData | K::UnexpectedEof | K::InvalidInput => Problem::Invalid,
                _ => Problem::Unreadable,
            };
        }
    }
    Problem::Invalid
}

/// Write `bytes` to `path` durably: into a temporary file in the same folder, flushed
/// to disk, renamed over `path`, and the folder flushed too, so that neither a crash nor
/// a power loss leaves a renamed but empty or half-written file (SQLite's and git's rule).
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file path"))?
        .to_string_lossy()
        .to_string();
    let tmp = dir.join(format!(".{name}.{}.partial", std::process::id()));
    // rename_durably flushes the file before the rename: one fsync of the data
    let r = std::fs::write(&tmp, bytes).and_then(|_| rename_durably(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn parent_of(path: &std::path::Path) -> std::path::PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Write a file and flush it to disk before returning.
pub fn write_synced(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be
/// opened (Windows).
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if cfg!(unix) {
        std::fs::File::open(dir)?.sync_all()
    } else {
        Ok(())
    }
}

/// Move a finished temporary file (or folder) into place durably: its data flushed
/// first (a file; a folder's files are flushed by whoever wrote them), then the rename,
/// then the folder it now lies in.
pub fn rename_durably(tmp: &std::path::Path, path: &std::path::Path) -> std::io::Result<()> {
    if tmp.is_dir() {
        sync_dir(tmp)?;
    } else {
        std::fs::File::open(tmp)?.sync_all()?;
    }
    std::fs::rename(tmp, path)?;
    sync_dir(&parent_of(path))
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_first_cause_that_says_decides_the_problem() {
        use std::path::Path;
        let nf = anyhow::Error::new(
            VolumeError::new(Path::new("a.nii"), "file not found").with_kind(Problem::NotFound),
        );
        assert_eq!(problem_of(&nf), Problem::NotFound);
        assert_eq!(problem_of(&nf.context("reading the CT")), Problem::NotFound);
        let bad = anyhow::Error::new(VolumeError::new(Path::new("a.nii"), "truncated"));
        assert_eq!(problem_of(&bad), Problem::Invalid);
        let io = |k| anyhow::Error::new(std::io::Error::from(k)).context("writing");
        assert_eq!(
            problem_of(&io(std::io::ErrorKind::PermissionDenied)),
            Problem::Unreadable
        );
        assert_eq!(
            problem_of(&io(std::io::ErrorKind::UnexpectedEof)),
            Problem::Invalid
        );
        assert_eq!(
            problem_of(&io(std::io::ErrorKind::NotFound)),
            Problem::NotFound
        );
        assert_eq!(
            problem_of(&anyhow::anyhow!("--threads must be at least 1")),
            Problem::Invalid
        );
        // a missing file, as the reader reports it
        let e =
            anyhow::Error::new(read_nifti::<f32>(Path::new("/nonexistent/x.nii.gz")).unwrap_err());
        assert_eq!(problem_of(&e), Problem::NotFound);
    }

    use super::*;
    use nalgebra::Matrix4;
    use ndarray::Array3;
    use std::path::Path;

    fn oblique_affine() -> Matrix4<f64> {
        // values exactly representable in f32, as NIfTI stores them
        let m = Matrix4::new(
            -0.75, 0.0625, 0.0, 101.5, //
            0.03125, -0.8125, 0.125, -12.25, //
            0.0, 0.09375, 2.5, 37.0, //
            0.0, 0.0, 0.0, 1.0,
        );
        m.map(|x| x as f32 as f64)
    }

    fn column_norms(m: &Matrix4<f64>) -> [f64; 3] {
        [0, 1, 2].map(|c| (0..3).map(|r| m[(r, c)] * m[(r, c)]).sum::<f64>().sqrt())
    }

    fn round_trip<T: Voxel + std::fmt::Debug>(dtype: DType, f: impl Fn(usize) -> T, gz: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(if gz { "v.nii.gz" } else { "v.nii" });
        let shape = (5, 4, 3);
        let data = Array3::from_shape_fn(shape, |(i, j, k)| f(i * 12 + j * 3 + k));
        let affine = oblique_affine();
        let spacing = column_norms(&affine).map(|s| s as f32 as f64);
        let vol = Volume::new(data, spacing, affine);
        write_nifti(&path, &vol, dtype).unwrap();
        let (back, info) = read_nifti::<T>(&path).unwrap();
        assert_eq!(info.dtype, dtype);
        assert_eq!(info.affine_source, "sform");
        assert_eq!(back.data, vol.data, "{dtype:?}");
        assert_eq!(back.spacing, vol.spacing, "{dtype:?}");
        assert_eq!(back.affine, vol.affine, "{dtype:?}");
        // nothing but the file itself is left in the folder
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn nifti_round_trip_every_dtype_with_oblique_affine() {
        round_trip::<i8>(DType::Int8, |n| (n as i32 - 30) as i8, true);
        round_trip::<u8>(DType::Uint8, |n| (n * 4) as u8, false);
        round_trip::<i16>(DType::Int16, |n| (n as i16 - 20) * 300, true);
        round_trip::<u16>(DType::Uint16, |n| (n as u16) * 1000, true);
        round_trip::<i32>(DType::Int32, |n| (n as i32 - 20) * 100_000, true);
        round_trip::<f32>(DType::Float32, |n| n as f32 * 0.37 - 5.5, true);
        round_trip::<f64>(DType::Float64, |n| n as f64 * 1e-7 - 1.0 / 3.0, false);
    }

    #[test]
    fn integer_output_rounds_and_saturates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.nii.gz");
        let data = Array3::from_shape_vec((2, 1, 2), vec![1.6f32, -1.6, 1e9, -1e9]).unwrap();
        write_nifti(&path, &Volume::with_spacing(data, [1.0; 3]), DType::Int16).unwrap();
        let (back, _) = read_nifti::<i16>(&path).unwrap();
        assert_eq!(
            back.data.iter().copied().collect::<Vec<_>>(),
            vec![2, -2, i16::MAX, i16::MIN]
        );
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn nibabel_file_reads_with_its_affine_and_scaling() {
        // Written by nibabel 5 (see tests/fixtures/README.md): int16 data
        // arange(24).reshape(4,3,2, order='F') - 5, scl_slope 2, scl_inter -1, LPS oblique sform.
        let (vol, info) = read_nifti::<f32>(&fixture("nibabel_lps_oblique_int16.nii.gz")).unwrap();
        assert_eq!(info.dtype, DType::Int16);
        assert_eq!(vol.shape(), [4, 3, 2]);
        // nibabel: r.get_fdata()[1,2,1] == 31.0  (raw 16 → 16·2 − 1)
        assert_eq!(vol.data[[1, 2, 1]], 31.0);
        assert_eq!(vol.data[[0, 0, 0]], -11.0);
        let want = [
            [-0.8, 0.05, 0.0, 100.0],
            [0.04, -0.75, 0.1, 50.5],
            [0.0, 0.08, 2.5, -30.25],
            [0.0, 0.0, 0.0, 1.0],
        ];
        for (r, row) in want.iter().enumerate() {
            for (c, w) in row.iter().enumerate() {
                assert!((vol.affine[(r, c)] - w).abs() < 1e-6, "affine[{r},{c}]");
            }
        }
        assert_eq!(Orientation::of_affine(&vol.affine).code(), "LPS");
        // nibabel get_zooms(): (0.8009994, 0.75591004, 2.5019991)
        assert!((vol.spacing[0] - 0.8009994).abs() < 1e-6);
        assert!((vol.spacing[2] - 2.5019991).abs() < 1e-6);
    }

    #[test]
    fn nibabel_nifti2_file_reads_like_its_nifti1_twin() {
        // the same data, scaling and sform as nibabel_lps_oblique_int16.nii.gz, written by
        // nibabel as NIfTI-2 (sizeof_hdr 540, 64-bit fields)
        let (two, info) = read_nifti::<f32>(&fixture("nibabel_nifti2_int16.nii.gz")).unwrap();
        let (one, _) = read_nifti::<f32>(&fixture("nibabel_lps_oblique_int16.nii.gz")).unwrap();
        assert_eq!(info.dtype, DType::Int16);
        assert_eq!((info.scl_slope, info.scl_inter), (2.0, -1.0));
        assert_eq!(two.shape(), [4, 3, 2]);
        assert_eq!(two.data[[1, 2, 1]], 31.0);
        assert_eq!(two.data, one.data);
        assert_eq!(info.affine_source, "sform");
        for r in 0..4 {
            for c in 0..4 {
                assert!(
                    (two.affine[(r, c)] - one.affine[(r, c)]).abs() < 1e-6,
                    "[{r},{c}]"
                );
            }
        }
        // and a big-endian copy of its header reads the same
        let raw = {
            use std::io::Read;
            let mut v = Vec::new();
            flate2::read::MultiGzDecoder::new(
                &std::fs::read(fixture("nibabel_nifti2_int16.nii.gz")).unwrap()[..],
            )
            .read_to_end(&mut v)
            .unwrap();
            v
        };
        let mut be = raw.clone();
        let swap = |b: &mut [u8], o: usize, n: usize| b[o..o + n].reverse();
        swap(&mut be, 0, 4);
        for o in [12, 14] {
            swap(&mut be, o, 2);
        }
        for i in 0..8 {
            swap(&mut be, 16 + 8 * i, 8);
            swap(&mut be, 104 + 8 * i, 8);
        }
        for o in [168, 176, 184, 352, 360, 368, 376, 384, 392] {
            swap(&mut be, o, 8);
        }
        for o in [344, 348] {
            swap(&mut be, o, 4);
        }
        for i in 0..12 {
            swap(&mut be, 400 + 8 * i, 8);
        }
        for v in be[544..].chunks_mut(2) {
            v.reverse();
        }
        let (b, _) = read_nifti_bytes::<f32>(&be, Path::new("be.nii")).unwrap();
        assert_eq!(b.data, one.data);
        assert!((b.affine - two.affine).abs().max() < 1e-9);
        // a vox_offset inside the 540-byte header is refused (it made the reader ask
        // for a negative number of bytes)
        let mut inside = raw.clone();
        inside[168..176].copy_from_slice(&400i64.to_le_bytes());
        let e = read_nifti_bytes::<f32>(&inside, Path::new("in.nii"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vox_offset 400") && e.contains("540-byte"),
            "{e}"
        );
        // a NIfTI-2 header with a huge dimension is refused, naming it
        let mut big = raw.clone();
        big[24..32].copy_from_slice(&100_000i64.to_le_bytes());
        let e = read_nifti_bytes::<f32>(&big, Path::new("big.nii"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("NIfTI-2") && e.contains("100000"), "{e}");
    }

    #[test]
    fn qform_only_file_uses_qform_with_negative_qfac() {
        // nibabel: affine [[0,1.5,0,0],[2,0,0,0],[0,0,3,0]], sform_code 0, qform_code 1
        let (vol, info) = read_nifti::<f32>(&fixture("nibabel_qform_only_float32.nii")).unwrap();
        assert_eq!(info.affine_source, "qform");
        let want = Matrix4::new(
            0.0, 1.5, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 1.0,
        );
        assert!((vol.affine - want).abs().max() < 1e-6, "{}", vol.affine);
        // arange(8).reshape(2,2,2) in C order: v[i,j,k] = 4i + 2j + k
        assert_eq!(vol.data[[1, 0, 1]], 5.0);
        assert_eq!(vol.data[[0, 1, 1]], 3.0);
    }

    /// A valid uncompressed NIfTI file to corrupt.
    fn valid_bytes(dir: &Path) -> Vec<u8> {
        let p = dir.join("ok.nii");
        let data = Array3::from_shape_fn((4, 4, 4), |(i, j, k)| (i + j + k) as f32);
        write_nifti(
            &p,
            &Volume::with_spacing(data, [1.0, 1.0, 2.0]),
            DType::Float32,
        )
        .unwrap();
        std::fs::read(&p).unwrap()
    }

    fn expect_error(dir: &Path, name: &str, bytes: &[u8], needle: &str) {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = read_nifti::<f32>(&p).expect_err(name);
        let msg = e.to_string();
        assert!(msg.contains(name), "error does not name the file: {msg}");
        assert!(
            msg.contains(needle),
            "error for {name} does not say '{needle}': {msg}"
        );
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn set_i16(b: &mut [u8], off: usize, v: i16) {
        b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set_f32(b: &mut [u8], off: usize, v: f32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn malformed_inputs_give_errors_naming_file_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ok = valid_bytes(d);

        let e = read_nifti::<f32>(&d.join("missing.nii.gz"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.nii.gz") && e.contains("not found"),
            "{e}"
        );

        let z = gz(&ok);
        expect_error(d, "truncated.nii.gz", &z[..z.len() / 2], "gzip");
        let mut corrupt = z.clone();
        for b in corrupt[20..60].iter_mut() {
            *b ^= 0x5a;
        }
        expect_error(d, "corrupt.nii.gz", &corrupt, "gzip");
        expect_error(d, "short.nii", &ok[..100], "header");
        expect_error(d, "cut.nii", &ok[..ok.len() - 10], "truncated");

        // dims larger than the data
        let mut big = ok.clone();
        set_i16(&mut big, 42, 40); // dim[1]
        expect_error(d, "dims.nii", &big, "need");

        // a 4D file with 3 volumes
        let mut four = ok.clone();
        set_i16(&mut four, 40, 4);
        set_i16(&mut four, 48, 3);
        expect_error(d, "four.nii", &four, "3D");

        for (name, v) in [("zero.nii", 0.0f32), ("neg.nii", -1.0)] {
            let mut b = ok.clone();
            set_f32(&mut b, 76 + 8, v); // pixdim[2]
            expect_error(d, name, &b, "spacing");
        }

        let mut dt = ok.clone();
        set_i16(&mut dt, 70, 32); // complex64
        expect_error(d, "complex.nii", &dt, "unsupported");

        let mut n2 = ok.clone();
        n2[0..4].copy_from_slice(&540i32.to_le_bytes());
        expect_error(d, "nifti2.nii", &n2, "NIfTI-2");

        expect_error(d, "garbage.nii", &[7u8; 400], "NIfTI");
    }

    #[test]
    fn absurd_vox_offset_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ok = valid_bytes(d);
        for (name, v) in [
            ("huge.nii", 1.8e19f32),
            ("inf.nii", f32::INFINITY),
            ("nan.nii", f32::NAN),
            ("small.nii", 12.0),
        ] {
            let mut b = ok.clone();
            set_f32(&mut b, 108, v); // vox_offset
            expect_error(d, name, &b, "vox_offset");
        }
        // just beyond the file's end
        let mut b = ok.clone();
        set_f32(&mut b, 108, 1.0e6);
        expect_error(d, "far.nii", &b, "truncated");
    }

    #[test]
    fn bad_scaling_means_no_scaling_as_in_nibabel() {
        let dir = tempfile::tempdir().unwrap();
        let ok = valid_bytes(dir.path());
        let (plain, _) = read_nifti_bytes::<f32>(&ok, Path::new("ok.nii")).unwrap();
        for (slope, inter) in [
            (f32::NAN, 0.0),
            (f32::INFINITY, 3.0),
            (0.0, 7.0),
            (f32::NEG_INFINITY, f32::NAN),
        ] {
            let mut b = ok.clone();
            set_f32(&mut b, 112, slope);
            set_f32(&mut b, 116, inter);
            let (v, info) = read_nifti_bytes::<f32>(&b, Path::new("s.nii")).unwrap();
            assert_eq!(v.data, plain.data, "slope {slope} inter {inter}");
            assert_eq!((info.scl_slope, info.scl_inter), (0.0, 0.0));
        }
        // a finite slope with a NaN intercept: the slope applies, the intercept is 0
        let mut b = ok.clone();
        set_f32(&mut b, 112, 2.0);
        set_f32(&mut b, 116, f32::NAN);
        let (v, _) = read_nifti_bytes::<f32>(&b, Path::new("s.nii")).unwrap();
        assert_eq!(v.data, plain.data.map(|x| 2.0 * x));
    }

    #[test]
    fn non_finite_voxels_are_an_error_with_count_and_place() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = Array3::from_shape_fn((4, 4, 4), |(i, j, k)| match (i, j, k) {
            (1, 2, 3) => f32::NAN,
            (3, 0, 0) => f32::INFINITY,
            _ => 1.0,
        });
        let p = d.join("nan.nii.gz");
        write_nifti(&p, &Volume::with_spacing(data, [1.0; 3]), DType::Float32).unwrap();
        let e = read_nifti::<f32>(&p).unwrap_err().to_string();
        assert!(e.contains("nan.nii.gz") && e.contains("2 voxel"), "{e}");
        assert!(e.contains("[1, 2, 3]"), "{e}");
        // a huge slope turns finite voxels into infinities
        let ok = valid_bytes(d);
        let mut b = ok.clone();
        set_f32(&mut b, 112, 3.0e38);
        expect_error(d, "overflow.nii", &b, "infinite");
    }

    #[cfg(unix)]
    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe_image.nii.gz");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if made {
            let e = read_nifti::<f32>(&fifo).unwrap_err().to_string();
            assert!(e.contains("pipe_image.nii.gz") && e.contains("FIFO"), "{e}");
            let e = header::header_grid(&fifo).unwrap_err().to_string();
            assert!(e.contains("FIFO"), "{e}");
        }
        let link = dir.path().join("zero.nii");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_nifti::<f32>(&link).unwrap_err().to_string();
        assert!(e.contains("zero.nii") && e.contains("device"), "{e}");
        let e = read_nifti::<f32>(dir.path()).unwrap_err().to_string();
        assert!(e.contains("folder"), "{e}");
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let ok = valid_bytes(dir.path());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..300 {
            let mut b = ok.clone();
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..352);
                b[i] = rng.random();
            }
            let _ = read_nifti_bytes::<f32>(&b, Path::new("fuzz.nii"));
        }
    }
}
