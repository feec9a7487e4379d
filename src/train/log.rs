//! The plots redrawn from the run's log (`metrics.jsonl`, `crate::run::log`), and the
//! PPO updates' lines.

use std::path::Path;

use super::plots;
use crate::rl::UpdateStats;
use crate::run::{LogLine, MetricsLog, PpoLine, read_log};

pub fn redraw_plots(out: &Path) -> anyhow::Result<()> {
    let mut loss = Vec::new();
    let mut val_ct = Vec::new();
    let mut val_mr = Vec::new();
    let mut reward: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut top_prob: Vec<Vec<(f64, f64)>> = Vec::new();
    for line in read_log(&crate::run::RunDir::at(out).metrics_path()) {
        match line {
            LogLine::Step(s) => loss.push((s.step as f64, s.loss)),
            LogLine::Epoch(e) => {
                let x = e.epoch as f64;
                let v = e.validation.as_ref();
                if let Some(d) = v.and_then(|v| v.val_mean_dice_ct) {
                    val_ct.push((x, d));
                }
                if let Some(d) = v.and_then(|v| v.val_mean_dice_mr) {
                    val_mr.push((x, d));
                }
            }
            LogLine::Ppo(p) => {
                let m = p.module;
                if reward.len() <= m {
                    reward.resize(m + 1, Vec::new());
                    top_prob.resize(m + 1, Vec::new());
                }
                let u = p.stats.update as f64;
                reward[m].push((u, p.stats.mean_reward));
                let top = p.stats.top3.first().map_or(f64::NAN, |t| t.1);
                top_prob[m].push((u, top));
            }
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
    metrics: &mut MetricsLog,
    step: u64,
    module: usize,
    u: &UpdateStats,
) -> anyhow::Result<()> {
    tracing::info!("ppo module {module}: {}", u.line());
    metrics.write(&LogLine::Ppo(PpoLine {
        module,
        step,
        stats: u.clone(),
    }))
}
