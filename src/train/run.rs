//! `rlu2net train`: the training loop (docs/method.md §1, §3, §4).

use std::path::PathBuf;
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
use super::log::{log_ppo, redraw_plots};
use super::reward::{estimated_pose, mutual_information_scores, rotation_scores};
use super::validate::{nanmean, validate};
use crate::checkpoint::{LoopState, load_checkpoint, save_checkpoint};
use crate::config::TrainConfig;
use crate::data::labels::{NUM_STRUCTURES, STRUCTURES};
use crate::data::layout::{Dataset, Modality, Split, discover};
use crate::data::sampler::{Batch, Pairing, Prefetcher, TrainingPairs};
use crate::geometry::{SignedPerm, cube_rotations, rotation_index};
use crate::infer::Predictor;
use crate::io::header::header_grid;
use crate::io::write_atomically;
use crate::loss::{Agwd, align_loss, ce_loss, dice_loss, one_hot};
use crate::model::{ActionMode, RlU2Net};
use crate::preprocess::cache::{PreparedCase, prepare_case};
use crate::preprocess::plan::fit_plan;
use crate::preprocess::{CtStats, resampled_shape};
use crate::rl::PoseScore;
use crate::rl::PpoAgent;
use crate::run::{
    Checkpoint, EpochLine, LogLine, MetricsLog, RunDir, RunInfo, StepLine, Validation,
};
use crate::seed::derive_seed;

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
    /// Report the steps here (instead of the bar of `progress`), and stop when it is
    /// asked to: with a checkpoint, as at the time limit but without the validation, and
    /// [`Interrupted`](crate::progress::Interrupted) as the error (the run resumes).
    pub watch: Option<crate::progress::Progress>,
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub best_val_dice: Option<f64>,
    pub stopped_early: bool,
    /// The relative pose (index into `cube_rotations`) the spatial augmentation kept,
    /// estimated before training; `None` when nothing spatial was augmented.
    pub augmentation_pose: Option<usize>,
}

/// The checks that must pass before any work starts.
fn preflight(cfg: &TrainConfig, ds: &Dataset, run: &RunDir) -> anyhow::Result<()> {
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
    run.create()
}

fn tensor5(v: &[f32], b: usize, p: usize, device: &Device) -> Tensor<5> {
    Tensor::from_data(TensorData::new(v.to_vec(), [b, 1, p, p, p]), device)
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
}

/// The prepared training and validation cases of both modalities.
struct Cases {
    /// shared with the data loader's thread
    ct_train: Arc<[PreparedCase]>,
    ct_val: Vec<PreparedCase>,
    mr_train: Arc<[PreparedCase]>,
    mr_val: Vec<PreparedCase>,
}

fn prepare_cases(
    cfg: &TrainConfig,
    ds: &Dataset,
    stats: &CtStats,
    run: &RunDir,
) -> anyhow::Result<Cases> {
    let cache = run.preprocessed_dir();
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
        ct_train: ct_train.into(),
        ct_val,
        mr_train: mr_train.into(),
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

/// The loss of one step (eq. 20) and its parts.
struct Losses {
    total: Tensor<1>,
    dice: [f64; 2],
    ce: [f64; 2],
    align: f64,
}

/// The mutable pieces of a run that a step advances.
struct Trainer<'a> {
    cfg: &'a TrainConfig,
    device: Device,
    model: RlU2Net,
    optim: ModuleOptimizer,
    agents: Vec<PpoAgent>,
    state: LoopState,
    /// The network that scores the rotations when `ppo.probe_initial` (the initial one,
    /// frozen); else the network being trained scores them.
    probe_net: Option<RlU2Net>,
}

/// Each agent's rotations for one step and their log-probabilities.
type Actions = Vec<(Vec<usize>, Vec<f32>)>;

impl<'a> Trainer<'a> {
    /// A new run's network and agents from the seed, or those of the last checkpoint.
    fn start(
        cfg: &'a TrainConfig,
        device: &Device,
        run: &RunDir,
        resume: bool,
    ) -> anyhow::Result<Self> {
        let device = device.clone().autodiff();
        let model = init_model(cfg, &device);
        let n_modules = model.align.len();
        let mut t = Trainer {
            cfg,
            device,
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
            probe_net: None,
        };
        if cfg.ppo.probe_initial && cfg.ppo.score == PoseScore::Features {
            t.probe_net = Some(init_model(cfg, &t.device).valid());
        }
        if !resume {
            let thetas: Vec<Vec<f32>> = t.agents.iter().map(|a| a.theta_f32()).collect();
            t.model = t.model.clone().with_thetas(&thetas);
            return Ok(t);
        }
        let last = run.checkpoint_dir(Checkpoint::Last);
        anyhow::ensure!(
            crate::checkpoint::resolve(&last)
                .join("state.json")
                .exists(),
            "{}: no checkpoint to resume from",
            last.display()
        );
        let (m, o, a, s) = load_checkpoint(&last, t.model.clone(), t.optim)?;
        anyhow::ensure!(
            a.len() == n_modules,
            "{}: the checkpoint's agents do not match the configuration",
            last.display()
        );
        (t.model, t.optim, t.agents, t.state) = (m, o, a, s);
        Ok(t)
    }

    /// The steps of the schedule: fitted to the time budget, or the configuration's.
    fn total(&self) -> u64 {
        self.state.total_steps.unwrap_or(self.cfg.total_steps())
    }

    /// Each agent's rotations for a cross-modal batch (none for a self-paired one).
    fn act(&mut self, batch: &Batch) -> Actions {
        if batch.self_paired {
            return Vec::new();
        }
        let k_sel = self.cfg.model.k_sel;
        self.agents.iter_mut().map(|a| a.act(k_sel)).collect()
    }

    /// Segmentation losses of both branches, balanced by AGWD, plus the alignment loss.
    fn losses(
        &mut self,
        out: crate::model::rlu2net::RlU2NetOutput,
        t_ct: Tensor<5>,
        t_mr: Tensor<5>,
    ) -> Losses {
        let cfg = self.cfg;
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
        let mut total = l_dice + l_ce;
        let align = out.align.iter().map(|a| {
            let mut l = align_loss(a.aligned_ct.clone(), a.primary_ct.clone(), &cfg.loss);
            if let (Some(am), Some(pm)) = (&a.aligned_mr, &a.primary_mr) {
                l = l + align_loss(am.clone(), pm.clone(), &cfg.loss);
            }
            l
        });
        let mut align_total = 0.0;
        if let Some(align) = align.reduce(|x, y| x + y) {
            align_total = scalar(&align);
            if !cfg.loss.no_align_loss {
                total = total + align.mul_scalar(cfg.loss.lambda_align);
            }
        }
        Losses {
            total,
            dice,
            ce,
            align: align_total,
        }
    }

    /// The probe's rotation scores of the rotations each agent took (none without agents
    /// or for a self-paired batch).
    fn probe_scores(&self, batch: &Batch, taken: &[Vec<usize>]) -> Vec<Vec<f64>> {
        match (&batch.probe, batch.self_paired) {
            (Some(probe), false) if !self.agents.is_empty() => {
                let inner = self.device.clone().inner();
                let s = match self.cfg.ppo.score {
                    PoseScore::MutualInformation => {
                        mutual_information_scores(probe, self.cfg.model.patch)
                    }
                    PoseScore::Features => {
                        let net = self.probe_net.clone().unwrap_or_else(|| self.model.valid());
                        rotation_scores(&net, probe, self.cfg.model.patch, &inner)
                    }
                };
                taken
                    .iter()
                    .map(|acts| acts.iter().map(|&a| s[a]).collect())
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// One reward per rotation taken (eq. 9: segmentation quality plus the rotation's
    /// score), recorded as PPO transitions; returns the rewards and each module's mean
    /// score (NaN when nothing was scored).
    fn record_rewards(
        &mut self,
        sims: &[Vec<f64>],
        acts: &Actions,
        dice: [f64; 2],
        progress_frac: f64,
    ) -> (Vec<Vec<f64>>, Vec<f64>) {
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
        (rewards, s_sim)
    }

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
        let acts = self.act(batch);
        let fixed: Vec<Vec<usize>> = acts.iter().map(|a| a.0.clone()).collect();
        let mut mode = if batch.self_paired {
            ActionMode::Identity
        } else {
            ActionMode::Fixed(&fixed)
        };
        let out = self
            .model
            .forward::<rand_chacha::ChaCha8Rng>(ct, mr, &mut mode);
        let l = self.losses(out, t_ct, t_mr);
        let v_loss = scalar(&l.total);
        anyhow::ensure!(
            v_loss.is_finite(),
            "the loss became {v_loss} at step {step}; lower optim.lr"
        );
        // the probe's scores need only the weights before this step's update, so they are
        // computed while backward runs
        let (sims, raw_grads) =
            rayon::join(|| self.probe_scores(batch, &fixed), || l.total.backward());
        let mut grads = GradientsParams::from_grads(raw_grads, &self.model);
        let grad_norm = clip_global_norm(&self.model, &mut grads, cfg.optim.grad_clip_norm);
        self.model = self.optim.step(lr, self.model.clone(), grads);
        let (rewards, s_sim) = self.record_rewards(&sims, &acts, l.dice, progress_frac);
        Ok(StepResult {
            loss: v_loss,
            dice: l.dice,
            ce: l.ce,
            align: l.align,
            s_sim,
            rewards,
            actions: fixed,
            grad_norm,
        })
    }

    /// Run PPO updates that are due; write θ back into the network.
    fn update_agents(&mut self, metrics: &mut MetricsLog, step: u64) -> anyhow::Result<()> {
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

    /// Validate on the held-out cases; save `best` when the mean Dice improved.
    fn validate(&mut self, run: &RunSetup, epoch_done: u64) -> anyhow::Result<Validation> {
        let cfg = self.cfg;
        let p = Predictor::from_parts(
            cfg.clone(),
            run.ct_stats.clone(),
            self.model.valid(),
            self.device.clone().inner(),
            cfg.val_overlap,
            false,
        );
        let (d_ct, d_mr) = validate(&p, &run.cases.ct_val, &run.cases.mr_val);
        let (v, score) = validation(&d_ct, &d_mr);
        if score.is_finite() && self.state.best_val_dice.is_none_or(|b| score > b) {
            self.state.best_val_dice = Some(score);
            self.state.best_epoch = Some(epoch_done);
            let best = run.dir.checkpoint_dir(Checkpoint::Best);
            save_checkpoint(&best, &self.model, &self.optim, &self.agents, &self.state)?;
        }
        Ok(v)
    }

    /// The end of an epoch (or of the run): validation when due, the epoch line, the
    /// `last` checkpoint, `alignment.json` and the plots.
    fn end_of_epoch(
        &mut self,
        run: &RunSetup,
        metrics: &mut MetricsLog,
        validate_now: bool,
        clock: &Clock,
    ) -> anyhow::Result<()> {
        let epoch_done = self.state.step.div_ceil(self.cfg.steps_per_epoch.max(1));
        let validation = if validate_now {
            Some(self.validate(run, epoch_done)?)
        } else {
            None
        };
        metrics.write(&LogLine::Epoch(EpochLine {
            epoch: epoch_done,
            step: self.state.step - 1,
            validation,
            seconds: clock.seconds(),
        }))?;
        let last = run.dir.checkpoint_dir(Checkpoint::Last);
        save_checkpoint(&last, &self.model, &self.optim, &self.agents, &self.state)?;
        let report = alignment_report(&self.agents, run.pose.as_ref(), self.state.step);
        write_atomically(
            &run.dir.alignment_path(),
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
        if let Err(e) = redraw_plots(run.dir.root()) {
            tracing::warn!("plots: {e:#}");
        }
        // the pages the epoch freed back to the kernel: the allocator keeps freed pages
        // for the next step's tensors and never decays them, and after some allocation
        // histories (the demo's, with the generator run first in the same process) it
        // kept taking new pages instead, to 6–8 GiB resident in ten minutes (BENCHMARKS.md,
        // "The demo's memory"); once an epoch the next step's page faults cost little
        #[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
        crate::allocator::release_free_memory();
        Ok(())
    }
}

/// The steps of the run's schedule: the configuration's, or — under a time budget —
/// fitted to the budget from the measured time per step (validations and checkpoints
/// included): first once `FIT_AFTER` steps are timed, then again at every epoch end
/// in the first half of the schedule, so that the cosine decay ends when the budget
/// does. The fitted value is part of the checkpointed state.
const FIT_AFTER: u64 = 20;

/// The run's clock: when it started, when this process's loop started, and the budget.
struct Clock {
    t0: Instant,
    loop_start: Instant,
    first_step: u64,
    /// The time budget in seconds, if any.
    budget: Option<f64>,
}

impl Clock {
    fn new(cfg: &TrainConfig, t0: Instant, first_step: u64) -> Clock {
        Clock {
            t0,
            loop_start: Instant::now(),
            first_step,
            budget: (cfg.max_minutes > 0.0).then_some(cfg.max_minutes * 60.0),
        }
    }

    fn seconds(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn out_of_time(&self) -> bool {
        self.budget.is_some_and(|d| self.seconds() > d)
    }

    /// A new fitted schedule length, when one is due (see [`FIT_AFTER`]).
    fn fitted_total(&self, cfg: &TrainConfig, state: &LoopState, epoch_end: bool) -> Option<u64> {
        let done = state.step.saturating_sub(self.first_step);
        let due = match state.total_steps {
            None => done >= FIT_AFTER,
            Some(total) => epoch_end && state.step < total / 2,
        };
        let budget = self.budget.filter(|_| due)?;
        let per_step = self.loop_start.elapsed().as_secs_f64() / done as f64;
        let left = budget - self.seconds();
        // the first fit has not seen a validation yet: keep a tenth of the time for them
        let share = if state.total_steps.is_none() {
            0.9
        } else {
            0.97
        };
        let more = (left * share / per_step).max(0.0) as u64;
        Some((state.step + more).clamp(state.step + 1, cfg.total_steps()))
    }
}

/// Validation Dice per structure and modality as an epoch line's part, and the score
/// that chooses the best checkpoint (the mean over both modalities' means).
fn validation(d_ct: &[f64; NUM_STRUCTURES], d_mr: &[f64; NUM_STRUCTURES]) -> (Validation, f64) {
    let named = |d: &[f64; NUM_STRUCTURES]| {
        STRUCTURES
            .iter()
            .zip(d)
            .map(|(s, v)| (s.to_string(), v.is_finite().then_some(*v)))
            .collect()
    };
    let (m_ct, m_mr) = (nanmean(d_ct), nanmean(d_mr));
    let v = Validation {
        val_dice_ct: named(d_ct),
        val_dice_mr: named(d_mr),
        val_mean_dice_ct: m_ct.is_finite().then_some(m_ct),
        val_mean_dice_mr: m_mr.is_finite().then_some(m_mr),
    };
    (v, nanmean(&[m_ct, m_mr]))
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

/// The bar of a watching caller, at the run's length and step.
fn watched_bar(w: &crate::progress::Progress, total: u64, at: u64) -> indicatif::ProgressBar {
    w.set_length(total);
    w.set_position(at);
    (**w).clone()
}

/// What the loop needs from the run folder and the data: written and prepared before
/// the first step.
struct RunSetup {
    dir: RunDir,
    ct_stats: CtStats,
    cases: Cases,
    pairing: Pairing,
    pose: Option<SignedPerm>,
}

/// The checks, the run folder's `run.json`, `config.toml` and `plan.json`, and the
/// prepared cases.
fn set_up(cfg: &TrainConfig, opts: &TrainOptions) -> anyhow::Result<RunSetup> {
    cfg.model.validate()?;
    let ds = discover(&opts.data)?;
    let dir = RunDir::at(&opts.out);
    preflight(cfg, &ds, &dir)?;
    dir.write_info(&RunInfo::new(&opts.data))?;
    dir.write_config(cfg)?;
    let ct_stats = match dir.read_plan()? {
        Some(plan) if plan.preprocess == cfg.preprocess => plan.ct_stats,
        _ => {
            let plan = fit_plan(&cfg.preprocess, cfg.seed, &ds)?;
            dir.write_plan(&plan)?;
            plan.ct_stats
        }
    };
    let cases = prepare_cases(cfg, &ds, &ct_stats, &dir)?;
    // a SynthWHS set says whether it is paired and the MRI's pose offset
    let manifest = crate::data::synth::Manifest::read(&opts.data.join("manifest.json")).ok();
    let paired_set = manifest.as_ref().is_some_and(|m| m.options.paired);
    Ok(RunSetup {
        dir,
        ct_stats,
        cases,
        pairing: cfg.pairing.resolve(paired_set),
        pose: manifest.and_then(|m| cube_rotations().get(m.options.mr_pose).copied()),
    })
}

/// The step's line of `metrics.jsonl`.
fn step_line(r: &StepResult, batch: &Batch, epoch: u64, step: u64, lr: f64) -> LogLine {
    LogLine::Step(StepLine {
        epoch,
        step,
        loss: r.loss,
        dice_ct: r.dice[0],
        dice_mr: r.dice[1],
        ce_ct: r.ce[0],
        ce_mr: r.ce[1],
        align: r.align,
        s_sim: r.s_sim.clone(),
        reward: r.rewards.clone(),
        lr,
        grad_norm: r.grad_norm,
        actions: r.actions.clone(),
        self_paired: batch.self_paired,
    })
}

/// The relative pose the spatial augmentation keeps: `None` when nothing spatial is
/// augmented (no score is computed, the sampler uses the identity), else
/// [`estimated_pose`].
fn augmentation_pose(
    cfg: &TrainConfig,
    ct: &[PreparedCase],
    mr: &[PreparedCase],
) -> Option<SignedPerm> {
    let a = &cfg.sampler.augment;
    if a.p_rotate <= 0.0 && a.p_scale <= 0.0 && a.p_flip <= 0.0 {
        return None;
    }
    Some(estimated_pose(ct, mr, cfg.model.patch))
}

/// Train (or resume) a run.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> anyhow::Result<TrainSummary> {
    let t0 = Instant::now();
    let run = set_up(cfg, opts)?;
    let mut t = Trainer::start(cfg, &opts.device, &run.dir, opts.resume)?;
    let mut metrics =
        MetricsLog::open(&run.dir.metrics_path(), opts.resume.then_some(t.state.step))?;
    let spe = cfg.steps_per_epoch.max(1);
    let pose = augmentation_pose(cfg, &run.cases.ct_train, &run.cases.mr_train);
    let pairs = TrainingPairs {
        ct: Arc::clone(&run.cases.ct_train),
        mr: Arc::clone(&run.cases.mr_train),
        pairing: run.pairing,
        pose: pose.unwrap_or(SignedPerm::IDENTITY),
    };
    let prefetch = Prefetcher::start(
        pairs,
        cfg.sampler.clone(),
        cfg.model.patch,
        cfg.seed,
        t.state.step..cfg.total_steps(),
    );
    let pb = match &opts.watch {
        Some(w) => watched_bar(w, t.total(), t.state.step),
        None => progress_bar(opts.progress, t.total(), t.state.step),
    };
    let (mut first_loss, mut last_loss, mut stopped_early) = (None, None, false);
    let clock = Clock::new(cfg, t0, t.state.step);
    while t.state.step < t.total() {
        let (step, batch) = prefetch.next().context("the data loader stopped")?;
        debug_assert_eq!(step, t.state.step);
        let (epoch, lr) = (step / spe, cfg.optim.lr_at(step, t.total()));
        let r = t.step(&batch, step, lr, epoch as f64 / cfg.epochs.max(1) as f64)?;
        t.update_agents(&mut metrics, step)?;
        t.state.step = step + 1;
        first_loss.get_or_insert(r.loss);
        last_loss = Some(r.loss);
        metrics.write(&step_line(&r, &batch, epoch, step, lr))?;
        pb.set_position(t.state.step);
        pb.set_message(format!(
            "loss {:.3} dice {:.3}/{:.3}",
            r.loss,
            1.0 - r.dice[0],
            1.0 - r.dice[1]
        ));
        let epoch_end = t.state.step.is_multiple_of(spe);
        if let Some(n) = clock.fitted_total(cfg, &t.state, epoch_end) {
            t.state.total_steps = Some(n);
            pb.set_length(n);
        }
        let finished = t.state.step >= t.total();
        if !finished && opts.watch.as_ref().is_some_and(|w| w.stop_requested()) {
            t.end_of_epoch(&run, &mut metrics, false, &clock)?;
            pb.abandon();
            return Err(anyhow::Error::new(crate::progress::Interrupted).context(format!(
                "training stopped at step {} of {}; the checkpoint is written, and the run resumes from it",
                t.state.step,
                t.total()
            )));
        }
        let out_of_time =
            clock.out_of_time() || opts.stop_after_steps.is_some_and(|n| t.state.step >= n);
        let epoch_end = epoch_end || finished;
        if epoch_end || out_of_time {
            let epoch_done = t.state.step.div_ceil(spe);
            let due = epoch_done.is_multiple_of(cfg.val_every.max(1)) || finished || out_of_time;
            t.end_of_epoch(&run, &mut metrics, epoch_end && due, &clock)?;
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
        augmentation_pose: pose.as_ref().and_then(rotation_index),
    })
}
