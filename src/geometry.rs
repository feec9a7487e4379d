//! Signed axis permutations: the 48 symmetries of the cube.
//!
//! They serve twice: the 48 voxel-axis orientations of a NIfTI volume (any
//! determinant), and the 24 proper rotations of the cube (determinant +1) that
//! PoseAlign chooses from and that SynthWHS uses as the MRI pose offset.

use serde::{Deserialize, Serialize};

/// The matrix `M` with `M[r][perm[r]] = sign[r]` and zeros elsewhere, so that
/// `(M·v)[r] = sign[r] · v[perm[r]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedPerm {
    pub perm: [usize; 3],
    pub sign: [i32; 3],
}

const PERMS: [[usize; 3]; 6] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
];

impl SignedPerm {
    pub const IDENTITY: SignedPerm = SignedPerm {
        perm: [0, 1, 2],
        sign: [1, 1, 1],
    };

    /// All 48 signed permutations, identity first, in a fixed order.
    pub fn all48() -> Vec<SignedPerm> {
        let mut out = Vec::with_capacity(48);
        for perm in PERMS {
            for bits in 0..8u32 {
                let sign = [0, 1, 2].map(|r| if bits >> r & 1 == 1 { -1 } else { 1 });
                out.push(SignedPerm { perm, sign });
            }
        }
        out
    }

    pub fn matrix(&self) -> [[i32; 3]; 3] {
        let mut m = [[0; 3]; 3];
        for r in 0..3 {
            m[r][self.perm[r]] = self.sign[r];
        }
        m
    }

    pub fn from_matrix(m: [[i32; 3]; 3]) -> Option<SignedPerm> {
        let mut perm = [0; 3];
        let mut sign = [0; 3];
        for r in 0..3 {
            let nz: Vec<usize> = (0..3).filter(|&c| m[r][c] != 0).collect();
            if nz.len() != 1 || m[r][nz[0]].abs() != 1 {
                return None;
            }
            perm[r] = nz[0];
            sign[r] = m[r][nz[0]];
        }
        let mut seen = [false; 3];
        for &p in &perm {
            if seen[p] {
                return None;
            }
            seen[p] = true;
        }
        Some(SignedPerm { perm, sign })
    }

    pub fn determinant(&self) -> i32 {
        let m = self.matrix();
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    }

    /// `self ∘ other`: apply `other` first, then `self` (matrix product `self · other`).
    pub fn compose(&self, other: &SignedPerm) -> SignedPerm {
        let a = self.matrix();
        let b = other.matrix();
        let mut m = [[0; 3]; 3];
        for r in 0..3 {
            for c in 0..3 {
                m[r][c] = (0..3).map(|k| a[r][k] * b[k][c]).sum();
            }
        }
        SignedPerm::from_matrix(m).expect("a product of signed permutations is one")
    }

    /// The inverse is the transpose.
    pub fn inverse(&self) -> SignedPerm {
        let m = self.matrix();
        let mut t = [[0; 3]; 3];
        for r in 0..3 {
            for c in 0..3 {
                t[r][c] = m[c][r];
            }
        }
        SignedPerm::from_matrix(t).expect("the transpose of a signed permutation is one")
    }

    pub fn apply(&self, v: [f64; 3]) -> [f64; 3] {
        [0, 1, 2].map(|r| self.sign[r] as f64 * v[self.perm[r]])
    }

    pub fn apply_i(&self, v: [i64; 3]) -> [i64; 3] {
        [0, 1, 2].map(|r| self.sign[r] as i64 * v[self.perm[r]])
    }
}

/// The 24 proper rotations of the cube (signed permutations with determinant +1),
/// identity first. Their order is the action index used by PoseAlign and the PPO agents.
pub fn cube_rotations() -> &'static [SignedPerm; 24] {
    use std::sync::OnceLock;
    static ROTATIONS: OnceLock<[SignedPerm; 24]> = OnceLock::new();
    ROTATIONS.get_or_init(|| {
        let v: Vec<SignedPerm> = SignedPerm::all48()
            .into_iter()
            .filter(|p| p.determinant() == 1)
            .collect();
        v.try_into().expect("exactly 24 proper rotations")
    })
}

/// Index of a rotation in [`cube_rotations`].
pub fn rotation_index(r: &SignedPerm) -> Option<usize> {
    cube_rotations().iter().position(|q| q == r)
}

/// The composition table: `table[a][b] = index(R_a ∘ R_b)`.
pub fn rotation_composition_table() -> [[usize; 24]; 24] {
    let rots = cube_rotations();
    let mut t = [[0; 24]; 24];
    for (a, ra) in rots.iter().enumerate() {
        for (b, rb) in rots.iter().enumerate() {
            t[a][b] = rotation_index(&ra.compose(rb)).expect("group is closed");
        }
    }
    t
}

/// `inverse[a]` = index of `R_a⁻¹`.
pub fn rotation_inverse_table() -> [usize; 24] {
    let rots = cube_rotations();
    std::array::from_fn(|a| rotation_index(&rots[a].inverse()).expect("group is closed"))
}

/// A 3×3 rotation matrix from Euler angles in degrees (applied x, then y, then z).
pub fn euler_rotation_deg(angles: [f64; 3]) -> [[f64; 3]; 3] {
    let [ax, ay, az] = angles.map(f64::to_radians);
    let rx = [
        [1.0, 0.0, 0.0],
        [0.0, ax.cos(), -ax.sin()],
        [0.0, ax.sin(), ax.cos()],
    ];
    let ry = [
        [ay.cos(), 0.0, ay.sin()],
        [0.0, 1.0, 0.0],
        [-ay.sin(), 0.0, ay.cos()],
    ];
    let rz = [
        [az.cos(), -az.sin(), 0.0],
        [az.sin(), az.cos(), 0.0],
        [0.0, 0.0, 1.0],
    ];
    mat3_mul(&rz, &mat3_mul(&ry, &rx))
}

pub fn mat3_mul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut m = [[0.0; 3]; 3];
    for r in 0..3 {
        for c in 0..3 {
            m[r][c] = (0..3).map(|k| a[r][k] * b[k][c]).sum();
        }
    }
    m
}

pub fn mat3_vec(a: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|r| a[r][0] * v[0] + a[r][1] * v[1] + a[r][2] * v[2])
}

pub fn mat3_transpose(a: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    std::array::from_fn(|r| std::array::from_fn(|c| a[c][r]))
}

pub fn perm_matrix_f64(p: &SignedPerm) -> [[f64; 3]; 3] {
    p.matrix().map(|row| row.map(|x| x as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn there_are_24_distinct_proper_rotations() {
        let rots = cube_rotations();
        let set: HashSet<_> = rots.iter().collect();
        assert_eq!(set.len(), 24);
        assert!(rots.iter().all(|r| r.determinant() == 1));
        assert_eq!(rots[0], SignedPerm::IDENTITY);
    }

    #[test]
    fn rotations_are_closed_and_each_inverse_gives_identity() {
        let rots = cube_rotations();
        let table = rotation_composition_table();
        let inv = rotation_inverse_table();
        for a in 0..24 {
            assert_eq!(rots[a].compose(&rots[inv[a]]), SignedPerm::IDENTITY);
            assert_eq!(rots[inv[a]].compose(&rots[a]), SignedPerm::IDENTITY);
            // every row of a group table is a permutation of the group
            let row: HashSet<_> = table[a].iter().collect();
            assert_eq!(row.len(), 24);
        }
    }

    #[test]
    fn composition_matches_point_application() {
        let rots = cube_rotations();
        let v = [1.0, -2.0, 3.5];
        for a in rots {
            for b in rots {
                let lhs = a.compose(b).apply(v);
                let rhs = a.apply(b.apply(v));
                assert_eq!(lhs, rhs);
            }
        }
    }

    #[test]
    fn all48_has_both_determinants_equally() {
        let all = SignedPerm::all48();
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), 48);
        assert_eq!(all.iter().filter(|p| p.determinant() == -1).count(), 24);
    }

    #[test]
    fn euler_rotation_is_orthonormal() {
        let r = euler_rotation_deg([10.0, -7.0, 13.0]);
        let rt = mat3_transpose(&r);
        let i = mat3_mul(&r, &rt);
        for (a, row) in i.iter().enumerate() {
            for (b, x) in row.iter().enumerate() {
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((x - want).abs() < 1e-12);
            }
        }
    }
}
