//! Real processes against interruptions and concurrency: a training killed while it
//! writes a checkpoint resumes to the same losses as an uninterrupted run; a write
//! that fails half-way (file-size limit, as on a full disk) keeps the previous
//! checkpoint; two `infer` runs into one folder leave complete files; damaged runs
//! give one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rlu2net::data::synth::{Scale, SynthOptions, generate};

fn rlu2net() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rlu2net"))
}

fn synth(dir: &Path, cases: usize, test_cases: usize) -> PathBuf {
    let data = dir.join("data");
    let opts = SynthOptions {
        cases,
        test_cases,
        seed: 5,
        scale: Scale::Small,
        ..SynthOptions::default()
    };
    generate(&opts, &data, &|| {}).unwrap();
    data
}

/// A tiny configuration: `epochs` × 3 steps, a checkpoint every 3 steps, a PPO
/// update every 2 steps, no validation before the end.
fn config(dir: &Path, epochs: u32) -> PathBuf {
    let p = dir.join(format!("tiny{epochs}.toml"));
    std::fs::write(
        &p,
        format!(
            "preset = \"tiny\"\nepochs = {epochs}\nsteps_per_epoch = 3\nval_every = 100\n\
             [ppo]\nbuffer_size = 8\nminibatch = 4\n"
        ),
    )
    .unwrap();
    p
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn train(data: &Path, run: &Path, cfg: &Path) -> Output {
    rlu2net()
        .args(["train", "--data"])
        .arg(data)
        .arg("--out")
        .arg(run)
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap()
}

fn resume(run: &Path) -> Output {
    rlu2net()
        .args(["train", "--resume"])
        .arg(run)
        .output()
        .unwrap()
}

/// The step and PPO lines of a run's log (wall-clock time is only on epoch lines).
fn step_lines(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\"") || l.contains("\"kind\":\"ppo\""))
        .map(String::from)
        .collect()
}

/// Every parameter value of a run's last checkpoint.
fn weights(run: &Path) -> Vec<f32> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{Device, Tensor};
    struct Values(Vec<f32>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.extend(p.val().into_data().iter::<f32>());
        }
    }
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let cfg = rlu2net::train::TrainConfig::from_toml(&text, None).unwrap();
    let m = rlu2net::train::load_model(
        &run.join("checkpoints/last"),
        rlu2net::model::RlU2Net::new(&cfg.model, &Device::flex()),
    )
    .unwrap();
    let mut v = Values(Vec::new());
    m.visit(&mut v);
    assert!(!v.0.is_empty());
    v.0
}

fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(unix)]
#[test]
fn training_killed_while_writing_a_checkpoint_resumes_to_the_same_losses() {
    let d = tempfile::tempdir().unwrap();
    let data = synth(d.path(), 3, 0);
    let cfg = config(d.path(), 3);
    let straight = d.path().join("straight");
    ok(train(&data, &straight, &cfg));

    let run = d.path().join("killed");
    let ck = run.join("checkpoints");
    let mut child = rlu2net()
        .args(["train", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // wait for the first checkpoint, then for the second one to be in the writing
    let t0 = Instant::now();
    let mut first_done = false;
    let mut caught = false;
    while t0.elapsed() < Duration::from_secs(300) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if !first_done {
            first_done = ck.join("last/state.json").exists();
        } else if ck.join(".last.partial").exists() {
            child.kill().unwrap(); // SIGKILL
            caught = true;
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let _ = child.wait();
    assert!(
        caught,
        "the run ended before it could be killed during a checkpoint"
    );
    ok(resume(&run));
    let (a, b) = (step_lines(&straight), step_lines(&run));
    assert_eq!(a.len(), b.len(), "step and PPO lines");
    if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
        panic!("line {i} differs:\n{}\n{}", a[i], b[i]);
    }
    assert!(weights(&straight) == weights(&run), "final weights differ");
    assert!(!ck.join(".last.partial").exists() && !ck.join(".last.old").exists());
}

#[cfg(unix)]
#[test]
fn a_checkpoint_write_failing_half_way_keeps_the_previous_one_and_the_inputs() {
    let d = tempfile::tempdir().unwrap();
    let data = synth(d.path(), 2, 0);
    let run = d.path().join("run");
    ok(train(&data, &run, &config(d.path(), 1)));
    let ck = run.join("checkpoints/last");
    let before = files_under(&ck);
    let inputs = files_under(&data);
    let model_len = std::fs::metadata(ck.join("model.bpk")).unwrap().len();
    // two more epochs, under a file-size limit below half the model's size: the
    // checkpoint's model.bpk fails half-way with EFBIG, as a full disk would fail it
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let text = text.replacen("epochs = 1", "epochs = 3", 1);
    assert!(text.contains("epochs = 3"));
    std::fs::write(run.join("config.toml"), text).unwrap();
    let blocks = (model_len / 2048).max(1);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {blocks} && exec \"$0\" train --resume \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_rlu2net"))
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the write did not fail: {err}");
    assert!(err.contains("cannot write the checkpoint"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        files_under(&ck) == before,
        "the previous checkpoint changed"
    );
    assert!(files_under(&data) == inputs, "the input files changed");
    let left: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // and the run still resumes once there is room
    ok(resume(&run));

    // a prediction and a data set written under the same limit: nothing half-written
    // is left, and the earlier prediction of the same name is intact
    let pred = d.path().join("pred");
    let ct = data.join("ct_train/ct_train_1001_image.nii.gz");
    let infer = |limit: Option<u64>| {
        let cmd = match limit {
            Some(b) => format!("trap '' XFSZ; ulimit -f {b} && exec \"$0\" \"$@\""),
            None => "exec \"$0\" \"$@\"".to_string(),
        };
        Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .arg(env!("CARGO_BIN_EXE_rlu2net"))
            .args(["infer", "--probabilities", "--model"])
            .arg(&run)
            .arg("--ct")
            .arg(&ct)
            .arg("--out")
            .arg(pred.join("p.nii.gz"))
            .output()
            .unwrap()
    };
    ok(infer(None));
    let first = files_under(&pred);
    // the probabilities file (8 float channels) is far larger than the label map
    let label_len = std::fs::metadata(pred.join("p.nii.gz")).unwrap().len();
    let out = infer(Some(label_len.div_ceil(512) + 16));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p_probabilities.nii.gz"), "{err}");
    let now = files_under(&pred);
    assert_eq!(
        now.iter().map(|f| &f.0).collect::<Vec<_>>(),
        first.iter().map(|f| &f.0).collect::<Vec<_>>(),
        "files appeared or vanished"
    );
    let probs = |v: &[(PathBuf, Vec<u8>)]| {
        v.iter()
            .find(|f| f.0.ends_with("p_probabilities.nii.gz"))
            .map(|f| f.1.clone())
    };
    assert!(
        probs(&now) == probs(&first),
        "the earlier probabilities changed"
    );

    let synth_dir = d.path().join("synth");
    let out = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_rlu2net"))
        .args(["synth", "--cases", "1", "--test-cases", "0", "--out"])
        .arg(&synth_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let partial: Vec<_> = files_under(&synth_dir)
        .into_iter()
        .map(|f| f.0)
        .filter(|p| p.to_string_lossy().contains("partial"))
        .collect();
    assert!(partial.is_empty(), "left behind: {partial:?}");
}

#[test]
fn two_infer_runs_into_one_folder_leave_complete_files() {
    let d = tempfile::tempdir().unwrap();
    let data = synth(d.path(), 2, 2);
    let run = d.path().join("run");
    ok(train(&data, &run, &config(d.path(), 1)));
    let out = d.path().join("pred");
    let spawn = || {
        rlu2net()
            .args(["infer", "--model"])
            .arg(&run)
            .arg("--input-dir")
            .arg(&data)
            .arg("--output-dir")
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    ok(a.wait_with_output().unwrap());
    ok(b.wait_with_output().unwrap());
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ct_test_2001_label.nii.gz",
            "ct_test_2002_label.nii.gz",
            "mr_test_2001_label.nii.gz",
            "mr_test_2002_label.nii.gz"
        ]
    );
    for n in names {
        let (lab, _) = rlu2net::io::read_nifti::<f32>(&out.join(&n)).unwrap();
        let img = data.join(&n[..7]).join(n.replace("_label", "_image"));
        let (im, _) = rlu2net::io::read_nifti::<f32>(&img).unwrap();
        assert_eq!(lab.shape(), im.shape(), "{n}");
    }
}

fn one_line_error(out: Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success(), "succeeded: {err}");
    assert_eq!(err.lines().count(), 1, "not one line:\n{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert!(err.contains(needle), "'{needle}' missing: {err}");
}

#[test]
fn damaged_runs_and_configurations_get_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let data = synth(d.path(), 2, 1);
    let run = d.path().join("run");
    ok(train(&data, &run, &config(d.path(), 1)));
    let infer = |run: &Path| {
        rlu2net()
            .args(["infer", "--model"])
            .arg(run)
            .arg("--ct")
            .arg(data.join("ct_test/ct_test_2001_image.nii.gz"))
            .arg("--out")
            .arg(d.path().join("p.nii.gz"))
            .output()
            .unwrap()
    };
    ok(infer(&run));

    // a config.toml with an unknown key
    let bad_key = d.path().join("bad_key.toml");
    std::fs::write(&bad_key, "preset = \"tiny\"\n[model]\nk_sell = 2\n").unwrap();
    one_line_error(train(&data, &d.path().join("x"), &bad_key), "model.k_sell");

    // a checkpoint from another configuration
    let other = d.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["plan.json", "checkpoints/last/model.bpk"] {
        std::fs::create_dir_all(other.join(f).parent().unwrap()).unwrap();
        std::fs::copy(run.join(f), other.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let text = text.replacen("feature_size = 8", "feature_size = 16", 1);
    assert!(text.contains("feature_size = 16"));
    std::fs::write(other.join("config.toml"), text).unwrap();
    one_line_error(infer(&other), "do not fit");

    // a truncated model.bpk
    let m = run.join("checkpoints/last/model.bpk");
    let bytes = std::fs::read(&m).unwrap();
    std::fs::write(&m, &bytes[..bytes.len() / 3]).unwrap();
    let _ = std::fs::remove_dir_all(run.join("checkpoints/best"));
    one_line_error(infer(&run), "truncated or damaged");
}
