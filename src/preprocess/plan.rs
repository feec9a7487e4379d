//! The plan step (nnU-Net's): the CT intensity statistics fitted on the training
//! set's foreground, stored as `plan.json` in the run folder with the
//! preprocessing settings they were fitted under.

use anyhow::Context;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{CtStats, PreprocessConfig, fit_ct_stats, sample_foreground};
use crate::io::layout::{Dataset, Modality, Split};
use crate::seed::derive_seed;

/// `plan.json`: the preprocessing settings and the CT statistics fitted under them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub preprocess: PreprocessConfig,
    pub ct_stats: CtStats,
}

impl Plan {
    /// Parse a plan (the text of `plan.json`, or a model file's copy of it).
    pub fn from_json(text: &str) -> anyhow::Result<Plan> {
        serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "damaged ({e}); delete it to fit the CT statistics again, or train again"
            )
        })
    }
}

/// Fit the CT statistics on the training set's foreground.
pub fn fit_plan(preprocess: &PreprocessConfig, seed: u64, ds: &Dataset) -> anyhow::Result<Plan> {
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
    let ct_stats = fit_ct_stats(samples.concat(), preprocess)?;
    Ok(Plan {
        preprocess: preprocess.clone(),
        ct_stats,
    })
}
