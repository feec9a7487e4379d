//! Training: resume equivalence, the loss falling, and the errors raised before any work.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use rlu2net::data::synth::{Scale, SynthOptions, generate};
use rlu2net::model::{Preset, RlU2Net};
use rlu2net::train::{TrainConfig, TrainOptions, load_model, train};

fn synth(dir: &Path, cases: usize) {
    let opts = SynthOptions {
        cases,
        test_cases: 0,
        seed: 3,
        scale: Scale::Small,
        ..SynthOptions::default()
    };
    generate(&opts, dir, &|| {}).unwrap();
}

fn opts(data: &Path, out: &Path, resume: bool) -> TrainOptions {
    TrainOptions {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        resume,
        device: Device::flex(),
        progress: false,
        stop_after_steps: None,
        watch: None,
    }
}

struct Values(Vec<f32>);
impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        self.0.extend(p.val().into_data().iter::<f32>());
    }
}

fn params(run: &Path, cfg: &TrainConfig) -> Vec<f32> {
    let m = load_model(
        &run.join("checkpoints/last"),
        RlU2Net::new(&cfg.model, &Device::flex()),
    )
    .unwrap();
    let mut v = Values(Vec::new());
    m.visit(&mut v);
    v.0
}

fn step_lines(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\"") || l.contains("\"kind\":\"ppo\""))
        .map(String::from)
        .collect()
}

#[test]
fn six_steps_equal_three_plus_resumed_three() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    synth(&data, 3);
    let mut cfg = TrainConfig::preset(Preset::Tiny);
    cfg.steps_per_epoch = 3;
    cfg.epochs = 2;
    cfg.ppo.buffer_size = 8; // a PPO update every 2 steps, so the agents' state is exercised
    cfg.ppo.minibatch = 4;
    let straight = d.path().join("straight");
    train(&cfg, &opts(&data, &straight, false)).unwrap();

    let split = d.path().join("split");
    let interrupted = TrainOptions {
        stop_after_steps: Some(3),
        watch: None,
        ..opts(&data, &split, false)
    };
    let s = train(&cfg, &interrupted).unwrap();
    assert!(s.stopped_early && s.steps == 3);
    train(&cfg, &opts(&data, &split, true)).unwrap();

    let (a, b) = (step_lines(&straight), step_lines(&split));
    if let Some(i) = (0..a.len().min(b.len())).find(|&i| a[i] != b[i]) {
        panic!("line {i} differs:\n{}\n{}", a[i], b[i]);
    }
    assert_eq!(a.len(), b.len());
    assert_eq!(
        step_lines(&straight)
            .iter()
            .filter(|l| l.contains("\"kind\":\"step\""))
            .count(),
        6
    );
    assert!(
        step_lines(&straight)
            .iter()
            .any(|l| l.contains("\"kind\":\"ppo\""))
    );
    let (a, b) = (params(&straight, &cfg), params(&split, &cfg));
    assert_eq!(a.len(), b.len());
    assert!(a == b, "parameters differ after resuming");
}

#[test]
fn errors_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::preset(Preset::Tiny);
    let out = d.path().join("run");

    // no cases
    std::fs::create_dir_all(d.path().join("empty")).unwrap();
    let e = train(&cfg, &opts(&d.path().join("empty"), &out, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no training cases"), "{e}");

    // CT only
    let data = d.path().join("data");
    synth(&data, 1);
    let ct_only = d.path().join("ct_only");
    std::fs::create_dir_all(&ct_only).unwrap();
    std::fs::rename(data.join("ct_train"), ct_only.join("ct_train")).unwrap();
    let e = train(&cfg, &opts(&ct_only, &out, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("only CT") && e.contains("mr_train"), "{e}");
    std::fs::rename(ct_only.join("ct_train"), data.join("ct_train")).unwrap();

    // a patch larger than every volume after resampling
    let mut big = cfg.clone();
    big.preprocess.spacing = 20.0;
    let e = train(&big, &opts(&data, &out, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("patch is larger"), "{e}");

    // an output folder that cannot be written (a file stands where it should be)
    let blocker = d.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let e = train(&cfg, &opts(&data, &blocker.join("run"), false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("output folder"), "{e}");
    assert!(
        !out.join("metrics.jsonl").exists(),
        "no work may start before the checks"
    );

    // a configuration with an unknown key
    assert!(
        TrainConfig::from_toml("[optim]\nlearning_rate = 1.0\n", None)
            .unwrap_err()
            .to_string()
            .contains("learning_rate")
    );
}

#[test]
fn tiny_training_loss_halves_on_four_cases() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    synth(&data, 4);
    let mut cfg = TrainConfig::from_toml(
        "preset = \"tiny\"\n[optim]\nlr = 0.005\nwarmup_fraction = 0.02\n",
        None,
    )
    .unwrap();
    cfg.epochs = 8;
    cfg.steps_per_epoch = 25;
    let run = d.path().join("run");
    train(&cfg, &opts(&data, &run, false)).unwrap();
    let losses: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    // the loss at the start (first 3 steps) against the end (last 10 steps)
    let first = losses[..3].iter().sum::<f64>() / 3.0;
    let last = losses[losses.len() - 10..].iter().sum::<f64>() / 10.0;
    eprintln!("loss {first:.3} → {last:.3} over {} steps", losses.len());
    assert!(last <= 0.5 * first, "loss {first:.3} → {last:.3}");
    assert!(run.join("loss_curves.png").is_file() && run.join("ppo_reward.png").is_file());
    assert!(run.join("checkpoints/best/model.bpk").is_file());
}

#[test]
fn the_spatial_augmentation_reports_the_pose_it_kept() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    synth(&data, 3);
    let mut cfg = TrainConfig::preset(Preset::Tiny);
    cfg.steps_per_epoch = 1;
    cfg.epochs = 1;
    let plain = train(&cfg, &opts(&data, &d.path().join("plain"), false)).unwrap();
    assert_eq!(
        plain.augmentation_pose, None,
        "nothing spatial is augmented"
    );

    cfg.sampler.augment.p_rotate = 0.5;
    cfg.sampler.augment.max_rotation_deg = 30.0;
    let rotated = train(&cfg, &opts(&data, &d.path().join("rot"), false)).unwrap();
    // the data's MRI is the CT turned by R_pose: the kept pose is the rotation that
    // turns it back, R_poseᵀ
    let rot = rlu2net::geometry::cube_rotations();
    let expected = rot
        .iter()
        .position(|r| *r == rot[rlu2net::data::synth::default_mr_pose()].inverse());
    assert_eq!(rotated.augmentation_pose, expected);
    assert_ne!(expected, Some(0), "the default pose is not the identity");
}
