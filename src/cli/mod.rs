//! The `rlu2net` command line: a thin shell over the library.

pub mod bench;
pub mod pipeline;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::discover;
use crate::data::inspect::inspect_case;
use crate::data::synth::{Scale, SynthOptions, Variety, default_mr_pose, generate};
use crate::model::{ModelConfig, Preset};

#[derive(Parser, Debug)]
#[command(
    name = "rlu2net",
    version,
    about = "RL-U²Net whole-heart segmentation of CT and MRI"
)]
pub struct Cli {
    /// CPU threads for every computation (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a SynthWHS data set (paired CT/MRI whole-heart volumes in the MM-WHS layout).
    Synth(SynthArgs),
    /// Check a data folder in the MM-WHS layout: one line per case and a summary.
    Inspect {
        /// The data folder (holding ct_train/, mr_train/, ct_test/, mr_test/).
        data: PathBuf,
    },
    /// Time the kernels the network is made of, or a whole forward/backward pass.
    Bench(bench::BenchArgs),
    /// Train RL-U²Net on an MM-WHS-layout folder (or continue a run with --resume RUN).
    Train(TrainArgs),
    /// Segment CT/MRI volumes with a trained run (single files or an MM-WHS-layout folder).
    Infer(pipeline::InferArgs),
    /// Dice and HD95 of predictions against ground truth: the paper's Table 1, report.md/json, overlays.
    Evaluate(pipeline::EvaluateArgs),
    /// The whole system on built-in data: synth → train (time-bounded) → infer → evaluate.
    Demo(pipeline::DemoArgs),
    /// The paper's Table 2: the full model and each ablation, same budget and seed.
    Ablate(pipeline::AblateArgs),
    /// Write a trained run's model as one shareable file (weights, configuration,
    /// preprocessing plan, version, checksum); `infer --model FILE` reads it.
    Export {
        /// The run folder from `rlu2net train`.
        run: PathBuf,
        /// The model file to write (e.g. heart.rlu2net).
        #[arg(long)]
        out: PathBuf,
    },
    /// The devices `--device` chooses among: the CPU and each GPU adapter (`gpu:N`).
    Devices,
    /// Parameter count and FLOPs of one forward pass of a preset (counted from the layer shapes).
    ModelInfo {
        #[arg(long, value_enum, default_value_t = Preset::Cpu)]
        preset: Preset,
    },
}

#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of training pairs.
    #[arg(long, default_value_t = 20)]
    pub cases: usize,
    /// Number of test pairs.
    #[arg(long, default_value_t = 10)]
    pub test_cases: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CT and MRI of a case are the same subject (default).
    #[arg(long, conflicts_with = "unpaired")]
    pub paired: bool,
    /// CT and MRI of a case are different subjects, as in MM-WHS.
    #[arg(long)]
    pub unpaired: bool,
    /// The MRI pose offset: index 0..23 of a cube rotation (default: 90° about the
    /// superior axis), plus up to ±10° jitter per case.
    #[arg(long)]
    pub mr_pose: Option<usize>,
    /// Voxel sizes: small (quick), default, or paper (MM-WHS-like, large files).
    #[arg(long, value_enum, default_value_t = Scale::Default)]
    pub scale: Scale,
    /// How much the cases vary: varied (synthwhs-2: per-structure anatomy, contrast phases and
    /// sequences, artefacts), classic (synthwhs-1, the first generator, byte for byte), or
    /// held-out (synthwhs-2 with every drawn value outside its training range: a check set),
    /// or held-out-anatomy / held-out-appearance / held-out-geometry (one group outside).
    #[arg(long, value_enum, default_value_t = Variety::Varied)]
    pub variety: Variety,
    /// Also write PNG previews (three planes with label contours) of the first pair of each split.
    #[arg(long)]
    pub preview: bool,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Data folder (MM-WHS layout). Optional with --resume (the run remembers it).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run folder to write.
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// TOML configuration overriding the preset's values (optional).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint.
    #[arg(long, conflicts_with_all = ["out", "config", "preset"])]
    pub resume: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    #[arg(long)]
    pub epochs: Option<u64>,
    #[arg(long)]
    pub steps_per_epoch: Option<u64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this many minutes (a checkpoint is written).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Where to compute (`--device` as in nnU-Net and TotalSegmentator; `--backend` also works).
    #[arg(long, visible_alias = "device", default_value_t = crate::device::Backend::Auto)]
    pub backend: crate::device::Backend,
}

/// The run folder, configuration and data folder of `train`: a new run's, or those the
/// run folder records (`--resume`), with the command line's overrides applied.
pub fn train_setup(a: &TrainArgs) -> anyhow::Result<(PathBuf, crate::train::TrainConfig, PathBuf)> {
    use crate::train::TrainConfig;
    let (out, mut cfg, data) = match &a.resume {
        Some(root) => {
            let run = crate::run::RunDir::at(root);
            let cfg = run.read_config()?;
            // a damaged plan stops the run before anything is printed
            run.read_plan()?;
            let data = match &a.data {
                Some(d) => d.clone(),
                None => run.read_info()?.data,
            };
            (root.clone(), cfg, data)
        }
        None => {
            let data = a.data.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "--data DATA is needed (an MM-WHS-layout folder; make one with `rlu2net synth`)"
                )
            })?;
            let cfg = match &a.config {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", p.display()))?;
                    TrainConfig::from_toml(&text, a.preset)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                }
                None => TrainConfig::preset(a.preset.unwrap_or(Preset::Cpu)),
            };
            (a.out.clone().expect("clap requires --out"), cfg, data)
        }
    };
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(s) = a.steps_per_epoch {
        cfg.steps_per_epoch = s;
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(m) = a.max_minutes {
        cfg.max_minutes = m;
    }
    Ok((out, cfg, data))
}

fn train_cmd(a: TrainArgs) -> anyhow::Result<()> {
    use crate::train::{TrainOptions, train};
    let (out, cfg, data) = train_setup(&a)?;
    let selected = crate::device::select(a.backend)?;
    let opts = TrainOptions {
        data,
        out: out.clone(),
        resume: a.resume.is_some(),
        device: selected.device,
        progress: true,
        stop_after_steps: None,
        watch: None,
    };
    eprintln!(
        "training {:?} preset on {}: {} epochs × {} steps, backend {}",
        cfg.preset,
        opts.data.display(),
        cfg.epochs,
        cfg.steps_per_epoch,
        selected.description
    );
    let s = train(&cfg, &opts)?;
    eprintln!(
        "{} after {} steps; loss {:.4} → {:.4}; best validation Dice {}; run folder {}",
        if s.stopped_early {
            "stopped (time limit)"
        } else {
            "finished"
        },
        s.steps,
        s.first_loss.unwrap_or(f64::NAN),
        s.last_loss.unwrap_or(f64::NAN),
        s.best_val_dice
            .map(|d| format!("{d:.3}"))
            .unwrap_or_else(|| "-".into()),
        out.display()
    );
    if let Some(r) = s.augmentation_pose {
        eprintln!(
            "the spatial augmentation kept the pair's relative pose, rotation {r} (mutual information over the training pairs, estimated before training)"
        );
    }
    Ok(())
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow::anyhow!("--threads {n}: {e}"))?;
    }
    // The whole command runs on one of the pool's threads: a parallel loop started from
    // outside the pool hands its work over and puts the caller to sleep until it is done
    // (two futex wake-ups per loop, and a third thread on the cores); from inside the pool
    // the caller works on its share and steals back. With thousands of small loops per
    // `tiny` training step, futex wake-ups were 9 % of its profile, and the step 6 %
    // slower (BENCHMARKS.md).
    // Nothing on the pool may wait for a thread that itself needs the pool: the data
    // prefetcher is a plain thread without parallel loops.
    rayon::scope(|_| dispatch(cli.command))
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Synth(a) => synth(a),
        Command::Inspect { data } => inspect(&data),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train_cmd(a),
        Command::Infer(a) => pipeline::infer(a),
        Command::Evaluate(a) => pipeline::evaluate_cmd(a),
        Command::Demo(a) => pipeline::demo(a),
        Command::Ablate(a) => pipeline::ablate(a),
        Command::Export { run, out } => {
            let h = crate::model_file::export(&run, &out)?;
            eprintln!(
                "wrote {} ({} checkpoint of {}, rlu2net {})",
                out.display(),
                h.checkpoint,
                run.display(),
                h.rlu2net_version
            );
            Ok(())
        }
        Command::Devices => {
            print!("{}", crate::device::list_text());
            Ok(())
        }
        Command::ModelInfo { preset } => {
            model_info(preset);
            Ok(())
        }
    }
}

fn synth(a: SynthArgs) -> anyhow::Result<()> {
    let opts = SynthOptions {
        cases: a.cases,
        test_cases: a.test_cases,
        seed: a.seed,
        paired: !a.unpaired,
        mr_pose: a.mr_pose.unwrap_or_else(default_mr_pose),
        scale: a.scale,
        preview: a.preview,
        variety: a.variety,
    };
    let pb = bar((opts.cases + opts.test_cases) as u64, "synth pairs");
    let t0 = std::time::Instant::now();
    let manifest = generate(&opts, &a.out, &|| pb.inc(1))?;
    pb.finish();
    eprintln!(
        "wrote {} CT/MRI pairs ({} train, {} test) to {} in {:.1} s; parameters in {}",
        manifest.cases.len(),
        opts.cases,
        opts.test_cases,
        a.out.display(),
        t0.elapsed().as_secs_f64(),
        a.out.join("manifest.json").display()
    );
    if opts.preview {
        let dir = crate::viz::dataset_previews(&a.out)?;
        eprintln!("previews in {}", dir.display());
    }
    eprintln!("next: rlu2net inspect {}", a.out.display());
    Ok(())
}

fn inspect(data: &std::path::Path) -> anyhow::Result<()> {
    use rayon::prelude::*;
    let ds = discover(data)?;
    for w in &ds.warnings {
        eprintln!("warning: {w}");
    }
    anyhow::ensure!(
        !ds.cases.is_empty(),
        "{}: no cases found; expected files such as ct_train/ct_train_1001_image.nii.gz (make a data set with `rlu2net synth --out {}`)",
        data.display(),
        data.display()
    );
    let pb = bar(ds.cases.len() as u64, "reading");
    let results: Vec<_> = ds
        .cases
        .par_iter()
        .with_max_len(1)
        .map(|c| {
            let r = inspect_case(c);
            pb.inc(1);
            r
        })
        .collect();
    pb.finish_and_clear();
    println!(
        "{:<16} {:<3} {:<5} {:<14} {:<19} ori {:<7} {:<12}  labels",
        "case", "mod", "split", "shape", "spacing", "dtype", "intensity"
    );
    let mut errors = 0;
    let mut with_problems = 0;
    for (case, r) in ds.cases.iter().zip(&results) {
        match r {
            Ok(s) => {
                println!("{}", s.line());
                if !s.problems.is_empty() {
                    with_problems += 1;
                }
            }
            Err(e) => {
                errors += 1;
                println!("{:<16} ERROR {e:#}", case.name());
            }
        }
    }
    println!();
    for summary in crate::data::inspect::split_summaries(&ds, &results) {
        println!("{}", summary.line());
    }
    if errors + with_problems > 0 {
        anyhow::bail!(
            "{errors} case(s) could not be read and {with_problems} have problems (see above)"
        );
    }
    println!("all {} cases read cleanly", ds.cases.len());
    Ok(())
}

fn model_info(preset: Preset) {
    let cfg = ModelConfig::preset(preset);
    let info = crate::model::info::model_info(&cfg);
    println!(
        "preset {preset:?}: patch {p}³, C = {c}, heads {h:?}, window {w}, k_sel {k}; one forward pass of a CT+MRI pair (batch 1)",
        p = cfg.patch,
        c = cfg.feature_size,
        h = cfg.heads,
        w = cfg.window,
        k = cfg.k_sel
    );
    println!("{:<44} {:>14} {:>12}", "part", "parameters", "GFLOPs");
    for part in &info.parts {
        println!(
            "{:<44} {:>14} {:>12.2}",
            part.name,
            part.params,
            part.flops as f64 / 1e9
        );
    }
    println!(
        "{:<44} {:>14} {:>12.2}",
        "total",
        info.params(),
        info.flops() as f64 / 1e9
    );
    println!("(FLOPs: 2 per multiply-add in convolutions, linear layers and attention matmuls)");
}
