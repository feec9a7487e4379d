//! Fuzzing the NIfTI reader: header fields and bytes of valid files are mutated
//! (seeded, a fixed number of cases, so CI runs the same cases every time), and every
//! read must end without a panic, within a time bound and without any allocation
//! beyond a bound. The files in `tests/fixtures/fuzz/` are inputs that once broke the
//! reader (kept as regressions).

#[path = "support/largest_alloc.rs"]
mod largest_alloc;

use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rlu2net::io::{DType, Volume, read_nifti, read_nifti_bytes, write_nifti};

/// Cases per seed file (5 seed files); the README quotes the total.
const CASES_PER_FILE: usize = 1500;
/// No single allocation while reading a mutated file of a few KiB may exceed this.
const MAX_ALLOC: usize = 8 << 20;
const MAX_TIME: Duration = Duration::from_secs(2);

fn seed_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (dtype, gz) in [
        (DType::Float32, false),
        (DType::Int16, false),
        (DType::Uint8, true),
        (DType::Float64, true),
    ] {
        let data = Array3::from_shape_fn((6, 5, 4), |(i, j, k)| (i * 20 + j * 4 + k) as f32);
        let name = format!("seed_{dtype:?}.nii{}", if gz { ".gz" } else { "" });
        let p = dir.join(&name);
        write_nifti(&p, &Volume::with_spacing(data, [0.8, 0.9, 2.5]), dtype).unwrap();
        out.push((name, std::fs::read(&p).unwrap()));
    }
    out
}

/// Header fields (offset, width) and values worth trying in them.
const FIELDS: [(usize, usize); 14] = [
    (0, 4),   // sizeof_hdr
    (40, 2),  // dim[0]
    (42, 2),  // dim[1]
    (44, 2),  // dim[2]
    (46, 2),  // dim[3]
    (48, 2),  // dim[4]
    (70, 2),  // datatype
    (72, 2),  // bitpix
    (76, 4),  // pixdim[0] (qfac)
    (80, 4),  // pixdim[1]
    (108, 4), // vox_offset
    (112, 4), // scl_slope
    (116, 4), // scl_inter
    (252, 2), // qform_code
];

fn special(rng: &mut impl Rng, width: usize) -> Vec<u8> {
    if width == 2 {
        let v: i16 = match rng.random_range(0..6) {
            0 => 0,
            1 => -1,
            2 => i16::MAX,
            3 => i16::MIN,
            4 => rng.random_range(1..8),
            _ => rng.random(),
        };
        v.to_le_bytes().to_vec()
    } else {
        let v: f32 = match rng.random_range(0..8) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => -f32::INFINITY,
            3 => 1.8e19,
            4 => 0.0,
            5 => -1.0,
            6 => f32::MAX,
            _ => rng.random_range(-1e6..1e6),
        };
        v.to_le_bytes().to_vec()
    }
}

fn mutate(base: &[u8], rng: &mut impl Rng, gz: bool) -> Vec<u8> {
    // header mutations act on the decompressed file; byte mutations on either
    let mut raw = if gz {
        use std::io::Read;
        let mut v = Vec::new();
        flate2::read::MultiGzDecoder::new(base)
            .read_to_end(&mut v)
            .unwrap();
        v
    } else {
        base.to_vec()
    };
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..4) {
            0 | 1 => {
                let (off, w) = FIELDS[rng.random_range(0..FIELDS.len())];
                let v = special(rng, w);
                if off + w <= raw.len() {
                    raw[off..off + w].copy_from_slice(&v);
                }
            }
            _ if raw.is_empty() => {}
            2 => {
                let i = rng.random_range(0..raw.len());
                raw[i] = rng.random();
            }
            _ => {
                let n = rng.random_range(0..raw.len());
                raw.truncate(n);
            }
        }
    }
    let mut out = if gz && rng.random_bool(0.8) {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw).unwrap();
        e.finish().unwrap()
    } else {
        raw
    };
    if gz && rng.random_bool(0.2) && !out.is_empty() {
        // damage the compressed stream itself
        let i = rng.random_range(0..out.len());
        out[i] ^= 1 << rng.random_range(0..8);
    }
    out
}

fn check_one(name: &str, bytes: &[u8]) -> bool {
    largest_alloc::reset();
    let t = Instant::now();
    let r = std::panic::catch_unwind(|| {
        read_nifti_bytes::<f32>(bytes, Path::new(name))
            .map(|(v, _)| v.data.iter().all(|x| x.is_finite()))
    });
    let (largest, took) = (largest_alloc::largest(), t.elapsed());
    let r = r.unwrap_or_else(|_| panic!("{name}: the reader panicked"));
    assert!(
        largest <= MAX_ALLOC,
        "{name}: an allocation of {largest} bytes"
    );
    assert!(took <= MAX_TIME, "{name}: took {took:?}");
    match r {
        Ok(all_finite) => {
            assert!(all_finite, "{name}: read with non-finite voxels");
            true
        }
        Err(e) => {
            assert!(
                e.to_string().starts_with(name),
                "{name}: error without the name: {e}"
            );
            false
        }
    }
}

#[test]
fn mutated_nifti_files_never_panic_hang_or_overallocate() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261127);
    let (mut ok, mut err) = (0, 0);
    let mut seeds = seed_files(dir.path());
    // a NIfTI-2 file (written by nibabel; this project writes NIfTI-1)
    let n2 =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nibabel_nifti2_int16.nii.gz");
    seeds.push(("nifti2.nii.gz".to_string(), std::fs::read(n2).unwrap()));
    for (name, bytes) in seeds {
        let gz = name.ends_with(".gz");
        for i in 0..CASES_PER_FILE {
            let m = mutate(&bytes, &mut rng, gz);
            if check_one(&format!("{name}#{i}"), &m) {
                ok += 1;
            } else {
                err += 1;
            }
        }
    }
    // both outcomes occur: the mutations are neither all harmless nor all fatal
    assert!(ok > 100 && err > 100, "{ok} read, {err} refused");
}

#[test]
fn regression_inputs_are_refused_or_read_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if !p.to_string_lossy().contains(".nii") {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        check_one(&name, &bytes);
        // and the same through the file path
        let _ = read_nifti::<f32>(&p);
        n += 1;
    }
    assert!(n >= 2, "regression files missing from {}", dir.display());
}
