//! Preprocessed cases, cached in the run folder: a rerun reuses them, and a changed
//! configuration, statistics or input file (its bytes are hashed) invalidates them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{CtStats, PreprocessConfig, labels_to_working_grid, to_working_grid};
use crate::io::labels::NUM_CLASSES;
use crate::io::labels::labels_to_classes;
use crate::io::layout::{Case, Modality};
use crate::io::{DType, Reorientation, Volume, read_nifti, write_atomically, write_nifti};

/// A case ready for the network: RAS, resampled to the target spacing, normalised.
#[derive(Clone, Debug)]
pub struct PreparedCase {
    pub name: String,
    pub modality: Modality,
    pub image: Volume<f32>,
    pub labels: Option<Volume<u8>>,
    /// Where each class occurs (flat indices into the volume), for foreground oversampling.
    pub class_voxels: Vec<Vec<u32>>,
}

#[derive(Serialize, Deserialize)]
struct CacheKey {
    key: String,
    reorientation: Reorientation,
}

fn file_hash(h: &mut Sha256, p: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(&bytes);
    Ok(())
}

impl PreparedCase {
    /// A case on the working grid, with its classes' voxels indexed.
    pub fn new(
        name: String,
        modality: Modality,
        image: Volume<f32>,
        labels: Option<Volume<u8>>,
    ) -> PreparedCase {
        let class_voxels = class_voxels(&labels);
        PreparedCase {
            name,
            modality,
            image,
            labels,
            class_voxels,
        }
    }
}

fn class_voxels(labels: &Option<Volume<u8>>) -> Vec<Vec<u32>> {
    let mut out = vec![Vec::new(); NUM_CLASSES];
    if let Some(l) = labels {
        for (i, &c) in l.data.iter().enumerate() {
            if c > 0 {
                out[c as usize].push(i as u32);
            }
        }
    }
    out
}

/// Read, reorient, resample and normalise a case, or load it from `cache_dir`.
pub fn prepare_case(
    case: &Case,
    cfg: &PreprocessConfig,
    ct_stats: Option<&CtStats>,
    cache_dir: &Path,
) -> anyhow::Result<PreparedCase> {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(cfg)?);
    h.update(serde_json::to_vec(&ct_stats)?);
    file_hash(&mut h, &case.image)?;
    if let Some(l) = &case.label {
        file_hash(&mut h, l)?;
    }
    let key = format!("{:x}", h.finalize());
    let name = case.name();
    let img_path: PathBuf = cache_dir.join(format!("{name}_image.nii"));
    let lab_path: PathBuf = cache_dir.join(format!("{name}_label.nii"));
    let key_path: PathBuf = cache_dir.join(format!("{name}.json"));
    if let Ok(s) = std::fs::read_to_string(&key_path)
        && let Ok(k) = serde_json::from_str::<CacheKey>(&s)
        && k.key == key
        && let Ok((image, _)) = read_nifti::<f32>(&img_path)
    {
        let labels = match &case.label {
            Some(_) => read_nifti::<u8>(&lab_path).ok().map(|(v, _)| v),
            None => None,
        };
        if case.label.is_none() || labels.is_some() {
            return Ok(PreparedCase::new(name, case.modality, image, labels));
        }
    }
    let (raw, _) = read_nifti::<f32>(&case.image)?;
    let work = to_working_grid(&raw, case.modality, cfg, ct_stats)?;
    let (image, reo) = (work.image, work.reorientation);
    let labels = match &case.label {
        None => None,
        Some(lp) => {
            let (lab, _) = read_nifti::<f32>(lp)?;
            anyhow::ensure!(
                lab.shape() == raw.shape(),
                "{}: label shape {:?} differs from its image's {:?}",
                lp.display(),
                lab.shape(),
                raw.shape()
            );
            let cls = labels_to_classes(&lab, lp)?;
            Some(labels_to_working_grid(&cls, cfg))
        }
    };
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("{}: cannot create", cache_dir.display()))?;
    write_nifti(&img_path, &image, DType::Float32)?;
    if let Some(l) = &labels {
        write_nifti(&lab_path, l, DType::Uint8)?;
    }
    write_atomically(
        &key_path,
        serde_json::to_string(&CacheKey {
            key,
            reorientation: reo,
        })?
        .as_bytes(),
    )?;
    Ok(PreparedCase::new(name, case.modality, image, labels))
}
