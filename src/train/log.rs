//! The run's log: `metrics.jsonl` (one line per step, epoch and PPO update) and
//! the plots redrawn from it.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use super::plots;
use crate::io::write_atomically;
use crate::rl::UpdateStats;

/// Append-only `metrics.jsonl`.
pub struct Metrics {
    file: std::fs::File,
}

impl Metrics {
    /// Open for appending; on resume from a checkpoint after `steps_done` steps, keep
    /// only the lines of those steps (a killed run may have logged later steps, and
    /// its last line may be torn), so the file matches an uninterrupted run's.
    pub fn open(path: &Path, steps_done: Option<u64>) -> anyhow::Result<Metrics> {
        if let Some(done) = steps_done
            && path.exists()
        {
            let text = std::fs::read_to_string(path)?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                        v.get("step")
                            .and_then(|s| s.as_u64())
                            .is_none_or(|s| s < done)
                    })
                })
                .collect();
            let mut out = kept.join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            write_atomically(path, out.as_bytes())?;
        } else if steps_done.is_none() {
            let _ = std::fs::remove_file(path);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(Metrics { file })
    }

    pub fn write(&mut self, v: &serde_json::Value) -> anyhow::Result<()> {
        writeln!(self.file, "{v}")?;
        Ok(())
    }
}

pub fn redraw_plots(out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    let mut loss = Vec::new();
    let mut val_ct = Vec::new();
    let mut val_mr = Vec::new();
    let mut reward: Vec<Vec<(f64, f64)>> = vec![Vec::new(); 4];
    let mut top_prob: Vec<Vec<(f64, f64)>> = vec![Vec::new(); 4];
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
                    let u = v["update"].as_f64().unwrap_or(0.0);
                    reward[m].push((u, v["mean_reward"].as_f64().unwrap_or(f64::NAN)));
                    let p = v["top3"][0][1].as_f64().unwrap_or(f64::NAN);
                    top_prob[m].push((u, p));
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
            "validation Dice (sliding window, held-out cases)",
            "epoch",
            "mean Dice",
            &[("CT".into(), val_ct), ("MRI".into(), val_mr)],
        )?;
    }
    let per_module = |v: Vec<Vec<(f64, f64)>>| -> Vec<(String, Vec<(f64, f64)>)> {
        v.into_iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(m, r)| (format!("module {} (1/{})", m + 1, 2 << m), r))
            .collect()
    };
    plots::line_plot(
        &out.join("ppo_reward.png"),
        "PPO mean reward per update",
        "update",
        "reward",
        &per_module(reward),
    )?;
    plots::line_plot(
        &out.join("ppo_policy.png"),
        "probability of the policy's top rotation per update",
        "update",
        "π(top rotation)",
        &per_module(top_prob),
    )
}

pub fn log_ppo(
    metrics: &mut Metrics,
    step: u64,
    module: usize,
    u: &UpdateStats,
) -> anyhow::Result<()> {
    tracing::info!("ppo module {module}: {}", u.line());
    let mut v = serde_json::to_value(u)?;
    v["kind"] = "ppo".into();
    v["module"] = module.into();
    v["step"] = step.into();
    metrics.write(&v)
}
