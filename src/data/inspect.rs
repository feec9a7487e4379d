//! `rlu2net inspect`: what a data folder holds, one line per case.

use crate::data::labels::{STRUCTURES, class_counts, labels_to_classes};
use crate::data::layout::{Case, Dataset, Modality, Split};
use crate::io::{Orientation, read_nifti};

/// What one case looks like.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseSummary {
    pub name: String,
    pub modality: String,
    pub split: String,
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub orientation: String,
    pub dtype: String,
    pub intensity: (f32, f32),
    /// Structures present in the label map; None when the case has no label file.
    pub structures: Option<Vec<String>>,
    /// Problems found (label grid differs from the image's, …).
    pub problems: Vec<String>,
}

impl CaseSummary {
    pub fn line(&self) -> String {
        let labels = match &self.structures {
            None => "no label".to_string(),
            Some(s) if s.is_empty() => "labels: none".to_string(),
            Some(s) => format!("labels: {}", s.join(" ")),
        };
        let mut line = format!(
            "{:<16} {:<3} {:<5} {:<14} {:<19} {} {:<7} {:<12}  {}",
            self.name,
            self.modality,
            self.split,
            format!("{}x{}x{}", self.shape[0], self.shape[1], self.shape[2]),
            format!(
                "{:.2}x{:.2}x{:.2}mm",
                self.spacing[0], self.spacing[1], self.spacing[2]
            ),
            self.orientation,
            self.dtype,
            format!("[{:.0}, {:.0}]", self.intensity.0, self.intensity.1),
            labels
        );
        for p in &self.problems {
            line.push_str(&format!("\n    problem: {p}"));
        }
        line
    }
}

/// Read a case's image (and label) and summarise it.
pub fn inspect_case(case: &Case) -> anyhow::Result<CaseSummary> {
    let (img, info) = read_nifti::<f32>(&case.image)?;
    let mut problems: Vec<String> = info.scaling_note.iter().cloned().collect();
    let structures = match &case.label {
        None => None,
        Some(lp) => {
            let (lab, _) = read_nifti::<f32>(lp)?;
            let cls = labels_to_classes(&lab, lp)?;
            if lab.shape() != img.shape() {
                problems.push(format!(
                    "label shape {:?} differs from image shape {:?}",
                    lab.shape(),
                    img.shape()
                ));
            } else if (lab.affine - img.affine).abs().max() > 1e-3 {
                problems.push("label affine differs from the image's".to_string());
            }
            let n = class_counts(&cls.data);
            Some(
                (1..8)
                    .filter(|&c| n[c] > 0)
                    .map(|c| STRUCTURES[c - 1].to_string())
                    .collect(),
            )
        }
    };
    Ok(CaseSummary {
        name: case.name(),
        modality: case.modality.to_string(),
        split: case.split.name().to_string(),
        shape: img.shape(),
        spacing: img.spacing,
        orientation: Orientation::of_affine(&img.affine).code(),
        dtype: format!("{:?}", info.dtype).to_lowercase(),
        intensity: img.intensity_range().unwrap_or((f32::NAN, f32::NAN)),
        structures,
        problems,
    })
}

/// What `inspect` says of one modality's split: how many cases, with labels, the range
/// of their spacings and the orientations seen.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitSummary {
    pub modality: Modality,
    pub split: Split,
    pub cases: usize,
    pub labelled: usize,
    /// Per axis, the smallest and the largest spacing of the readable cases (mm).
    pub spacing: [(f64, f64); 3],
    pub orientations: std::collections::BTreeSet<String>,
}

impl SplitSummary {
    pub fn line(&self) -> String {
        let [x, y, z] = self.spacing;
        format!(
            "{} {:<5}: {} cases ({} with labels); spacing {:.2}-{:.2} x {:.2}-{:.2} x {:.2}-{:.2} mm; orientations {}",
            self.modality,
            self.split.name(),
            self.cases,
            self.labelled,
            x.0,
            x.1,
            y.0,
            y.1,
            z.0,
            z.1,
            self.orientations
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

/// One summary per modality and split that has cases, from each case's inspection
/// (`results`, in the order of `ds.cases`).
pub fn split_summaries(ds: &Dataset, results: &[anyhow::Result<CaseSummary>]) -> Vec<SplitSummary> {
    let mut out = Vec::new();
    for modality in [Modality::Ct, Modality::Mr] {
        for split in [Split::Train, Split::Test] {
            let sel: Vec<_> = ds
                .cases
                .iter()
                .zip(results)
                .filter(|(c, _)| c.modality == modality && c.split == split)
                .collect();
            if sel.is_empty() {
                continue;
            }
            let ok: Vec<&CaseSummary> = sel.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
            let mut spacing = [(f64::INFINITY, 0.0f64); 3];
            for s in &ok {
                for (a, r) in spacing.iter_mut().enumerate() {
                    *r = (r.0.min(s.spacing[a]), r.1.max(s.spacing[a]));
                }
            }
            out.push(SplitSummary {
                modality,
                split,
                cases: sel.len(),
                labelled: sel.iter().filter(|(c, _)| c.label.is_some()).count(),
                spacing,
                orientations: ok.iter().map(|s| s.orientation.clone()).collect(),
            });
        }
    }
    out
}
