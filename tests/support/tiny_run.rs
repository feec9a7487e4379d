//! A SynthWHS set (`--scale small`) and a `tiny` model trained on it for one step by the
//! command line: the cheapest real run folder for tests of what reads one.

use std::path::{Path, PathBuf};
use std::process::Command;

use rlu2net::data::synth::{Scale, SynthOptions, generate};

/// `dir/data` with `cases` training and `test_cases` test pairs, and `dir/run`.
pub fn tiny_run(dir: &Path, cases: usize, test_cases: usize, seed: u64) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    let opts = SynthOptions {
        cases,
        test_cases,
        seed,
        scale: Scale::Small,
        ..SynthOptions::default()
    };
    generate(&opts, &data, &|| {}).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "preset = \"tiny\"\nepochs = 1\nsteps_per_epoch = 1\n").unwrap();
    let run = dir.join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_rlu2net"))
        .args(["train", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (data, run)
}
