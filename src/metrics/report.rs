//! The evaluation report: per case Dice and HD95 per structure, per-modality means,
//! rendered as the paper's Table 1 (Markdown) and as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::confusion::{Confusion, add, confusion};
use super::{StructureScore, score};
use crate::data::labels::{NUM_CLASSES, STRUCTURES};
use crate::data::layout::Modality;
use crate::io::Volume;

/// A modality in reports, as it is displayed ("CT", "MRI"), the spelling of the paper's
/// tables and of every report written so far.
mod display_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::data::layout::Modality;

    pub fn serialize<S: Serializer>(m: &Modality, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(m)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Modality, D::Error> {
        let name = String::deserialize(d)?;
        [Modality::Ct, Modality::Mr]
            .into_iter()
            .find(|m| m.to_string() == name)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("unknown modality `{name}` (CT or MRI)"))
            })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseReport {
    pub case: String,
    #[serde(with = "display_name")]
    pub modality: Modality,
    /// Structure name → Dice (null where missing).
    pub dice: BTreeMap<String, Option<f64>>,
    /// Structure name → HD95 in mm (null where missing).
    pub hd95: BTreeMap<String, Option<f64>>,
    /// Structure name → why a value is missing.
    pub reasons: BTreeMap<String, String>,
    /// Voxel counts, truth (rows) × prediction (columns), background first.
    #[serde(default)]
    pub confusion: Confusion,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModalitySummary {
    #[serde(with = "display_name")]
    pub modality: Modality,
    pub cases: usize,
    /// Mean Dice per structure over the cases where it is defined.
    pub dice: BTreeMap<String, Option<f64>>,
    pub hd95: BTreeMap<String, Option<f64>>,
    /// Mean over the 7 structures of the per-structure means.
    pub mean_dice: Option<f64>,
    pub mean_hd95: Option<f64>,
    /// The cases' confusion matrices summed.
    #[serde(default)]
    pub confusion: Confusion,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub cases: Vec<CaseReport>,
    pub means: Vec<ModalitySummary>,
}

/// Score one case's class maps (same grid) per structure.
pub fn score_case(
    case: &str,
    modality: Modality,
    pred: &Volume<u8>,
    truth: &Volume<u8>,
) -> CaseReport {
    let mut r = CaseReport {
        case: case.to_string(),
        modality,
        dice: BTreeMap::new(),
        hd95: BTreeMap::new(),
        reasons: BTreeMap::new(),
        confusion: confusion(pred.data.iter(), truth.data.iter()),
    };
    for (s, name) in STRUCTURES.iter().enumerate() {
        let c = (s + 1) as u8;
        let StructureScore { dice, hd95, reason } = score(
            &pred.data.mapv(|v| v == c),
            &truth.data.mapv(|v| v == c),
            truth.spacing,
        );
        r.dice.insert(name.to_string(), dice);
        r.hd95.insert(name.to_string(), hd95);
        if let Some(reason) = reason {
            r.reasons.insert(name.to_string(), reason.to_string());
        }
    }
    r
}

fn mean(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let f: Vec<f64> = v.flatten().collect();
    (!f.is_empty()).then(|| f.iter().sum::<f64>() / f.len() as f64)
}

pub fn summarise(cases: Vec<CaseReport>) -> Report {
    let mut means = Vec::new();
    for m in [Modality::Ct, Modality::Mr] {
        let sel: Vec<&CaseReport> = cases.iter().filter(|c| c.modality == m).collect();
        if sel.is_empty() {
            continue;
        }
        let per = |f: &dyn Fn(&CaseReport) -> &BTreeMap<String, Option<f64>>| -> BTreeMap<String, Option<f64>> {
            STRUCTURES.iter().map(|s| (s.to_string(), mean(sel.iter().map(|c| f(c).get(*s).copied().flatten())))).collect()
        };
        let dice = per(&|c| &c.dice);
        let hd95 = per(&|c| &c.hd95);
        means.push(ModalitySummary {
            modality: m,
            cases: sel.len(),
            mean_dice: mean(dice.values().copied()),
            mean_hd95: mean(hd95.values().copied()),
            confusion: sel.iter().fold([[0; NUM_CLASSES]; NUM_CLASSES], |acc, c| {
                add(&acc, &c.confusion)
            }),
            dice,
            hd95,
        });
    }
    Report { cases, means }
}

fn cell(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map(|x| format!("{:.*}", digits, x * scale))
        .unwrap_or_else(|| "–".into())
}

impl Report {
    /// The paper's Table 1 layout: Dice (%) per structure, average, and mean HD95 (mm).
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "| Modality | cases | Myo | LA | LV | RA | RV | AA | PA | Average | HD95 (mm) |\n",
        );
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for m in &self.means {
            s.push_str(&format!("| {} | {} |", m.modality, m.cases));
            for st in STRUCTURES {
                s.push_str(&format!(
                    " {} |",
                    cell(m.dice.get(st).copied().flatten(), 100.0, 1)
                ));
            }
            s.push_str(&format!(
                " {} | {} |\n",
                cell(m.mean_dice, 100.0, 1),
                cell(m.mean_hd95, 1.0, 2)
            ));
        }
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "# Evaluation\n\nDice in %, HD95 in mm (MONAI definitions; means over the cases where a value is defined).\n\n",
        );
        s.push_str(&self.table());
        s.push_str("\n## Per case\n\n| case | modality | ");
        s.push_str(&STRUCTURES.join(" | "));
        s.push_str(" | HD95 per structure (mm) |\n|---|---|");
        s.push_str(&"---|".repeat(8));
        s.push('\n');
        for c in &self.cases {
            s.push_str(&format!("| {} | {} |", c.case, c.modality));
            for st in STRUCTURES {
                s.push_str(&format!(
                    " {} |",
                    cell(c.dice.get(st).copied().flatten(), 100.0, 1)
                ));
            }
            let h: Vec<String> = STRUCTURES
                .iter()
                .map(|st| cell(c.hd95.get(*st).copied().flatten(), 1.0, 1))
                .collect();
            s.push_str(&format!(" {} |\n", h.join(" / ")));
        }
        let notes: Vec<String> = self
            .cases
            .iter()
            .flat_map(|c| {
                c.reasons
                    .iter()
                    .map(move |(st, r)| format!("- {} {}: {}", c.case, st, r))
            })
            .collect();
        for m in &self.means {
            s.push_str(&format!(
                "\n## Confusion matrix, {} (voxels; rows = truth, columns = prediction)\n\n",
                m.modality
            ));
            s.push_str(&super::confusion::markdown(&m.confusion));
        }
        if !notes.is_empty() {
            s.push_str("\n## Missing values\n\n");
            s.push_str(&notes.join("\n"));
            s.push('\n');
        }
        s
    }
}

/// The paper's Table 2 in Markdown: one row per variant, mean Dice (%) and HD95 (mm) of
/// each modality ("–" where a modality has no score).
pub fn ablation_table(rows: &[(String, Report)]) -> String {
    let mut t = String::from(
        "| Variant | CT Dice % | MRI Dice % | CT HD95 mm | MRI HD95 mm |\n|---|---|---|---|---|\n",
    );
    for (v, r) in rows {
        let get = |m: Modality| r.means.iter().find(|x| x.modality == m);
        let f = |x: Option<f64>, s: f64| {
            x.map(|v| format!("{:.1}", v * s))
                .unwrap_or_else(|| "–".into())
        };
        let (ct, mr) = (get(Modality::Ct), get(Modality::Mr));
        t.push_str(&format!(
            "| {v} | {} | {} | {} | {} |\n",
            f(ct.and_then(|m| m.mean_dice), 100.0),
            f(mr.and_then(|m| m.mean_dice), 100.0),
            f(ct.and_then(|m| m.mean_hd95), 1.0),
            f(mr.and_then(|m| m.mean_hd95), 1.0)
        ));
    }
    t
}
