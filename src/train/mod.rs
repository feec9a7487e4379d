//! `rlu2net train`: the training loop (METHOD.md §1, §3, §4), checkpoints and logs.

pub mod config;
pub mod plots;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use self::config::{OptimConfig, TrainConfig};
use crate::data::labels::STRUCTURES;
use crate::data::layout::{Dataset, Modality, Split, discover};
use crate::data::sampler::{Batch, Pairing, Prefetcher};
use crate::data::synth::render::derive_seed;
use crate::io::write_atomically;
use crate::loss::{Agwd, align_loss, ce_loss, dice_loss, one_hot};
use crate::model::{ActionMode, RlU2Net};
use crate::preprocess::cache::{PreparedCase, prepare_case};
use crate::preprocess::{CtStats, fit_ct_stats, resampled_shape, sample_foreground};
use crate::rl::{PpoAgent, UpdateStats};

/// Everything a run needs besides the configuration.
pub struct TrainOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    pub resume: bool,
    pub device: Device,
    /// Show a progress bar.
    pub progress: bool,
    /// Stop (with a checkpoint) once this many steps are done, as an interruption
    /// would; the schedule stays that of the whole run.
    pub stop_after_steps: Option<u64>,
}

/// The loop's own state, saved with every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoopState {
    /// Steps completed.
    pub step: u64,
    pub agwd_dice: Agwd,
    pub agwd_ce: Agwd,
    pub best_val_dice: Option<f64>,
    pub best_epoch: Option<u64>,
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub best_val_dice: Option<f64>,
    pub stopped_early: bool,
}

/// Shape and spacing from a NIfTI header alone (decompressing only its first bytes).
fn header_grid(path: &Path) -> anyhow::Result<([usize; 3], [f64; 3])> {
    use std::io::Read;
    let f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut head = Vec::with_capacity(352);
    let mut magic = [0u8; 2];
    let mut r = std::io::BufReader::new(f);
    r.read_exact(&mut magic)
        .with_context(|| format!("{}: empty file", path.display()))?;
    let rest = std::io::Read::chain(&magic[..], r);
    if magic == [0x1f, 0x8b] {
        flate2::read::MultiGzDecoder::new(rest)
            .take(348)
            .read_to_end(&mut head)?;
    } else {
        rest.take(348).read_to_end(&mut head)?;
    }
    anyhow::ensure!(
        head.len() == 348,
        "{}: not a NIfTI-1 file (header too short)",
        path.display()
    );
    let h = nifti::NiftiHeader::from_reader(&head[..])
        .map_err(|e| anyhow::anyhow!("{}: invalid NIfTI header: {e}", path.display()))?;
    Ok((
        [h.dim[1] as usize, h.dim[2] as usize, h.dim[3] as usize],
        [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64],
    ))
}

/// The checks that must pass before any work starts.
fn preflight(cfg: &TrainConfig, ds: &Dataset, out: &Path) -> anyhow::Result<()> {
    let ct = ds.select(Modality::Ct, Split::Train);
    let mr = ds.select(Modality::Mr, Split::Train);
    anyhow::ensure!(
        !(ct.is_empty() && mr.is_empty()),
        "{}: no training cases found (expected ct_train/ct_train_1001_image.nii.gz … and mr_train/…); make a data set with `rlu2net synth --out DIR`",
        ds.root.display()
    );
    anyhow::ensure!(
        !ct.is_empty() && !mr.is_empty(),
        "{}: RL-U²Net trains on both modalities, but only {} training cases were found; add the {} cases (ct_train/ and mr_train/), or duplicate the available modality's folder under the other name to train single-modality self-pairing only",
        ds.root.display(),
        if ct.is_empty() { "MRI" } else { "CT" },
        if ct.is_empty() { "CT" } else { "MRI" }
    );
    for c in ct.iter().chain(mr.iter()) {
        anyhow::ensure!(
            c.label.is_some(),
            "{}: training case without a label file ({}_label.nii.gz)",
            c.image.display(),
            c.name()
        );
    }
    let p = cfg.model.patch;
    let target = [cfg.preprocess.spacing; 3];
    let mut fits = false;
    let mut largest = [0usize; 3];
    for c in ct.iter().chain(mr.iter()) {
        let (shape, spacing) = header_grid(&c.image)?;
        // the RAS grid permutes axes, which does not change whether a cube fits
        let s = resampled_shape(shape, spacing, target);
        if s.iter().all(|&n| n >= p) {
            fits = true;
        }
        if s.iter().product::<usize>() > largest.iter().product::<usize>() {
            largest = s;
        }
    }
    anyhow::ensure!(
        fits,
        "the {p}³ patch is larger than every training volume after resampling to {} mm (largest: {:?} voxels); use a smaller preset or a finer `preprocess.spacing`",
        cfg.preprocess.spacing,
        largest
    );
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    let probe = out.join(".write-test");
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("{}: the output folder is not writable", out.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Append-only `metrics.jsonl`.
struct Metrics {
    file: std::fs::File,
}

impl Metrics {
    /// Open for appending; on resume drop lines past the checkpoint's step so the
    /// file matches an uninterrupted run's.
    fn open(path: &Path, keep_until_step: Option<u64>) -> anyhow::Result<Metrics> {
        if let Some(step) = keep_until_step
            && path.exists()
        {
            let text = std::fs::read_to_string(path)?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_none_or(|s| s <= step)
                })
                .collect();
            let mut out = kept.join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            write_atomically(path, out.as_bytes())?;
        } else if keep_until_step.is_none() {
            let _ = std::fs::remove_file(path);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(Metrics { file })
    }

    fn write(&mut self, v: &serde_json::Value) -> anyhow::Result<()> {
        writeln!(self.file, "{v}")?;
        Ok(())
    }
}

fn tensor5(v: &[f32], b: usize, p: usize, device: &Device) -> Tensor<5> {
    Tensor::from_data(TensorData::new(v.to_vec(), [b, 1, p, p, p]), device)
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
}

/// Mean cosine similarity of two maps over channels, averaged over voxels (no gradient).
fn cosine_similarity(a: &Tensor<5>, b: &Tensor<5>) -> f64 {
    let a = a.clone().detach();
    let b = b.clone().detach();
    let dot = (a.clone() * b.clone()).sum_dim(1);
    let na = a.powi_scalar(2).sum_dim(1).sqrt();
    let nb = b.powi_scalar(2).sum_dim(1).sqrt();
    (dot / (na * nb + 1e-8)).mean().into_scalar::<f32>() as f64
}

/// Squared global gradient norm, then scaling, over every float parameter.
struct GradNorm<'a> {
    grads: &'a GradientsParams,
    sq: f64,
}
impl ModuleVisitor for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.sq += g.powi_scalar(2).sum().into_scalar::<f32>() as f64;
        }
    }
}
struct GradScale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}
impl ModuleVisitor for GradScale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Clip the global norm of all gradients (Burn's own clipping works per tensor).
fn clip_global_norm(model: &RlU2Net, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut n = GradNorm { grads, sq: 0.0 };
    model.visit(&mut n);
    let norm = n.sq.sqrt();
    if norm > max_norm && norm.is_finite() {
        let mut s = GradScale {
            grads,
            factor: max_norm / norm,
        };
        model.visit(&mut s);
    }
    norm
}

/// Checkpoint files: model, optimiser, agents, loop state.
fn save_checkpoint(
    dir: &Path,
    model: &RlU2Net,
    optim: &ModuleOptimizer,
    agents: &[PpoAgent],
    state: &LoopState,
) -> anyhow::Result<()> {
    let parent = dir.parent().context("checkpoint folder has a parent")?;
    std::fs::create_dir_all(parent)?;
    let name = dir
        .file_name()
        .context("checkpoint folder name")?
        .to_string_lossy()
        .to_string();
    let tmp = parent.join(format!(".{name}.partial"));
    let old = parent.join(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("cannot encode the model: {e:?}"))?;
    std::fs::write(tmp.join("model.bpk"), &model_bytes[..])?;
    let optim_bytes = optim
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("cannot encode the optimiser: {e:?}"))?;
    std::fs::write(tmp.join("optimizer.bpk"), &optim_bytes[..])?;
    let agents_json: Vec<serde_json::Value> = agents
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    std::fs::write(
        tmp.join("agents.json"),
        serde_json::to_string(&agents_json)?,
    )?;
    std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)?;
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(&tmp, dir)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Load a model's weights from a checkpoint folder.
pub fn load_model(dir: &Path, model: RlU2Net) -> anyhow::Result<RlU2Net> {
    let path = dir.join("model.bpk");
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| anyhow::anyhow!("{}: not a model checkpoint: {e:?}", path.display()))?;
    model.try_load_record(record).map_err(|e| {
        anyhow::anyhow!(
            "{}: does not fit this model configuration: {e:?}",
            path.display()
        )
    })
}

fn load_checkpoint(
    dir: &Path,
    model: RlU2Net,
    optim: ModuleOptimizer,
) -> anyhow::Result<(RlU2Net, ModuleOptimizer, Vec<PpoAgent>, LoopState)> {
    let model = load_model(dir, model)?;
    let ob = std::fs::read(dir.join("optimizer.bpk"))?;
    let optim = optim
        .from_bytes(Bytes::from_bytes_vec(ob))
        .map_err(|e| anyhow::anyhow!("{}: optimiser state: {e:?}", dir.display()))?;
    let agents: Vec<PpoAgent> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("agents.json"))?)?;
    let state: LoopState = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)?;
    Ok((model, optim, agents, state))
}

/// Per-structure Dice of class maps (hard), structures absent from both skipped (NaN).
pub fn hard_dice(pred: &[u8], truth: &[u8]) -> [f64; 7] {
    let mut inter = [0usize; 8];
    let mut np = [0usize; 8];
    let mut nt = [0usize; 8];
    for (&p, &t) in pred.iter().zip(truth) {
        np[p as usize] += 1;
        nt[t as usize] += 1;
        if p == t {
            inter[p as usize] += 1;
        }
    }
    std::array::from_fn(|s| {
        let c = s + 1;
        if np[c] + nt[c] == 0 {
            f64::NAN
        } else {
            2.0 * inter[c] as f64 / (np[c] + nt[c]) as f64
        }
    })
}

fn argmax_classes(logits: Tensor<5>) -> Vec<u8> {
    logits
        .argmax(1)
        .into_data()
        .iter::<i64>()
        .map(|c| c as u8)
        .collect()
}

/// Whole-patch validation: one patch at the foreground centre of each validation
/// pair, deterministic rotations; mean Dice per structure for each modality.
fn validate(
    model: &RlU2Net,
    ct: &[PreparedCase],
    mr: &[PreparedCase],
    patch: usize,
    device: &Device,
) -> ([f64; 7], [f64; 7]) {
    use crate::data::sampler::{AugmentConfig, SamplerConfig, sample_batch};
    let cfg = SamplerConfig {
        batch_size: 1,
        foreground_fraction: 1.0,
        p_self_pair: 0.0,
        augment: AugmentConfig {
            p_flip: 0.0,
            p_rotate: 0.0,
            p_scale: 0.0,
            p_gamma: 0.0,
            p_noise: 0.0,
            ..AugmentConfig::default()
        },
    };
    let n = ct.len().min(mr.len()).max(1);
    let mut sums = [[0.0f64; 7]; 2];
    let mut counts = [[0usize; 7]; 2];
    for i in 0..n {
        let c = std::slice::from_ref(&ct[i % ct.len()]);
        let m = std::slice::from_ref(&mr[i % mr.len()]);
        let b = sample_batch(c, m, Pairing::Index, &cfg, patch, 0x7a1, i as u64);
        let out = model.forward::<rand_chacha::ChaCha8Rng>(
            tensor5(&b.ct, 1, patch, device),
            tensor5(&b.mr, 1, patch, device),
            &mut ActionMode::TopK,
        );
        for (k, (logits, truth)) in [(out.logits_ct, &b.ct_labels), (out.logits_mr, &b.mr_labels)]
            .into_iter()
            .enumerate()
        {
            let d = hard_dice(&argmax_classes(logits.detach()), truth);
            for s in 0..7 {
                if d[s].is_finite() {
                    sums[k][s] += d[s];
                    counts[k][s] += 1;
                }
            }
        }
    }
    let mean = |k: usize| {
        std::array::from_fn(|s| {
            if counts[k][s] > 0 {
                sums[k][s] / counts[k][s] as f64
            } else {
                f64::NAN
            }
        })
    };
    (mean(0), mean(1))
}

fn nanmean(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().cloned().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        f64::NAN
    } else {
        f.iter().sum::<f64>() / f.len() as f64
    }
}

fn redraw_plots(out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    let mut loss = Vec::new();
    let mut val_ct = Vec::new();
    let mut val_mr = Vec::new();
    let mut reward: Vec<Vec<(f64, f64)>> = vec![Vec::new(); 4];
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("step") => loss.push((
                v["step"].as_f64().unwrap_or(0.0),
                v["loss"].as_f64().unwrap_or(f64::NAN),
            )),
            Some("epoch") => {
                let e = v["epoch"].as_f64().unwrap_or(0.0);
                if let Some(d) = v.get("val_mean_dice_ct").and_then(|d| d.as_f64()) {
                    val_ct.push((e, d));
                }
                if let Some(d) = v.get("val_mean_dice_mr").and_then(|d| d.as_f64()) {
                    val_mr.push((e, d));
                }
            }
            Some("ppo") => {
                let m = v["module"].as_u64().unwrap_or(0) as usize;
                if m < 4 {
                    reward[m].push((
                        v["update"].as_f64().unwrap_or(0.0),
                        v["mean_reward"].as_f64().unwrap_or(f64::NAN),
                    ));
                }
            }
            _ => {}
        }
    }
    let w = (loss.len() / 20).max(1);
    plots::line_plot(
        &out.join("loss_curves.png"),
        "training loss (eq. 20)",
        "step",
        "loss",
        &[
            ("loss".into(), loss.clone()),
            (format!("moving average ({w})"), plots::smooth(&loss, w)),
        ],
    )?;
    if !val_ct.is_empty() || !val_mr.is_empty() {
        plots::line_plot(
            &out.join("val_dice.png"),
            "validation Dice (whole patch)",
            "epoch",
            "mean Dice",
            &[("CT".into(), val_ct), ("MRI".into(), val_mr)],
        )?;
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = reward
        .into_iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(m, r)| (format!("module {} (1/{})", m + 1, 2 << m), r))
        .collect();
    plots::line_plot(
        &out.join("ppo_reward.png"),
        "PPO mean reward per update",
        "update",
        "reward",
        &series,
    )
}

/// Fit (or load) the CT statistics of a run.
fn plan(cfg: &TrainConfig, ds: &Dataset, out: &Path) -> anyhow::Result<CtStats> {
    let path = out.join("plan.json");
    #[derive(Serialize, Deserialize)]
    struct Plan {
        preprocess: crate::preprocess::PreprocessConfig,
        ct_stats: CtStats,
    }
    if let Ok(s) = std::fs::read_to_string(&path)
        && let Ok(p) = serde_json::from_str::<Plan>(&s)
        && p.preprocess == cfg.preprocess
    {
        return Ok(p.ct_stats);
    }
    let cases = ds.select(Modality::Ct, Split::Train);
    let samples: Vec<Vec<f32>> = cases
        .par_iter()
        .enumerate()
        .map(|(i, c)| -> anyhow::Result<Vec<f32>> {
            let (img, _) = crate::io::read_nifti::<f32>(&c.image)?;
            let lp = c.label.as_ref().context("training case has a label")?;
            let (lab, _) = crate::io::read_nifti::<f32>(lp)?;
            let cls = crate::data::labels::labels_to_classes(&lab, lp)?;
            anyhow::ensure!(
                cls.shape() == img.shape(),
                "{}: label shape differs from the image's",
                lp.display()
            );
            Ok(sample_foreground(
                &img.data,
                &cls.data,
                cfg.preprocess.samples_per_case,
                derive_seed(cfg.seed, &[i as u64]),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let stats = fit_ct_stats(samples.concat(), &cfg.preprocess)?;
    write_atomically(
        &path,
        serde_json::to_string_pretty(&Plan {
            preprocess: cfg.preprocess.clone(),
            ct_stats: stats.clone(),
        })?
        .as_bytes(),
    )?;
    Ok(stats)
}

/// Train (or resume) a run.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> anyhow::Result<TrainSummary> {
    let t0 = Instant::now();
    cfg.model.validate()?;
    let ds = discover(&opts.data)?;
    preflight(cfg, &ds, &opts.out)?;
    let out = &opts.out;
    write_atomically(&out.join("config.toml"), cfg.to_toml().as_bytes())?;

    // plan and preprocess
    let ct_stats = plan(cfg, &ds, out)?;
    let cache = out.join("preprocessed");
    let prep = |m: Modality| -> anyhow::Result<Vec<PreparedCase>> {
        ds.select(m, Split::Train)
            .par_iter()
            .map(|c| prepare_case(c, &cfg.preprocess, Some(&ct_stats), &cache))
            .collect()
    };
    let ct_all = prep(Modality::Ct)?;
    let mr_all = prep(Modality::Mr)?;
    let split = |v: Vec<PreparedCase>| -> (Vec<PreparedCase>, Vec<PreparedCase>) {
        let n = v.len();
        if n < 2 {
            return (v.clone(), v);
        }
        let n_val = ((n as f64 * cfg.val_fraction).round() as usize).clamp(1, n - 1);
        let (a, b) = v.split_at(n - n_val);
        (a.to_vec(), b.to_vec())
    };
    let (ct_train, ct_val) = split(ct_all);
    let (mr_train, mr_val) = split(mr_all);
    let paired_set = crate::data::synth::Manifest::read(&opts.data.join("manifest.json"))
        .map(|m| m.options.paired)
        .unwrap_or(false);
    let pairing = cfg.pairing.unwrap_or(if paired_set {
        Pairing::Index
    } else {
        Pairing::Random
    });

    // model, optimiser, agents
    let device = opts.device.clone().autodiff();
    // the weights' initialisation follows the run's seed; the device's generator is
    // shared by the process, so two runs in one process take turns
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let mut model = {
        let _turn = INIT.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(derive_seed(cfg.seed, &[0x11a7]));
        let m = RlU2Net::new(&cfg.model, &device);
        // parameters are initialised lazily: draw them now, in turn
        struct Touch;
        impl ModuleVisitor for Touch {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                let _ = p.val();
            }
        }
        m.visit(&mut Touch);
        m
    };
    let mut optim = AdamWConfig::new()
        .with_weight_decay(cfg.optim.weight_decay as f32)
        .init();
    let n_modules = model.align.len();
    let mut agents: Vec<PpoAgent> = (0..n_modules)
        .map(|m| PpoAgent::new(cfg.ppo.clone(), derive_seed(cfg.seed, &[0xa9e, m as u64])))
        .collect();
    let mut state = LoopState {
        step: 0,
        agwd_dice: Agwd::default(),
        agwd_ce: Agwd::default(),
        best_val_dice: None,
        best_epoch: None,
    };
    let last_dir = out.join("checkpoints").join("last");
    let best_dir = out.join("checkpoints").join("best");
    if opts.resume {
        anyhow::ensure!(
            last_dir.join("state.json").exists(),
            "{}: no checkpoint to resume from",
            last_dir.display()
        );
        let (m, o, a, s) = load_checkpoint(&last_dir, model, optim)?;
        model = m;
        optim = o;
        agents = a;
        state = s;
        anyhow::ensure!(
            agents.len() == n_modules,
            "the checkpoint's agents do not match the configuration"
        );
    } else {
        let thetas: Vec<Vec<f32>> = agents.iter().map(|a| a.theta_f32()).collect();
        model = model.with_thetas(&thetas);
    }
    let mut metrics = Metrics::open(
        &out.join("metrics.jsonl"),
        opts.resume.then_some(state.step),
    )?;

    let total = cfg.total_steps();
    let spe = cfg.steps_per_epoch.max(1);
    let p = cfg.model.patch;
    let b = cfg.sampler.batch_size;
    let k = cfg.model.num_classes;
    let prefetch = Prefetcher::start(
        Arc::new(ct_train.clone()),
        Arc::new(mr_train.clone()),
        pairing,
        cfg.sampler.clone(),
        p,
        cfg.seed,
        state.step,
        total,
    );
    let pb = if opts.progress {
        let pb = indicatif::ProgressBar::new(total);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "train [{bar:25}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_position(state.step);
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut first_loss = None;
    let mut last_loss = None;
    let mut stopped_early = false;
    let deadline = (cfg.max_minutes > 0.0).then_some(cfg.max_minutes * 60.0);
    while state.step < total {
        let (step, batch): (u64, Batch) = prefetch.next().context("the data loader stopped")?;
        debug_assert_eq!(step, state.step);
        let epoch = step / spe;
        let ct = tensor5(&batch.ct, b, p, &device);
        let mr = tensor5(&batch.mr, b, p, &device);
        let t_ct = one_hot(&batch.ct_labels, b, k, [p; 3], &device);
        let t_mr = one_hot(&batch.mr_labels, b, k, [p; 3], &device);
        let acts: Vec<(Vec<usize>, Vec<f32>)> =
            agents.iter_mut().map(|a| a.act(cfg.model.k_sel)).collect();
        let fixed: Vec<Vec<usize>> = acts.iter().map(|a| a.0.clone()).collect();
        let out_fw =
            model.forward::<rand_chacha::ChaCha8Rng>(ct, mr, &mut ActionMode::Fixed(&fixed));
        let dice_ct = dice_loss(out_fw.logits_ct.clone(), t_ct.clone(), cfg.loss.dice_smooth);
        let dice_mr = dice_loss(out_fw.logits_mr.clone(), t_mr.clone(), cfg.loss.dice_smooth);
        let ce_ct = ce_loss(out_fw.logits_ct, t_ct);
        let ce_mr = ce_loss(out_fw.logits_mr, t_mr);
        let (v_dice_ct, v_dice_mr, v_ce_ct, v_ce_mr) = (
            scalar(&dice_ct),
            scalar(&dice_mr),
            scalar(&ce_ct),
            scalar(&ce_mr),
        );
        let (l_dice, l_ce) = if cfg.loss.no_agwd {
            (dice_ct + dice_mr, ce_ct + ce_mr)
        } else {
            (
                state.agwd_dice.balance(dice_ct, dice_mr, &cfg.loss),
                state.agwd_ce.balance(ce_ct, ce_mr, &cfg.loss),
            )
        };
        let mut loss = l_dice + l_ce;
        let mut align_total = 0.0;
        let mut s_sim = Vec::with_capacity(n_modules);
        if !out_fw.align.is_empty() {
            let mut align: Option<Tensor<1>> = None;
            for a in &out_fw.align {
                let mut sims = vec![cosine_similarity(&a.aligned_ct, &a.primary_ct)];
                let mut l = align_loss(a.aligned_ct.clone(), a.primary_ct.clone(), &cfg.loss);
                if let (Some(am), Some(pm)) = (&a.aligned_mr, &a.primary_mr) {
                    sims.push(cosine_similarity(am, pm));
                    l = l + align_loss(am.clone(), pm.clone(), &cfg.loss);
                }
                s_sim.push(sims.iter().sum::<f64>() / sims.len() as f64);
                align = Some(match align {
                    None => l,
                    Some(x) => x + l,
                });
            }
            let align = align.expect("modules present");
            align_total = scalar(&align);
            if !cfg.loss.no_align_loss {
                loss = loss + align.mul_scalar(cfg.loss.lambda_align);
            }
        }
        let v_loss = scalar(&loss);
        anyhow::ensure!(
            v_loss.is_finite(),
            "the loss became {v_loss} at step {step}; lower optim.lr"
        );
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let grad_norm = clip_global_norm(&model, &mut grads, cfg.optim.grad_clip_norm);
        let lr = cfg.optim.lr_at(step, total);
        model = optim.step(lr, model, grads);

        // PPO: reward of the actions just taken (eqs 8–9)
        let l_dice_mean = (v_dice_ct + v_dice_mr) / 2.0;
        let progress_frac = epoch as f64 / cfg.epochs.max(1) as f64;
        let mut rewards = Vec::with_capacity(n_modules);
        let mut updated = false;
        for (m, agent) in agents.iter_mut().enumerate() {
            let r = (1.0 - l_dice_mean) + s_sim[m];
            rewards.push(r);
            agent.record(
                &acts[m].0,
                &acts[m].1,
                r,
                [1.0 - l_dice_mean, s_sim[m], progress_frac],
            );
            if let Some(u) = agent.maybe_update() {
                updated = true;
                log_ppo(&mut metrics, step, m, &u)?;
            }
        }
        if updated {
            let thetas: Vec<Vec<f32>> = agents.iter().map(|a| a.theta_f32()).collect();
            model = model.with_thetas(&thetas);
        }
        state.step = step + 1;
        first_loss.get_or_insert(v_loss);
        last_loss = Some(v_loss);
        metrics.write(&serde_json::json!({
            "kind": "step", "epoch": epoch, "step": step, "loss": v_loss,
            "dice_ct": v_dice_ct, "dice_mr": v_dice_mr, "ce_ct": v_ce_ct, "ce_mr": v_ce_mr,
            "align": align_total, "s_sim": s_sim, "reward": rewards, "lr": lr, "grad_norm": grad_norm,
            "actions": fixed,
        }))?;
        pb.set_position(state.step);
        pb.set_message(format!(
            "loss {v_loss:.3} dice {:.3}/{:.3} reward {:.3}",
            1.0 - v_dice_ct,
            1.0 - v_dice_mr,
            rewards.first().copied().unwrap_or(f64::NAN)
        ));

        let out_of_time = deadline.is_some_and(|d| t0.elapsed().as_secs_f64() > d)
            || opts.stop_after_steps.is_some_and(|n| state.step >= n);
        let epoch_end = state.step.is_multiple_of(spe) || state.step == total;
        if epoch_end || out_of_time {
            let epoch_done = state.step.div_ceil(spe);
            let mut line =
                serde_json::json!({"kind": "epoch", "epoch": epoch_done, "step": state.step - 1});
            if epoch_end
                && (epoch_done.is_multiple_of(cfg.val_every.max(1))
                    || state.step == total
                    || out_of_time)
            {
                let (d_ct, d_mr) = validate(&model, &ct_val, &mr_val, p, &device);
                let (m_ct, m_mr) = (nanmean(&d_ct), nanmean(&d_mr));
                let named = |d: &[f64; 7]| -> serde_json::Map<String, serde_json::Value> {
                    STRUCTURES
                        .iter()
                        .zip(d)
                        .map(|(s, v)| {
                            (
                                s.to_string(),
                                serde_json::json!(v.is_finite().then_some(*v)),
                            )
                        })
                        .collect()
                };
                line["val_dice_ct"] = serde_json::Value::Object(named(&d_ct));
                line["val_dice_mr"] = serde_json::Value::Object(named(&d_mr));
                line["val_mean_dice_ct"] = serde_json::json!(m_ct.is_finite().then_some(m_ct));
                line["val_mean_dice_mr"] = serde_json::json!(m_mr.is_finite().then_some(m_mr));
                let score = nanmean(&[m_ct, m_mr]);
                if score.is_finite() && state.best_val_dice.is_none_or(|b| score > b) {
                    state.best_val_dice = Some(score);
                    state.best_epoch = Some(epoch_done);
                    save_checkpoint(&best_dir, &model, &optim, &agents, &state)?;
                }
            }
            metrics.write(&line)?;
            save_checkpoint(&last_dir, &model, &optim, &agents, &state)?;
            if let Err(e) = redraw_plots(out) {
                tracing::warn!("plots: {e:#}");
            }
        }
        if out_of_time && state.step < total {
            stopped_early = true;
            break;
        }
    }
    pb.finish();
    Ok(TrainSummary {
        steps: state.step,
        first_loss,
        last_loss,
        best_val_dice: state.best_val_dice,
        stopped_early,
    })
}

fn log_ppo(metrics: &mut Metrics, step: u64, module: usize, u: &UpdateStats) -> anyhow::Result<()> {
    tracing::info!("ppo module {module}: {}", u.line());
    let mut v = serde_json::to_value(u)?;
    v["kind"] = "ppo".into();
    v["module"] = module.into();
    v["step"] = step.into();
    metrics.write(&v)
}
