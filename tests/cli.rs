//! The command line as a user runs it.

use std::process::Command;

fn rlu2net() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rlu2net"))
}

#[test]
fn synth_then_inspect_reads_every_case_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("demo-data");
    let out = rlu2net()
        .args(["synth", "--out"])
        .arg(&data)
        .args([
            "--cases",
            "2",
            "--test-cases",
            "1",
            "--seed",
            "1",
            "--scale",
            "small",
            "--preview",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data.join("manifest.json").is_file());
    assert!(data.join("preview/ct_train_1001.png").is_file());
    assert!(data.join("preview/mr_test_2001.png").is_file());

    let out = rlu2net().arg("inspect").arg(&data).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("all 6 cases read cleanly"), "{text}");
    let ct = text
        .lines()
        .find(|l| l.starts_with("ct_train_1001"))
        .expect("a line per case");
    assert!(ct.contains("labels: Myo LA LV RA RV AA PA"), "{ct}");
    assert!(text.contains("MRI test : 1 cases"), "{text}");
}

#[test]
fn inspect_names_the_file_with_an_unknown_label_value() {
    use rlu2net::io::{DType, read_nifti, write_nifti};
    let d = tempfile::tempdir().unwrap();
    let data = d.path();
    let opts = rlu2net::data::synth::SynthOptions {
        cases: 1,
        test_cases: 0,
        scale: rlu2net::data::synth::Scale::Small,
        ..Default::default()
    };
    rlu2net::data::synth::generate(&opts, data, &|| {}).unwrap();
    let lab = data.join("mr_train/mr_train_1001_label.nii.gz");
    let (mut v, _) = read_nifti::<i16>(&lab).unwrap();
    v.data[[3, 4, 5]] = 421;
    write_nifti(&lab, &v, DType::Int16).unwrap();
    let out = rlu2net().arg("inspect").arg(data).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mr_train_1001_label.nii.gz") && text.contains("421"),
        "{text}"
    );

    let out = rlu2net()
        .arg("inspect")
        .arg(data.join("nowhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
}

/// A 2 + 1 pair SynthWHS set and a 2-step `tiny` run on it, trained by the binary
/// with `train_args` before `--data` (e.g. global flags): (data, run).
fn tiny_trained_run(
    dir: &std::path::Path,
    seed: u64,
    train_args: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    use rlu2net::data::synth::{Scale, SynthOptions, generate};
    let data = dir.join("data");
    let opts = SynthOptions {
        cases: 2,
        test_cases: 1,
        seed,
        scale: Scale::Small,
        ..SynthOptions::default()
    };
    generate(&opts, &data, &|| {}).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "preset = \"tiny\"\nepochs = 1\nsteps_per_epoch = 2\n").unwrap();
    let run = dir.join("run");
    let out = rlu2net()
        .args(train_args)
        .arg("--data")
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

#[test]
fn infer_writes_statistics_and_a_preview_with_threads_and_device_flags() {
    use rlu2net::io::read_nifti;
    let d = tempfile::tempdir().unwrap();
    let (data, run) =
        tiny_trained_run(d.path(), 2, &["--threads", "1", "train", "--device", "cpu"]);
    let ct = data.join("ct_test/ct_test_2001_image.nii.gz");
    let pred = d.path().join("pred/ct.nii.gz");
    let out = rlu2net()
        .args(["infer", "--threads", "2", "--device", "cpu", "--model"])
        .arg(&run)
        .arg("--ct")
        .arg(&ct)
        .arg("--out")
        .arg(&pred)
        .arg("--statistics")
        .arg("--preview")
        .arg(d.path().join("pred/ct.png"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("LV blood pool"), "{text}");
    assert!(d.path().join("pred/ct.png").metadata().unwrap().len() > 1000);
    let js: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("pred/statistics.json")).unwrap(),
    )
    .unwrap();
    // the volumes are the written label map's voxel counts times the voxel volume
    let (lab, _) = read_nifti::<f32>(&pred).unwrap();
    let vox_ml = lab.spacing.iter().product::<f64>() / 1000.0;
    let s = &js["ct"]["structures"];
    assert_eq!(s.as_array().unwrap().len(), 7);
    for r in s.as_array().unwrap() {
        let v = r["label"].as_f64().unwrap() as f32;
        let n = lab.data.iter().filter(|&&x| x == v).count() as f64;
        let ml = r["volume_ml"].as_f64().unwrap();
        assert!((ml - n * vox_ml).abs() <= 1e-6 * (1.0 + ml), "{r}");
    }
    let myo = s[0]["volume_ml"].as_f64().unwrap();
    let mass = js["ct"]["lv_myocardial_mass_g"].as_f64().unwrap();
    assert!((mass - 1.05 * myo).abs() < 1e-9);
}

#[test]
fn an_exported_model_file_predicts_byte_identically_to_its_run() {
    let d = tempfile::tempdir().unwrap();
    let (data, run) = tiny_trained_run(d.path(), 4, &["train"]);
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let file = d.path().join("heart.rlu2net");
    ok(rlu2net()
        .arg("export")
        .arg(&run)
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap());
    let predict = |model: &std::path::Path, out: &str| {
        ok(rlu2net()
            .args(["infer", "--model"])
            .arg(model)
            .arg("--input-dir")
            .arg(&data)
            .arg("--output-dir")
            .arg(d.path().join(out))
            .output()
            .unwrap());
    };
    predict(&run, "from_run");
    predict(&file, "from_file");
    for n in ["ct_test_2001_label.nii.gz", "mr_test_2001_label.nii.gz"] {
        let a = std::fs::read(d.path().join("from_run").join(n)).unwrap();
        let b = std::fs::read(d.path().join("from_file").join(n)).unwrap();
        assert!(a == b, "{n} differs");
    }
    // a damaged file: one line saying so
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let out = rlu2net()
        .args(["infer", "--model"])
        .arg(&file)
        .arg("--ct")
        .arg(data.join("ct_test/ct_test_2001_image.nii.gz"))
        .arg("--out")
        .arg(d.path().join("x.nii.gz"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("checksum"), "{err}");
}

#[test]
fn device_choice_never_panics() {
    // `devices` always lists the CPU; a malformed choice is a usage error
    let out = rlu2net().arg("devices").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cpu "));
    let out = rlu2net()
        .args(["bench", "model", "--device", "gpu:x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use auto, cpu, gpu or gpu:N"));
    if cfg!(feature = "gpu") {
        return; // the GPU build's cases are in tests/gpu.rs
    }
    // without the feature, --device gpu is one line saying how to get it
    let out = rlu2net()
        .args([
            "bench", "model", "--preset", "tiny", "--runs", "1", "--device", "gpu",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("built without GPU support") && err.contains("--features gpu"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
