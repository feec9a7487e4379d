//! The confusion matrix of two class maps: voxel counts, truth (rows) × prediction
//! (columns), classes in the order background, Myo, LA, LV, RA, RV, AA, PA.

use crate::data::labels::{NUM_CLASSES, STRUCTURES};

pub type Confusion = [[u64; NUM_CLASSES]; NUM_CLASSES];

/// Count voxels per (truth, prediction) pair; the maps must have the same length.
pub fn confusion<'a>(
    pred: impl IntoIterator<Item = &'a u8>,
    truth: impl IntoIterator<Item = &'a u8>,
) -> Confusion {
    let mut m = [[0u64; NUM_CLASSES]; NUM_CLASSES];
    for (&p, &t) in pred.into_iter().zip(truth) {
        m[t as usize][p as usize] += 1;
    }
    m
}

/// The element-wise sum of two matrices.
pub fn add(a: &Confusion, b: &Confusion) -> Confusion {
    std::array::from_fn(|i| std::array::from_fn(|j| a[i][j] + b[i][j]))
}

/// A Markdown table, rows = truth, columns = prediction.
pub fn markdown(m: &Confusion) -> String {
    let names: Vec<&str> = std::iter::once("bg")
        .chain(STRUCTURES.iter().copied())
        .collect();
    let mut s = format!(
        "| truth \\ prediction | {} |\n|---|{}\n",
        names.join(" | "),
        "---|".repeat(names.len())
    );
    for (i, row) in m.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        s.push_str(&format!("| {} | {} |\n", names[i], cells.join(" | ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_made_case_counts_each_mix_up() {
        // truth:      bg bg LV LV LV RV RV LA
        // prediction: bg LV LV LV RV RV LV LA
        let truth = [0u8, 0, 3, 3, 3, 5, 5, 2];
        let pred = [0u8, 3, 3, 3, 5, 5, 3, 2];
        let m = confusion(&pred, &truth);
        assert_eq!(m[0][0], 1);
        assert_eq!(m[0][3], 1); // background taken for LV
        assert_eq!(m[3][3], 2);
        assert_eq!(m[3][5], 1); // LV taken for RV
        assert_eq!(m[5][5], 1);
        assert_eq!(m[5][3], 1); // RV taken for LV
        assert_eq!(m[2][2], 1);
        assert_eq!(m.iter().flatten().sum::<u64>(), 8);
        // rows sum to the truth's class counts, columns to the prediction's
        assert_eq!(m[3].iter().sum::<u64>(), 3);
        assert_eq!((0..8).map(|t| m[t][3]).sum::<u64>(), 4);
        assert_eq!(add(&m, &m)[3][5], 2);
        let md = markdown(&m);
        assert!(
            md.contains("| LV | 0 | 0 | 0 | 2 | 0 | 1 | 0 | 0 |"),
            "{md}"
        );
    }
}
