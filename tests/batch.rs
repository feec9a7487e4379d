//! Batch inference (`infer --input-dir`) as a night's work needs it: one bad case is
//! reported and skipped while every other case is predicted (exit 1, failures.json);
//! `--fail-fast` stops at it; `--continue` after a kill predicts only what is missing;
//! `--num-parts` / `--part-id` split a folder so that the parts predict every case
//! exactly once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[path = "support/tiny_run.rs"]
mod tiny_run;

fn rlu2net() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rlu2net"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A small set (4 test pairs) and a tiny model trained for one step.
fn setup(d: &Path) -> (PathBuf, PathBuf) {
    tiny_run::tiny_run(d, 2, 4, 9)
}

fn batch(run: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    rlu2net()
        .args(["infer", "--model"])
        .arg(run)
        .arg("--input-dir")
        .arg(data)
        .arg("--output-dir")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// The label files in a folder.
fn labels(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with("_label.nii.gz") && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn all_labels(data: &Path) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for m in ["ct", "mr"] {
        for e in std::fs::read_dir(data.join(format!("{m}_test"))).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().to_string();
            if let Some(stem) = n.strip_suffix("_image.nii.gz") {
                s.insert(format!("{stem}_label.nii.gz"));
            }
        }
    }
    s
}

#[test]
fn a_bad_case_is_skipped_listed_and_fails_the_batch_and_parts_cover_it_once() {
    let d = tempfile::tempdir().unwrap();
    let (data, run) = setup(d.path());
    let every = all_labels(&data);
    assert_eq!(every.len(), 8);

    // two parts into their own folders: disjoint, and together every case
    let (p0, p1) = (d.path().join("part0"), d.path().join("part1"));
    for (k, dir) in [(0, &p0), (1, &p1)] {
        let o = batch(
            &run,
            &data,
            dir,
            &["--num-parts", "2", "--part-id", &k.to_string()],
        );
        assert!(o.status.success(), "part {k}: {}", stderr(&o));
    }
    let (a, b) = (labels(&p0), labels(&p1));
    assert!(a.is_disjoint(&b), "{a:?} {b:?}");
    assert_eq!(a.union(&b).cloned().collect::<BTreeSet<_>>(), every);
    assert!(!a.is_empty() && !b.is_empty());
    let bad_part = batch(&run, &data, &p0, &["--num-parts", "2", "--part-id", "2"]);
    assert_eq!(bad_part.status.code(), Some(1));

    // one truncated CT among the good cases
    let bad = data.join("ct_test").join(
        std::fs::read_dir(data.join("ct_test"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with("_image.nii.gz"))
            .min()
            .unwrap(),
    );
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let bad_label = bad
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace("_image", "_label");
    let out = d.path().join("out");
    let o = batch(&run, &data, &out, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let mut want = every.clone();
    want.remove(&bad_label);
    assert_eq!(labels(&out), want, "every other case is predicted\n{err}");
    assert!(err.contains("7 of 8 cases predicted, 1 failed"), "{err}");
    assert!(err.contains(bad.to_string_lossy().as_ref()), "{err}");
    let failures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("failures.json")).unwrap()).unwrap();
    assert_eq!(failures.as_array().unwrap().len(), 1, "{failures}");
    assert!(
        failures[0]["error"].as_str().unwrap().contains("ct_test"),
        "{failures}"
    );

    // --fail-fast stops at it (the first pair), with no failures.json
    let ff = d.path().join("ff");
    let o = batch(&run, &data, &ff, &["--fail-fast"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(labels(&ff).len() < want.len(), "{:?}", labels(&ff));
    assert!(!ff.join("failures.json").exists());

    // the file mended: --continue predicts only the missing case and clears failures.json
    std::fs::write(&bad, &bytes).unwrap();
    let mtimes = |dir: &Path| -> Vec<(String, std::time::SystemTime)> {
        labels(dir)
            .into_iter()
            .map(|n| {
                (
                    n.clone(),
                    std::fs::metadata(dir.join(&n)).unwrap().modified().unwrap(),
                )
            })
            .collect()
    };
    let before = mtimes(&out);
    let o = batch(&run, &data, &out, &["--continue"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // the bad CT's pair is predicted again (each one's prediction uses the other)
    assert!(
        stderr(&o).contains("2 of 8 cases predicted, 6 already complete"),
        "{}",
        stderr(&o)
    );
    assert_eq!(labels(&out), every);
    let after = mtimes(&out);
    for (name, t) in before {
        if name.starts_with("mr_") && name[3..] == bad_label[3..] {
            continue;
        }
        assert!(
            after.contains(&(name.clone(), t)),
            "{name} was written again"
        );
    }

    assert!(!out.join("failures.json").exists());
}

#[test]
fn continue_after_a_kill_finishes_only_what_is_missing() {
    let d = tempfile::tempdir().unwrap();
    let (data, run) = setup(d.path());
    let out = d.path().join("out");
    let mut child = rlu2net()
        .args(["infer", "--model"])
        .arg(&run)
        .arg("--input-dir")
        .arg(&data)
        .arg("--output-dir")
        .arg(&out)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // killed once the first pair is written
    let t0 = Instant::now();
    while labels(&out).len() < 2 && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = labels(&out);
    assert!(!done.is_empty(), "nothing was written before the kill");
    let o = batch(&run, &data, &out, &["--continue"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(labels(&out), all_labels(&data));
    let skipped = 2 * (done.len() / 2); // the images of whole pairs written before the kill
    assert!(
        err.contains(&format!("{skipped} already complete")),
        "{} labels were there: {err}",
        done.len()
    );
    // every label file reads back whole
    for n in labels(&out) {
        rlu2net::io::read_nifti::<i16>(&out.join(n)).unwrap();
    }
}
