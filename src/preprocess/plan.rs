//! The plan step (nnU-Net's): the CT intensity statistics fitted on the training
//! set's foreground, stored as `plan.json` in the run folder with the
//! preprocessing settings they were fitted under.

use std::path::Path;

use anyhow::Context;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{CtStats, PreprocessConfig, fit_ct_stats, sample_foreground};
use crate::io::layout::{Dataset, Modality, Split};
use crate::io::write_atomically;
use crate::seed::derive_seed;

/// Fit (or load) the CT statistics of a run.
pub fn plan(
    preprocess: &PreprocessConfig,
    seed: u64,
    ds: &Dataset,
    out: &Path,
) -> anyhow::Result<CtStats> {
    let path = out.join("plan.json");
    #[derive(Serialize, Deserialize)]
    struct Plan {
        preprocess: PreprocessConfig,
        ct_stats: CtStats,
    }
    if let Ok(s) = std::fs::read_to_string(&path)
        && let Ok(p) = serde_json::from_str::<Plan>(&s)
        && p.preprocess == *preprocess
    {
        return Ok(p.ct_stats);
    }
    let cases = ds.select(Modality::Ct, Split::Train);
    let samples: Vec<Vec<f32>> = cases
        .par_iter()
        .enumerate()
        .map(|(i, c)| -> anyhow::Result<Vec<f32>> {
            let (img, _) = crate::io::read_nifti::<f32>(&c.image)?;
            let lp = c.label.as_ref().context("training case has a label")?;
            let (lab, _) = crate::io::read_nifti::<f32>(lp)?;
            let cls = crate::io::labels::labels_to_classes(&lab, lp)?;
            anyhow::ensure!(
                cls.shape() == img.shape(),
                "{}: label shape differs from the image's",
                lp.display()
            );
            Ok(sample_foreground(
                &img.data,
                &cls.data,
                preprocess.samples_per_case,
                derive_seed(seed, &[i as u64]),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let stats = fit_ct_stats(samples.concat(), preprocess)?;
    write_atomically(
        &path,
        serde_json::to_string_pretty(&Plan {
            preprocess: preprocess.clone(),
            ct_stats: stats.clone(),
        })?
        .as_bytes(),
    )?;
    Ok(stats)
}
