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
