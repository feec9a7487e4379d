//! Evaluate a folder of predictions against a folder of ground truth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rayon::prelude::*;

use super::report::{CaseReport, Report, score_case, summarise};
use crate::data::labels::labels_to_classes;
use crate::data::layout::Modality;
use crate::io::{read_nifti, write_atomically};

/// `<case>_label.nii[.gz]` files anywhere under `dir`, keyed by case name. A case
/// name found twice (say a prediction folder holding another set's predictions in a
/// subfolder) is an error naming both files: which one would be scored is not for
/// the order of a folder listing to decide.
pub fn label_files(dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in
            std::fs::read_dir(&d).with_context(|| format!("{}: cannot list folder", d.display()))?
        {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            let Some(case) = name
                .strip_suffix("_label.nii.gz")
                .or_else(|| name.strip_suffix("_label.nii"))
            else {
                continue;
            };
            if let Some(first) = out.insert(case.to_string(), p.clone()) {
                anyhow::bail!(
                    "{}: case {case} is there twice, as {} and {}; point at a folder that holds one of them",
                    dir.display(),
                    first.display(),
                    p.display()
                );
            }
        }
    }
    Ok(out)
}

fn modality_of(case: &str) -> Modality {
    if case.starts_with("mr") {
        Modality::Mr
    } else {
        Modality::Ct
    }
}

/// Score every prediction that has a ground truth; write `report.md`, `report.json`
/// and `overlays/<case>.png` under `out` (when given).
pub fn evaluate(pred: &Path, truth: &Path, out: Option<&Path>) -> anyhow::Result<Report> {
    let preds = label_files(pred)?;
    let truths = label_files(truth)?;
    let cases: Vec<(&String, &PathBuf, &PathBuf)> = preds
        .iter()
        .filter_map(|(c, p)| truths.get(c).map(|t| (c, p, t)))
        .collect();
    anyhow::ensure!(
        !cases.is_empty(),
        "no prediction in {} matches a ground-truth label in {} (files are matched by case name, e.g. ct_test_2001_label.nii.gz)",
        pred.display(),
        truth.display()
    );
    for c in preds.keys().filter(|c| !truths.contains_key(*c)) {
        eprintln!("warning: {c}: no ground truth; not evaluated");
    }
    if let Some(o) = out {
        std::fs::create_dir_all(o.join("overlays"))
            .with_context(|| format!("{}: cannot create", o.display()))?;
    }
    let reports: Vec<CaseReport> = cases
        .par_iter()
        .with_max_len(1)
        .map(|(case, pp, tp)| -> anyhow::Result<CaseReport> {
            let (p, _) = read_nifti::<f32>(pp)?;
            let (t, _) = read_nifti::<f32>(tp)?;
            anyhow::ensure!(
                p.shape() == t.shape(),
                "{}: shape {:?} differs from the ground truth's {:?} ({})",
                pp.display(),
                p.shape(),
                t.shape(),
                tp.display()
            );
            let pc = labels_to_classes(&p, pp)?;
            let tc = labels_to_classes(&t, tp)?;
            let m = modality_of(case);
            if let Some(o) = out {
                // the image beside the ground truth, if there is one
                let img_path = tp.with_file_name(
                    tp.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .replace("_label", "_image"),
                );
                let img = match read_nifti::<f32>(&img_path) {
                    Ok((v, _)) if v.shape() == t.shape() => v,
                    _ => t.map(|_| 0.0),
                };
                crate::viz::overlay_png(
                    &o.join("overlays").join(format!("{case}.png")),
                    &img,
                    &pc,
                    Some(&tc),
                    m,
                )?;
            }
            Ok(score_case(case, m, &pc, &tc))
        })
        .collect::<anyhow::Result<_>>()?;
    let report = summarise(reports);
    if let Some(o) = out {
        write_atomically(&o.join("report.md"), report.markdown().as_bytes())?;
        write_atomically(
            &o.join("report.json"),
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn label_files_are_found_in_subfolders_by_case_name() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("ct_test/ct_test_2001_label.nii.gz"));
        touch(&d.path().join("mr_test/mr_test_2001_label.nii"));
        touch(&d.path().join("ct_test/ct_test_2001_image.nii.gz"));
        touch(&d.path().join("ct_test/.ct_test_2002_label.nii.gz"));
        let f = label_files(d.path()).unwrap();
        assert_eq!(
            f.keys().map(String::as_str).collect::<Vec<_>>(),
            ["ct_test_2001", "mr_test_2001"]
        );
        assert_eq!(
            f["mr_test_2001"],
            d.path().join("mr_test/mr_test_2001_label.nii")
        );
    }

    #[test]
    fn a_case_found_twice_is_an_error_naming_both_files() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (
            d.path().join("ct_test_2001_label.nii.gz"),
            d.path().join("other/ct_test_2001_label.nii.gz"),
        );
        touch(&a);
        touch(&b);
        let e = label_files(d.path()).unwrap_err().to_string();
        assert!(e.contains("ct_test_2001 is there twice"), "{e}");
        assert!(e.contains(&a.display().to_string()), "{e}");
        assert!(e.contains(&b.display().to_string()), "{e}");
        // evaluating such a folder stops before reading anything
        let t = tempfile::tempdir().unwrap();
        touch(&t.path().join("ct_test/ct_test_2001_label.nii.gz"));
        let e = evaluate(d.path(), t.path(), None).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
