//! What a segmentation found, in clinical units: each structure's volume (mL) and
//! the mean and standard deviation of the image inside it (HU for CT), the LV and
//! RV blood-pool volumes and the LV myocardial mass (at 1.05 g/mL).

use serde::Serialize;

use crate::io::Volume;
use crate::io::labels::{LABEL_VALUES, NUM_STRUCTURES, STRUCTURES, class_of_value};

/// Density of myocardium used for the LV mass (g/mL), as in cardiac MR and CT reports.
pub const MYOCARDIAL_DENSITY_G_PER_ML: f64 = 1.05;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StructureStats {
    pub structure: String,
    pub label: u16,
    pub voxels: u64,
    pub volume_ml: f64,
    /// Of the image inside the structure (None when the structure is empty).
    pub mean_intensity: Option<f64>,
    pub std_intensity: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Statistics {
    /// "HU" for CT, "a.u." for MRI.
    pub intensity_unit: String,
    pub voxel_volume_ml: f64,
    pub structures: Vec<StructureStats>,
    /// The LV cavity (blood pool), mL.
    pub lv_blood_pool_ml: f64,
    /// The RV cavity (blood pool), mL.
    pub rv_blood_pool_ml: f64,
    /// Myocardium volume × 1.05 g/mL. The label covers the LV myocardium, as in MM-WHS.
    pub lv_myocardial_mass_g: f64,
}

/// Voxel volume from the affine (|det| of its 3×3 part, mm³), so an oblique or
/// sheared grid counts correctly.
fn voxel_volume_mm3<T>(v: &Volume<T>) -> f64 {
    v.affine.fixed_view::<3, 3>(0, 0).determinant().abs()
}

/// Statistics of `labels` (MM-WHS label values) over `image` on the same grid.
pub fn statistics(
    image: &Volume<f32>,
    labels: &Volume<i16>,
    ct: bool,
) -> anyhow::Result<Statistics> {
    anyhow::ensure!(
        image.shape() == labels.shape(),
        "the label map's shape {:?} differs from the image's {:?}",
        labels.shape(),
        image.shape()
    );
    let vox_ml = voxel_volume_mm3(labels) / 1000.0;
    // Welford per structure, in f64
    let mut n = [0u64; NUM_STRUCTURES];
    let mut mean = [0.0f64; NUM_STRUCTURES];
    let mut m2 = [0.0f64; NUM_STRUCTURES];
    for (&l, &x) in labels.data.iter().zip(image.data.iter()) {
        let Some(c) = class_of_value(l as i32)
            .filter(|&c| c > 0)
            .map(|c| c as usize - 1)
        else {
            continue;
        };
        n[c] += 1;
        let d = x as f64 - mean[c];
        mean[c] += d / n[c] as f64;
        m2[c] += d * (x as f64 - mean[c]);
    }
    let structures: Vec<StructureStats> = (0..7)
        .map(|c| StructureStats {
            structure: STRUCTURES[c].to_string(),
            label: LABEL_VALUES[c + 1] as u16,
            voxels: n[c],
            volume_ml: n[c] as f64 * vox_ml,
            mean_intensity: (n[c] > 0).then_some(mean[c]),
            std_intensity: (n[c] > 0).then(|| (m2[c] / n[c] as f64).sqrt()),
        })
        .collect();
    let vol = |name: &str| {
        structures
            .iter()
            .find(|s| s.structure == name)
            .map_or(0.0, |s| s.volume_ml)
    };
    Ok(Statistics {
        intensity_unit: if ct { "HU" } else { "a.u." }.to_string(),
        voxel_volume_ml: vox_ml,
        lv_blood_pool_ml: vol("LV"),
        rv_blood_pool_ml: vol("RV"),
        lv_myocardial_mass_g: vol("Myo") * MYOCARDIAL_DENSITY_G_PER_ML,
        structures,
    })
}

impl Statistics {
    /// A printed table.
    pub fn table(&self) -> String {
        let u = &self.intensity_unit;
        let mut s =
            format!("| structure | volume (mL) | mean ({u}) | sd ({u}) |\n|---|---|---|---|\n");
        for r in &self.structures {
            let f = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{x:.1}"));
            s.push_str(&format!(
                "| {} | {:.1} | {} | {} |\n",
                r.structure,
                r.volume_ml,
                f(r.mean_intensity),
                f(r.std_intensity)
            ));
        }
        s.push_str(&format!(
            "\nLV blood pool {:.1} mL, RV blood pool {:.1} mL, LV myocardial mass {:.1} g (at {} g/mL)\n",
            self.lv_blood_pool_ml,
            self.rv_blood_pool_ml,
            self.lv_myocardial_mass_g,
            MYOCARDIAL_DENSITY_G_PER_ML
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::Matrix4;
    use ndarray::Array3;

    #[test]
    fn hand_made_volume_gives_known_volumes_means_and_mass() {
        // 10 × 10 × 10 voxels of 2 × 1.5 × 1 mm = 3 mm³ = 0.003 mL each
        let mut aff = Matrix4::identity();
        aff[(0, 0)] = -2.0; // a flipped axis changes nothing
        aff[(1, 1)] = 1.5;
        let labels = Array3::from_shape_fn((10, 10, 10), |(i, j, _)| match (i, j) {
            (0..=4, _) => 500, // LV: 500 voxels
            (5, 0..=3) => 205, // Myo: 40 voxels
            (6, 0) => 600,     // RV: 10 voxels
            _ => 0,
        });
        // image: LV alternates 100 and 300 (mean 200, sd 100); Myo constant 50
        let image = Array3::from_shape_fn((10, 10, 10), |(i, j, k)| match (i, j) {
            (0..=4, _) => {
                if (i + j + k) % 2 == 0 {
                    100.0
                } else {
                    300.0
                }
            }
            (5, 0..=3) => 50.0,
            _ => -1000.0,
        });
        let lab = Volume::new(labels, [2.0, 1.5, 1.0], aff);
        let img = Volume::new(image, [2.0, 1.5, 1.0], aff);
        let s = statistics(&img, &lab, true).unwrap();
        assert!((s.voxel_volume_ml - 0.003).abs() < 1e-12);
        let get = |n: &str| s.structures.iter().find(|r| r.structure == n).unwrap();
        assert_eq!(get("LV").voxels, 500);
        assert!((s.lv_blood_pool_ml - 1.5).abs() < 1e-9);
        assert!((s.rv_blood_pool_ml - 0.03).abs() < 1e-9);
        assert!((get("LV").mean_intensity.unwrap() - 200.0).abs() < 1e-9);
        assert!((get("LV").std_intensity.unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(get("Myo").mean_intensity, Some(50.0));
        assert_eq!(get("Myo").std_intensity, Some(0.0));
        assert!((s.lv_myocardial_mass_g - 40.0 * 0.003 * 1.05).abs() < 1e-9);
        assert_eq!(get("PA").voxels, 0);
        assert_eq!(get("PA").mean_intensity, None);
        assert_eq!(s.intensity_unit, "HU");
        assert!(
            s.table().contains("| LV | 1.5 | 200.0 | 100.0 |"),
            "{}",
            s.table()
        );
        // a grid mismatch is an error
        let small = Volume::new(Array3::zeros((2, 2, 2)), [1.0; 3], Matrix4::identity());
        assert!(statistics(&img, &small, true).is_err());
    }
}
