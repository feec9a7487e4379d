//! Hostile DICOM input: each case of `tests/fixtures/dicom_hostile/` (regenerate with
//! `cargo test --release --test dicom_hostile -- --ignored regenerate`) gets a one-line
//! error naming the file from `rlu2net infer`, under a 4 GiB address-space limit
//! (`ulimit -v`), promptly; the library refuses the same cases; MONOCHROME1 is read
//! inverted into MONOCHROME2's sense.

#[path = "support/dicom.rs"]
mod support;
#[path = "support/tiny_run.rs"]
mod tiny_run;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use rlu2net::io::dicom::read_series;
use support::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom_hostile")
}

/// (fixture, the file the error must name, what it must say)
const CASES: [(&str, &str, &str); 8] = [
    ("value_length_4gib", "IM0000.dcm", "claims 4294967280 bytes"),
    (
        "rows_cols_65535",
        "IM0000.dcm",
        "more than 1073741824 voxels",
    ),
    ("frames_huge", "IM0000.dcm", "more than 1073741824 voxels"),
    ("nested_10000", "IM0000.dcm", "nested deeper than 64 levels"),
    (
        "nested_10000.zip",
        "nested_10000.zip!IM0000.dcm",
        "nested deeper than 64 levels",
    ),
    (
        "palette_color",
        "IM0000.dcm",
        "PhotometricInterpretation PALETTE COLOR",
    ),
    (
        "slope_text",
        "IM0000.dcm",
        "RescaleSlope (0028,1053) \"abc\" is not a number",
    ),
    ("slope_nan", "IM0000.dcm", "is not one finite number"),
];

fn set(o: &mut dicom_object::InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: &str) {
    o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}

/// Write every fixture (two slices each, the first one hostile) into `dir`.
fn write_fixtures(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let edited = |name: &str, edit: &dyn Fn(&mut dicom_object::InMemDicomObject)| {
        write_series(&dir.join(name), 2, &|_| slice_bytes(0, edit));
    };
    write_series(&dir.join("value_length_4gib"), 2, &|b| {
        insert_at_data_start(b, &long_element(0xFFFF_FFF0))
    });
    edited("rows_cols_65535", &|o| {
        o.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(65535u16),
        ));
        o.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(65535u16),
        ));
    });
    edited("frames_huge", &|o| {
        set(o, tags::NUMBER_OF_FRAMES, VR::IS, "1000000000")
    });
    write_series(&dir.join("nested_10000"), 2, &|b| {
        insert_at_data_start(b, &nested_sequence(10_000))
    });
    let files: Vec<(String, Vec<u8>)> = ["IM0000.dcm", "IM0001.dcm"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                std::fs::read(dir.join("nested_10000").join(n)).unwrap(),
            )
        })
        .collect();
    std::fs::write(dir.join("nested_10000.zip"), zip_of(&files)).unwrap();
    edited("palette_color", &|o| {
        set(o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "PALETTE COLOR")
    });
    edited("slope_text", &|o| {
        set(o, tags::RESCALE_SLOPE, VR::DS, "abc")
    });
    edited("slope_nan", &|o| set(o, tags::RESCALE_SLOPE, VR::DS, "NaN"));
}

#[test]
#[ignore = "rewrites tests/fixtures/dicom_hostile"]
fn regenerate() {
    write_fixtures(&fixtures());
}

#[test]
fn the_fixtures_are_what_the_helpers_write() {
    // so that a change to the helpers is noticed and the fixtures regenerated
    let d = tempfile::tempdir().unwrap();
    write_fixtures(d.path());
    for (case, _, _) in CASES {
        let (a, b) = (fixtures().join(case), d.path().join(case));
        if a.is_dir() {
            for f in ["IM0000.dcm", "IM0001.dcm"] {
                assert_eq!(
                    std::fs::read(a.join(f)).unwrap(),
                    std::fs::read(b.join(f)).unwrap(),
                    "{case}/{f}"
                );
            }
        } else {
            assert!(a.is_file(), "{case} missing");
        }
    }
}

#[test]
fn the_library_refuses_each_case_naming_the_file() {
    for (case, file, needle) in CASES {
        let e = match read_series(&fixtures().join(case)) {
            Ok(_) => panic!("{case}: read without error"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(needle), "{case}: {e}");
        assert!(
            e.contains(file),
            "{case}: the error does not name {file}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{case}: {e}");
    }
}

/// `rlu2net ARGS` with the address space limited to 4 GiB.
fn limited(args: &[&std::ffi::OsStr]) -> (std::process::Output, Duration) {
    let t0 = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_rlu2net"))
        .args(args)
        .output()
        .unwrap();
    (out, t0.elapsed())
}

#[test]
fn infer_gives_one_line_errors_under_a_4_gib_address_space() {
    let d = tempfile::tempdir().unwrap();
    let (_, run) = tiny_run::tiny_run(d.path(), 2, 0, 3);
    let infer = |series: &Path| {
        let o = d.path().join("out.nii.gz");
        limited(&[
            "infer".as_ref(),
            "--model".as_ref(),
            run.as_os_str(),
            "--ct".as_ref(),
            series.as_os_str(),
            "--out".as_ref(),
            o.as_os_str(),
        ])
    };
    // the control: a good series predicts under the same limit
    let good = d.path().join("good");
    write_series(&good, 3, &|b| b);
    let (out, _) = infer(&good);
    assert!(
        out.status.success(),
        "a good series under ulimit -v: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (case, file, needle) in CASES {
        let (out, took) = infer(&fixtures().join(case));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(
            line.contains(needle) && line.contains(file),
            "{case}: {err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.contains("error")).count(),
            1,
            "{case}: {err}"
        );
        // the bound is for a hang, not a speed claim (about 0.1 s each here)
        assert!(took < Duration::from_secs(20), "{case}: {took:?}");
        eprintln!("{case}: {:.2} s: {line}", took.as_secs_f64());
    }
}

#[test]
fn monochrome1_reads_as_monochrome2_of_the_inverted_values() {
    let d = tempfile::tempdir().unwrap();
    // MONOCHROME1 with stored values s, and MONOCHROME2 with (min + max) − s over the
    // series: the same volume
    let (lo, hi) = (0..3)
        .flat_map(|k| (0..ROWS * COLS).map(move |i| stored(k, i / COLS, i % COLS)))
        .fold((i16::MAX, i16::MIN), |(l, h), x| (l.min(x), h.max(x)));
    let m1 = d.path().join("m1");
    let m2 = d.path().join("m2");
    std::fs::create_dir_all(&m1).unwrap();
    std::fs::create_dir_all(&m2).unwrap();
    for k in 0..3 {
        let b1 = slice_bytes(k, &|o| {
            set(o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME1")
        });
        std::fs::write(m1.join(format!("{k}.dcm")), b1).unwrap();
        let b2 = slice_bytes(k, &|o| {
            let px: Vec<i16> = (0..ROWS * COLS)
                .map(|i| lo + hi - stored(k, i / COLS, i % COLS))
                .collect();
            o.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::I16(px.into()),
            ));
        });
        std::fs::write(m2.join(format!("{k}.dcm")), b2).unwrap();
    }
    let (v1, v2) = (
        read_series(&m1).unwrap().volume,
        read_series(&m2).unwrap().volume,
    );
    assert_eq!(v1.data, v2.data);
    assert_eq!(v1.affine, v2.affine);
    // and not the stored values themselves: the brightest stored value is now the darkest
    let plain = d.path().join("plain");
    write_series(&plain, 3, &|b| b);
    let v = read_series(&plain).unwrap().volume;
    assert_ne!(v.data, v1.data);
}
