//! The run folder, and the one type that owns it ([`RunDir`]).
//!
//! Every command that trains (`train`, `demo`, `ablate`) writes the same folder:
//!
//! | file | owner | what |
//! |---|---|---|
//! | `run.json` | [`RunInfo`] | the data folder and the rlu2net version that started the run |
//! | `config.toml` | [`TrainConfig`] | every setting, the preset resolved |
//! | `plan.json` | [`Plan`] | the preprocessing settings and the CT statistics fitted under them |
//! | `metrics.jsonl` | [`LogLine`] | one line per step, epoch end and PPO update |
//! | `alignment.json` | `train::alignment` | per module, the rotation each agent prefers |
//! | `checkpoints/{best,last}/` | `checkpoint` | model, optimiser, agents, loop state |
//! | `preprocessed/` | `preprocess::cache` | the working-grid cases, keyed by a hash |
//! | `*.png` | `train::plots` | loss, validation and PPO curves, redrawn from `metrics.jsonl` |
//!
//! `train --resume`, `infer --model` and `export` read it back through the same type; a
//! missing or damaged piece is one line that names the file.

pub mod log;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use self::log::{EpochLine, LogLine, MetricsLog, PpoLine, StepLine, Validation, read_log};
use crate::config::TrainConfig;
pub use crate::preprocess::plan::Plan;

/// What started the run: `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The data folder (absolute where it could be resolved).
    pub data: PathBuf,
    /// The rlu2net version that wrote the file (absent in older runs).
    #[serde(default)]
    pub rlu2net_version: String,
}

impl RunInfo {
    pub fn new(data: &Path) -> RunInfo {
        RunInfo {
            data: std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf()),
            rlu2net_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// The two checkpoints of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpoint {
    /// The best validation Dice so far.
    Best,
    /// The latest epoch end (what `--resume` continues from).
    Last,
}

impl Checkpoint {
    pub fn name(self) -> &'static str {
        match self {
            Checkpoint::Best => "best",
            Checkpoint::Last => "last",
        }
    }
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A run folder: its paths, and the typed reading and writing of each file in it.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

/// One line for a parse error (TOML errors span several lines with a caret).
fn one_line(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    let parts: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    parts.join("; ")
}

impl RunDir {
    /// The run folder at `root` (nothing is read or written).
    pub fn at(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn info_path(&self) -> PathBuf {
        self.root.join("run.json")
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn plan_path(&self) -> PathBuf {
        self.root.join("plan.json")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn alignment_path(&self) -> PathBuf {
        self.root.join("alignment.json")
    }
    pub fn preprocessed_dir(&self) -> PathBuf {
        self.root.join("preprocessed")
    }
    pub fn checkpoint_dir(&self, which: Checkpoint) -> PathBuf {
        self.root.join("checkpoints").join(which.name())
    }

    /// Create the folder (and its parents) and check that it is writable.
    pub fn create(&self) -> anyhow::Result<()> {
        let root = &self.root;
        std::fs::create_dir_all(root)
            .with_context(|| format!("{}: cannot create the output folder", root.display()))?;
        let probe = root.join(".write-test");
        std::fs::write(&probe, b"ok")
            .with_context(|| format!("{}: the output folder is not writable", root.display()))?;
        let _ = std::fs::remove_file(probe);
        Ok(())
    }

    fn read_text(&self, path: &Path, hint: &str) -> anyhow::Result<String> {
        std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot read ({e}); is {} a run folder (from `rlu2net train` or `demo`)?{hint}",
                path.display(),
                self.root.display()
            )
        })
    }

    fn write_text(&self, path: &Path, text: &str) -> anyhow::Result<()> {
        crate::io::write_atomically(path, text.as_bytes())
            .with_context(|| format!("{}: cannot write", path.display()))
    }

    pub fn read_config(&self) -> anyhow::Result<TrainConfig> {
        let path = self.config_path();
        let text = self.read_text(&path, "")?;
        TrainConfig::from_toml(&text, None)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(format!("{e:#}"))))
    }

    pub fn write_config(&self, cfg: &TrainConfig) -> anyhow::Result<()> {
        self.write_text(&self.config_path(), &cfg.to_toml())
    }

    pub fn read_info(&self) -> anyhow::Result<RunInfo> {
        let path = self.info_path();
        let text = self.read_text(&path, " (or pass --data DATA)")?;
        serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: damaged ({}); pass --data DATA to say where the data is",
                path.display(),
                one_line(e)
            )
        })
    }

    pub fn write_info(&self, info: &RunInfo) -> anyhow::Result<()> {
        self.write_text(&self.info_path(), &serde_json::to_string_pretty(info)?)
    }

    /// The plan, `None` when the run has none yet.
    pub fn read_plan(&self) -> anyhow::Result<Option<Plan>> {
        let path = self.plan_path();
        if !path.exists() {
            return Ok(None);
        }
        let text = self.read_text(&path, "")?;
        Plan::from_json(&text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn write_plan(&self, plan: &Plan) -> anyhow::Result<()> {
        self.write_text(&self.plan_path(), &serde_json::to_string_pretty(plan)?)
    }

    /// The checkpoint a run predicts with: best, else last.
    pub fn predict_checkpoint(&self) -> anyhow::Result<(Checkpoint, PathBuf)> {
        [Checkpoint::Best, Checkpoint::Last]
            .into_iter()
            .map(|c| (c, crate::checkpoint::resolve(&self.checkpoint_dir(c))))
            .find(|(_, p)| p.join("model.bpk").exists())
            .with_context(|| {
                format!(
                    "{}: no checkpoint (checkpoints/best or checkpoints/last)",
                    self.root.display()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{CtStats, PreprocessConfig};

    fn only_line(e: anyhow::Error) -> String {
        let s = format!("{e:#}");
        assert!(!s.contains('\n'), "more than one line: {s}");
        s
    }

    #[test]
    fn each_file_round_trips_and_a_damaged_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::at(dir.path().join("run"));
        run.create().unwrap();
        assert!(run.read_plan().unwrap().is_none());
        let e = only_line(run.read_info().unwrap_err());
        assert!(
            e.contains("run.json: cannot read") && e.contains("--data"),
            "{e}"
        );
        let info = RunInfo::new(dir.path());
        run.write_info(&info).unwrap();
        assert_eq!(run.read_info().unwrap(), info);
        let cfg = TrainConfig::preset(crate::model::Preset::Tiny);
        run.write_config(&cfg).unwrap();
        assert_eq!(run.read_config().unwrap().to_toml(), cfg.to_toml());
        let plan = Plan {
            preprocess: PreprocessConfig::default(),
            ct_stats: CtStats {
                clip_low: -100.0,
                clip_high: 400.0,
                mean: 80.0,
                std: 120.0,
            },
        };
        run.write_plan(&plan).unwrap();
        assert_eq!(run.read_plan().unwrap(), Some(plan));
        // truncated
        let text = std::fs::read_to_string(run.plan_path()).unwrap();
        std::fs::write(run.plan_path(), &text[..text.len() / 2]).unwrap();
        let e = only_line(run.read_plan().unwrap_err());
        assert!(e.contains("plan.json: damaged"), "{e}");
        std::fs::write(run.config_path(), "[model\npatch = ").unwrap();
        let e = only_line(run.read_config().unwrap_err());
        assert!(e.contains("config.toml:"), "{e}");
        std::fs::write(run.info_path(), "{").unwrap();
        let e = only_line(run.read_info().unwrap_err());
        assert!(e.contains("run.json: damaged"), "{e}");
    }
}
