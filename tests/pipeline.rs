//! Inference writes on the input's grid; the demo runs end to end.

use std::path::Path;
use std::process::Command;

use burn::tensor::Device;
use nalgebra::Matrix4;
use ndarray::Array3;
use rlu2net::data::layout::Modality;
use rlu2net::data::synth::{Scale, SynthOptions, generate};
use rlu2net::infer::{Predictor, write_prediction};
use rlu2net::io::{DType, Orientation, Volume, read_nifti, write_nifti};
use rlu2net::model::Preset;
use rlu2net::train::{TrainConfig, TrainOptions, train};

fn tiny_run(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    let opts = SynthOptions {
        cases: 2,
        test_cases: 0,
        scale: Scale::Small,
        ..SynthOptions::default()
    };
    generate(&opts, &data, &|| {}).unwrap();
    let mut cfg = TrainConfig::preset(Preset::Tiny);
    cfg.epochs = 1;
    cfg.steps_per_epoch = 2;
    let run = dir.join("run");
    train(
        &cfg,
        &TrainOptions {
            data,
            out: run.clone(),
            resume: false,
            device: Device::flex(),
            progress: false,
            stop_after_steps: None,
            watch: None,
        },
    )
    .unwrap();
    run
}

#[test]
fn prediction_has_the_inputs_affine_and_shape_for_an_oblique_non_ras_input() {
    let d = tempfile::tempdir().unwrap();
    let run = tiny_run(d.path());
    let p = Predictor::load(&run, Device::flex(), 0.5, false).unwrap();
    // a PIL-ordered, tilted volume smaller than the patch along one axis
    let affine = Matrix4::new(
        0.05, -1.8, 0.1, 40.0, //
        -0.1, 0.02, 2.4, -12.5, //
        -1.6, 0.0, 0.2, 30.0, //
        0.0, 0.0, 0.0, 1.0,
    )
    .map(|x| x as f32 as f64);
    let spacing = [0, 1, 2].map(|c| {
        ((0..3)
            .map(|r| affine[(r, c)] * affine[(r, c)])
            .sum::<f64>()
            .sqrt() as f32) as f64
    });
    let data = Array3::from_shape_fn((70, 50, 20), |(i, j, k)| {
        ((i as f32 * 0.3).sin() + (j as f32 * 0.2).cos()) * 300.0 + k as f32
    });
    let input = d.path().join("oblique.nii.gz");
    write_nifti(&input, &Volume::new(data, spacing, affine), DType::Int16).unwrap();
    assert_ne!(Orientation::of_affine(&affine).code(), "RAS");

    for modality in [Modality::Ct, Modality::Mr] {
        let x = p.prepare(&input, modality).unwrap();
        let pb = rlu2net::progress::Progress::hidden();
        let pred = p.predict(&x, None, modality == Modality::Ct, &pb).unwrap();
        let out = d.path().join("pred.nii.gz");
        write_prediction(&out, &pred, true).unwrap();
        let (back, info) = read_nifti::<i16>(&out).unwrap();
        assert_eq!(info.dtype, DType::Int16);
        assert_eq!(back.shape(), [70, 50, 20]);
        assert_eq!(back.affine, affine);
        assert_eq!(back.spacing, spacing);
        assert!(
            back.data
                .iter()
                .all(|v| rlu2net::data::labels::class_of_value(*v as i32).is_some())
        );
        assert!(d.path().join("pred_probabilities.nii.gz").is_file());
    }
}

#[test]
fn constant_and_missing_inputs_are_refused_with_the_file_name() {
    let d = tempfile::tempdir().unwrap();
    let run = tiny_run(d.path());
    let p = Predictor::load(&run, Device::flex(), 0.5, false).unwrap();
    let flat = d.path().join("flat.nii.gz");
    write_nifti(
        &flat,
        &Volume::with_spacing(Array3::from_elem((8, 8, 8), 5.0f32), [1.0; 3]),
        DType::Float32,
    )
    .unwrap();
    let e = p.prepare(&flat, Modality::Ct).err().unwrap().to_string();
    assert!(e.contains("flat.nii.gz") && e.contains("constant"), "{e}");
    let e = p
        .prepare(&d.path().join("none.nii.gz"), Modality::Ct)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("none.nii.gz"), "{e}");
}

#[test]
fn demo_runs_end_to_end_and_prints_the_table() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rlu2net"))
        .args(["demo", "--minutes", "0.1", "--cases", "4", "--out"])
        .arg(d.path().join("demo"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("| CT | 2 |") && text.contains("| MRI | 2 |"),
        "{text}"
    );
    for f in [
        "evaluation/report.md",
        "evaluation/report.json",
        "evaluation/overlays/ct_test_2001.png",
        "run/loss_curves.png",
        "predictions/mr_test_2002_label.nii.gz",
    ] {
        assert!(d.path().join("demo").join(f).is_file(), "{f}");
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("demo/evaluation/report.json")).unwrap(),
    )
    .unwrap();
    let case = &json["cases"][0];
    assert!(case["dice"]["Myo"].is_number() || case["reasons"]["Myo"].is_string());
    resume_after_demo(&d.path().join("demo"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn resume(run: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rlu2net"))
        .args(["train", "--resume"])
        .arg(run)
        .output()
        .unwrap()
}

/// The demo's run folder is a complete one: `train --resume` continues it from its last
/// checkpoint; without `run.json`, or with a truncated `plan.json`, it stops with one
/// line that names the file.
fn resume_after_demo(demo: &Path) {
    let run = demo.join("run");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/last/state.json")).unwrap(),
    )
    .unwrap();
    let steps = state["step"].as_u64().unwrap();
    let lines_before = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    for name in ["no_info", "torn_plan"] {
        copy_dir(&run, &demo.join(name));
    }
    let out = resume(&run);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // the demo stops on its time budget, so the resumed run trains on to the end of its
    // fitted schedule (or finishes at once if the demo had reached it)
    let after: u64 = err
        .split("after ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step count in: {err}"));
    assert!(after >= steps, "{after} < {steps}: {err}");
    let lines_after = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(
        lines_after >= lines_before,
        "the log of the steps done is kept"
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/last/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"].as_u64(), Some(after));

    std::fs::remove_file(demo.join("no_info/run.json")).unwrap();
    let plan = demo.join("torn_plan/plan.json");
    let text = std::fs::read_to_string(&plan).unwrap();
    std::fs::write(&plan, &text[..text.len() / 2]).unwrap();
    for (name, file, what) in [
        ("no_info", "run.json", "cannot read"),
        ("torn_plan", "plan.json", "damaged"),
    ] {
        let out = resume(&demo.join(name));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: {err}");
        assert!(
            lines[0].contains(&format!("{}: {what}", demo.join(name).join(file).display())),
            "{name}: {err}"
        );
    }
}
