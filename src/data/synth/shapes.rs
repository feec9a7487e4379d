//! Per-structure anatomy (synthwhs-2): each of the seven structures is a signed
//! distance field on the template grid, moved by its own local transform and
//! grown or shrunk by its own margin; a point takes the structure it lies
//! deepest inside. Chamber sizes and shapes vary independently, the myocardial
//! wall thickens or thins, and the great vessels lengthen, shorten and bend.

use std::sync::OnceLock;

use ndarray::Array3;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::anatomy::Template;
use super::variety::Draw;
use crate::data::labels::NUM_STRUCTURES;
use crate::geometry::{mat3_mul, mat3_transpose, mat3_vec};

/// Signed distances are stored in steps of this many mm (as i8: ±31.75 mm).
const SDF_STEP: f32 = 0.25;
const SDF_LIMIT: f32 = 127.0 * SDF_STEP;

/// One structure's signed distance field (mm, negative inside) and its frame.
pub struct StructureField {
    sdf: Array3<i8>,
    /// Centroid (template frame, mm).
    pub centroid: [f64; 3],
    /// Principal axis (unit vector, the direction of largest extent).
    pub axis: [f64; 3],
    /// Largest distance of a voxel of the structure from its centroid (mm).
    pub reach: f64,
}

/// The seven fields of the shipped template, computed once per process.
pub struct StructureFields {
    pub fields: Vec<StructureField>,
    /// The smallest of the seven signed distances (the whole heart's).
    union: Array3<i8>,
    origin: [f64; 3],
    inv_spacing: [f64; 3],
}

static FIELDS: OnceLock<StructureFields> = OnceLock::new();

/// The shipped template's structure fields (built on first use, a few seconds).
///
/// The initialisation must not use rayon: a pool thread blocked in it could steal a job
/// that asks for the fields again (another case of the same `generate`) and wait on
/// itself. It runs on the calling thread alone.
pub fn structure_fields(template: &Template) -> &'static StructureFields {
    FIELDS.get_or_init(|| StructureFields::new(template))
}

fn signed_distance(inside: &Array3<bool>, spacing: [f64; 3]) -> Array3<i8> {
    let d_in = crate::metrics::edt(inside, spacing);
    let d_out = crate::metrics::edt(&inside.mapv(|b| !b), spacing);
    // the surface lies half a voxel from the centres on either side of it
    let half = 0.5 * spacing.iter().cloned().fold(f64::INFINITY, f64::min);
    ndarray::Zip::from(inside)
        .and(&d_in)
        .and(&d_out)
        .map_collect(|&i, &a, &b| {
            let phi = if i { -(b - half) } else { a - half } as f32;
            (phi.clamp(-SDF_LIMIT, SDF_LIMIT) / SDF_STEP).round() as i8
        })
}

fn frame_of(template: &Template, class: u8) -> ([f64; 3], [f64; 3], f64) {
    let mut pts = Vec::new();
    for ((i, j, k), &c) in template.classes.data.indexed_iter() {
        if c == class {
            pts.push(template.classes.world_of([i as f64, j as f64, k as f64]));
        }
    }
    let n = pts.len().max(1) as f64;
    let mut c = [0.0; 3];
    for p in &pts {
        (0..3).for_each(|a| c[a] += p[a] / n);
    }
    let mut cov = nalgebra::Matrix3::<f64>::zeros();
    let mut reach: f64 = 0.0;
    for p in &pts {
        let d = nalgebra::Vector3::new(p[0] - c[0], p[1] - c[1], p[2] - c[2]);
        cov += d * d.transpose() / n;
        reach = reach.max(d.norm());
    }
    let eig = cov.symmetric_eigen();
    let imax = eig.eigenvalues.imax();
    let v = eig.eigenvectors.column(imax);
    (c, [v[0], v[1], v[2]], reach)
}

impl StructureFields {
    fn new(template: &Template) -> StructureFields {
        let t = &template.classes;
        let spacing = t.spacing;
        let fields: Vec<StructureField> = (1..=NUM_STRUCTURES as u8)
            .map(|c| {
                let (centroid, axis, reach) = frame_of(template, c);
                StructureField {
                    sdf: signed_distance(&t.data.mapv(|x| x == c), spacing),
                    centroid,
                    axis,
                    reach,
                }
            })
            .collect();
        let mut union = fields[0].sdf.clone();
        for f in &fields[1..] {
            ndarray::Zip::from(&mut union)
                .and(&f.sdf)
                .for_each(|u, &v| *u = (*u).min(v));
        }
        StructureFields {
            fields,
            union,
            origin: [0, 1, 2].map(|a| t.affine[(a, 3)]),
            inv_spacing: [0, 1, 2].map(|a| 1.0 / t.affine[(a, a)]),
        }
    }

    /// The grid index of the voxel nearest a template point, if inside the grid.
    #[inline]
    fn nearest_index(&self, q: [f64; 3]) -> Option<[usize; 3]> {
        let dim = self.union.dim();
        let n = [dim.0, dim.1, dim.2];
        let mut idx = [0usize; 3];
        for a in 0..3 {
            // floor(x + ½) without libm's `round`
            let x = (q[a] - self.origin[a]) * self.inv_spacing[a] + 0.5;
            if !(x >= 0.0 && x < n[a] as f64) {
                return None;
            }
            idx[a] = x as usize;
        }
        Some(idx)
    }

    /// Trilinear signed distance (mm) of structure `s` (0-based) at a template point;
    /// `SDF_LIMIT` outside the grid.
    #[inline]
    fn distance(&self, s: usize, q: [f64; 3]) -> f32 {
        let f = &self.fields[s].sdf;
        let dim = f.dim();
        let n = [dim.0, dim.1, dim.2];
        let mut base = [0usize; 3];
        let mut w = [0f32; 3];
        for a in 0..3 {
            let x = (q[a] - self.origin[a]) * self.inv_spacing[a];
            if x < 0.0 || x >= (n[a] - 1) as f64 {
                return SDF_LIMIT;
            }
            base[a] = x as usize;
            w[a] = (x - base[a] as f64) as f32;
        }
        let mut acc = 0.0f32;
        for corner in 0..8usize {
            let o = [corner & 1, (corner >> 1) & 1, (corner >> 2) & 1];
            let wt: f32 = (0..3)
                .map(|a| if o[a] == 1 { w[a] } else { 1.0 - w[a] })
                .product();
            acc += wt * f[[base[0] + o[0], base[1] + o[1], base[2] + o[2]]] as f32;
        }
        acc * SDF_STEP
    }
}

/// The drawn variation of one structure (recorded in the manifest).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StructureVariation {
    /// Growth of the structure's surface (mm; negative shrinks it).
    pub margin_mm: f64,
    /// Scale factors along the structure's own axes (the first is the principal axis).
    pub scale: [f64; 3],
    /// Rotation (degrees) of the secondary axes about the principal one.
    pub axes_roll_deg: f64,
    /// Sideways shift (mm) of the structure's far end, bending it along its principal axis.
    pub bend_mm: f64,
    /// Direction of the bend, an angle (degrees) about the principal axis.
    pub bend_direction_deg: f64,
}

/// The ranges a structure's variation is drawn from.
struct VariationRanges {
    margin: f64,
    scale: (f64, f64),
    stretch: (f64, f64),
    bend: f64,
}

fn ranges_of(structure: usize) -> VariationRanges {
    match structure {
        // Myo: the wall thickness varies through its margin
        0 => VariationRanges {
            margin: 1.5,
            scale: (0.9, 1.12),
            stretch: (0.9, 1.12),
            bend: 2.0,
        },
        // AA, PA: length and curvature
        5 | 6 => VariationRanges {
            margin: 1.5,
            scale: (0.85, 1.2),
            stretch: (0.75, 1.3),
            bend: 10.0,
        },
        // chambers
        _ => VariationRanges {
            margin: 2.5,
            scale: (0.85, 1.2),
            stretch: (0.85, 1.2),
            bend: 3.0,
        },
    }
}

impl StructureVariation {
    pub fn draw<R: Rng>(d: &mut Draw<R>, structure: usize) -> StructureVariation {
        let r = ranges_of(structure);
        StructureVariation {
            margin_mm: d.symmetric(r.margin),
            scale: [
                d.range_min(r.stretch.0, r.stretch.1, 0.5),
                d.range_min(r.scale.0, r.scale.1, 0.5),
                d.range_min(r.scale.0, r.scale.1, 0.5),
            ],
            axes_roll_deg: d.rng.random_range(0.0..180.0),
            bend_mm: d.symmetric(r.bend),
            bend_direction_deg: d.rng.random_range(0.0..360.0),
        }
    }
}

/// A structure's variation as a map from the subject's template frame into the template's.
struct LocalMap {
    centroid: [f64; 3],
    /// q_s = c + m·(q − c) + bend·t²·side, with t the coordinate along `axis`.
    m: [[f64; 3]; 3],
    axis: [f64; 3],
    bend: f64,
    side: [f64; 3],
    margin: f32,
    /// Largest |q_s − q| within the structure's reach (for the quick rejection).
    shift_bound: f64,
}

fn orthonormal_frame(axis: [f64; 3], roll_deg: f64) -> [[f64; 3]; 3] {
    let u = nalgebra::Vector3::from(axis).normalize();
    let helper = if u.x.abs() < 0.9 {
        nalgebra::Vector3::x()
    } else {
        nalgebra::Vector3::y()
    };
    let v0 = u.cross(&helper).normalize();
    let w0 = u.cross(&v0);
    let (s, c) = roll_deg.to_radians().sin_cos();
    let v = v0 * c + w0 * s;
    let w = u.cross(&v);
    // rows: the structure's axes
    [[u.x, u.y, u.z], [v.x, v.y, v.z], [w.x, w.y, w.z]]
}

impl LocalMap {
    fn new(field: &StructureField, var: &StructureVariation) -> LocalMap {
        let r = orthonormal_frame(field.axis, var.axes_roll_deg);
        // m = Rᵀ · diag(1/scale) · R: scale `k` along an axis shows the structure k times longer
        let inv = [0, 1, 2].map(|a| {
            let mut row = [0.0; 3];
            row[a] = 1.0 / var.scale[a];
            row
        });
        let m = mat3_mul(&mat3_transpose(&r), &mat3_mul(&inv, &r));
        let bend_frame = orthonormal_frame(field.axis, var.bend_direction_deg);
        let reach = field.reach;
        let bend = var.bend_mm / (reach * reach).max(1.0);
        // a point maps inside the structure only if |q_s − c| ≤ reach; since the principal
        // axis is an eigenvector of m, that needs |t| ≤ k₀·reach, so the bend moves it by at
        // most |bend_mm|·k₀², and |q − c| ≤ k_max·(reach + that)
        let stretch = var
            .scale
            .iter()
            .map(|k| (1.0 / k - 1.0).abs())
            .fold(0.0, f64::max);
        let k_max = var.scale.iter().cloned().fold(0.0, f64::max);
        let bent = var.bend_mm.abs() * var.scale[0] * var.scale[0];
        let shift = stretch * k_max * (reach + bent) + bent;
        LocalMap {
            centroid: field.centroid,
            m,
            axis: r[0],
            bend,
            side: bend_frame[1],
            margin: var.margin_mm as f32,
            shift_bound: shift + var.margin_mm.abs(),
        }
    }

    #[inline]
    fn apply(&self, q: [f64; 3]) -> [f64; 3] {
        let d = [0, 1, 2].map(|a| q[a] - self.centroid[a]);
        let t = d[0] * self.axis[0] + d[1] * self.axis[1] + d[2] * self.axis[2];
        let md = mat3_vec(&self.m, d);
        let b = self.bend * t * t;
        [0, 1, 2].map(|a| self.centroid[a] + md[a] - b * self.side[a])
    }
}

/// The seven structures of one subject, ready to be sampled.
pub struct ShapedHeart {
    fields: &'static StructureFields,
    maps: Vec<LocalMap>,
    /// No structure's map moves a point by more than this (mm, with its margin).
    largest_shift: f32,
}

impl ShapedHeart {
    pub fn new(fields: &'static StructureFields, vars: &[StructureVariation]) -> ShapedHeart {
        let maps = fields
            .fields
            .iter()
            .zip(vars)
            .map(|(f, v)| LocalMap::new(f, v))
            .collect::<Vec<_>>();
        let largest_shift = maps.iter().map(|m| m.shift_bound).fold(0.0, f64::max) as f32;
        ShapedHeart {
            fields,
            maps,
            largest_shift,
        }
    }

    /// The class (0 = none, 1..=7) at a template-frame point.
    #[inline]
    pub fn class_at(&self, q: [f64; 3]) -> u8 {
        // every field is 1-Lipschitz: a structure whose template surface is farther than
        // its map can move a point cannot contain it (the nearest voxel's value is within
        // a voxel's half-diagonal, < 1 mm, of the trilinear one)
        let near = |f: &Array3<i8>, idx: Option<[usize; 3]>| {
            idx.map_or(SDF_LIMIT, |i| f[i] as f32 * SDF_STEP)
        };
        let idx = self.fields.nearest_index(q);
        if near(&self.fields.union, idx) > self.largest_shift + 2.0 {
            return 0;
        }
        let mut best = 0u8;
        let mut best_depth = 0.0f32;
        for (s, map) in self.maps.iter().enumerate() {
            if near(&self.fields.fields[s].sdf, idx) > map.shift_bound as f32 + 2.0 {
                continue;
            }
            let depth = self.fields.distance(s, map.apply(q)) - map.margin;
            if depth < best_depth {
                best_depth = depth;
                best = s as u8 + 1;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::template;

    fn identity_vars() -> Vec<StructureVariation> {
        (0..NUM_STRUCTURES)
            .map(|_| StructureVariation {
                margin_mm: 0.0,
                scale: [1.0; 3],
                axes_roll_deg: 0.0,
                bend_mm: 0.0,
                bend_direction_deg: 0.0,
            })
            .collect()
    }

    fn count(heart: &ShapedHeart, t: &Template) -> [usize; 8] {
        let mut n = [0usize; 8];
        for ((i, j, k), _) in t.classes.data.indexed_iter() {
            let q = t.classes.world_of([i as f64, j as f64, k as f64]);
            n[heart.class_at(q) as usize] += 1;
        }
        n
    }

    #[test]
    fn without_variation_the_fields_give_back_the_template() {
        let t = template();
        let heart = ShapedHeart::new(structure_fields(&t), &identity_vars());
        let mut agree = 0usize;
        for ((i, j, k), &c) in t.classes.data.indexed_iter() {
            let q = t.classes.world_of([i as f64, j as f64, k as f64]);
            agree += (heart.class_at(q) == c) as usize;
        }
        let frac = agree as f64 / t.classes.data.len() as f64;
        assert!(frac > 0.999, "{frac}");
    }

    #[test]
    fn a_margin_grows_one_structure_by_its_surface_times_the_margin() {
        let t = template();
        let fields = structure_fields(&t);
        let base = count(&ShapedHeart::new(fields, &identity_vars()), &t);
        // LV (structure 2, class 3) grown by 2 mm: its volume rises, the others' do not
        let mut vars = identity_vars();
        vars[2].margin_mm = 2.0;
        let grown = count(&ShapedHeart::new(fields, &vars), &t);
        let ratio = grown[3] as f64 / base[3] as f64;
        // a ball of the LV's volume (r ≈ (3V/4π)^⅓) grown by 2 mm: ((r+2)/r)³
        let r = (3.0 * base[3] as f64 / (4.0 * std::f64::consts::PI)).cbrt();
        let ball = ((r + 2.0) / r).powi(3);
        assert!(ratio > 1.1 && ratio < ball * 1.15, "{ratio} (ball {ball})");
        for c in [2, 4, 5, 6, 7] {
            assert!(grown[c] <= base[c], "class {c}: {} > {}", grown[c], base[c]);
        }
        // a scale of 1.2 along every axis: at most 1.2³ the volume, less where the LV
        // grows into the myocardium around it (the deeper structure wins), which loses
        let mut vars = identity_vars();
        vars[2].scale = [1.2; 3];
        let scaled = count(&ShapedHeart::new(fields, &vars), &t);
        let ratio = scaled[3] as f64 / base[3] as f64;
        assert!(ratio > 1.25 && ratio < 1.73, "{ratio}");
        assert!(scaled[1] < base[1], "the myocardium gave way");
    }
}
