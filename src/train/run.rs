//! `rlu2net train`: the training loop (docs/method.md §1, §3, §4).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rayon::prelude::*;
use serde::Serialize;

use super::alignment::alignment_report;
use super::clip::clip_global_norm;
use super::log::{Metrics, log_ppo, redraw_plots};
use super::reward::rotation_scores;
use super::validate::{nanmean, validate};
use crate::checkpoint::{LoopState, load_checkpoint, save_checkpoint};
use crate::config::TrainConfig;
use crate::data::labels::STRUCTURES;
use crate::data::layout::{Dataset, Modality, Split, discover};
use crate::data::sampler::{Batch, Pairing, Prefetcher};
use crate::data::synth::render::derive_seed;
use crate::geometry::{SignedPerm, cube_rotations};
use crate::infer::Predictor;
use crate::io::header::header_grid;
use crate::io::write_atomically;
use crate::loss::{Agwd, align_loss, ce_loss, dice_loss, one_hot};
use crate::model::{ActionMode, RlU2Net};
use crate::preprocess::cache::{PreparedCase, prepare_case};
use crate::preprocess::plan::plan;
use crate::preprocess::{CtStats, resampled_shape};
use crate::rl::PpoAgent;

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

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub best_val_dice: Option<f64>,
    pub stopped_early: bool,
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

fn tensor5(v: &[f32], b: usize, p: usize, device: &Device) -> Tensor<5> {
    Tensor::from_data(TensorData::new(v.to_vec(), [b, 1, p, p, p]), device)
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
}

/// The prepared training and validation cases of both modalities.
struct Cases {
    ct_train: Vec<PreparedCase>,
    ct_val: Vec<PreparedCase>,
    mr_train: Vec<PreparedCase>,
    mr_val: Vec<PreparedCase>,
}

fn prepare_cases(
    cfg: &TrainConfig,
    ds: &Dataset,
    stats: &CtStats,
    out: &Path,
) -> anyhow::Result<Cases> {
    let cache = out.join("preprocessed");
    let prep = |m: Modality| -> anyhow::Result<Vec<PreparedCase>> {
        ds.select(m, Split::Train)
            .par_iter()
            .map(|c| prepare_case(c, &cfg.preprocess, Some(stats), &cache))
            .collect()
    };
    let split = |v: Vec<PreparedCase>| -> (Vec<PreparedCase>, Vec<PreparedCase>) {
        let n = v.len();
        if n < 2 {
            return (v.clone(), v);
        }
        let n_val = ((n as f64 * cfg.val_fraction).round() as usize).clamp(1, n - 1);
        let (a, b) = v.split_at(n - n_val);
        (a.to_vec(), b.to_vec())
    };
    let (ct_train, ct_val) = split(prep(Modality::Ct)?);
    let (mr_train, mr_val) = split(prep(Modality::Mr)?);
    Ok(Cases {
        ct_train,
        ct_val,
        mr_train,
        mr_val,
    })
}

/// A new network with its weights drawn from the run's seed: always on the CPU (whose
/// generator is the same everywhere), then moved to `device`, so that one seed gives the
/// same initial weights on every device.
fn init_model(cfg: &TrainConfig, device: &Device) -> RlU2Net {
    // the generator is shared by the process, so two runs in one process take turns
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let cpu = Device::flex();
    cpu.seed(derive_seed(cfg.seed, &[0x11a7]));
    let cpu = match device.gradient_checkpointing_strategy() {
        Some(_) => cpu.autodiff(),
        None => cpu,
    };
    let m = RlU2Net::new(&cfg.model, &cpu);
    // parameters are initialised lazily: draw them now, in turn
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let _ = p.val();
        }
    }
    m.visit(&mut Touch);
    if device == &cpu { m } else { m.fork(device) }
}

/// The MRI pose offset a SynthWHS data set records, if any.
fn known_pose(data: &Path) -> Option<SignedPerm> {
    let m = crate::data::synth::Manifest::read(&data.join("manifest.json")).ok()?;
    cube_rotations().get(m.options.mr_pose).copied()
}

/// What one training step measured.
struct StepResult {
    loss: f64,
    dice: [f64; 2],
    ce: [f64; 2],
    align: f64,
    /// Per module, the mean alignment similarity of the rotations taken (NaN when self-paired).
    s_sim: Vec<f64>,
    /// Per module, the reward of each rotation taken (empty when self-paired).
    rewards: Vec<Vec<f64>>,
    actions: Vec<Vec<usize>>,
    grad_norm: f64,
}

/// The mutable pieces of a run that a step advances.
struct Trainer<'a> {
    cfg: &'a TrainConfig,
    device: Device,
    model: RlU2Net,
    optim: ModuleOptimizer,
    agents: Vec<PpoAgent>,
    state: LoopState,
}

impl Trainer<'_> {
    /// Forward, losses (eq. 20), backward, clipping and the optimiser step; then the
    /// PPO transitions of the rotations taken (eqs 8–9), one reward per rotation.
    fn step(
        &mut self,
        batch: &Batch,
        step: u64,
        lr: f64,
        progress_frac: f64,
    ) -> anyhow::Result<StepResult> {
        let cfg = self.cfg;
        let (b, p, k) = (
            cfg.sampler.batch_size,
            cfg.model.patch,
            cfg.model.num_classes,
        );
        let dev = &self.device;
        let ct = tensor5(&batch.ct, b, p, dev);
        let mr = tensor5(&batch.mr, b, p, dev);
        let t_ct = one_hot(&batch.ct_labels, b, k, [p; 3], dev);
        let t_mr = one_hot(&batch.mr_labels, b, k, [p; 3], dev);
        let acts: Vec<(Vec<usize>, Vec<f32>)> = if batch.self_paired {
            Vec::new()
        } else {
            self.agents
                .iter_mut()
                .map(|a| a.act(cfg.model.k_sel))
                .collect()
        };
        let fixed: Vec<Vec<usize>> = acts.iter().map(|a| a.0.clone()).collect();
        let mut mode = if batch.self_paired {
            ActionMode::Identity
        } else {
            ActionMode::Fixed(&fixed)
        };
        let out = self
            .model
            .forward::<rand_chacha::ChaCha8Rng>(ct, mr, &mut mode);
        let dice_ct = dice_loss(out.logits_ct.clone(), t_ct.clone(), cfg.loss.dice_smooth);
        let dice_mr = dice_loss(out.logits_mr.clone(), t_mr.clone(), cfg.loss.dice_smooth);
        let ce_ct = ce_loss(out.logits_ct, t_ct);
        let ce_mr = ce_loss(out.logits_mr, t_mr);
        let dice = [scalar(&dice_ct), scalar(&dice_mr)];
        let ce = [scalar(&ce_ct), scalar(&ce_mr)];
        let (l_dice, l_ce) = if cfg.loss.no_agwd {
            (dice_ct + dice_mr, ce_ct + ce_mr)
        } else {
            (
                self.state.agwd_dice.balance(dice_ct, dice_mr, &cfg.loss),
                self.state.agwd_ce.balance(ce_ct, ce_mr, &cfg.loss),
            )
        };
        let mut loss = l_dice + l_ce;
        let mut align_total = 0.0;
        if !out.align.is_empty() {
            let align = out
                .align
                .iter()
                .map(|a| {
                    let mut l = align_loss(a.aligned_ct.clone(), a.primary_ct.clone(), &cfg.loss);
                    if let (Some(am), Some(pm)) = (&a.aligned_mr, &a.primary_mr) {
                        l = l + align_loss(am.clone(), pm.clone(), &cfg.loss);
                    }
                    l
                })
                .reduce(|x, y| x + y)
                .expect("modules present");
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
        // the probe's scores (no agents with `no_rl_xalign`: no probe pass) need only the
        // weights before this step's update, so they are computed while backward runs
        let probe_scores = || -> Vec<Vec<f64>> {
            match (&batch.probe, batch.self_paired) {
                (Some(probe), false) if !self.agents.is_empty() => {
                    let inner = self.device.clone().inner();
                    let s = rotation_scores(&self.model.valid(), probe, p, &inner);
                    fixed
                        .iter()
                        .map(|acts| acts.iter().map(|&a| s[a]).collect())
                        .collect()
                }
                _ => Vec::new(),
            }
        };
        let (sims, raw_grads) = rayon::join(probe_scores, || loss.backward());
        let mut grads = GradientsParams::from_grads(raw_grads, &self.model);
        let grad_norm = clip_global_norm(&self.model, &mut grads, cfg.optim.grad_clip_norm);
        self.model = self.optim.step(lr, self.model.clone(), grads);

        let l_dice_mean = (dice[0] + dice[1]) / 2.0;
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        let mut rewards = Vec::with_capacity(sims.len());
        for (m, s) in sims.iter().enumerate() {
            let r: Vec<f64> = s.iter().map(|x| (1.0 - l_dice_mean) + x).collect();
            let state = [1.0 - l_dice_mean, mean(s), progress_frac];
            self.agents[m].record(&acts[m].0, &acts[m].1, &r, state);
            rewards.push(r);
        }
        let s_sim = if sims.is_empty() {
            vec![f64::NAN; self.agents.len()]
        } else {
            sims.iter().map(|s| mean(s)).collect()
        };
        Ok(StepResult {
            loss: v_loss,
            dice,
            ce,
            align: align_total,
            s_sim,
            rewards,
            actions: fixed,
            grad_norm,
        })
    }

    /// Run PPO updates that are due; write θ back into the network.
    fn update_agents(&mut self, metrics: &mut Metrics, step: u64) -> anyhow::Result<()> {
        let mut updated = false;
        for (m, agent) in self.agents.iter_mut().enumerate() {
            if let Some(u) = agent.maybe_update() {
                updated = true;
                log_ppo(metrics, step, m, &u)?;
            }
        }
        if updated {
            let thetas: Vec<Vec<f32>> = self.agents.iter().map(|a| a.theta_f32()).collect();
            self.model = self.model.clone().with_thetas(&thetas);
        }
        Ok(())
    }
}

/// The steps of the run's schedule: the configuration's, or — under a time budget —
/// fitted to the budget from the measured time per step (validations and checkpoints
/// included): first once `FIT_AFTER` steps are timed, then again at every epoch end
/// in the first half of the schedule, so that the cosine decay ends when the budget
/// does. The fitted value is part of the checkpointed state.
const FIT_AFTER: u64 = 20;

fn fitted_total(
    cfg: &TrainConfig,
    state: &LoopState,
    loop_start: Instant,
    first_step: u64,
    t0: Instant,
    epoch_end: bool,
) -> Option<u64> {
    let done = state.step.saturating_sub(first_step);
    let due = match state.total_steps {
        None => done >= FIT_AFTER,
        Some(total) => epoch_end && state.step < total / 2,
    };
    if cfg.max_minutes <= 0.0 || !due {
        return None;
    }
    let per_step = loop_start.elapsed().as_secs_f64() / done as f64;
    let left = cfg.max_minutes * 60.0 - t0.elapsed().as_secs_f64();
    // the first fit has not seen a validation yet: keep a tenth of the time for them
    let share = if state.total_steps.is_none() {
        0.9
    } else {
        0.97
    };
    let more = (left * share / per_step).max(0.0) as u64;
    Some((state.step + more).clamp(state.step + 1, cfg.total_steps()))
}

/// The validation line of an epoch: per-structure and mean Dice of both modalities.
fn validation_line(line: &mut serde_json::Value, d_ct: &[f64; 7], d_mr: &[f64; 7]) -> f64 {
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
    let (m_ct, m_mr) = (nanmean(d_ct), nanmean(d_mr));
    line["val_dice_ct"] = serde_json::Value::Object(named(d_ct));
    line["val_dice_mr"] = serde_json::Value::Object(named(d_mr));
    line["val_mean_dice_ct"] = serde_json::json!(m_ct.is_finite().then_some(m_ct));
    line["val_mean_dice_mr"] = serde_json::json!(m_mr.is_finite().then_some(m_mr));
    nanmean(&[m_ct, m_mr])
}

fn progress_bar(show: bool, total: u64, at: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "train [{bar:25}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_position(at);
    pb
}

/// Train (or resume) a run.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> anyhow::Result<TrainSummary> {
    let t0 = Instant::now();
    cfg.model.validate()?;
    let ds = discover(&opts.data)?;
    preflight(cfg, &ds, &opts.out)?;
    let out = &opts.out;
    write_atomically(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let ct_stats = plan(&cfg.preprocess, cfg.seed, &ds, out)?;
    let cases = prepare_cases(cfg, &ds, &ct_stats, out)?;
    let paired_set = crate::data::synth::Manifest::read(&opts.data.join("manifest.json"))
        .map(|m| m.options.paired)
        .unwrap_or(false);
    let pairing = cfg.pairing.unwrap_or(if paired_set {
        Pairing::Index
    } else {
        Pairing::Random
    });
    let pose = known_pose(&opts.data);

    let device = opts.device.clone().autodiff();
    let model = init_model(cfg, &device);
    let n_modules = model.align.len();
    let mut t = Trainer {
        cfg,
        device: device.clone(),
        model,
        optim: AdamWConfig::new()
            .with_weight_decay(cfg.optim.weight_decay as f32)
            .init(),
        agents: (0..n_modules)
            .map(|m| PpoAgent::new(cfg.ppo.clone(), derive_seed(cfg.seed, &[0xa9e, m as u64])))
            .collect(),
        state: LoopState {
            step: 0,
            agwd_dice: Agwd::default(),
            agwd_ce: Agwd::default(),
            best_val_dice: None,
            best_epoch: None,
            total_steps: None,
        },
    };
    let last_dir = out.join("checkpoints").join("last");
    let best_dir = out.join("checkpoints").join("best");
    if opts.resume {
        anyhow::ensure!(
            crate::checkpoint::resolve(&last_dir)
                .join("state.json")
                .exists(),
            "{}: no checkpoint to resume from",
            last_dir.display()
        );
        let (m, o, a, s) = load_checkpoint(&last_dir, t.model.clone(), t.optim)?;
        anyhow::ensure!(
            a.len() == n_modules,
            "the checkpoint's agents do not match the configuration"
        );
        (t.model, t.optim, t.agents, t.state) = (m, o, a, s);
    } else {
        let thetas: Vec<Vec<f32>> = t.agents.iter().map(|a| a.theta_f32()).collect();
        t.model = t.model.clone().with_thetas(&thetas);
    }
    let mut metrics = Metrics::open(
        &out.join("metrics.jsonl"),
        opts.resume.then_some(t.state.step),
    )?;

    let spe = cfg.steps_per_epoch.max(1);
    let prefetch = Prefetcher::start(
        Arc::new(cases.ct_train.clone()),
        Arc::new(cases.mr_train.clone()),
        pairing,
        cfg.sampler.clone(),
        cfg.model.patch,
        cfg.seed,
        t.state.step,
        cfg.total_steps(),
    );
    let pb = progress_bar(
        opts.progress,
        t.state.total_steps.unwrap_or(cfg.total_steps()),
        t.state.step,
    );
    let (mut first_loss, mut last_loss, mut stopped_early) = (None, None, false);
    let deadline = (cfg.max_minutes > 0.0).then_some(cfg.max_minutes * 60.0);
    let (loop_start, first_step) = (Instant::now(), t.state.step);
    while t.state.step < t.state.total_steps.unwrap_or(cfg.total_steps()) {
        let total = t.state.total_steps.unwrap_or(cfg.total_steps());
        let (step, batch) = prefetch.next().context("the data loader stopped")?;
        debug_assert_eq!(step, t.state.step);
        let epoch = step / spe;
        let lr = cfg.optim.lr_at(step, total);
        let r = t.step(&batch, step, lr, epoch as f64 / cfg.epochs.max(1) as f64)?;
        t.update_agents(&mut metrics, step)?;
        t.state.step = step + 1;
        first_loss.get_or_insert(r.loss);
        last_loss = Some(r.loss);
        metrics.write(&serde_json::json!({
            "kind": "step", "epoch": epoch, "step": step, "loss": r.loss,
            "dice_ct": r.dice[0], "dice_mr": r.dice[1], "ce_ct": r.ce[0], "ce_mr": r.ce[1],
            "align": r.align, "s_sim": r.s_sim, "reward": r.rewards, "lr": lr, "grad_norm": r.grad_norm,
            "actions": r.actions, "self_paired": batch.self_paired,
        }))?;
        pb.set_position(t.state.step);
        pb.set_message(format!(
            "loss {:.3} dice {:.3}/{:.3}",
            r.loss,
            1.0 - r.dice[0],
            1.0 - r.dice[1]
        ));

        let epoch_end = t.state.step.is_multiple_of(spe);
        if let Some(n) = fitted_total(cfg, &t.state, loop_start, first_step, t0, epoch_end) {
            t.state.total_steps = Some(n);
            pb.set_length(n);
        }
        let total = t.state.total_steps.unwrap_or(cfg.total_steps());
        let out_of_time = deadline.is_some_and(|d| t0.elapsed().as_secs_f64() > d)
            || opts.stop_after_steps.is_some_and(|n| t.state.step >= n);
        let finished = t.state.step >= total;
        let epoch_end = epoch_end || finished;
        if epoch_end || out_of_time {
            let epoch_done = t.state.step.div_ceil(spe);
            let mut line =
                serde_json::json!({"kind": "epoch", "epoch": epoch_done, "step": t.state.step - 1});
            if epoch_end
                && (epoch_done.is_multiple_of(cfg.val_every.max(1)) || finished || out_of_time)
            {
                let inner = device.clone().inner();
                let p = Predictor::from_parts(
                    cfg.clone(),
                    ct_stats.clone(),
                    t.model.valid(),
                    inner,
                    cfg.val_overlap,
                    false,
                );
                let (d_ct, d_mr) = validate(&p, &cases.ct_val, &cases.mr_val);
                let score = validation_line(&mut line, &d_ct, &d_mr);
                if score.is_finite() && t.state.best_val_dice.is_none_or(|b| score > b) {
                    t.state.best_val_dice = Some(score);
                    t.state.best_epoch = Some(epoch_done);
                    save_checkpoint(&best_dir, &t.model, &t.optim, &t.agents, &t.state)?;
                }
            }
            // wall-clock time only on epoch lines: step and PPO lines stay reproducible
            line["seconds"] = t0.elapsed().as_secs_f64().into();
            metrics.write(&line)?;
            save_checkpoint(&last_dir, &t.model, &t.optim, &t.agents, &t.state)?;
            let report = alignment_report(&t.agents, pose.as_ref(), t.state.step);
            write_atomically(
                &out.join("alignment.json"),
                serde_json::to_string_pretty(&report)?.as_bytes(),
            )?;
            if let Err(e) = redraw_plots(out) {
                tracing::warn!("plots: {e:#}");
            }
        }
        if out_of_time && !finished {
            stopped_early = true;
            break;
        }
    }
    pb.finish();
    Ok(TrainSummary {
        steps: t.state.step,
        first_loss,
        last_loss,
        best_val_dice: t.state.best_val_dice,
        stopped_early,
    })
}
