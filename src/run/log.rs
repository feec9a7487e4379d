//! `metrics.jsonl`: one typed line per training step, epoch end and PPO update, written
//! by the training loop and read back by the plots (and by anyone with a JSON reader:
//! each line is an object whose `kind` is `step`, `epoch` or `ppo`).
//!
//! Non-finite numbers are written as `null` (JSON has no NaN) and read back as NaN.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Deserializer, Serialize};

use crate::io::write_atomically;
use crate::rl::UpdateStats;

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LogLine {
    Step(StepLine),
    Epoch(EpochLine),
    Ppo(PpoLine),
}

impl LogLine {
    /// The training step the line belongs to (an epoch line: its last step).
    pub fn step(&self) -> u64 {
        match self {
            LogLine::Step(s) => s.step,
            LogLine::Epoch(e) => e.step,
            LogLine::Ppo(p) => p.step,
        }
    }
}

/// What one training step did (eq. 20's terms per modality, the agents' rotations).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLine {
    pub epoch: u64,
    pub step: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub dice_ct: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub dice_mr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub ce_ct: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub ce_mr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub align: f64,
    /// Per alignment module, the mean similarity of the rotations taken (NaN when the
    /// pair is self-paired).
    #[serde(deserialize_with = "nan_vec_if_null")]
    pub s_sim: Vec<f64>,
    /// Per module, the reward of each rotation taken (empty when self-paired).
    pub reward: Vec<Vec<f64>>,
    pub lr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// Per module, the rotations taken (indices into the 24 cube rotations).
    pub actions: Vec<Vec<usize>>,
    pub self_paired: bool,
}

/// The end of an epoch (or of the run): its validation, when one ran, and the time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLine {
    /// Epochs completed.
    pub epoch: u64,
    /// The last step of the epoch.
    pub step: u64,
    #[serde(flatten)]
    pub validation: Option<Validation>,
    /// Wall-clock seconds since the run (or its resumption) started: only epoch lines
    /// carry a time, so that step and PPO lines are reproducible.
    pub seconds: f64,
}

/// Validation Dice on the held-out cases, per structure and its mean per modality
/// (`None` where a structure or a modality has no case).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub val_dice_ct: BTreeMap<String, Option<f64>>,
    pub val_dice_mr: BTreeMap<String, Option<f64>>,
    pub val_mean_dice_ct: Option<f64>,
    pub val_mean_dice_mr: Option<f64>,
}

/// One PPO update of one alignment module.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PpoLine {
    /// The alignment module (0 = the coarsest).
    pub module: usize,
    pub step: u64,
    #[serde(flatten)]
    pub stats: UpdateStats,
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nan_vec_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v = Vec::<Option<f64>>::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

/// The append-only writer of `metrics.jsonl`.
pub struct MetricsLog {
    file: std::fs::File,
}

impl MetricsLog {
    /// Open for appending. A new run (`steps_done` None) starts an empty file; on resume
    /// from a checkpoint after `steps_done` steps, only the lines of those steps are kept
    /// (a killed run may have logged later steps, and its last line may be torn), so
    /// that the file matches an uninterrupted run's.
    pub fn open(path: &Path, steps_done: Option<u64>) -> anyhow::Result<MetricsLog> {
        match steps_done {
            Some(done) if path.exists() => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                let kept: Vec<&str> = text
                    .lines()
                    .filter(|l| serde_json::from_str::<LogLine>(l).is_ok_and(|v| v.step() < done))
                    .collect();
                let mut out = kept.join("\n");
                if !out.is_empty() {
                    out.push('\n');
                }
                write_atomically(path, out.as_bytes())
                    .with_context(|| format!("{}: cannot write", path.display()))?;
            }
            Some(_) => {}
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(MetricsLog { file })
    }

    pub fn write(&mut self, line: &LogLine) -> anyhow::Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(line)?)?;
        Ok(())
    }
}

/// Every readable line of a `metrics.jsonl` (a torn or foreign line is skipped); an
/// absent file has none.
pub fn read_log(path: &Path) -> Vec<LogLine> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_line() -> StepLine {
        StepLine {
            epoch: 0,
            step: 3,
            loss: 1.5,
            dice_ct: 0.5,
            dice_mr: 0.25,
            ce_ct: 2.0,
            ce_mr: 2.5,
            align: 0.125,
            s_sim: vec![f64::NAN, 0.5],
            reward: vec![vec![0.25], vec![]],
            lr: 1e-3,
            grad_norm: 3.0,
            actions: vec![vec![8], vec![1, 2]],
            self_paired: false,
        }
    }

    #[test]
    fn lines_round_trip_with_their_kind_and_nan_as_null() {
        let s = LogLine::Step(step_line());
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.starts_with(r#"{"kind":"step","#), "{text}");
        assert!(text.contains(r#""s_sim":[null,0.5]"#), "{text}");
        let back: LogLine = serde_json::from_str(&text).unwrap();
        let LogLine::Step(b) = back else {
            panic!("not a step line")
        };
        assert!(b.s_sim[0].is_nan() && b.s_sim[1] == 0.5 && b.loss == 1.5);
        for e in [
            EpochLine {
                epoch: 2,
                step: 9,
                validation: None,
                seconds: 1.5,
            },
            EpochLine {
                epoch: 2,
                step: 9,
                validation: Some(Validation {
                    val_dice_ct: [("LV".to_string(), Some(0.5)), ("RV".into(), None)].into(),
                    val_dice_mr: BTreeMap::new(),
                    val_mean_dice_ct: Some(0.5),
                    val_mean_dice_mr: None,
                }),
                seconds: 1.5,
            },
        ] {
            let text = serde_json::to_string(&LogLine::Epoch(e.clone())).unwrap();
            assert_eq!(
                e.validation.is_some(),
                text.contains("val_dice_ct"),
                "{text}"
            );
            let back: LogLine = serde_json::from_str(&text).unwrap();
            assert_eq!(back, LogLine::Epoch(e));
        }
        let p = LogLine::Ppo(PpoLine {
            module: 1,
            step: 4,
            stats: UpdateStats {
                update: 2,
                mean_reward: 0.5,
                entropy: 3.0,
                top3: vec![(8, 0.5), (1, 0.25), (2, 0.125)],
                clip_fraction: 0.0,
                value_loss: 1.0,
                policy_loss: -0.5,
            },
        });
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains(r#""top3":[[8,0.5]"#), "{text}");
        assert_eq!(serde_json::from_str::<LogLine>(&text).unwrap(), p);
    }

    #[test]
    fn resume_keeps_only_the_lines_of_the_steps_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, None).unwrap();
        for step in 0..5 {
            let mut s = step_line();
            s.step = step;
            log.write(&LogLine::Step(s)).unwrap();
        }
        drop(log);
        // a torn last line, as a killed run leaves
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(r#"{"kind":"step","epo"#);
        std::fs::write(&path, text).unwrap();
        MetricsLog::open(&path, Some(3)).unwrap();
        let steps: Vec<u64> = read_log(&path).iter().map(LogLine::step).collect();
        assert_eq!(steps, vec![0, 1, 2]);
        MetricsLog::open(&path, None).unwrap();
        assert!(read_log(&path).is_empty());
    }
}
