//! MM-WHS label values ↔ the internal classes 0..7.

use std::path::Path;

use ndarray::Array3;

use crate::io::{Volume, VolumeError};

/// MM-WHS 2017 label values of the classes `[bg, Myo, LA, LV, RA, RV, AA, PA]`.
pub const LABEL_VALUES: [i32; 8] = [0, 205, 420, 500, 550, 600, 820, 850];
/// The seven structures, in the paper's Table 1 order (class 1..7).
pub const STRUCTURES: [&str; 7] = ["Myo", "LA", "LV", "RA", "RV", "AA", "PA"];
pub const NUM_CLASSES: usize = 8;
/// The seven structures (every class but the background).
pub const NUM_STRUCTURES: usize = STRUCTURES.len();

/// The class (0..7) of an MM-WHS label value.
pub fn class_of_value(v: i32) -> Option<u8> {
    LABEL_VALUES.iter().position(|&x| x == v).map(|c| c as u8)
}

/// Map an MM-WHS label volume (values read as f32) to classes. Any value that is
/// NaN, not an integer or not an MM-WHS label is an error naming the file and value.
pub fn labels_to_classes(vol: &Volume<f32>, path: &Path) -> Result<Volume<u8>, VolumeError> {
    let mut bad: Option<f32> = None;
    let data: Array3<u8> = vol.data.map(|&v| {
        if v.fract() == 0.0
            && let Some(c) = class_of_value(v as i32)
        {
            return c;
        }
        if bad.is_none() {
            bad = Some(v);
        }
        0
    });
    if let Some(v) = bad {
        let what = if v.is_nan() {
            "a NaN voxel".to_string()
        } else {
            format!("the value {v}")
        };
        return Err(VolumeError::new(
            path,
            format!(
                "label map holds {what}, which is not an MM-WHS label (allowed: {:?})",
                LABEL_VALUES
            ),
        ));
    }
    Ok(vol.with_data(data))
}

/// Map classes back to MM-WHS label values.
pub fn classes_to_labels(vol: &Volume<u8>) -> Volume<i16> {
    vol.map(|&c| LABEL_VALUES[(c as usize).min(7)] as i16)
}

/// Voxel count of each class.
pub fn class_counts(data: &Array3<u8>) -> [usize; NUM_CLASSES] {
    let mut n = [0usize; NUM_CLASSES];
    for &c in data.iter() {
        n[(c as usize).min(NUM_CLASSES - 1)] += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_map_to_classes_and_back() {
        let vals = [0.0f32, 205.0, 420.0, 500.0, 550.0, 600.0, 820.0, 850.0];
        let vol = Volume::with_spacing(
            Array3::from_shape_vec((2, 2, 2), vals.to_vec()).unwrap(),
            [1.0; 3],
        );
        let cls = labels_to_classes(&vol, Path::new("x.nii.gz")).unwrap();
        assert_eq!(
            cls.data.iter().copied().collect::<Vec<_>>(),
            (0..8).collect::<Vec<u8>>()
        );
        let back = classes_to_labels(&cls);
        assert_eq!(
            back.data.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            vals.to_vec()
        );
    }

    #[test]
    fn unknown_label_value_is_rejected_with_file_and_value() {
        for (v, needle) in [(421.0f32, "421"), (f32::NAN, "NaN"), (205.5, "205.5")] {
            let mut data = Array3::zeros((2, 2, 2));
            data[[1, 0, 1]] = v;
            let vol = Volume::with_spacing(data, [1.0; 3]);
            let e = labels_to_classes(&vol, Path::new("ct_train_1001_label.nii.gz"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("ct_train_1001_label.nii.gz") && e.contains(needle),
                "{e}"
            );
        }
    }
}
