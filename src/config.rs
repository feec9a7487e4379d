//! The run configuration: one tree, TOML on disk, every default of docs/method.md.

use serde::{Deserialize, Serialize};

use crate::data::sampler::{AugmentConfig, Pairing, SamplerConfig};
use crate::loss::LossConfig;
use crate::model::{ModelConfig, Preset};
use crate::preprocess::PreprocessConfig;
use crate::rl::PpoConfig;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate of AdamW.
    pub lr: f64,
    pub weight_decay: f64,
    /// Linear warm-up over this fraction of all steps, then cosine decay to 0.
    pub warmup_fraction: f64,
    /// Clip the global gradient norm to this.
    pub grad_clip_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-4,
            weight_decay: 1e-5,
            warmup_fraction: 0.05,
            grad_clip_norm: 1.0,
        }
    }
}

impl OptimConfig {
    /// Learning rate at `step` of `total` (warm-up, then cosine).
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        let warm = ((self.warmup_fraction * total as f64).round() as u64).max(1);
        if step < warm {
            return self.lr * (step + 1) as f64 / warm as f64;
        }
        let t = (step - warm) as f64 / (total.saturating_sub(warm)).max(1) as f64;
        0.5 * self.lr * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The preset the defaults came from (informational once resolved).
    pub preset: Preset,
    pub seed: u64,
    pub epochs: u64,
    pub steps_per_epoch: u64,
    /// Validate every this many epochs.
    pub val_every: u64,
    /// Window overlap of the sliding-window validation.
    pub val_overlap: f64,
    /// Fraction of the training cases of each modality held out for validation.
    pub val_fraction: f64,
    /// Stop (with a checkpoint) after this many minutes; 0 = no limit.
    pub max_minutes: f64,
    /// How CT and MRI cases are paired: `auto` decides by the data set (`index` for a
    /// paired SynthWHS set, `random` otherwise).
    pub pairing: PairingSetting,
    pub model: ModelConfig,
    pub preprocess: PreprocessConfig,
    pub sampler: SamplerConfig,
    pub loss: LossConfig,
    pub optim: OptimConfig,
    pub ppo: PpoConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig::preset(Preset::Cpu)
    }
}

impl TrainConfig {
    pub fn preset(p: Preset) -> TrainConfig {
        // `cpu` (docs/method-notes.md, "The `cpu` preset"): the `tiny` network's 32³
        // patches with C = 12, at the learning rate measured best at `tiny`, many steps
        // rather than few large ones; validated every 500 steps
        let (spacing, lr, epochs, steps, batch, val_every) = match p {
            Preset::Paper => (1.5, 1e-4, 1000, 250, 2, 1),
            Preset::Cpu => (4.0, 5e-3, 40, 250, 1, 2),
            Preset::Tiny => (4.0, 5e-3, 20, 25, 1, 1),
        };
        let model = ModelConfig::preset(p);
        TrainConfig {
            preset: p,
            seed: 0,
            epochs,
            steps_per_epoch: steps,
            val_every,
            val_overlap: 0.25,
            val_fraction: 0.2,
            max_minutes: 0.0,
            pairing: PairingSetting::Auto,
            loss: LossConfig {
                align_window: model.window,
                ..LossConfig::default()
            },
            model,
            preprocess: PreprocessConfig {
                spacing,
                ..PreprocessConfig::default()
            },
            sampler: SamplerConfig {
                batch_size: batch,
                augment: match p {
                    Preset::Tiny => AugmentConfig::none(),
                    Preset::Cpu => AugmentConfig::rotations(0.5, 30.0),
                    Preset::Paper => AugmentConfig::default(),
                },
                ..SamplerConfig::default()
            },
            optim: OptimConfig {
                lr,
                ..OptimConfig::default()
            },
            ppo: PpoConfig::default(),
        }
    }

    /// A preset overlaid with a TOML document; any unknown key is an error.
    pub fn from_toml(text: &str, preset: Option<Preset>) -> anyhow::Result<TrainConfig> {
        let user: toml::Table = toml::from_str(text).map_err(|e| {
            // one line: the message and where, without the multi-line snippet
            let line = e
                .span()
                .map(|r| text[..r.start.min(text.len())].lines().count().max(1))
                .map_or(String::new(), |l| format!(" (line {l})"));
            anyhow::anyhow!("not valid TOML: {}{line}", e.message().trim())
        })?;
        let base_preset = match (preset, user.get("preset")) {
            (Some(p), _) => p,
            (None, Some(v)) => toml::Value::try_into::<Preset>(v.clone())
                .map_err(|e| anyhow::anyhow!("preset: {e}"))?,
            (None, None) => Preset::Cpu,
        };
        let mut base = toml::Table::try_from(TrainConfig::preset(base_preset))?;
        merge(&mut base, user, "")?;
        base.insert("preset".into(), toml::Value::try_from(base_preset)?);
        let cfg: TrainConfig = toml::Value::Table(base).try_into()?;
        cfg.model.validate()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Settings that are valid one by one but not together.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !(self.ppo.group_baseline && self.model.k_sel == 1 && !self.model.no_rl_xalign),
            "ppo.group_baseline = true needs model.k_sel ≥ 2: with one rotation per step every \
             group-relative advantage is 0 and the policy never learns; set \
             ppo.group_baseline = false (the critic's baseline) or k_sel ≥ 2"
        );
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration serialises")
    }

    pub fn total_steps(&self) -> u64 {
        self.epochs * self.steps_per_epoch
    }
}

/// Overlay `user` on `base`; a key `base` does not have is an error naming it and
/// the keys that exist there.
fn merge(base: &mut toml::Table, user: toml::Table, path: &str) -> anyhow::Result<()> {
    for (k, v) in user {
        let full = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(u)) => merge(b, u, &full)?,
            (None, _) => {
                let known: Vec<&str> = base.keys().map(|s| s.as_str()).collect();
                anyhow::bail!(
                    "unknown setting `{full}`; remove it or correct its spelling (settings here: {})",
                    known.join(", ")
                );
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rotation_per_step_with_the_group_baseline_is_refused() {
        let e = TrainConfig::from_toml("preset = \"tiny\"\n[model]\nk_sel = 1\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k_sel") && e.contains("group_baseline"), "{e}");
        let ok = "preset = \"tiny\"\n[model]\nk_sel = 1\n[ppo]\ngroup_baseline = false\n";
        assert_eq!(TrainConfig::from_toml(ok, None).unwrap().model.k_sel, 1);
    }

    #[test]
    fn a_preset_round_trips_through_toml_and_unknown_keys_are_rejected() {
        let c = TrainConfig::preset(Preset::Tiny);
        assert_eq!(TrainConfig::from_toml(&c.to_toml(), None).unwrap(), c);
        let over =
            TrainConfig::from_toml("preset = \"tiny\"\nepochs = 3\n[model]\nk_sel = 2\n", None)
                .unwrap();
        assert_eq!(over.epochs, 3);
        assert_eq!(over.model.k_sel, 2);
        assert_eq!(over.model.patch, 32);
        let e = TrainConfig::from_toml("[model]\nk_sell = 2\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k_sell"), "{e}");
        assert!(TrainConfig::from_toml("epochz = 1", None).is_err());
    }

    #[test]
    fn learning_rate_warms_up_then_decays_to_zero() {
        let o = OptimConfig {
            lr: 1.0,
            warmup_fraction: 0.1,
            ..OptimConfig::default()
        };
        assert!((o.lr_at(0, 100) - 0.1).abs() < 1e-12);
        assert!((o.lr_at(9, 100) - 1.0).abs() < 1e-12);
        assert!((o.lr_at(10, 100) - 1.0).abs() < 1e-12);
        assert!((o.lr_at(55, 100) - 0.5).abs() < 1e-12);
        assert!(o.lr_at(99, 100) < 0.001);
    }
}

/// The `pairing` setting: a pairing, or `auto` (decided by the data set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairingSetting {
    #[default]
    Auto,
    Index,
    Random,
}

impl PairingSetting {
    /// The pairing for a data set that is (`paired_set`) or is not paired case by case.
    pub fn resolve(self, paired_set: bool) -> Pairing {
        match self {
            PairingSetting::Index => Pairing::Index,
            PairingSetting::Random => Pairing::Random,
            PairingSetting::Auto if paired_set => Pairing::Index,
            PairingSetting::Auto => Pairing::Random,
        }
    }
}

/// The rows of the paper's Table 2: the full model and each ablation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    #[value(name = "full")]
    Full,
    /// Without cross-modal attention.
    #[value(name = "no_cma")]
    NoCma,
    /// Without the PPO-steered alignment (identity pose).
    #[value(name = "no_rl_xalign")]
    NoRlXalign,
    /// Without the alignment loss term.
    #[value(name = "no_align_loss")]
    NoAlignLoss,
    /// Without the adaptive gradient weighting of the two branches.
    #[value(name = "no_agwd")]
    NoAgwd,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Full,
        Variant::NoCma,
        Variant::NoRlXalign,
        Variant::NoAlignLoss,
        Variant::NoAgwd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Full => "full",
            Variant::NoCma => "no_cma",
            Variant::NoRlXalign => "no_rl_xalign",
            Variant::NoAlignLoss => "no_align_loss",
            Variant::NoAgwd => "no_agwd",
        }
    }

    /// The configuration with this variant's part switched off.
    pub fn apply(self, cfg: &mut TrainConfig) {
        match self {
            Variant::Full => {}
            Variant::NoCma => cfg.model.no_cma = true,
            Variant::NoRlXalign => cfg.model.no_rl_xalign = true,
            Variant::NoAlignLoss => cfg.loss.no_align_loss = true,
            Variant::NoAgwd => cfg.loss.no_agwd = true,
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
