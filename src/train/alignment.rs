//! `alignment.json`: what each PPO agent has learned. For each RL-XAlign module,
//! the policy's most probable rotation as a 3×3 integer matrix M on RAS axes (the
//! rotation that takes the MRI anatomy into the CT pose) and its probability;
//! where the data set records the MRI pose offset R_pose (SynthWHS's manifest,
//! `x_mr − c = R_pose (x_ct − c)`), whether M equals R_poseᵀ.

use serde::Serialize;

use crate::geometry::{SignedPerm, cube_rotations};
use crate::rl::PpoAgent;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModuleAlignment {
    pub module: usize,
    /// The encoder level the module acts on (1/2, 1/4, …).
    pub scale: String,
    pub top_rotation: usize,
    pub matrix: [[i32; 3]; 3],
    pub probability: f64,
    pub entropy: f64,
    pub updates: u64,
    /// Some(M == R_poseᵀ) where the pose is known.
    pub matches_pose: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlignmentReport {
    /// R_poseᵀ, the right answer, where the data set records the pose.
    pub expected_matrix: Option<[[i32; 3]; 3]>,
    pub step: u64,
    pub modules: Vec<ModuleAlignment>,
}

/// The report for the agents' current policies; `pose` is the MRI pose offset's
/// cube rotation when known.
pub fn alignment_report(
    agents: &[PpoAgent],
    pose: Option<&SignedPerm>,
    step: u64,
) -> AlignmentReport {
    let expected = pose.map(|r| r.inverse());
    let modules = agents
        .iter()
        .enumerate()
        .map(|(m, a)| {
            let p = a.probabilities();
            let top = (0..p.len())
                .max_by(|&x, &y| p[x].total_cmp(&p[y]).then(y.cmp(&x)))
                .expect("24 rotations");
            let r = cube_rotations()[top];
            ModuleAlignment {
                module: m + 1,
                scale: format!("1/{}", 2 << m),
                top_rotation: top,
                matrix: r.matrix(),
                probability: p[top],
                entropy: crate::rl::entropy(&a.theta),
                updates: a.updates,
                matches_pose: expected.map(|e| e == r),
            }
        })
        .collect();
    AlignmentReport {
        expected_matrix: expected.map(|e| e.matrix()),
        step,
        modules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::PpoConfig;

    #[test]
    fn the_top_rotation_is_reported_as_its_matrix_and_checked_against_the_pose_transpose() {
        let pose = cube_rotations()[9];
        let want = pose.inverse();
        let want_idx = crate::geometry::rotation_index(&want).unwrap();
        let mut a = PpoAgent::new(PpoConfig::default(), 1);
        a.theta[want_idx] = 3.0;
        let mut b = PpoAgent::new(PpoConfig::default(), 2);
        b.theta[0] = 3.0;
        let r = alignment_report(&[a, b], Some(&pose), 7);
        // the transpose of the pose's matrix
        let m = pose.matrix();
        let t: [[i32; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| m[j][i]));
        assert_eq!(r.expected_matrix, Some(t));
        assert_eq!(r.modules[0].matrix, t);
        assert_eq!(r.modules[0].matches_pose, Some(true));
        assert_eq!(r.modules[1].matrix, [[1, 0, 0], [0, 1, 0], [0, 0, 1]]);
        assert_eq!(r.modules[1].matches_pose, Some(false));
        let e3 = 3.0f64.exp();
        assert!((r.modules[0].probability - e3 / (e3 + 23.0)).abs() < 1e-12);
        assert_eq!(alignment_report(&[], None, 0).expected_matrix, None);
    }
}
