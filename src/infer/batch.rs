//! Batch inference over one split of an MM-WHS-layout folder, with the habits of
//! nnU-Net's and TotalSegmentator's predictors: a bad case is reported and skipped
//! (every other case is still predicted; `failures.json` lists the bad ones), an
//! interrupted batch resumes where it stopped (`resume`: cases whose outputs are all
//! present are skipped; every output is written through a rename, so present means
//! complete), and a folder is split into parts for several processes or machines
//! (`part`: the pairs whose index is `id` modulo `count`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::{Input, Prediction, Predictor, window_bar, write_prediction};
use crate::data::layout::{Case, Modality, Split, discover};

/// Which share of a folder one process predicts (`--num-parts N --part-id K`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub count: usize,
    pub id: usize,
}

impl Default for Part {
    fn default() -> Self {
        Part { count: 1, id: 0 }
    }
}

impl Part {
    pub fn new(count: usize, id: usize) -> anyhow::Result<Part> {
        anyhow::ensure!(count >= 1, "--num-parts must be at least 1");
        anyhow::ensure!(
            id < count,
            "--part-id {id} is not below --num-parts {count} (parts count from 0)"
        );
        Ok(Part { count, id })
    }

    pub fn holds(&self, index: usize) -> bool {
        index % self.count == self.id
    }

    /// A file name with this part in it when there are several (`failures.json`,
    /// `failures.part-1-of-4.json`), so parts sharing an output folder do not collide.
    pub fn file_name(&self, stem: &str, ext: &str) -> String {
        if self.count == 1 {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}.part-{}-of-{}.{ext}", self.id, self.count)
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct BatchOptions {
    /// Also write each prediction's class probabilities.
    pub probabilities: bool,
    pub show_progress: bool,
    /// Stop at the first bad case (the error names it).
    pub fail_fast: bool,
    /// Skip cases whose outputs are already complete.
    pub resume: bool,
    pub part: Part,
}

/// One case (one image) that could not be predicted.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub case: String,
    pub input: PathBuf,
    pub error: String,
}

#[derive(Debug, Default)]
pub struct BatchReport {
    pub written: Vec<PathBuf>,
    /// Images (cases) in this part.
    pub assigned: usize,
    pub predicted: usize,
    /// Skipped because their outputs were already there (`resume`; a CT/MRI pair is
    /// skipped only whole, since each one's prediction uses the other).
    pub already_done: usize,
    pub failures: Vec<Failure>,
}

/// The label file (and probabilities) a case's prediction is written to.
pub fn outputs_of(case: &Case, out: &Path, probabilities: bool) -> Vec<PathBuf> {
    let label = out.join(format!("{}_label.nii.gz", case.name()));
    let probs = probabilities
        .then(|| super::probabilities_path(&label))
        .flatten();
    std::iter::once(label).chain(probs).collect()
}

/// Predict every `<case>_image` of one split, writing `<case>_label.nii.gz` into
/// `out`. CT and MRI cases are paired by their order (as a paired data set is in
/// training); a modality without a partner is predicted alone (self-pairing). `each`
/// is called with every case's input and prediction after it is written
/// (statistics), so nothing is read twice; an error from it fails that case.
pub fn predict_batch(
    p: &Predictor,
    data: &Path,
    split: Split,
    out: &Path,
    opts: &BatchOptions,
    mut each: impl FnMut(&Case, &Input, &Prediction) -> anyhow::Result<()>,
) -> anyhow::Result<BatchReport> {
    let ds = discover(data)?;
    let (ct, mr) = split_cases(&ds, data, split, out)?;
    let units: Vec<usize> = (0..ct.len().max(mr.len()))
        .filter(|&i| opts.part.holds(i))
        .collect();
    let mut report = BatchReport {
        assigned: units
            .iter()
            .map(|&i| usize::from(i < ct.len()) + usize::from(i < mr.len()))
            .sum(),
        ..BatchReport::default()
    };
    let bars = Bars::new(units.len() as u64, opts.show_progress);
    for i in units {
        let pair = [ct.get(i).copied(), mr.get(i).copied()];
        let cases: Vec<&Case> = pair.iter().flatten().copied().collect();
        let names: Vec<String> = cases.iter().map(|c| c.name()).collect();
        let outputs: Vec<PathBuf> = cases
            .iter()
            .flat_map(|c| outputs_of(c, out, opts.probabilities))
            .collect();
        if opts.resume && outputs.iter().all(|o| o.is_file()) {
            report.already_done += cases.len();
            bars.cases.inc(1);
            continue;
        }
        bars.cases.set_message(names.join(" + "));
        let (inputs, mut failed) = read_pair(p, pair);
        if !failed.is_empty() && opts.fail_fast {
            let (c, e) = failed.remove(0);
            return Err(e.context(c.name()));
        }
        if inputs.iter().any(Option::is_some) {
            let predicted =
                guarded(|| predict_inputs(p, pair, &inputs, out, opts, &bars, &mut each));
            match predicted {
                Ok(written) => {
                    report.written.extend(written);
                    report.predicted += inputs.iter().flatten().count();
                }
                Err(e) if opts.fail_fast => return Err(e.context(names.join(" + "))),
                Err(e) => {
                    let e = format!("{e:#}");
                    for (slot, x) in inputs.iter().enumerate() {
                        if let (Some(c), Some(_)) = (pair[slot], x) {
                            failed.push((c, anyhow::anyhow!("{e}")));
                        }
                    }
                }
            }
        }
        bars.cases.inc(1);
        for (c, e) in failed {
            report.failures.push(failure(c, e, &bars));
        }
    }
    bars.cases.finish_and_clear();
    Ok(report)
}

/// Each image of a pair read on its own: a bad one leaves its partner to be predicted
/// alone.
fn read_pair<'c>(
    p: &Predictor,
    pair: [Option<&'c Case>; 2],
) -> ([Option<Input>; 2], Vec<(&'c Case, anyhow::Error)>) {
    let mut inputs: [Option<Input>; 2] = [None, None];
    let mut failed = Vec::new();
    for (slot, m) in [(0, Modality::Ct), (1, Modality::Mr)] {
        if let Some(c) = pair[slot] {
            match guarded(|| p.prepare(&c.image, m)) {
                Ok(x) => inputs[slot] = Some(x),
                Err(e) => failed.push((c, e)),
            }
        }
    }
    (inputs, failed)
}

/// A failed case, printed above the progress bars as one line.
fn failure(c: &Case, e: anyhow::Error, bars: &Bars) -> Failure {
    let error = format!("{e:#}").replace('\n', " ");
    bars.cases.println(format!("failed: {}: {error}", c.name()));
    Failure {
        case: c.name(),
        input: c.image.clone(),
        error,
    }
}

/// The cases of one split, and the output folder made.
fn split_cases<'d>(
    ds: &'d crate::data::layout::Dataset,
    data: &Path,
    split: Split,
    out: &Path,
) -> anyhow::Result<(Vec<&'d Case>, Vec<&'d Case>)> {
    let ct = ds.select(Modality::Ct, split);
    let mr = ds.select(Modality::Mr, split);
    anyhow::ensure!(
        !ct.is_empty() || !mr.is_empty(),
        "{}: no {} cases (expected ct_{}/…_image.nii.gz or mr_{}/…)",
        data.display(),
        split.name(),
        split.name(),
        split.name()
    );
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    Ok((ct, mr))
}

/// `f`, with a panic turned into an error (a bug must not end a night's batch).
fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|panic| Err(anyhow::anyhow!("{}", panic_message(panic.as_ref()))))
}

/// The one line a caught panic is reported with.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    format!("internal error (a panic: {what}); please report it")
}

/// Predict the inputs read (a pair in one tiling, or one alone) and write them.
fn predict_inputs(
    p: &Predictor,
    pair: [Option<&Case>; 2],
    inputs: &[Option<Input>; 2],
    out: &Path,
    opts: &BatchOptions,
    bars: &Bars,
    each: &mut impl FnMut(&Case, &Input, &Prediction) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<PathBuf>> {
    let [ci, mi] = inputs;
    let windows =
        crate::progress::Progress::new(bars.windows(p.window_total(ci.as_ref(), mi.as_ref())));
    let preds = p.predict_any(ci.as_ref(), mi.as_ref(), &windows)?;
    windows.finish_and_clear();
    let mut written = Vec::new();
    for ((case, input), pred) in pair.into_iter().zip(inputs).zip(preds) {
        if let (Some(c), Some(x), Some(pred)) = (case, input, pred) {
            let path = &outputs_of(c, out, false)[0];
            written.extend(write_prediction(path, &pred, opts.probabilities)?);
            each(c, x, &pred)?;
        }
    }
    Ok(written)
}

/// A bar over the cases (count, elapsed, time left) and one over each case's windows.
struct Bars {
    multi: Option<indicatif::MultiProgress>,
    cases: indicatif::ProgressBar,
}

impl Bars {
    fn new(n: u64, show: bool) -> Bars {
        if !show {
            return Bars {
                multi: None,
                cases: indicatif::ProgressBar::hidden(),
            };
        }
        let multi = indicatif::MultiProgress::new();
        let cases = multi.add(indicatif::ProgressBar::new(n));
        cases.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} cases · {elapsed} elapsed · about {eta} left · {msg}",
            )
            .expect("valid template"),
        );
        Bars {
            multi: Some(multi),
            cases,
        }
    }

    fn windows(&self, n: u64) -> indicatif::ProgressBar {
        match &self.multi {
            Some(m) => m.add(window_bar(n)),
            None => indicatif::ProgressBar::hidden(),
        }
    }
}

/// `failures.json` (or its part's name) in `out`: the failed cases and their errors;
/// an earlier one is removed when nothing failed.
pub fn write_failures(out: &Path, part: Part, failures: &[Failure]) -> anyhow::Result<PathBuf> {
    let path = out.join(part.file_name("failures", "json"));
    if failures.is_empty() {
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("{}: cannot remove", path.display()))?;
        }
        return Ok(path);
    }
    crate::io::write_atomically(&path, serde_json::to_string_pretty(failures)?.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_index_exactly_once() {
        for count in 1..6 {
            let parts: Vec<Part> = (0..count).map(|k| Part::new(count, k).unwrap()).collect();
            for i in 0..50 {
                assert_eq!(
                    parts.iter().filter(|p| p.holds(i)).count(),
                    1,
                    "{count} parts, index {i}"
                );
            }
        }
        assert!(Part::new(2, 2).is_err());
        assert!(Part::new(0, 0).is_err());
        assert_eq!(
            Part::new(4, 1).unwrap().file_name("failures", "json"),
            "failures.part-1-of-4.json"
        );
        assert_eq!(
            Part::default().file_name("failures", "json"),
            "failures.json"
        );
    }
}
