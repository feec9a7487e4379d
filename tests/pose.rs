//! PPO finds the MRI pose offset: on small SynthWHS sets made with three different
//! `--mr-pose` rotations (the identity among them), agents rewarded by the probe-pair
//! alignment score (`train::reward::rotation_scores`) end with R_poseᵀ as their top
//! rotation, at probability ≥ 0.5, and `alignment_report` says it matches.

use std::path::Path;

use burn::tensor::Device;
use rlu2net::data::layout::{Modality, Split, discover};
use rlu2net::data::sampler::probe_pair;
use rlu2net::data::synth::{Scale, SynthOptions, generate};
use rlu2net::geometry::cube_rotations;
use rlu2net::model::{ModelConfig, Preset, RlU2Net};
use rlu2net::preprocess::PreprocessConfig;
use rlu2net::preprocess::cache::prepare_case;
use rlu2net::preprocess::plan::fit_plan;
use rlu2net::rl::PoseScore;
use rlu2net::rl::{PpoAgent, PpoConfig};
use rlu2net::train::alignment::{AlignmentReport, alignment_report};
use rlu2net::train::reward::{mutual_information_scores, rotation_scores};

/// The alignment scores of the 24 rotations on each training pair's central windows,
/// from an untrained `tiny` network.
fn scores(data: &Path, work: &Path, score: PoseScore) -> Vec<[f64; 24]> {
    let ds = discover(data).unwrap();
    let pre = PreprocessConfig {
        spacing: 4.0,
        ..PreprocessConfig::default()
    };
    let stats = fit_plan(&pre, 0, &ds).unwrap().ct_stats;
    let prep = |m| -> Vec<_> {
        ds.select(m, Split::Train)
            .iter()
            .map(|c| prepare_case(c, &pre, Some(&stats), &work.join("cache")).unwrap())
            .collect()
    };
    let (ct, mr) = (prep(Modality::Ct), prep(Modality::Mr));
    let dev = Device::flex();
    dev.seed(7);
    let model = RlU2Net::new(&ModelConfig::preset(Preset::Tiny), &dev);
    ct.iter()
        .zip(&mr)
        .map(|(c, m)| {
            let probe = probe_pair(c, m, 32);
            match score {
                PoseScore::MutualInformation => mutual_information_scores(&probe, 32),
                PoseScore::Features => rotation_scores(&model, &probe, 32, &dev),
            }
        })
        .collect()
}

/// A small SynthWHS set at `pose`, the scores of its pairs, and two PPO agents trained
/// on them for 640 steps, rewarded (1 − L_Dice) + S(a) with a Dice term that varies per
/// step; their report.
fn agents_at(pose: usize, score: PoseScore) -> (AlignmentReport, Vec<[f64; 24]>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let opts = SynthOptions {
        cases: 3,
        test_cases: 0,
        seed: 11,
        mr_pose: pose,
        scale: Scale::Small,
        ..SynthOptions::default()
    };
    generate(&opts, &data, &|| {}).unwrap();
    let s = scores(&data, tmp.path(), score);
    let mut agents: Vec<PpoAgent> = (0..2)
        .map(|m| PpoAgent::new(PpoConfig::default(), 100 + m))
        .collect();
    for step in 0..640u64 {
        let pair = &s[step as usize % s.len()];
        let dice = 0.3 + 0.4 * ((step * 7919) % 100) as f64 / 100.0;
        for a in agents.iter_mut() {
            let (acts, lp) = a.act(4);
            let r: Vec<f64> = acts.iter().map(|&x| dice + pair[x]).collect();
            a.record(&acts, &lp, &r, [dice, 0.0, step as f64 / 640.0]);
            a.maybe_update();
        }
    }
    (
        alignment_report(&agents, Some(&cube_rotations()[pose]), 640),
        s,
    )
}

/// The hardest poses of the 24-pose table (those the feature score ranked wrong or
/// by the smallest margins on synthwhs-2) and the identity.
#[test]
fn ppo_agents_find_the_pose_offset_at_the_hardest_poses() {
    for pose in [0usize, 1, 7, 11, 13, 19, 23] {
        let (report, s) = agents_at(pose, PoseScore::MutualInformation);
        for m in &report.modules {
            assert_eq!(
                m.matches_pose,
                Some(true),
                "pose {pose}: module {} chose rotation {} (p = {:.2}); scores {:?}",
                m.module,
                m.top_rotation,
                m.probability,
                s
            );
            assert!(
                m.probability >= 0.5,
                "pose {pose}: p = {:.3}",
                m.probability
            );
        }
    }
}

/// Every one of the 24 poses in the setting above, as a table (`cargo test --release
/// --test pose -- --ignored --nocapture`): where R_poseᵀ ranks among the 24 mean scores,
/// its margin over the best other rotation, and what each agent chose. Passes when both
/// agents choose R_poseᵀ with p ≥ 0.5 for at least 22 of the 24 poses.
#[test]
#[ignore]
fn all_24_poses() {
    table_of_24(PoseScore::MutualInformation);
}

/// The same table with the first score, the encoder's feature correlation.
#[test]
#[ignore]
fn all_24_poses_feature_score() {
    table_of_24(PoseScore::Features);
}

fn table_of_24(score: PoseScore) {
    println!(
        "pose | R_pose^T | its rank in S | pairs ranking it first | margin over the next | module 1 (p) | module 2 (p)"
    );
    let (mut wrong_first, mut missed) = (Vec::new(), Vec::new());
    for pose in 0..24 {
        let (report, s) = agents_at(pose, score);
        let want = rlu2net::geometry::rotation_index(&cube_rotations()[pose].inverse())
            .expect("the inverse of a rotation is one");
        let mean: Vec<f64> = (0..24)
            .map(|a| s.iter().map(|p| p[a]).sum::<f64>() / s.len() as f64)
            .collect();
        let rank = 1 + (0..24).filter(|&a| mean[a] > mean[want]).count();
        let pairs_first = s
            .iter()
            .filter(|p| (0..24).all(|a| p[a] <= p[want]))
            .count();
        let best_other = (0..24)
            .filter(|&a| a != want)
            .map(|a| mean[a])
            .fold(f64::NEG_INFINITY, f64::max);
        let chose: Vec<String> = report
            .modules
            .iter()
            .map(|m| {
                format!(
                    "{} ({:.2}){}",
                    m.top_rotation,
                    m.probability,
                    if m.matches_pose == Some(true) {
                        ""
                    } else {
                        " ✗"
                    }
                )
            })
            .collect();
        println!(
            "{pose} | {want} | {rank} | {pairs_first}/{} | {:+.4} | {} | {}",
            s.len(),
            mean[want] - best_other,
            chose[0],
            chose[1]
        );
        if rank != 1 {
            wrong_first.push(pose);
        }
        if !report
            .modules
            .iter()
            .all(|m| m.matches_pose == Some(true) && m.probability >= 0.5)
        {
            missed.push(pose);
        }
    }
    println!("poses whose scores rank another rotation first: {wrong_first:?}");
    assert!(missed.len() <= 2, "the agents missed poses {missed:?}");
}
