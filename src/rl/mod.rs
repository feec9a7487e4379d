//! PPO agents that learn PoseAlign's rotation policy (docs/method.md §3, eqs 8–13).
//!
//! One agent per RL-XAlign module. The actor is the module's θ ∈ R²⁴
//! (state-independent logits), the critic an MLP 3→64→64→1 (tanh). The agent is
//! small, so it runs in f64 on the CPU with exact hand-written gradients (checked
//! against finite differences): that keeps it deterministic, independent of the
//! device the network runs on, and lets a checkpoint restore it bit for bit.

pub mod adam;
pub mod critic;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use self::adam::Adam;
use self::critic::{Critic, STATE_DIM};
use crate::model::pose_align::{gumbel_top_k, log_probs};

pub type State = [f64; STATE_DIM];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoConfig {
    /// N: transitions collected before an update.
    pub buffer_size: usize,
    /// γ of eqs 10 and 13.
    pub gamma: f64,
    /// ε of the clipped surrogate (eq. 11).
    pub clip_epsilon: f64,
    /// K: rounds over the buffer per update.
    pub epochs: usize,
    /// M: minibatch size.
    pub minibatch: usize,
    pub lr_actor: f64,
    pub lr_critic: f64,
    /// Weight of the entropy bonus (the exploration floor).
    pub entropy_coef: f64,
    pub critic_hidden: usize,
    /// Advantage of each rotation relative to the mean reward of the rotations taken
    /// in the same step (they share the state and the segmentation term of the reward,
    /// so only their alignment terms tell them apart), instead of the TD advantage.
    pub group_baseline: bool,
    /// What the reward's alignment term S(a) measures: `"mutual-information"` of the
    /// probe windows (the default) or `"features"`, the encoder's feature correlation
    /// (docs/method-notes.md, "The alignment term").
    #[serde(default)]
    pub score: PoseScore,
    /// With `score = "features"`: score with the network as initialised, frozen,
    /// instead of the network being trained (whose scores drift as it learns:
    /// BENCHMARKS.md, "Pose 13 in training").
    pub probe_initial: bool,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            buffer_size: 64,
            gamma: 0.99,
            clip_epsilon: 0.2,
            epochs: 4,
            minibatch: 16,
            lr_actor: 1e-2,
            lr_critic: 1e-3,
            entropy_coef: 0.01,
            critic_hidden: 64,
            group_baseline: true,
            score: PoseScore::MutualInformation,
            probe_initial: false,
        }
    }
}

/// What the reward's alignment term S(a) measures (`train::reward`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoseScore {
    /// Mutual information of the probe windows' intensities (16 × 16 histogram).
    #[default]
    MutualInformation,
    /// Normalised cross-correlation of the encoder's features (network-dependent).
    Features,
}

/// One (s_t, a_t, log π_old(a_t), r_t, s_{t+1}).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub state: State,
    pub action: usize,
    pub log_prob_old: f64,
    pub reward: f64,
    pub next_state: State,
    /// Transitions recorded together (the k_sel rotations of one step) share a group.
    #[serde(default)]
    pub group: u64,
}

/// What one update did (the Figure 5(a) reward curve is `mean_reward` over updates).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateStats {
    pub update: u64,
    pub mean_reward: f64,
    /// Entropy of π_θ after the update (nats; ln 24 ≈ 3.178 is uniform).
    pub entropy: f64,
    /// The three most probable rotations and their probabilities.
    pub top3: Vec<(usize, f64)>,
    /// Fraction of samples whose ratio was clipped, over all minibatches.
    pub clip_fraction: f64,
    /// Mean critic loss over all minibatches.
    pub value_loss: f64,
    pub policy_loss: f64,
}

impl UpdateStats {
    /// One log line: update, mean reward, entropy, top-3 rotations, clip fraction, value loss.
    pub fn line(&self) -> String {
        let top: Vec<String> = self
            .top3
            .iter()
            .map(|(a, p)| format!("R{a}:{p:.2}"))
            .collect();
        format!(
            "update {} reward {:.4} entropy {:.3} top3 [{}] clip {:.2} value_loss {:.4}",
            self.update,
            self.mean_reward,
            self.entropy,
            top.join(" "),
            self.clip_fraction,
            self.value_loss
        )
    }
}

/// π_θ as probabilities.
pub fn softmax(theta: &[f64]) -> Vec<f64> {
    let m = theta.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = theta.iter().map(|t| (t - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

pub fn entropy(theta: &[f64]) -> f64 {
    softmax(theta)
        .iter()
        .filter(|p| **p > 0.0)
        .map(|p| -p * p.ln())
        .sum()
}

/// The actor's loss on a minibatch (eq. 11 with an entropy bonus):
/// L = −mean_i min(ρ_i A_i, clip(ρ_i, 1−ε, 1+ε) A_i) − c·H(π_θ),
/// ρ_i = π_θ(a_i) / π_old(a_i). Returns (L, ∂L/∂θ, fraction of clipped samples).
pub fn actor_loss(
    theta: &[f64],
    batch: &[(usize, f64, f64)],
    eps: f64,
    entropy_coef: f64,
) -> (f64, Vec<f64>, f64) {
    let pi = softmax(theta);
    let logpi: Vec<f64> = pi.iter().map(|p| p.ln()).collect();
    let n = batch.len() as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; theta.len()];
    let mut clipped = 0usize;
    for &(a, logp_old, adv) in batch {
        let ratio = (logpi[a] - logp_old).exp();
        let unclipped = ratio * adv;
        let clipped_ratio = ratio.clamp(1.0 - eps, 1.0 + eps);
        let surrogate = unclipped.min(clipped_ratio * adv);
        loss -= surrogate / n;
        if clipped_ratio != ratio {
            clipped += 1;
        }
        // the gradient flows through ρ only where the unclipped term is the minimum
        if unclipped <= clipped_ratio * adv {
            // ∂ρ/∂θ_j = ρ (1[j = a] − π_j)
            for j in 0..theta.len() {
                let d = if j == a { 1.0 } else { 0.0 } - pi[j];
                grad[j] -= adv * ratio * d / n;
            }
        }
    }
    let h: f64 = -pi.iter().zip(&logpi).map(|(p, l)| p * l).sum::<f64>();
    loss -= entropy_coef * h;
    for j in 0..theta.len() {
        // ∂H/∂θ_j = −π_j (log π_j + H)
        grad[j] -= entropy_coef * (-pi[j] * (logpi[j] + h));
    }
    (loss, grad, clipped as f64 / n)
}

/// The serialisable position of the agent's random stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RngState {
    seed: [u8; 32],
    stream: u64,
    /// u128 as a decimal string (JSON numbers are not that wide)
    word_pos: String,
}

/// A PPO agent for one RL-XAlign module.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PpoAgent {
    pub config: PpoConfig,
    /// The actor: policy logits over the 24 cube rotations.
    pub theta: Vec<f64>,
    pub critic: Critic,
    adam_actor: Adam,
    adam_critic: Adam,
    buffer: Vec<Transition>,
    /// s_t: the state the next action is taken in.
    state: State,
    #[serde(with = "rng_serde")]
    rng: ChaCha8Rng,
    pub updates: u64,
    /// Steps recorded so far (the group of the next transitions).
    #[serde(default)]
    groups: u64,
}

mod rng_serde {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rng: &ChaCha8Rng, s: S) -> Result<S::Ok, S::Error> {
        RngState {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ChaCha8Rng, D::Error> {
        let st = RngState::deserialize(d)?;
        let mut rng = ChaCha8Rng::from_seed(st.seed);
        rng.set_stream(st.stream);
        rng.set_word_pos(st.word_pos.parse().map_err(serde::de::Error::custom)?);
        Ok(rng)
    }
}

impl PpoAgent {
    pub fn new(config: PpoConfig, seed: u64) -> PpoAgent {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let critic = Critic::new(config.critic_hidden, &mut rng);
        PpoAgent {
            adam_actor: Adam::new(24, config.lr_actor),
            adam_critic: Adam::new(critic.params.len(), config.lr_critic),
            theta: vec![0.0; 24],
            critic,
            buffer: Vec::with_capacity(config.buffer_size),
            state: [0.0; STATE_DIM],
            rng,
            updates: 0,
            groups: 0,
            config,
        }
    }

    /// Set the current state s_t (e.g. at the start of training).
    pub fn observe(&mut self, state: State) {
        self.state = state;
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn probabilities(&self) -> Vec<f64> {
        softmax(&self.theta)
    }

    /// θ as the network's PoseAlign holds it.
    pub fn theta_f32(&self) -> Vec<f32> {
        self.theta.iter().map(|&t| t as f32).collect()
    }

    /// Draw `k` distinct rotations from π_θ (Gumbel top-k) with log π_θ of each.
    pub fn act(&mut self, k: usize) -> (Vec<usize>, Vec<f32>) {
        let theta = self.theta_f32();
        let actions = gumbel_top_k(&theta, k, &mut self.rng);
        let lp = log_probs(&theta);
        let logp = actions.iter().map(|&a| lp[a]).collect();
        (actions, logp)
    }

    /// Record the outcome of the actions taken in the current state: each action is
    /// its own transition with its own reward (docs/method.md §3, with the alignment term
    /// measured per rotation); then s_t ← s_{t+1}.
    pub fn record(
        &mut self,
        actions: &[usize],
        log_probs_old: &[f32],
        rewards: &[f64],
        next_state: State,
    ) {
        assert_eq!(actions.len(), rewards.len(), "one reward per action");
        for ((&a, &lp), &reward) in actions.iter().zip(log_probs_old).zip(rewards) {
            self.buffer.push(Transition {
                state: self.state,
                action: a,
                log_prob_old: lp as f64,
                reward,
                next_state,
                group: self.groups,
            });
        }
        self.groups += 1;
        self.state = next_state;
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Update when the buffer holds N transitions; the buffer is then cleared.
    pub fn maybe_update(&mut self) -> Option<UpdateStats> {
        let stats = (self.buffer.len() >= self.config.buffer_size).then(|| self.update())?;
        tracing::debug!("ppo {}", stats.line());
        Some(stats)
    }

    fn update(&mut self) -> UpdateStats {
        let cfg = self.config.clone();
        let buf = std::mem::take(&mut self.buffer);
        let n = buf.len();
        // eq. 13 targets and eq. 10 advantages, with the critic as it was before this update
        let targets: Vec<f64> = buf
            .iter()
            .map(|t| t.reward + cfg.gamma * self.critic.value(&t.next_state))
            .collect();
        let mut adv: Vec<f64> = if cfg.group_baseline {
            let mut sums = std::collections::HashMap::<u64, (f64, f64)>::new();
            for t in &buf {
                let e = sums.entry(t.group).or_default();
                e.0 += t.reward;
                e.1 += 1.0;
            }
            buf.iter()
                .map(|t| {
                    let (s, c) = sums[&t.group];
                    t.reward - s / c
                })
                .collect()
        } else {
            buf.iter()
                .zip(&targets)
                .map(|(t, y)| y - self.critic.value(&t.state))
                .collect()
        };
        let mean = adv.iter().sum::<f64>() / n as f64;
        let std = (adv.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        for a in &mut adv {
            *a = (*a - mean) / (std + 1e-8);
        }
        let mut idx: Vec<usize> = (0..n).collect();
        let (mut clip_sum, mut vloss_sum, mut ploss_sum, mut batches) = (0.0, 0.0, 0.0, 0usize);
        for _ in 0..cfg.epochs {
            idx.shuffle(&mut self.rng);
            for chunk in idx.chunks(cfg.minibatch.max(1)) {
                let batch: Vec<(usize, f64, f64)> = chunk
                    .iter()
                    .map(|&i| (buf[i].action, buf[i].log_prob_old, adv[i]))
                    .collect();
                let (ploss, g, clip) =
                    actor_loss(&self.theta, &batch, cfg.clip_epsilon, cfg.entropy_coef);
                self.adam_actor.step(&mut self.theta, &g);
                // eq. 12: mean (V(s) − V_target)²
                let mut cg = vec![0.0; self.critic.params.len()];
                let mut vloss = 0.0;
                let m = chunk.len() as f64;
                for &i in chunk {
                    let err = self.critic.value(&buf[i].state) - targets[i];
                    vloss += err * err / m;
                    self.critic
                        .accumulate_grad(&buf[i].state, 2.0 * err / m, &mut cg);
                }
                self.adam_critic.step(&mut self.critic.params, &cg);
                clip_sum += clip;
                vloss_sum += vloss;
                ploss_sum += ploss;
                batches += 1;
            }
        }
        self.updates += 1;
        let p = self.probabilities();
        let top: Vec<(usize, f64)> = {
            let mut order: Vec<usize> = (0..24).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            order.into_iter().take(3).map(|a| (a, p[a])).collect()
        };
        let b = batches.max(1) as f64;
        UpdateStats {
            update: self.updates,
            mean_reward: buf.iter().map(|t| t.reward).sum::<f64>() / n as f64,
            entropy: entropy(&self.theta),
            top3: top,
            clip_fraction: clip_sum / b,
            value_loss: vloss_sum / b,
            policy_loss: ploss_sum / b,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an agent serialises")
    }

    pub fn from_json(s: &str) -> anyhow::Result<PpoAgent> {
        Ok(serde_json::from_str(s)?)
    }
}

#[cfg(test)]
mod tests;
