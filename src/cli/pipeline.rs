//! `infer`, `evaluate`, `demo` and `ablate`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Variant;
use crate::data::layout::{Modality, Split};
use crate::device::{Backend, device};
use crate::infer::{Predictor, predict_dir, write_prediction};
use crate::metrics::evaluate::evaluate;
use crate::metrics::report::Report;
use crate::metrics::statistics::{Statistics, statistics};
use crate::model::Preset;
use crate::train::{TrainConfig, TrainOptions, train};

#[derive(clap::Args, Debug)]
pub struct InferArgs {
    /// Run folder from `rlu2net train`, or a model file from `rlu2net export`.
    #[arg(long)]
    pub model: PathBuf,
    /// A CT volume to segment: a NIfTI file, or a DICOM series (a folder or `.zip` of
    /// one series, or one enhanced multi-frame file).
    #[arg(long, conflicts_with = "input_dir")]
    pub ct: Option<PathBuf>,
    /// An MRI volume to segment (paired with --ct when both are given): NIfTI or DICOM.
    #[arg(long, conflicts_with = "input_dir")]
    pub mr: Option<PathBuf>,
    /// Output label file (for --ct, else for --mr): `.nii.gz`, or with
    /// `--out-format dicom-seg` a DICOM SEG file (e.g. `seg.dcm`).
    #[arg(long, requires = "model")]
    pub out: Option<PathBuf>,
    /// `nifti`: MM-WHS label values on the input's grid; `dicom-seg`: a DICOM
    /// Segmentation object referencing the input DICOM series (one segment per
    /// structure, SNOMED CT coded).
    #[arg(long, value_enum, default_value_t = OutFormat::Nifti, conflicts_with = "input_dir")]
    pub out_format: OutFormat,
    /// Output label file for --mr when --ct is given too (default: OUT with `_mr` added).
    #[arg(long)]
    pub mr_out: Option<PathBuf>,
    /// An MM-WHS-layout folder: predict every case of --split.
    #[arg(long)]
    pub input_dir: Option<PathBuf>,
    #[arg(long, requires = "input_dir")]
    pub output_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    pub split: SplitArg,
    /// With --input-dir: stop at the first case that cannot be predicted (default: report
    /// it, predict every other case, list the failures in failures.json and exit 1).
    #[arg(long, requires = "input_dir")]
    pub fail_fast: bool,
    /// With --input-dir: skip cases whose outputs are already complete (resume an
    /// interrupted batch).
    #[arg(long = "continue", requires = "input_dir")]
    pub resume: bool,
    /// With --input-dir: split the cases into this many parts (one per process or
    /// machine, e.g. a SLURM array); see --part-id.
    #[arg(long, default_value_t = 1, requires = "input_dir")]
    pub num_parts: usize,
    /// Which part (0 … num-parts − 1) this process predicts.
    #[arg(long, default_value_t = 0, requires = "input_dir")]
    pub part_id: usize,
    /// Also write the 8-class softmax (4D, on the working grid).
    #[arg(long)]
    pub probabilities: bool,
    /// Mirror test-time augmentation (8 flips); only for a model trained with mirroring.
    #[arg(long)]
    pub tta: bool,
    /// Keep every connected piece of each structure (default: only the largest).
    #[arg(long)]
    pub no_postprocess: bool,
    /// Also write statistics.json (beside the output) and print, per structure, the
    /// volume (mL) and the mean and SD of the image inside it (HU for CT), the LV/RV
    /// blood pools and the LV myocardial mass.
    #[arg(long)]
    pub statistics: bool,
    /// Also draw three planes through the heart with the segmentation and a legend
    /// (PNG; with --ct and --mr, the MRI's gets `_mr` added).
    #[arg(long, conflicts_with = "input_dir")]
    pub preview: Option<PathBuf>,
    #[arg(long, default_value_t = 0.5)]
    pub overlap: f64,
    /// Where to compute (`--device` as in nnU-Net and TotalSegmentator; `--backend` also works).
    #[arg(long, visible_alias = "device", default_value_t = Backend::Auto)]
    pub backend: Backend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    Nifti,
    DicomSeg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SplitArg {
    Train,
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
}

/// `infer --input-dir`: every case of the split (of this part), bad cases reported and
/// skipped unless `--fail-fast`; exit 1 when any failed.
fn infer_batch(a: &InferArgs, p: &Predictor, dir: &Path, out: &Path) -> anyhow::Result<()> {
    use crate::infer::batch::{BatchOptions, Part, predict_batch, write_failures};
    let part = Part::new(a.num_parts, a.part_id)?;
    let opts = BatchOptions {
        probabilities: a.probabilities,
        show_progress: true,
        fail_fast: a.fail_fast,
        resume: a.resume,
        part,
    };
    let mut stats = Vec::new();
    let report = predict_batch(p, dir, a.split.into(), out, &opts, |case, input, pred| {
        if a.statistics {
            let ct = case.modality == Modality::Ct;
            stats.push((case.name(), statistics(&input.original, &pred.labels, ct)?));
        }
        Ok(())
    })?;
    eprintln!(
        "{} of {} cases predicted{}{}, {} failed; wrote {} files to {}",
        report.predicted,
        report.assigned,
        if part.count > 1 {
            format!(" (part {} of {})", part.id, part.count)
        } else {
            String::new()
        },
        if a.resume {
            format!(", {} already complete", report.already_done)
        } else {
            String::new()
        },
        report.failures.len(),
        report.written.len(),
        out.display()
    );
    if a.statistics && !stats.is_empty() {
        let path = write_statistics(&out.join(part.file_name("statistics", "json")), stats)?;
        eprintln!("wrote {}", path.display());
    }
    let failures = write_failures(out, part, &report.failures)?;
    if report.failures.is_empty() {
        return Ok(());
    }
    eprintln!("failed cases (also in {}):", failures.display());
    for f in &report.failures {
        eprintln!("  {}: {}", f.case, f.error);
    }
    anyhow::bail!(
        "{} of {} cases failed (listed above and in {})",
        report.failures.len(),
        report.assigned,
        failures.display()
    )
}

pub fn infer(a: InferArgs) -> anyhow::Result<()> {
    let mut p = Predictor::load(&a.model, device(a.backend)?, a.overlap, a.tta)?;
    p.keep_largest = !a.no_postprocess;
    if a.tta && p.cfg.sampler.augment.p_flip == 0.0 {
        tracing::warn!(
            "--tta averages mirrored predictions, but this model was trained without mirroring (sampler.augment.p_flip = 0): the heart is chiral, so mirrored passes are likely to hurt"
        );
    }
    if let Some(dir) = &a.input_dir {
        let out = a
            .output_dir
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--input-dir needs --output-dir"))?;
        return infer_batch(&a, &p, dir, &out);
    }
    anyhow::ensure!(
        a.ct.is_some() || a.mr.is_some(),
        "give --ct and/or --mr (or --input-dir DATA --output-dir DIR)"
    );
    let out = a
        .out
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--out OUT.nii.gz is needed"))?;
    let ct =
        a.ct.as_ref()
            .map(|c| p.prepare(c, Modality::Ct))
            .transpose()?;
    let mr =
        a.mr.as_ref()
            .map(|m| p.prepare(m, Modality::Mr))
            .transpose()?;
    let pb = crate::progress::Progress::new(crate::infer::window_bar(
        p.window_total(ct.as_ref(), mr.as_ref()),
    ));
    let mut written = Vec::new();
    let mut stats: Vec<(String, Statistics)> = Vec::new();
    // a pair is predicted in one pass; a single volume alone
    let [pred_ct, pred_mr] = p.predict_any(ct.as_ref(), mr.as_ref(), &pb)?;
    if let (Some(c), Some(pred)) = (&ct, pred_ct) {
        written.extend(write_output(&out, c, &pred, &a)?);
        if a.statistics {
            stats.push(("ct".into(), statistics(&c.original, &pred.labels, true)?));
        }
        if let Some(png) = &a.preview {
            written.push(draw_preview(png, &c.original, &pred, Modality::Ct)?);
        }
    }
    if let (Some(m), Some(pred)) = (&mr, pred_mr) {
        let path = match (&ct, &a.mr_out) {
            (None, _) => out.clone(),
            (Some(_), Some(o)) => o.clone(),
            (Some(_), None) => with_suffix(&out, "_mr"),
        };
        written.extend(write_output(&path, m, &pred, &a)?);
        if a.statistics {
            stats.push(("mr".into(), statistics(&m.original, &pred.labels, false)?));
        }
        if let Some(png) = &a.preview {
            let png = if ct.is_some() {
                with_suffix(png, "_mr")
            } else {
                png.clone()
            };
            written.push(draw_preview(&png, &m.original, &pred, Modality::Mr)?);
        }
    }
    pb.finish_and_clear();
    if a.statistics {
        let dir = out
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        written.push(write_statistics(&dir.join("statistics.json"), stats)?);
    }
    for w in written {
        eprintln!("wrote {}", w.display());
    }
    Ok(())
}

/// The label map as NIfTI (and probabilities if asked), or as a DICOM SEG of the
/// input series.
fn write_output(
    path: &Path,
    input: &crate::infer::Input,
    pred: &crate::infer::Prediction,
    a: &InferArgs,
) -> anyhow::Result<Vec<PathBuf>> {
    if a.out_format == OutFormat::Nifti {
        return write_prediction(path, pred, a.probabilities);
    }
    let src = input.dicom.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "--out-format dicom-seg needs a DICOM series as input (a folder, .zip or DICOM file), not {}",
            input.source.display()
        )
    })?;
    anyhow::ensure!(
        !a.probabilities,
        "--probabilities is written as NIfTI only; leave it out with --out-format dicom-seg"
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
    }
    crate::io::dicom::seg::write_seg(path, &pred.labels, src)?;
    Ok(vec![path.to_path_buf()])
}

/// `name.ext` → `name{suffix}.ext`, `.nii.gz` counting as one extension.
fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let cut = if name.ends_with(".nii.gz") {
        name.len() - ".nii.gz".len()
    } else {
        name.rfind('.').unwrap_or(name.len())
    };
    p.with_file_name(format!("{}{suffix}{}", &name[..cut], &name[cut..]))
}

/// Three planes through the predicted heart with the segmentation and a legend.
fn draw_preview(
    png: &Path,
    image: &crate::io::Volume<f32>,
    pred: &crate::infer::Prediction,
    modality: Modality,
) -> anyhow::Result<PathBuf> {
    let classes = crate::io::labels::labels_to_classes(&pred.labels.map(|&v| v as f32), png)?;
    crate::viz::preview_png(png, image, &classes, modality)?;
    Ok(png.to_path_buf())
}

/// Print each entry's table and write them all as one JSON file.
fn write_statistics(path: &Path, stats: Vec<(String, Statistics)>) -> anyhow::Result<PathBuf> {
    let mut json = serde_json::Map::new();
    for (name, s) in stats {
        println!("{name}\n{}", s.table());
        json.insert(name, serde_json::to_value(s)?);
    }
    crate::io::write_atomically(
        path,
        serde_json::to_string_pretty(&serde_json::Value::Object(json))?.as_bytes(),
    )
    .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
    Ok(path.to_path_buf())
}

#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// Folder of predicted `<case>_label.nii.gz` files.
    #[arg(long)]
    pub pred: PathBuf,
    /// Ground truth: an MM-WHS-layout folder or a folder of `<case>_label.nii.gz` files.
    #[arg(long)]
    pub truth: PathBuf,
    /// Where to write report.md, report.json and overlays/.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn evaluate_cmd(a: EvaluateArgs) -> anyhow::Result<()> {
    let r = evaluate(&a.pred, &a.truth, a.out.as_deref())?;
    println!("{}", r.table());
    if let Some(o) = &a.out {
        eprintln!(
            "report: {} and {}; overlays in {}",
            o.join("report.md").display(),
            o.join("report.json").display(),
            o.join("overlays").display()
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Everything goes under this folder.
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Training time budget in minutes.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to compute (`--device` as in nnU-Net and TotalSegmentator; `--backend` also works).
    #[arg(long, visible_alias = "device", default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// The data set's generator (`rlu2net synth --variety`): varied, classic or held-out.
    #[arg(long, value_enum, default_value_t = crate::data::synth::Variety::Varied)]
    pub variety: crate::data::synth::Variety,
    /// The MRI pose offset of the data set (`rlu2net synth --mr-pose`), 0..23.
    #[arg(long)]
    pub mr_pose: Option<usize>,
    /// Training pairs to generate (plus 2 test pairs). With synthwhs-2's variety, 20
    /// pairs score CT 0.81 / MRI 0.80 on the test pairs where 6 scored 0.70 / 0.61, in
    /// the same 10 minutes (BENCHMARKS.md, "The demo on synthwhs-2").
    #[arg(long, default_value_t = 20)]
    pub cases: usize,
    /// TOML overriding the `tiny` preset's values (as `train --config`); the schedule
    /// stays the demo's.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Steps a budget allows at a preset: an upper bound (the schedule is fitted to the
/// measured step time, never above this), so the per-step times here are below the
/// fastest measured on 2 cores (`tiny` 0.20 s, validation included, 2026-12-02).
fn steps_for(minutes: f64, preset: Preset) -> u64 {
    let per_step = match preset {
        Preset::Tiny => 0.12,
        Preset::Cpu => 0.25,
        Preset::Paper => 60.0,
    };
    ((minutes * 60.0 / per_step) as u64).max(25)
}

/// Train a configuration within a time budget, predict the test split and evaluate it.
fn train_infer_evaluate(
    cfg: &TrainConfig,
    data: &Path,
    dir: &Path,
    backend: Backend,
) -> anyhow::Result<Report> {
    let run = dir.join("run");
    let s = train(
        cfg,
        &TrainOptions {
            data: data.to_path_buf(),
            out: run.clone(),
            resume: false,
            device: device(backend)?,
            progress: true,
            stop_after_steps: None,
            watch: None,
        },
    )?;
    eprintln!(
        "trained {} steps (loss {:.3} → {:.3})",
        s.steps,
        s.first_loss.unwrap_or(f64::NAN),
        s.last_loss.unwrap_or(f64::NAN)
    );
    let p = Predictor::load(&run, device(backend)?, 0.5, false)?;
    let preds = dir.join("predictions");
    predict_dir(&p, data, Split::Test, &preds, false, true, |_, _, _| Ok(()))?;
    evaluate(&preds, data, Some(&dir.join("evaluation")))
}

/// The schedule of `demo` and `ablate`: epochs of 25 steps, validation every 4, as
/// many steps as `minutes` allow at most, stopped by the time budget.
fn timed_schedule(cfg: &mut TrainConfig, minutes: f64, preset: Preset) {
    cfg.steps_per_epoch = 25;
    cfg.epochs = steps_for(minutes, preset).div_ceil(25);
    cfg.max_minutes = minutes;
    cfg.val_every = 4;
}

pub fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let data = a.out.join("data");
    eprintln!(
        "1/4 synth: {} paired CT/MRI training pairs and 2 test pairs ({}) in {}",
        a.cases,
        a.variety.generator(),
        data.display()
    );
    let opts = crate::data::synth::SynthOptions {
        cases: a.cases,
        test_cases: 2,
        seed: a.seed,
        scale: crate::data::synth::Scale::Small,
        preview: true,
        variety: a.variety,
        mr_pose: a
            .mr_pose
            .unwrap_or_else(crate::data::synth::default_mr_pose),
        ..Default::default()
    };
    crate::data::synth::generate(&opts, &data, &|| {})?;
    crate::viz::dataset_previews(&data)?;
    let mut cfg = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read", p.display()))?;
            TrainConfig::from_toml(&text, Some(Preset::Tiny))
                .with_context(|| format!("{}", p.display()))?
        }
        None => TrainConfig::preset(Preset::Tiny),
    };
    cfg.seed = a.seed;
    timed_schedule(&mut cfg, a.minutes, Preset::Tiny);
    eprintln!(
        "2/4 train: tiny preset, up to {} steps or {} minutes",
        cfg.total_steps(),
        a.minutes
    );
    eprintln!("3/4 infer, 4/4 evaluate: the test cases");
    let report = train_infer_evaluate(&cfg, &data, &a.out, a.backend)?;
    println!("\nRL-U²Net demo — SynthWHS test cases (Dice %, HD95 mm)\n");
    println!("{}", report.table());
    eprintln!(
        "done in {:.1} min. Everything is in {}: data/, run/ (checkpoints, metrics.jsonl, alignment.json, loss_curves.png, val_dice.png, ppo_reward.png, ppo_policy.png), predictions/, evaluation/ (report.md with the confusion matrices, report.json, overlays/)",
        t0.elapsed().as_secs_f64() / 60.0,
        a.out.display()
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct AblateArgs {
    /// MM-WHS-layout data (with labelled test cases).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Preset::Tiny)]
    pub preset: Preset,
    /// Training budget per variant, in minutes.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to compute (`--device` as in nnU-Net and TotalSegmentator; `--backend` also works).
    #[arg(long, visible_alias = "device", default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Only these rows (comma-separated), e.g. to run the table in parts.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Variant::ALL)]
    pub variants: Vec<Variant>,
}

/// The paper's Table 2: the full model and each ablation, same budget and seed.
pub fn ablate(a: AblateArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &v in &a.variants {
        let mut cfg = TrainConfig::preset(a.preset);
        cfg.seed = a.seed;
        timed_schedule(&mut cfg, a.minutes, a.preset);
        v.apply(&mut cfg);
        eprintln!("variant {v}");
        let r = train_infer_evaluate(&cfg, &a.data, &a.out.join(v.name()), a.backend)?;
        rows.push((v.name().to_string(), r));
    }
    let t = crate::metrics::report::ablation_table(&rows);
    crate::io::write_atomically(&a.out.join("ablation.md"), t.as_bytes())?;
    println!("{t}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suffix_goes_before_the_whole_extension() {
        let p = |s: &str| with_suffix(Path::new(s), "_mr");
        assert_eq!(p("out/ct.nii.gz"), Path::new("out/ct_mr.nii.gz"));
        assert_eq!(p("ct.nii"), Path::new("ct_mr.nii"));
        assert_eq!(p("a.b/case.v2.png"), Path::new("a.b/case.v2_mr.png"));
        assert_eq!(p("noext"), Path::new("noext_mr"));
    }
}
