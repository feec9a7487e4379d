use super::*;
use rand::Rng;
use rand_distr::{Distribution, Normal};

#[test]
fn ppo_loss_of_a_hand_computed_batch() {
    // θ = 0: π is uniform, log π(a) = −ln 24 for every a. Old log-probs are chosen
    // so the ratios are ρ = 1.1 (inside [0.8, 1.2]), 1.5 and 0.5 (outside).
    //   sample 1: ρ = 1.1, A = +1 → min(1.1, 1.1·1)        = 1.1
    //   sample 2: ρ = 1.5, A = +2 → min(3.0, 1.2·2 = 2.4)  = 2.4   (clipped)
    //   sample 3: ρ = 0.5, A = −1 → min(−0.5, 0.8·−1 = −0.8) = −0.8 (clipped)
    // policy loss = −(1.1 + 2.4 − 0.8)/3 = −0.9
    // entropy bonus: H = ln 24 = 3.178053830…, c = 0.01 → −0.031780538
    // total = −0.931780538; clip fraction 2/3
    let theta = vec![0.0; 24];
    let lp = -(24f64).ln();
    let batch = [
        (0, lp - 1.1f64.ln(), 1.0),
        (1, lp - 1.5f64.ln(), 2.0),
        (2, lp - 0.5f64.ln(), -1.0),
    ];
    let (loss, _, clip) = actor_loss(&theta, &batch, 0.2, 0.01);
    assert!((loss - (-0.931_780_538_3)).abs() < 1e-9, "{loss}");
    assert!((clip - 2.0 / 3.0).abs() < 1e-12);
    // without the entropy bonus
    let (loss, _, _) = actor_loss(&theta, &batch, 0.2, 0.0);
    assert!((loss + 0.9).abs() < 1e-12, "{loss}");
}

#[test]
fn actor_gradient_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let theta: Vec<f64> = (0..24).map(|_| rng.random_range(-1.0..1.0)).collect();
    let lp = crate::rl::softmax(&theta)
        .iter()
        .map(|p| p.ln())
        .collect::<Vec<_>>();
    // ratios near 1 so no sample sits exactly on a clip boundary
    let batch: Vec<(usize, f64, f64)> = (0..6)
        .map(|i| {
            let a = (i * 5) % 24;
            (
                a,
                lp[a] + rng.random_range(-0.1..0.1),
                rng.random_range(-2.0..2.0),
            )
        })
        .collect();
    let (_, g, _) = actor_loss(&theta, &batch, 0.2, 0.05);
    let eps = 1e-6;
    for j in 0..24 {
        let mut p = theta.clone();
        p[j] += eps;
        let mut m = theta.clone();
        m[j] -= eps;
        let fd = (actor_loss(&p, &batch, 0.2, 0.05).0 - actor_loss(&m, &batch, 0.2, 0.05).0)
            / (2.0 * eps);
        assert!((fd - g[j]).abs() < 1e-6, "θ_{j}: {} vs {fd}", g[j]);
    }
}

/// A one-step bandit: reward 1 (+ N(0, 0.1)) for rotation `best`, 0 otherwise.
fn run_bandit(
    seed: u64,
    best: usize,
    entropy_coef: f64,
    updates: u64,
) -> (PpoAgent, Vec<UpdateStats>) {
    let cfg = PpoConfig {
        entropy_coef,
        // one action a step: the TD advantage (a group of one has no baseline)
        group_baseline: false,
        ..PpoConfig::default()
    };
    let mut agent = PpoAgent::new(cfg, seed);
    let mut env = ChaCha8Rng::seed_from_u64(seed + 1000);
    let noise = Normal::new(0.0, 0.1).unwrap();
    let mut log = Vec::new();
    while agent.updates < updates {
        let (a, lp) = agent.act(1);
        let r = if a[0] == best { 1.0 } else { 0.0 } + noise.sample(&mut env);
        agent.record(&a, &lp, &[r], [0.5, 0.5, 0.0]);
        if let Some(s) = agent.maybe_update() {
            let done = s.top3[0].0 == best && s.top3[0].1 >= 0.9;
            log.push(s);
            if done {
                break;
            }
        }
    }
    (agent, log)
}

#[test]
fn bandit_policy_concentrates_on_the_rewarded_rotation_for_5_seeds() {
    for (seed, best) in [(1u64, 3usize), (2, 17), (3, 0), (4, 23), (5, 9)] {
        let (agent, log) = run_bandit(seed, best, 0.01, 200);
        let p = agent.probabilities();
        eprintln!(
            "seed {seed}: π(best) = {:.3} after {} updates",
            p[best],
            log.len()
        );
        assert!(
            p[best] >= 0.9,
            "seed {seed}: π(best) = {:.3} after {} updates",
            p[best],
            log.len()
        );
    }
}

#[test]
fn a_very_high_entropy_bonus_keeps_the_policy_spread() {
    let (_, log) = run_bandit(7, 5, 10.0, 200);
    assert_eq!(log.len(), 200);
    for s in &log {
        assert!(
            s.entropy > 2.5,
            "update {}: entropy {}",
            s.update,
            s.entropy
        );
    }
}

#[test]
fn critic_value_converges_to_discounted_constant_reward() {
    let cfg = PpoConfig {
        gamma: 0.9,
        ..PpoConfig::default()
    };
    let mut agent = PpoAgent::new(cfg, 11);
    let r = 0.5;
    let want = r / (1.0 - 0.9);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut last = 0.0;
    for _ in 0..3000 {
        // the state wanders; the return from any state is r/(1−γ)
        let s = [
            rng.random_range(0.0..1.0),
            rng.random_range(0.0..1.0),
            rng.random_range(0.0..1.0),
        ];
        agent.observe(s);
        let next = [
            rng.random_range(0.0..1.0),
            rng.random_range(0.0..1.0),
            rng.random_range(0.0..1.0),
        ];
        let (a, lp) = agent.act(1);
        agent.record(&a, &lp, &[r], next);
        if agent.maybe_update().is_some() {
            last = agent.critic.value(&[0.5, 0.5, 0.5]);
            if (last - want).abs() < 0.02 * want {
                break;
            }
        }
    }
    eprintln!("V = {last:.4} after {} updates, want {want}", agent.updates);
    assert!((last - want).abs() < 0.05 * want, "V = {last}, want {want}");
}

#[test]
fn save_load_continue_matches_an_uninterrupted_agent() {
    let drive = |agent: &mut PpoAgent, steps: usize, rng: &mut ChaCha8Rng| {
        for _ in 0..steps {
            let (a, lp) = agent.act(4);
            let r = if a.contains(&6) { 1.0 } else { 0.2 } + rng.random_range(-0.1..0.1);
            agent.record(
                &a,
                &lp,
                &vec![r; a.len()],
                [rng.random(), rng.random(), 0.3],
            );
            agent.maybe_update();
        }
    };
    let mut a = PpoAgent::new(PpoConfig::default(), 21);
    let mut env_a = ChaCha8Rng::seed_from_u64(99);
    drive(&mut a, 23, &mut env_a); // mid-buffer: 92 transitions, one update done
    let saved = a.to_json();
    let env_saved = env_a.clone();
    drive(&mut a, 30, &mut env_a);

    let mut b = PpoAgent::from_json(&saved).unwrap();
    let mut env_b = env_saved;
    drive(&mut b, 30, &mut env_b);
    assert_eq!(a.updates, b.updates);
    assert!(a.updates >= 3);
    assert_eq!(a.theta, b.theta);
    assert_eq!(a.critic, b.critic);
    assert_eq!(a.act(4), b.act(4));
}

/// Each step takes 4 rotations; they share a large noise term (as the Dice term of
/// the reward is shared), and rotation 11 earns 0.1 more than the others.
fn shared_noise_bandit(cfg: PpoConfig, updates: u64) -> PpoAgent {
    let mut agent = PpoAgent::new(cfg, 5);
    let mut env = ChaCha8Rng::seed_from_u64(6);
    let shared = Normal::new(0.0, 1.0).unwrap();
    while agent.updates < updates {
        let (a, lp) = agent.act(4);
        let s = shared.sample(&mut env);
        let r: Vec<f64> = a
            .iter()
            .map(|&x| s + if x == 11 { 0.1 } else { 0.0 })
            .collect();
        agent.record(&a, &lp, &r, [0.5, 0.5, 0.0]);
        agent.maybe_update();
    }
    agent
}

#[test]
fn group_baseline_finds_the_best_rotation_under_shared_reward_noise() {
    let p = shared_noise_bandit(PpoConfig::default(), 40).probabilities();
    assert!(p[11] >= 0.5, "π(11) = {:.3}", p[11]);
    // without the group baseline the shared noise swamps the signal
    let td = shared_noise_bandit(
        PpoConfig {
            group_baseline: false,
            ..PpoConfig::default()
        },
        40,
    );
    assert!(td.probabilities()[11] < p[11]);
}
