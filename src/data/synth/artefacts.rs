//! Appearance of a synthwhs-2 case: CT contrast phases, MRI sequence contrasts,
//! per-structure intensity, slice thickness, ghosting and slice misregistration.

use ndarray::{Array3, Axis};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::anatomy::{NUM_TISSUES, Tissue};
use super::render::{Appearance, Grid};
use super::variety::Draw;
use crate::data::layout::Modality;

/// A slab of slices (voxel axis 2) from `from_slice` on, moved in-plane: the step a
/// breath or a beat between two acquisitions leaves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SliceStep {
    pub from_slice: usize,
    /// Shift along voxel axes 0 and 1 (mm).
    pub shift_mm: [f64; 2],
}

/// A wrapped, faded copy of the image along a phase-encoding axis (MRI motion ghost).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ghost {
    pub axis: usize,
    /// Shift as a fraction of the axis length.
    pub shift_fraction: f64,
    pub amplitude: f64,
}

/// What synthwhs-2 draws beyond synthwhs-1's appearance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VariedAppearance {
    /// The CT contrast phase or the MRI sequence.
    pub contrast: String,
    /// Intensity added to each class `[bg, Myo, LA, LV, RA, RV, AA, PA]` (bg: 0).
    pub class_offset: [f64; 8],
    /// Slice-profile blur along voxel axis 2, in voxels.
    pub blur_sigma_slice_vox: f64,
    /// MRI: the intensity the noise level is a fraction of.
    pub noise_reference: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ghost: Option<Ghost>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slice_steps: Vec<SliceStep>,
}

/// A CT contrast phase: name, left blood HU range, right blood HU range, chance.
type Phase = (&'static str, (f64, f64), (f64, f64), f64);

const CT_PHASES: [Phase; 3] = [
    ("arterial", (280.0, 550.0), (150.0, 400.0), 0.5),
    ("right-heart", (150.0, 320.0), (300.0, 600.0), 0.2),
    ("venous", (140.0, 260.0), (130.0, 250.0), 0.3),
];

/// MRI sequences: (name, tissue means as `Tissue` order, chance).
const MR_SEQUENCES: [(&str, [f64; NUM_TISSUES], f64); 3] = [
    (
        "bssfp",
        [0.0, 40.0, 700.0, 300.0, 250.0, 800.0, 780.0, 400.0],
        0.5,
    ),
    (
        "black-blood",
        [0.0, 30.0, 750.0, 320.0, 330.0, 60.0, 70.0, 300.0],
        0.25,
    ),
    (
        "t1-gre-contrast",
        [0.0, 30.0, 600.0, 250.0, 180.0, 850.0, 800.0, 250.0],
        0.25,
    ),
];

fn pick_weighted<R: Rng>(d: &mut Draw<R>, weights: &[f64]) -> usize {
    let u: f64 = d.rng.random_range(0.0..weights.iter().sum::<f64>());
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if u < acc {
            return i;
        }
    }
    weights.len() - 1
}

fn slice_steps<R: Rng>(d: &mut Draw<R>, chance: f64, slices: usize) -> Vec<SliceStep> {
    if !d.chance(chance) || slices < 8 {
        return Vec::new();
    }
    let n = 1 + d.pick(3);
    let mut steps: Vec<SliceStep> = (0..n)
        .map(|_| SliceStep {
            from_slice: slices / 8 + d.pick(slices * 3 / 4),
            shift_mm: [d.symmetric(3.0), d.symmetric(3.0)],
        })
        .collect();
    steps.sort_by_key(|s| s.from_slice);
    steps
}

fn ct_appearance<R: Rng>(d: &mut Draw<R>, slices: usize) -> Appearance {
    let phase = CT_PHASES[pick_weighted(d, &CT_PHASES.map(|p| p.3))];
    let mut m = [0.0; NUM_TISSUES];
    m[Tissue::Air as usize] = -1000.0;
    m[Tissue::Lung as usize] = d.range(-900.0, -750.0);
    m[Tissue::Fat as usize] = d.range(-150.0, -60.0);
    m[Tissue::Soft as usize] = d.range(20.0, 70.0);
    m[Tissue::Myo as usize] = d.range(60.0, 150.0);
    m[Tissue::LeftBlood as usize] = d.range(phase.1.0, phase.1.1);
    m[Tissue::RightBlood as usize] = d.range(phase.2.0, phase.2.1);
    m[Tissue::Bone as usize] = d.range(300.0, 1000.0);
    // the blood pools stay visibly above the myocardium
    let myo = m[Tissue::Myo as usize];
    for t in [Tissue::LeftBlood, Tissue::RightBlood] {
        m[t as usize] = m[t as usize].max(myo + 40.0);
    }
    let mut class_offset = [0.0; 8];
    class_offset[1] = d.symmetric(10.0);
    for c in 2..8 {
        class_offset[c] = d.symmetric(30.0);
    }
    Appearance {
        tissue_mean: m,
        texture: d.range_min(5.0, 25.0, 0.0),
        blur_sigma_vox: d.range_min(0.3, 1.0, 0.1),
        noise: d.range_min(8.0, 60.0, 2.0),
        bias: None,
        varied: Some(VariedAppearance {
            contrast: phase.0.to_string(),
            class_offset,
            blur_sigma_slice_vox: d.range_min(0.3, 1.2, 0.1),
            noise_reference: 1.0,
            ghost: None,
            slice_steps: slice_steps(d, 0.3, slices),
        }),
    }
}

fn mr_appearance<R: Rng>(d: &mut Draw<R>, slices: usize) -> Appearance {
    let seq = MR_SEQUENCES[pick_weighted(d, &MR_SEQUENCES.map(|s| s.2))];
    let gain = d.log_range(0.3, 3.0);
    let tissue_mean: [f64; NUM_TISSUES] =
        std::array::from_fn(|t| seq.1[t] * gain * d.range_min(0.85, 1.15, 0.05));
    let reference = tissue_mean.iter().cloned().fold(0.0, f64::max);
    let mut class_offset = [0.0; 8];
    for c in 1..8 {
        class_offset[c] = reference * d.symmetric(0.04);
    }
    let bias = std::array::from_fn(|_| d.symmetric(0.25));
    let ghost = d.chance(0.3).then(|| Ghost {
        axis: d.pick(2),
        shift_fraction: d.range(0.25, 0.5),
        amplitude: d.range_min(0.03, 0.15, 0.0),
    });
    Appearance {
        tissue_mean,
        texture: d.range_min(0.02, 0.08, 0.0),
        blur_sigma_vox: d.range_min(0.3, 1.0, 0.1),
        noise: d.range_min(0.01, 0.06, 0.002),
        bias: Some(bias),
        varied: Some(VariedAppearance {
            contrast: seq.0.to_string(),
            class_offset,
            blur_sigma_slice_vox: d.range_min(0.3, 1.2, 0.1),
            noise_reference: reference,
            ghost,
            slice_steps: slice_steps(d, 0.15, slices),
        }),
    }
}

impl Appearance {
    /// synthwhs-2: intensities, contrast, blur, noise and artefacts drawn per case.
    pub fn varied<R: Rng>(modality: Modality, d: &mut Draw<R>, slices: usize) -> Appearance {
        match modality {
            Modality::Ct => ct_appearance(d, slices),
            Modality::Mr => mr_appearance(d, slices),
        }
    }
}

impl VariedAppearance {
    /// The world offset (mm) of every slice (voxel axis 2) of `grid`.
    pub fn slice_shifts(&self, grid: &Grid) -> Vec<[f64; 3]> {
        let mut dir = [[0.0; 3]; 2];
        for (v, d) in dir.iter_mut().enumerate() {
            d[grid.orientation.perm[v]] = grid.orientation.sign[v] as f64;
        }
        (0..grid.shape[2])
            .map(|k| {
                let mut o = [0.0; 3];
                for s in self.slice_steps.iter().filter(|s| s.from_slice <= k) {
                    for a in 0..3 {
                        o[a] += s.shift_mm[0] * dir[0][a] + s.shift_mm[1] * dir[1][a];
                    }
                }
                o
            })
            .collect()
    }

    /// Adds the ghost, if any: image += amplitude · image shifted (wrapped) along its axis.
    pub fn add_ghost(&self, image: &mut Array3<f32>) {
        let Some(g) = &self.ghost else { return };
        let n = image.shape()[g.axis];
        let shift = ((n as f64 * g.shift_fraction).round() as usize) % n.max(1);
        if shift == 0 {
            return;
        }
        let a = g.amplitude as f32;
        for mut lane in image.lanes_mut(Axis(g.axis)) {
            let src: Vec<f32> = lane.iter().copied().collect();
            for (i, v) in lane.iter_mut().enumerate() {
                *v += a * src[(i + shift) % n];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::variety::{Part, Variety};
    use rand::SeedableRng;

    #[test]
    fn a_ghost_adds_a_wrapped_faded_copy() {
        let mut img = Array3::<f32>::zeros((4, 8, 2));
        img[[1, 2, 0]] = 10.0;
        let v = VariedAppearance {
            contrast: String::new(),
            class_offset: [0.0; 8],
            blur_sigma_slice_vox: 0.0,
            noise_reference: 1.0,
            ghost: Some(Ghost {
                axis: 1,
                shift_fraction: 0.5,
                amplitude: 0.1,
            }),
            slice_steps: Vec::new(),
        };
        v.add_ghost(&mut img);
        // voxel j receives 0.1 × voxel (j + 4) mod 8: the copy of j = 2 lands on j = 6
        assert_eq!(img[[1, 6, 0]], 1.0);
        assert_eq!(img[[1, 2, 0]], 10.0);
        assert_eq!(img.sum(), 11.0);
    }

    #[test]
    fn ct_blood_stays_above_the_myocardium_in_every_profile() {
        for variety in [Variety::Varied, Variety::HeldOut] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
            let mut d = Draw::new(&mut rng, variety, Part::Appearance);
            for _ in 0..200 {
                let a = Appearance::varied(Modality::Ct, &mut d, 100);
                let m = a.tissue_mean;
                assert!(m[Tissue::LeftBlood as usize] >= m[Tissue::Myo as usize] + 40.0);
                assert!(m[Tissue::RightBlood as usize] >= m[Tissue::Myo as usize] + 40.0);
                let steps = &a.varied.unwrap().slice_steps;
                assert!(steps.windows(2).all(|w| w[0].from_slice <= w[1].from_slice));
            }
        }
    }
}
