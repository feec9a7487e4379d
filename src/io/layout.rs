//! The MM-WHS 2017 folder layout: `DATA/{ct,mr}_{train,test}/{mod}_{split}_{id}_{image,label}.nii.gz`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Ct,
    Mr,
}

impl Modality {
    pub fn prefix(self) -> &'static str {
        match self {
            Modality::Ct => "ct",
            Modality::Mr => "mr",
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Modality::Ct => "CT",
            Modality::Mr => "MRI",
        })
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// One image (and its label map, where there is one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub modality: Modality,
    pub split: Split,
    pub id: u32,
    pub image: PathBuf,
    pub label: Option<PathBuf>,
}

impl Case {
    /// The MM-WHS case name, e.g. `ct_train_1001`.
    pub fn name(&self) -> String {
        case_name(self.modality, self.split, self.id)
    }
}

pub fn case_name(m: Modality, s: Split, id: u32) -> String {
    format!("{}_{}_{id}", m.prefix(), s.name())
}

/// The file name MM-WHS gives an image or label.
pub fn file_name(m: Modality, s: Split, id: u32, label: bool) -> String {
    format!(
        "{}_{}.nii.gz",
        case_name(m, s, id),
        if label { "label" } else { "image" }
    )
}

/// Parse `ct_train_1001_image.nii.gz` → (Ct, Train, 1001, false).
pub fn parse_file_name(name: &str) -> Option<(Modality, Split, u32, bool)> {
    let stem = name
        .strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))?;
    let parts: Vec<&str> = stem.split('_').collect();
    if parts.len() != 4 {
        return None;
    }
    let m = match parts[0] {
        "ct" => Modality::Ct,
        "mr" => Modality::Mr,
        _ => return None,
    };
    let s = match parts[1] {
        "train" => Split::Train,
        "test" => Split::Test,
        _ => return None,
    };
    let id: u32 = parts[2].parse().ok()?;
    let label = match parts[3] {
        "image" => false,
        "label" => true,
        _ => return None,
    };
    Some((m, s, id, label))
}

/// Everything found under a data folder.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub root: PathBuf,
    pub cases: Vec<Case>,
    /// Label files without an image, and other things a user should know.
    pub warnings: Vec<String>,
}

impl Dataset {
    pub fn select(&self, m: Modality, s: Split) -> Vec<&Case> {
        self.cases
            .iter()
            .filter(|c| c.modality == m && c.split == s)
            .collect()
    }
}

/// Find the cases under `root` (`ct_train/`, `ct_test/`, `mr_train/`, `mr_test/`).
pub fn discover(root: &Path) -> anyhow::Result<Dataset> {
    if !root.is_dir() {
        anyhow::bail!(
            "{}: not a folder; expected an MM-WHS layout folder with ct_train/, mr_train/, ct_test/, mr_test/ (make one with `rlu2net synth --out {}`)",
            root.display(),
            root.display()
        );
    }
    type ImageAndLabel = (Option<PathBuf>, Option<PathBuf>);
    let mut found: BTreeMap<(Modality, Split, u32), ImageAndLabel> = BTreeMap::new();
    let mut warnings = Vec::new();
    for m in [Modality::Ct, Modality::Mr] {
        for s in [Split::Train, Split::Test] {
            let dir = root.join(format!("{}_{}", m.prefix(), s.name()));
            if !dir.is_dir() {
                continue;
            }
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| anyhow::anyhow!("{}: cannot list folder: {e}", dir.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            names.sort();
            for name in names {
                if name.starts_with('.') {
                    continue;
                }
                match parse_file_name(&name) {
                    Some((fm, fs, id, is_label)) if fm == m && fs == s => {
                        let e = found.entry((m, s, id)).or_default();
                        let slot = if is_label { &mut e.1 } else { &mut e.0 };
                        let path = dir.join(&name);
                        if let Some(first) = slot {
                            anyhow::bail!(
                                "{} and {}: two files for the same {} of case {}; keep one of them",
                                first.display(),
                                path.display(),
                                if is_label { "label" } else { "image" },
                                case_name(m, s, id)
                            );
                        }
                        *slot = Some(path);
                    }
                    Some(_) => warnings.push(format!(
                        "{}: file name says another modality or split than its folder; skipped",
                        dir.join(&name).display()
                    )),
                    None if name.ends_with(".nii") || name.ends_with(".nii.gz") => warnings.push(format!(
                        "{}: not an MM-WHS file name (<ct|mr>_<train|test>_<id>_<image|label>.nii.gz); skipped",
                        dir.join(&name).display()
                    )),
                    None => {}
                }
            }
        }
    }
    let mut cases = Vec::new();
    for ((m, s, id), (image, label)) in found {
        match image {
            Some(image) => cases.push(Case {
                modality: m,
                split: s,
                id,
                image,
                label,
            }),
            None => warnings.push(format!(
                "{}: label without an image; skipped",
                label.expect("an entry has an image or a label").display()
            )),
        }
    }
    Ok(Dataset {
        root: root.to_path_buf(),
        cases,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_parse_and_print() {
        assert_eq!(
            parse_file_name("ct_train_1001_image.nii.gz"),
            Some((Modality::Ct, Split::Train, 1001, false))
        );
        assert_eq!(
            parse_file_name("mr_test_2040_label.nii"),
            Some((Modality::Mr, Split::Test, 2040, true))
        );
        assert_eq!(parse_file_name("ct_train_x_image.nii.gz"), None);
        assert_eq!(parse_file_name("pet_train_1_image.nii.gz"), None);
        assert_eq!(
            file_name(Modality::Mr, Split::Train, 1003, true),
            "mr_train_1003_label.nii.gz"
        );
    }

    #[test]
    fn discover_pairs_images_with_labels() {
        let d = tempfile::tempdir().unwrap();
        let ct = d.path().join("ct_train");
        let mr = d.path().join("mr_test");
        std::fs::create_dir_all(&ct).unwrap();
        std::fs::create_dir_all(&mr).unwrap();
        for n in [
            "ct_train_1001_image.nii.gz",
            "ct_train_1001_label.nii.gz",
            "ct_train_1002_image.nii.gz",
            "ct_train_1003_label.nii.gz",
            "notes.txt",
        ] {
            std::fs::write(ct.join(n), b"x").unwrap();
        }
        std::fs::write(mr.join("mr_test_2001_image.nii.gz"), b"x").unwrap();
        let ds = discover(d.path()).unwrap();
        assert_eq!(ds.cases.len(), 3);
        assert_eq!(ds.cases[0].name(), "ct_train_1001");
        assert!(ds.cases[0].label.is_some());
        assert!(ds.cases[1].label.is_none());
        assert_eq!(ds.cases[2].modality, Modality::Mr);
        assert_eq!(ds.warnings.len(), 1, "{:?}", ds.warnings);
        assert!(discover(&d.path().join("nope")).is_err());
    }

    #[test]
    fn two_files_for_one_case_are_an_error_naming_both() {
        for (a, b) in [
            ("ct_train_1001_image.nii", "ct_train_1001_image.nii.gz"),
            ("ct_train_1001_image.nii.gz", "ct_train_01001_image.nii.gz"),
            ("ct_train_1001_label.nii.gz", "ct_train_01001_label.nii"),
        ] {
            let d = tempfile::tempdir().unwrap();
            let ct = d.path().join("ct_train");
            std::fs::create_dir_all(&ct).unwrap();
            std::fs::write(ct.join(a), b"x").unwrap();
            std::fs::write(ct.join(b), b"x").unwrap();
            let e = discover(d.path()).unwrap_err().to_string();
            assert!(e.contains(a) && e.contains(b), "{e}");
            assert!(e.contains("ct_train_1001"), "{e}");
        }
    }
}
