//! Fuzzing the DICOM reader beside `fuzz_nifti.rs`: series made in the test (and the
//! stored enhanced multi-frame fixture) are mutated, seeded and a fixed number of
//! times, so CI runs the same cases every time: element lengths, VRs, truncations,
//! nested sequences, transfer syntax UIDs, pixel module attributes, zip containers and
//! plain byte flips. Every read must end without a panic, within a time bound and
//! without any single allocation beyond a bound. The cases of
//! `tests/fixtures/dicom_hostile/` are the regressions (`tests/dicom_hostile.rs`).

#[path = "support/largest_alloc.rs"]
mod largest_alloc;

#[path = "support/dicom.rs"]
mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use rand::{Rng, SeedableRng};
use rlu2net::io::dicom::read_series;
use support::*;

/// Mutated cases in all; the README quotes it.
const CASES: usize = 20_000;
/// No single allocation while reading a mutated series of a few KiB may exceed this.
const MAX_ALLOC: usize = 16 << 20;
const MAX_TIME: Duration = Duration::from_secs(2);

/// The offsets of every element header's length field in a well-formed explicit VR
/// LE file (meta group and data set, nested items included), and its width.
fn length_fields(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 132;
    while pos + 8 <= b.len() {
        let group = u16::from_le_bytes([b[pos], b[pos + 1]]);
        if group == 0xFFFE {
            out.push((pos + 4, 4));
            let len = u32::from_le_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]);
            let elem = u16::from_le_bytes([b[pos + 2], b[pos + 3]]);
            // enter items; skip fragments
            pos += 8 + if elem == 0xE000
                && len != u32::MAX
                && b.get(pos + 8..pos + 10) != Some(&[0xFE, 0xFF])
                && len < 64
            {
                len as usize
            } else {
                0
            };
            continue;
        }
        let vr = [b[pos + 4], b[pos + 5]];
        let long = matches!(
            &vr,
            b"OB" | b"OW" | b"OF" | b"SQ" | b"UN" | b"UT" | b"UC" | b"UR" | b"OD" | b"OL"
        );
        if long {
            if pos + 12 > b.len() {
                break;
            }
            out.push((pos + 8, 4));
            let len = u32::from_le_bytes([b[pos + 8], b[pos + 9], b[pos + 10], b[pos + 11]]);
            pos += 12
                + if &vr == b"SQ" || len == u32::MAX {
                    0
                } else {
                    len as usize
                };
        } else {
            out.push((pos + 6, 2));
            pos += 8 + u16::from_le_bytes([b[pos + 6], b[pos + 7]]) as usize;
        }
    }
    out
}

const TS_UIDS: [&str; 7] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.90",
    "9.9.9",
];

fn special_u32(rng: &mut impl Rng, old: u32) -> u32 {
    match rng.random_range(0..8) {
        0 => 0,
        1 => u32::MAX,
        2 => 0xFFFF_FFF0,
        3 => 0x7FFF_FFFF,
        4 => old.wrapping_add(1),
        5 => old.wrapping_sub(1),
        6 => old.wrapping_mul(2),
        _ => rng.random(),
    }
}

/// A pixel-module attribute set to an awkward value, in a freshly written slice.
fn pixel_attribute_case(rng: &mut impl Rng) -> Vec<u8> {
    let pick: u32 = rng.random_range(0..9);
    let v16 = [0u16, 1, 7, 65535, 12, 10, 32768][rng.random_range(0..7)];
    let text = [
        "0",
        "-1",
        "NaN",
        "inf",
        "1e308",
        "abc",
        "",
        "4294967296",
        "3\\4",
    ][rng.random_range(0..9)];
    slice_bytes(0, &|o| {
        let us = |t| DataElement::new(t, VR::US, PrimitiveValue::from(v16));
        let st = |t, vr| DataElement::new(t, vr, PrimitiveValue::from(text));
        match pick {
            0 => o.put(us(tags::ROWS)),
            1 => o.put(us(tags::COLUMNS)),
            2 => o.put(st(tags::NUMBER_OF_FRAMES, VR::IS)),
            3 => o.put(us(tags::BITS_ALLOCATED)),
            4 => o.put(us(tags::SAMPLES_PER_PIXEL)),
            5 => o.put(st(tags::PHOTOMETRIC_INTERPRETATION, VR::CS)),
            6 => o.put(st(tags::RESCALE_SLOPE, VR::DS)),
            7 => o.put(st(tags::PIXEL_SPACING, VR::DS)),
            _ => o.put(st(tags::IMAGE_POSITION_PATIENT, VR::DS)),
        };
    })
}

/// One mutated first file of a two-slice series (the second slice stays good).
fn mutate(rng: &mut impl Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    match rng.random_range(0..8) {
        0 => {
            // an element length
            let fields = length_fields(&b);
            let (at, w) = fields[rng.random_range(0..fields.len())];
            if w == 2 {
                let v = [0u16, 1, 0xFFFF, 0xFFFE][rng.random_range(0..4)];
                b[at..at + 2].copy_from_slice(&v.to_le_bytes());
            } else {
                let old = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                b[at..at + 4].copy_from_slice(&special_u32(rng, old).to_le_bytes());
            }
        }
        1 => {
            // a VR
            let fields: Vec<_> = length_fields(&b).into_iter().filter(|f| f.1 == 2).collect();
            let (at, _) = fields[rng.random_range(0..fields.len())];
            let vrs: [&[u8; 2]; 6] = [b"SQ", b"UN", b"OB", b"ZZ", b"UT", b"\0\0"];
            b[at - 2..at].copy_from_slice(vrs[rng.random_range(0..vrs.len())]);
        }
        2 => {
            let cut = rng.random_range(0..b.len());
            b.truncate(cut);
        }
        3 => {
            let depth = [1usize, 2, 63, 64, 65, 500, 5000][rng.random_range(0..7)];
            b = insert_at_data_start(b, &nested_sequence(depth));
        }
        4 => {
            // the transfer syntax UID (same length, so the meta group stays intact), or
            // a whole file rewritten in another syntax's encoding
            let ts = TS_UIDS[rng.random_range(0..TS_UIDS.len())];
            if let Some(at) = b
                .windows(EXPLICIT_LE.len())
                .position(|w| w == EXPLICIT_LE.as_bytes())
            {
                let mut uid = ts.as_bytes().to_vec();
                uid.resize(EXPLICIT_LE.len(), 0);
                b[at..at + uid.len()].copy_from_slice(&uid);
            }
        }
        5 => b = pixel_attribute_case(rng),
        6 => {
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..b.len());
                b[at] = rng.random();
            }
        }
        _ => b = insert_at_data_start(b, &long_element(special_u32(rng, 16))),
    }
    b
}

fn read_bounded(path: &Path, what: &str) {
    largest_alloc::reset();
    let t0 = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| {
        read_series(path).map(|s| s.volume.data.len())
    }));
    let took = t0.elapsed();
    let largest = largest_alloc::largest();
    if r.is_err() || took >= MAX_TIME || largest > MAX_ALLOC {
        // keep the input for a rerun: target/fuzz_dicom_failure/
        let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz_dicom_failure");
        let _ = std::fs::remove_dir_all(&keep);
        let _ = std::fs::create_dir_all(&keep);
        if path.is_dir() {
            for e in std::fs::read_dir(path).unwrap().flatten() {
                let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
            }
        } else {
            let _ = std::fs::copy(path, keep.join(path.file_name().unwrap()));
        }
    }
    assert!(r.is_ok(), "{what}: the reader panicked");
    assert!(took < MAX_TIME, "{what}: took {took:?}");
    assert!(
        largest <= MAX_ALLOC,
        "{what}: an allocation of {largest} bytes"
    );
}

#[test]
fn mutated_series_never_panic_hang_or_allocate_beyond_a_bound() {
    let d = tempfile::tempdir().unwrap();
    let good = slice_bytes(1, &|_| {});
    let implicit = file_bytes(slice_object(0, &|_| {}), "1.2.840.10008.1.2");
    let explicit = slice_bytes(0, &|_| {});
    let enhanced = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom/mr_enhanced.dcm"),
    )
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let (mut refused, mut read) = (0, 0);
    for case in 0..CASES {
        let dir = d.path().join(format!("c{case}"));
        std::fs::create_dir_all(&dir).unwrap();
        let kind = case % 5;
        let what = format!("case {case} (seed 2026, kind {kind})");
        match kind {
            0 | 1 => {
                let seed = if kind == 0 { &explicit } else { &implicit };
                std::fs::write(dir.join("a.dcm"), mutate(&mut rng, seed)).unwrap();
                std::fs::write(dir.join("b.dcm"), &good).unwrap();
            }
            2 => {
                // the enhanced multi-frame file alone
                let mut b = enhanced.clone();
                for _ in 0..rng.random_range(1..4) {
                    match rng.random_range(0..3) {
                        0 => {
                            let at = rng.random_range(132..b.len());
                            b[at] = rng.random();
                        }
                        1 => b.truncate(rng.random_range(132..b.len())),
                        _ => {
                            let f = length_fields(&b);
                            if !f.is_empty() {
                                let (at, w) = f[rng.random_range(0..f.len())];
                                if w == 4 {
                                    let old = u32::from_le_bytes([
                                        b[at],
                                        b[at + 1],
                                        b[at + 2],
                                        b[at + 3],
                                    ]);
                                    b[at..at + 4]
                                        .copy_from_slice(&special_u32(&mut rng, old).to_le_bytes());
                                }
                            }
                        }
                    }
                }
                std::fs::write(dir.join("mf.dcm"), b).unwrap();
            }
            3 => {
                // a zip of a mutated and a good slice, then the zip itself damaged
                let mut z = zip_of(&[
                    ("a.dcm".into(), mutate(&mut rng, &explicit)),
                    ("b.dcm".into(), good.clone()),
                ]);
                if rng.random_bool(0.5) {
                    for _ in 0..rng.random_range(1..4) {
                        let at = rng.random_range(0..z.len());
                        z[at] = rng.random();
                    }
                }
                std::fs::remove_dir_all(&dir).unwrap();
                let zp = d.path().join(format!("c{case}.zip"));
                std::fs::write(&zp, z).unwrap();
                read_bounded(&zp, &what);
                continue;
            }
            _ => {
                std::fs::write(dir.join("a.dcm"), pixel_attribute_case(&mut rng)).unwrap();
                std::fs::write(dir.join("b.dcm"), &good).unwrap();
            }
        }
        read_bounded(&dir, &what);
        match read_series(&dir) {
            Ok(_) => read += 1,
            Err(e) => {
                refused += 1;
                let msg = e.to_string();
                assert_eq!(msg.lines().count(), 1, "{what}: {msg}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // both outcomes occur: the mutations reach the checks and do not only break files
    eprintln!("{CASES} cases: {read} read, {refused} refused");
    assert!(
        read > CASES / 50 && refused > CASES / 5,
        "{read} read, {refused} refused"
    );
}
