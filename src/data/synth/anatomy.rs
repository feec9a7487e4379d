//! One synthetic subject: the template heart under a random smooth deformation,
//! inside a simple torso. Everything is expressed in the subject frame: mm
//! relative to the heart's centre, axes RAS (+x right, +y anterior, +z superior).

use ndarray::Array3;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::shapes::{ShapedHeart, StructureFields, StructureVariation};
use super::variety::{Draw, Part};
use crate::data::labels::NUM_STRUCTURES;
use crate::geometry::{euler_rotation_deg, mat3_mul, mat3_transpose, mat3_vec};
use crate::io::Volume;

/// Tissues with their own appearance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tissue {
    Air = 0,
    Lung = 1,
    Fat = 2,
    Soft = 3,
    Myo = 4,
    LeftBlood = 5,
    RightBlood = 6,
    Bone = 7,
}
pub const NUM_TISSUES: usize = 8;

/// The tissue of a heart class `[bg, Myo, LA, LV, RA, RV, AA, PA]`.
pub fn tissue_of_class(c: u8) -> Tissue {
    match c {
        1 => Tissue::Myo,
        2 | 3 | 6 => Tissue::LeftBlood,
        4 | 5 | 7 => Tissue::RightBlood,
        _ => Tissue::Soft,
    }
}

/// The template as classes on a 1 mm RAS grid, with its centroid.
pub struct Template {
    pub classes: Volume<u8>,
    /// World position (template frame, mm) of the heart's centroid.
    pub centroid: [f64; 3],
    /// Largest distance (mm, per axis) of a labelled voxel from the centroid.
    pub half_extent: f64,
    inv_spacing: [f64; 3],
    origin: [f64; 3],
}

impl Template {
    pub fn new(classes: Volume<u8>) -> Template {
        let mut sum = [0.0; 3];
        let mut n = 0usize;
        for ((i, j, k), &c) in classes.data.indexed_iter() {
            if c > 0 {
                let w = classes.world_of([i as f64, j as f64, k as f64]);
                for a in 0..3 {
                    sum[a] += w[a];
                }
                n += 1;
            }
        }
        let centroid = sum.map(|s| s / n.max(1) as f64);
        let mut half_extent: f64 = 0.0;
        for ((i, j, k), &c) in classes.data.indexed_iter() {
            if c > 0 {
                let w = classes.world_of([i as f64, j as f64, k as f64]);
                for a in 0..3 {
                    half_extent = half_extent.max((w[a] - centroid[a]).abs());
                }
            }
        }
        // the shipped template is axis-aligned RAS (diagonal affine)
        let inv_spacing = [0, 1, 2].map(|a| 1.0 / classes.affine[(a, a)]);
        let origin = [0, 1, 2].map(|a| classes.affine[(a, 3)]);
        Template {
            classes,
            centroid,
            half_extent,
            inv_spacing,
            origin,
        }
    }

    /// Nearest-neighbour class at a template-frame world point.
    #[inline]
    pub fn class_at(&self, q: [f64; 3]) -> u8 {
        let s = self.classes.data.dim();
        let i = ((q[0] - self.origin[0]) * self.inv_spacing[0]).round();
        let j = ((q[1] - self.origin[1]) * self.inv_spacing[1]).round();
        let k = ((q[2] - self.origin[2]) * self.inv_spacing[2]).round();
        if i < 0.0 || j < 0.0 || k < 0.0 || i >= s.0 as f64 || j >= s.1 as f64 || k >= s.2 as f64 {
            return 0;
        }
        self.classes.data[[i as usize, j as usize, k as usize]]
    }

    /// Volume of each class in mL.
    pub fn class_volumes_ml(&self) -> [f64; 8] {
        let counts = crate::data::labels::class_counts(&self.classes.data);
        let v = self.classes.spacing.iter().product::<f64>() / 1000.0;
        counts.map(|n| n as f64 * v)
    }
}

/// A smooth displacement field: a cubic B-spline over random control vectors,
/// evaluated once on a fine lattice and interpolated trilinearly.
#[derive(Clone, Debug)]
pub struct Displacement {
    lattice: Array3<[f32; 3]>,
    step: f64,
    half: f64,
}

fn bspline3(t: f64) -> [f64; 4] {
    let t2 = t * t;
    let t3 = t2 * t;
    [
        (1.0 - t).powi(3) / 6.0,
        (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
        (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
        t3 / 6.0,
    ]
}

impl Displacement {
    /// `amplitude`: the largest displacement (mm); `control`: control point spacing (mm);
    /// the field covers the cube of half-size `half` (mm) and is zero outside it.
    pub fn random(rng: &mut impl Rng, amplitude: f64, control: f64, half: f64) -> Displacement {
        let nc = (2.0 * half / control).ceil() as usize + 4;
        // control vectors uniform in the ball of radius `amplitude`: a B-spline is a
        // convex combination of them, so |d| ≤ amplitude everywhere
        let ctrl = Array3::from_shape_fn((nc, nc, nc), |_| {
            loop {
                let v = [0; 3].map(|_| rng.random_range(-1.0..1.0f64));
                let n2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
                if n2 <= 1.0 {
                    break v.map(|x| x * amplitude);
                }
            }
        });
        let step = 4.0;
        let nl = (2.0 * half / step).ceil() as usize + 1;
        let lattice = Array3::from_shape_fn((nl, nl, nl), |(i, j, k)| {
            let p = [i, j, k].map(|n| (n as f64 * step) / control + 1.0);
            let base = p.map(|x| x.floor());
            let w = [0, 1, 2].map(|a| bspline3(p[a] - base[a]));
            let mut d = [0.0f64; 3];
            for (a, wa) in w[0].iter().enumerate() {
                for (b, wb) in w[1].iter().enumerate() {
                    for (c, wc) in w[2].iter().enumerate() {
                        let idx = [
                            base[0] as usize + a - 1,
                            base[1] as usize + b - 1,
                            base[2] as usize + c - 1,
                        ];
                        let v = ctrl[idx];
                        let ww = wa * wb * wc;
                        for x in 0..3 {
                            d[x] += ww * v[x];
                        }
                    }
                }
            }
            d.map(|x| x as f32)
        });
        Displacement {
            lattice,
            step,
            half,
        }
    }

    #[inline]
    pub fn at(&self, p: [f64; 3]) -> [f64; 3] {
        let n = self.lattice.dim().0;
        let mut base = [0usize; 3];
        let mut f = [0.0f64; 3];
        for a in 0..3 {
            let x = (p[a] + self.half) / self.step;
            if x < 0.0 || x >= (n - 1) as f64 {
                return [0.0; 3];
            }
            base[a] = x as usize;
            f[a] = x - base[a] as f64;
        }
        let mut d = [0.0f64; 3];
        for c in 0..8usize {
            let o = [c & 1, (c >> 1) & 1, (c >> 2) & 1];
            let w: f64 = (0..3)
                .map(|a| if o[a] == 1 { f[a] } else { 1.0 - f[a] })
                .product();
            let v = self.lattice[[base[0] + o[0], base[1] + o[1], base[2] + o[2]]];
            for x in 0..3 {
                d[x] += w * v[x] as f64;
            }
        }
        d
    }
}

/// The torso around the heart (subject frame, mm).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Torso {
    /// Body centre relative to the heart (the heart sits left-anterior).
    pub centre: [f64; 2],
    /// Body ellipse semi-axes (x, y).
    pub semi_axes: [f64; 2],
    pub fat_mm: f64,
    pub lung_semi_axes: [f64; 3],
    pub lung_offset: [f64; 3],
    pub mediastinum_semi_axes: [f64; 3],
    pub spine_radius: f64,
    pub aorta_radius: f64,
}

impl Torso {
    /// synthwhs-2: a wider range of body sizes and of the heart's place in the chest.
    pub fn varied<R: Rng>(d: &mut Draw<R>) -> Torso {
        Torso {
            centre: [d.range(0.0, 30.0), d.range(-58.0, -24.0)],
            semi_axes: [d.range(135.0, 185.0), d.range(92.0, 128.0)],
            fat_mm: d.range_min(4.0, 26.0, 1.0),
            lung_semi_axes: [
                d.range(50.0, 70.0),
                d.range(65.0, 85.0),
                d.range(100.0, 140.0),
            ],
            lung_offset: [
                d.range(75.0, 95.0),
                d.range(0.0, 20.0),
                d.range(-10.0, 25.0),
            ],
            mediastinum_semi_axes: [
                d.range(64.0, 80.0),
                d.range(58.0, 74.0),
                d.range(80.0, 100.0),
            ],
            spine_radius: d.range(14.0, 20.0),
            aorta_radius: d.range(9.0, 14.0),
        }
    }

    pub fn random(rng: &mut impl Rng) -> Torso {
        let mut u = |a: f64, b: f64| rng.random_range(a..b);
        Torso {
            centre: [u(10.0, 20.0), u(-48.0, -32.0)],
            semi_axes: [u(150.0, 170.0), u(102.0, 118.0)],
            fat_mm: u(8.0, 18.0),
            lung_semi_axes: [u(55.0, 65.0), u(70.0, 80.0), u(110.0, 130.0)],
            lung_offset: [u(80.0, 90.0), u(5.0, 15.0), u(0.0, 20.0)],
            mediastinum_semi_axes: [u(68.0, 76.0), u(62.0, 70.0), u(85.0, 95.0)],
            spine_radius: u(15.0, 19.0),
            aorta_radius: u(10.0, 13.0),
        }
    }

    /// The non-heart tissue at a subject-frame point.
    #[inline]
    pub fn tissue_at(&self, p: [f64; 3]) -> Tissue {
        let x = p[0] - self.centre[0];
        let y = p[1] - self.centre[1];
        let [a, b] = self.semi_axes;
        if (x / a).powi(2) + (y / b).powi(2) > 1.0 {
            return Tissue::Air;
        }
        let (ai, bi) = (a - self.fat_mm, b - self.fat_mm);
        if (x / ai).powi(2) + (y / bi).powi(2) > 1.0 {
            return Tissue::Fat;
        }
        // spine (vertebral body) and sternum
        let (sx, sy) = (x, y + 0.62 * b);
        if sx * sx + sy * sy < self.spine_radius.powi(2) {
            return Tissue::Bone;
        }
        if (x / 14.0).powi(2) + ((y - (bi - 10.0)) / 6.0).powi(2) < 1.0 {
            return Tissue::Bone;
        }
        // descending aorta, left of the spine
        let (dx, dy) = (x + 24.0, y + 0.45 * b);
        if dx * dx + dy * dy < self.aorta_radius.powi(2) {
            return Tissue::LeftBlood;
        }
        let m = self.mediastinum_semi_axes;
        let in_mediastinum =
            (p[0] / m[0]).powi(2) + (p[1] / m[1]).powi(2) + (p[2] / m[2]).powi(2) < 1.0;
        if !in_mediastinum {
            let l = self.lung_semi_axes;
            for side in [-1.0, 1.0] {
                let lx = x - side * self.lung_offset[0];
                let ly = y - self.lung_offset[1];
                let lz = p[2] - self.lung_offset[2];
                if (lx / l[0]).powi(2) + (ly / l[1]).powi(2) + (lz / l[2]).powi(2) < 1.0 {
                    return Tissue::Lung;
                }
            }
        }
        Tissue::Soft
    }
}

/// The drawn parameters of one subject (recorded in the manifest).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubjectParams {
    pub scale: [f64; 3],
    pub rotation_deg: [f64; 3],
    pub displacement_amplitude_mm: f64,
    pub displacement_control_mm: f64,
    pub torso: Torso,
    /// synthwhs-2: each structure's own variation, in the order of `STRUCTURES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structures: Option<Vec<StructureVariation>>,
}

/// Per-axis scales rescaled alike so that their product (the heart's volume change)
/// stays within [lo, hi]: the per-axis draws cannot stack into an implausible heart.
fn hold_volume(scale: [f64; 3], lo: f64, hi: f64) -> [f64; 3] {
    let det: f64 = scale.iter().product();
    let clamped = det.clamp(lo, hi);
    if clamped == det {
        return scale;
    }
    let f = (clamped / det).cbrt();
    scale.map(|s| s * f)
}

/// subject frame → template frame: A = R·S, so A⁻¹ = S⁻¹·Rᵀ.
fn global_inverse(scale: [f64; 3], rotation_deg: [f64; 3]) -> [[f64; 3]; 3] {
    let rot = euler_rotation_deg(rotation_deg);
    let s_inv = [
        [1.0 / scale[0], 0.0, 0.0],
        [0.0, 1.0 / scale[1], 0.0],
        [0.0, 0.0, 1.0 / scale[2]],
    ];
    mat3_mul(&s_inv, &mat3_transpose(&rot))
}

/// A subject ready to be sampled.
pub struct Subject<'t> {
    pub params: SubjectParams,
    template: &'t Template,
    /// subject frame → template frame (inverse of the heart's global affine)
    a_inv: [[f64; 3]; 3],
    displacement: Displacement,
    heart_half_extent: f64,
    shaped: Option<ShapedHeart>,
}

impl<'t> Subject<'t> {
    pub fn random(template: &'t Template, rng: &mut impl Rng) -> Subject<'t> {
        let mut scale = [0; 3].map(|_| rng.random_range(0.85..1.15));
        // keep the heart's volume within −20 %…+25 % of the template's, so the
        // per-axis draw cannot stack into an implausible heart
        scale = hold_volume(scale, 0.8, 1.25);
        let rotation_deg = [0; 3].map(|_| rng.random_range(-15.0..15.0));
        let amplitude = rng.random_range(2.0..5.0);
        let control = 30.0;
        let half_extent = template.half_extent * 1.25 + 10.0;
        let displacement = Displacement::random(rng, amplitude, control, half_extent);
        let torso = Torso::random(rng);
        Subject {
            params: SubjectParams {
                scale,
                rotation_deg,
                displacement_amplitude_mm: amplitude,
                displacement_control_mm: control,
                torso,
                structures: None,
            },
            template,
            a_inv: global_inverse(scale, rotation_deg),
            displacement,
            heart_half_extent: half_extent,
            shaped: None,
        }
    }

    /// synthwhs-2: wider global variation, a finer and stronger deformation, and each
    /// structure varied on its own (`shapes`).
    pub fn varied<R: Rng>(
        template: &'t Template,
        fields: &'static StructureFields,
        d: &mut Draw<R>,
    ) -> Subject<'t> {
        d.group(Part::Anatomy);
        let (lo, hi) = if d.held_out { (0.6, 1.75) } else { (0.7, 1.5) };
        let scale = hold_volume([0; 3].map(|_| d.range(0.82, 1.2)), lo, hi);
        let rotation_deg = [0; 3].map(|_| d.group(Part::Orientation).symmetric(20.0));
        d.group(Part::Anatomy);
        let amplitude = d.range_min(2.0, 8.0, 0.5);
        let control = d.range_min(20.0, 40.0, 10.0);
        d.group(Part::Shape);
        let structures: Vec<StructureVariation> = (0..NUM_STRUCTURES)
            .map(|s| StructureVariation::draw(d, s))
            .collect();
        let half_extent = template.half_extent * 1.5 + 20.0;
        let displacement = Displacement::random(d.rng, amplitude, control, half_extent);
        let torso = Torso::varied(d.group(Part::Anatomy));
        let shaped = ShapedHeart::new(fields, &structures);
        Subject {
            params: SubjectParams {
                scale,
                rotation_deg,
                displacement_amplitude_mm: amplitude,
                displacement_control_mm: control,
                torso,
                structures: Some(structures),
            },
            template,
            a_inv: global_inverse(scale, rotation_deg),
            displacement,
            heart_half_extent: half_extent,
            shaped: Some(shaped),
        }
    }

    /// Heart class (0..7) and tissue at a subject-frame point.
    #[inline]
    pub fn sample(&self, p: [f64; 3]) -> (u8, Tissue) {
        let h = self.heart_half_extent;
        if p[0].abs() < h && p[1].abs() < h && p[2].abs() < h {
            let d = self.displacement.at(p);
            let a = mat3_vec(&self.a_inv, p);
            let c0 = self.template.centroid;
            let q = [
                c0[0] + a[0] + d[0],
                c0[1] + a[1] + d[1],
                c0[2] + a[2] + d[2],
            ];
            let c = match &self.shaped {
                Some(h) => h.class_at(q),
                None => self.template.class_at(q),
            };
            if c > 0 {
                return (c, tissue_of_class(c));
            }
        }
        (0, self.params.torso.tissue_at(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn displacement_never_exceeds_its_amplitude_and_is_smooth() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let d = Displacement::random(&mut rng, 5.0, 30.0, 100.0);
        let mut maxn: f64 = 0.0;
        let mut max_grad: f64 = 0.0;
        for i in 0..40 {
            let p = [
                i as f64 * 4.0 - 80.0,
                13.0 - i as f64,
                2.5 * i as f64 - 40.0,
            ];
            let v = d.at(p);
            let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            maxn = maxn.max(n);
            let q = [p[0] + 1.0, p[1], p[2]];
            let w = d.at(q);
            max_grad = max_grad.max((0..3).map(|a| (w[a] - v[a]).abs()).fold(0.0, f64::max));
        }
        assert!(maxn <= 5.0 + 1e-6 && maxn > 0.3, "{maxn}");
        // a 30 mm control grid cannot change by more than ~1 mm per mm
        assert!(max_grad < 0.6, "{max_grad}");
    }

    #[test]
    fn torso_has_air_outside_and_lungs_beside_the_heart() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let t = Torso::random(&mut rng);
        assert_eq!(t.tissue_at([400.0, 0.0, 0.0]), Tissue::Air);
        assert_eq!(t.tissue_at([0.0, 0.0, 0.0]), Tissue::Soft);
        let lung_x = t.centre[0] + t.lung_offset[0] + 10.0;
        assert_eq!(
            t.tissue_at([lung_x, t.centre[1] + t.lung_offset[1], t.lung_offset[2]]),
            Tissue::Lung
        );
    }
}
