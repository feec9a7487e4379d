//! Inference (docs/method.md §5): preprocessing with the run's statistics, the
//! cross-modal Gaussian sliding-window ensemble, and label maps written on the
//! input's own grid.

pub mod batch;
pub mod postprocess;
pub mod probs;
pub mod sliding;
pub mod upsample;

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::prelude::*;
use ndarray::{Array3, Array4, s};

use self::sliding::{Accumulator, pad_volume, padding, windows};
use crate::config::TrainConfig;
use crate::data::labels::{LABEL_VALUES, NUM_CLASSES};
use crate::data::layout::Modality;
use crate::data::pairing::partner_start;
use crate::io::{DType, Reorientation, Volume, from_ras, read_nifti, write_nifti};
use crate::model::{ActionMode, RlU2Net};
use crate::preprocess::{CtStats, to_working_grid};
use crate::progress::Progress;

/// A trained run, ready to predict.
pub struct Predictor {
    pub cfg: TrainConfig,
    pub ct_stats: CtStats,
    pub model: RlU2Net,
    pub device: Device,
    pub overlap: f64,
    pub batch: usize,
    pub tta: bool,
    /// Keep only the heart's largest connected body and each structure's largest component.
    pub keep_largest: bool,
}

// A predictor is shared by threads (the Python package's model is used from any thread).
const _: fn() = || {
    fn shared<T: Sync + Send>() {}
    shared::<Predictor>();
};

/// An input volume, its way back to the file's grid, and its working-grid version.
pub struct Input {
    /// The file or series it was read from.
    pub source: PathBuf,
    pub original: Volume<f32>,
    pub reorientation: Reorientation,
    pub ras_spacing: [f64; 3],
    pub ras_shape: [usize; 3],
    /// Normalised, RAS, at the working spacing.
    pub work: Volume<f32>,
    /// The input file's NIfTI version; the label map is written in the same one.
    pub nifti_version: u8,
    /// For a DICOM series: what a DICOM SEG of it must reference.
    pub dicom: Option<crate::io::dicom::SeriesSource>,
}

/// The prediction of one volume.
pub struct Prediction {
    /// MM-WHS label values on the input's grid (its shape and affine).
    pub labels: Volume<i16>,
    /// Class probabilities `[K, …]` on the working grid, with its affine.
    pub probabilities: Array4<f32>,
    pub work_affine: nalgebra::Matrix4<f64>,
    pub work_spacing: [f64; 3],
    /// 1 or 2: the NIfTI version the label map is written in (the input's).
    pub nifti_version: u8,
}

impl Predictor {
    /// Load a run folder (its `config.toml`, `plan.json` and best — else last —
    /// checkpoint) or a model file from `rlu2net export`.
    pub fn load(
        model: &Path,
        device: Device,
        overlap: f64,
        tta: bool,
    ) -> anyhow::Result<Predictor> {
        let parts = crate::model_file::read_model(model)?;
        let cfg = TrainConfig::from_toml(&parts.config_toml, None)
            .with_context(|| format!("{}: invalid configuration", model.display()))?;
        let ct_stats = crate::preprocess::plan::Plan::from_json(&parts.plan_json)
            .map_err(|e| anyhow::anyhow!("{}: {e}", parts.plan_source))?
            .ct_stats;
        let net = crate::checkpoint::load_model_bytes(
            parts.weights,
            &parts.source,
            RlU2Net::new(&cfg.model, &device),
        )?;
        Ok(Predictor::from_parts(
            cfg, ct_stats, net, device, overlap, tta,
        ))
    }

    /// A predictor for a model in memory (validation during training).
    pub fn from_parts(
        cfg: TrainConfig,
        ct_stats: CtStats,
        model: RlU2Net,
        device: Device,
        overlap: f64,
        tta: bool,
    ) -> Predictor {
        Predictor {
            cfg,
            ct_stats,
            model,
            device,
            overlap,
            batch: 2,
            tta,
            keep_largest: true,
        }
    }

    /// Read and preprocess one input volume: a NIfTI file, or a DICOM series (a
    /// folder, a `.zip` or one multi-frame file).
    pub fn prepare(&self, path: &Path, modality: Modality) -> anyhow::Result<Input> {
        let (original, nifti_version, dicom) = read_input(path, modality)?;
        let mut input = self.prepare_volume(original, modality, path)?;
        input.nifti_version = nifti_version;
        input.dicom = dicom;
        Ok(input)
    }

    /// Preprocess a volume already in memory; `source` names it in errors. Its voxels are
    /// finite (the readers and `io::volume::volume_from_array` see to it); a constant
    /// image is an error, as for a file.
    pub fn prepare_volume(
        &self,
        original: Volume<f32>,
        modality: Modality,
        source: &Path,
    ) -> anyhow::Result<Input> {
        let path = source;
        let (lo, hi) = original
            .intensity_range()
            .with_context(|| format!("{}: every voxel is NaN", path.display()))?;
        anyhow::ensure!(
            hi > lo,
            "{}: the image is constant (every voxel is {lo}); nothing to segment",
            path.display()
        );
        let w = to_working_grid(
            &original,
            modality,
            &self.cfg.preprocess,
            Some(&self.ct_stats),
        )?;
        Ok(Input {
            source: path.to_path_buf(),
            ras_spacing: w.ras_spacing,
            ras_shape: w.ras_shape,
            original,
            reorientation: w.reorientation,
            work: w.image,
            nifti_version: 1,
            dicom: None,
        })
    }

    /// Softmax of one batch of paired windows `[n·P³]` each; returns (CT branch, MRI branch) `[n·K·P³]`.
    fn forward(&self, ct: &[f32], mr: &[f32], n: usize, self_paired: bool) -> (Vec<f32>, Vec<f32>) {
        let p = self.cfg.model.patch;
        let mk = |v: &[f32]| {
            Tensor::<5>::from_data(TensorData::new(v.to_vec(), [n, 1, p, p, p]), &self.device)
        };
        let flips: Vec<Vec<usize>> = if self.tta {
            (0..8u32)
                .map(|m| (0..3).filter(|a| m >> a & 1 == 1).map(|a| a + 2).collect())
                .collect()
        } else {
            vec![vec![]]
        };
        let flip = |t: Tensor<5>, axes: &[usize]| match axes.len() {
            0 => t,
            1 => t.flip([axes[0]]),
            2 => t.flip([axes[0], axes[1]]),
            _ => t.flip([axes[0], axes[1], axes[2]]),
        };
        // flips act on space only, so the flip back commutes with the class softmax
        let probs = |t: Tensor<5>, axes: &[usize]| {
            let mut v = flip(t, axes)
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 logits");
            probs::softmax_classes(&mut v, NUM_CLASSES, p * p * p);
            v
        };
        let mut acc: Option<(Vec<f32>, Vec<f32>)> = None;
        for axes in &flips {
            // a window paired with itself has the identity as its relative pose
            let mut mode = if self_paired {
                ActionMode::Identity
            } else {
                ActionMode::TopK
            };
            let out = self.model.forward::<rand_chacha::ChaCha8Rng>(
                flip(mk(ct), axes),
                flip(mk(mr), axes),
                &mut mode,
            );
            let (a, b) = (probs(out.logits_ct, axes), probs(out.logits_mr, axes));
            acc = Some(match acc {
                None => (a, b),
                Some((mut x, mut y)) => {
                    x.iter_mut().zip(&a).for_each(|(s, v)| *s += v);
                    y.iter_mut().zip(&b).for_each(|(s, v)| *s += v);
                    (x, y)
                }
            });
        }
        let (mut a, mut b) = acc.expect("at least one pass");
        if flips.len() > 1 {
            let r = 1.0 / flips.len() as f32;
            a.iter_mut().chain(b.iter_mut()).for_each(|v| *v *= r);
        }
        (a, b)
    }

    /// Tile `primary` with its own windows; pair each with the window of `other` at
    /// the same normalised position (or the same window when there is no other);
    /// accumulate the primary branch's softmax.
    pub fn probabilities(
        &self,
        primary: &Array3<f32>,
        other: Option<&Array3<f32>>,
        primary_is_ct: bool,
        progress: &Progress,
    ) -> anyhow::Result<Array4<f32>> {
        let roi = self.cfg.model.patch;
        let pv = Padded::new(primary, roi);
        let ov = other.map(|o| Padded::new(o, roi));
        let mut acc = Accumulator::new(NUM_CLASSES, pv.dims(), roi);
        let wins = windows(pv.dims(), roi, self.overlap);
        self.run_windows(
            &pv,
            ov.as_ref(),
            &wins,
            primary_is_ct,
            &mut acc,
            None,
            progress,
        )?;
        Ok(acc.finish(pv.pad))
    }

    /// Both modalities of a pair from one tiling, as the paper's reference pairs them:
    /// the CT volume's windows, each with its MRI partner at the same normalised
    /// position, both branches' softmax accumulated (one forward pass per window
    /// instead of one per window and modality). MRI windows are added where no
    /// partner window reached (an MRI much larger than its CT in voxels).
    pub fn probabilities_pair(
        &self,
        ct: &Array3<f32>,
        mr: &Array3<f32>,
        progress: &Progress,
    ) -> anyhow::Result<(Array4<f32>, Array4<f32>)> {
        let roi = self.cfg.model.patch;
        let (c, m) = (Padded::new(ct, roi), Padded::new(mr, roi));
        let mut acc_c = Accumulator::new(NUM_CLASSES, c.dims(), roi);
        let mut acc_m = Accumulator::new(NUM_CLASSES, m.dims(), roi);
        let wins = windows(c.dims(), roi, self.overlap);
        self.run_windows(
            &c,
            Some(&m),
            &wins,
            true,
            &mut acc_c,
            Some(&mut acc_m),
            progress,
        )?;
        let gaps: Vec<[usize; 3]> = windows(m.dims(), roi, self.overlap)
            .into_iter()
            .filter(|st| acc_m.has_gap(*st, m.pad))
            .collect();
        tracing::debug!(
            "paired tiling: {} CT windows, {} more MRI windows for voxels no partner reached",
            wins.len(),
            gaps.len()
        );
        if !gaps.is_empty() {
            progress.inc_length(gaps.len() as u64);
            self.run_windows(&m, Some(&c), &gaps, false, &mut acc_m, None, progress)?;
        }
        Ok((acc_c.finish(c.pad), acc_m.finish(m.pad)))
    }

    /// Forward the windows `wins` of `primary` (with their partners in `other`) in
    /// batches; the primary branch goes into `acc`, the partner branch into
    /// `acc_other` at the partner windows when given; stops with
    /// [`Interrupted`](crate::progress::Interrupted) between batches once a stop is requested.
    #[allow(clippy::too_many_arguments)]
    fn run_windows(
        &self,
        primary: &Padded,
        other: Option<&Padded>,
        wins: &[[usize; 3]],
        primary_is_ct: bool,
        acc: &mut Accumulator,
        mut acc_other: Option<&mut Accumulator>,
        progress: &Progress,
    ) -> anyhow::Result<()> {
        let roi = self.cfg.model.patch;
        let per = NUM_CLASSES * roi.pow(3);
        for chunk in wins.chunks(self.batch.max(1)) {
            progress.check()?;
            let mut a = Vec::with_capacity(chunk.len() * roi.pow(3));
            let mut b = Vec::with_capacity(chunk.len() * roi.pow(3));
            let mut partners = Vec::with_capacity(chunk.len());
            for st in chunk {
                a.extend(primary.window(*st, roi));
                match other {
                    None => b.extend(primary.window(*st, roi)),
                    Some(o) => {
                        let ps = primary.partner(*st, o, roi);
                        b.extend(o.window(ps, roi));
                        partners.push(ps);
                    }
                }
            }
            let (ct_in, mr_in) = if primary_is_ct { (&a, &b) } else { (&b, &a) };
            let (p_ct, p_mr) = self.forward(ct_in, mr_in, chunk.len(), other.is_none());
            let (out, out_other) = if primary_is_ct {
                (p_ct, p_mr)
            } else {
                (p_mr, p_ct)
            };
            for (i, st) in chunk.iter().enumerate() {
                acc.add(*st, &out[i * per..(i + 1) * per]);
                if let Some(ao) = acc_other.as_deref_mut() {
                    ao.add(partners[i], &out_other[i * per..(i + 1) * per]);
                }
            }
            progress.inc(chunk.len() as u64);
        }
        Ok(())
    }

    /// Windows a volume will be tiled with (for progress bars).
    pub fn window_count(&self, input: &Input) -> u64 {
        let roi = self.cfg.model.patch;
        let s = input.work.shape();
        let pad = padding(s, roi);
        windows(
            std::array::from_fn(|a| s[a] + pad[a].0 + pad[a].1),
            roi,
            self.overlap,
        )
        .len() as u64
    }

    /// Predict one modality's volume (`primary`), paired with `other` when given.
    pub fn predict(
        &self,
        primary: &Input,
        other: Option<&Input>,
        primary_is_ct: bool,
        progress: &Progress,
    ) -> anyhow::Result<Prediction> {
        let probs = self.probabilities(
            &primary.work.data,
            other.map(|o| &o.work.data),
            primary_is_ct,
            progress,
        )?;
        Ok(self.prediction(primary, probs))
    }

    /// Predict what is given: a CT + MRI pair in one tiling (`probabilities_pair`), a
    /// single volume alone (self-paired). Returns [CT, MRI].
    pub fn predict_any(
        &self,
        ct: Option<&Input>,
        mr: Option<&Input>,
        progress: &Progress,
    ) -> anyhow::Result<[Option<Prediction>; 2]> {
        let [pc, pm] =
            self.probabilities_any(ct.map(|c| &c.work.data), mr.map(|m| &m.work.data), progress)?;
        Ok([
            ct.zip(pc).map(|(c, p)| self.prediction(c, p)),
            mr.zip(pm).map(|(m, p)| self.prediction(m, p)),
        ])
    }

    /// Probabilities of what is given, as `predict_any` pairs them: [CT, MRI].
    pub fn probabilities_any(
        &self,
        ct: Option<&Array3<f32>>,
        mr: Option<&Array3<f32>>,
        progress: &Progress,
    ) -> anyhow::Result<[Option<Array4<f32>>; 2]> {
        Ok(match (ct, mr) {
            (Some(c), Some(m)) => {
                let (a, b) = self.probabilities_pair(c, m, progress)?;
                [Some(a), Some(b)]
            }
            _ => [
                ct.map(|c| self.probabilities(c, None, true, progress))
                    .transpose()?,
                mr.map(|m| self.probabilities(m, None, false, progress))
                    .transpose()?,
            ],
        })
    }

    /// Windows `predict_any` runs first (a pair: the CT's; more may be added).
    pub fn window_total(&self, ct: Option<&Input>, mr: Option<&Input>) -> u64 {
        match (ct, mr) {
            (Some(c), Some(_)) => self.window_count(c),
            _ => ct
                .iter()
                .chain(mr.iter())
                .map(|x| self.window_count(x))
                .sum(),
        }
    }

    /// Labels from the working-grid probabilities, back on the input's own grid.
    fn prediction(&self, primary: &Input, probs: Array4<f32>) -> Prediction {
        // post-processing on the working grid, imposed on the probabilities; then the
        // probabilities interpolated onto the input's RAS grid and the argmax taken there
        let imposed = self.keep_largest.then(|| {
            let raw = argmax_labels(&probs);
            let mut cleaned = raw.clone();
            postprocess::clean_label_map(&mut cleaned);
            let mut imposed = probs.clone();
            upsample::impose_labels(&mut imposed, &raw, &cleaned);
            imposed
        });
        let ras = upsample::upsample_argmax(
            imposed.as_ref().unwrap_or(&probs),
            self.cfg.preprocess.spacing,
            primary.ras_shape,
            primary.ras_spacing,
        );
        let ras_vol = Volume::new(ras, primary.ras_spacing, nalgebra::Matrix4::identity());
        let back = from_ras(&ras_vol, &primary.reorientation);
        let labels = Volume::new(
            back.data.mapv(|c| LABEL_VALUES[c as usize] as i16),
            primary.original.spacing,
            primary.original.affine,
        );
        Prediction {
            labels,
            probabilities: probs,
            work_affine: primary.work.affine,
            work_spacing: primary.work.spacing,
            nifti_version: primary.nifti_version,
        }
    }
}

/// A volume padded for tiling, with its unpadded size and the padding.
struct Padded {
    v: Array3<f32>,
    size: [usize; 3],
    pad: [(usize, usize); 3],
}

impl Padded {
    fn new(v: &Array3<f32>, roi: usize) -> Padded {
        let d = v.dim();
        let size = [d.0, d.1, d.2];
        let pad = padding(size, roi);
        Padded {
            v: pad_volume(v, pad, 0.0),
            size,
            pad,
        }
    }

    fn dims(&self) -> [usize; 3] {
        let d = self.v.dim();
        [d.0, d.1, d.2]
    }

    fn window(&self, st: [usize; 3], roi: usize) -> impl Iterator<Item = &f32> {
        self.v
            .slice(s![
                st[0]..st[0] + roi,
                st[1]..st[1] + roi,
                st[2]..st[2] + roi
            ])
            .into_iter()
    }

    /// Start, in `to`'s padded grid, of the window of `to` paired with this volume's
    /// window at `st` (the same normalised position, `data::pairing::partner_start`).
    fn partner(&self, st: [usize; 3], to: &Padded, roi: usize) -> [usize; 3] {
        let od = to.dims();
        std::array::from_fn(|ax| {
            let own = st[ax] as i64 - self.pad[ax].0 as i64;
            let o = partner_start(own, roi, self.size[ax], to.size[ax]) + to.pad[ax].0 as i64;
            (o.max(0) as usize).min(od[ax] - roi)
        })
    }
}

/// A NIfTI file (its version) or a DICOM series (its source description), checking
/// that a series' own Modality agrees with the one it is given as.
pub fn read_input(
    path: &Path,
    modality: Modality,
) -> anyhow::Result<(Volume<f32>, u8, Option<crate::io::dicom::SeriesSource>)> {
    if !crate::io::dicom::is_series_path(path) {
        let (v, info) = read_nifti::<f32>(path)?;
        return Ok((v, info.version, None));
    }
    let series = crate::io::dicom::read_series(path)?;
    let (given, want) = match modality {
        Modality::Ct => ("--ct", "CT"),
        Modality::Mr => ("--mr", "MR"),
    };
    let m = series.source.modality.as_str();
    anyhow::ensure!(
        m.is_empty() || m == want,
        "{}: a DICOM series of modality {m}, given as {given} ({want} expected)",
        path.display()
    );
    Ok((series.volume, 1, Some(series.source)))
}

/// The class of highest probability at each voxel of `[K, X, Y, Z]`.
pub fn argmax_labels(probs: &Array4<f32>) -> Array3<u8> {
    let (k, x, y, z) = probs.dim();
    Array3::from_shape_fn((x, y, z), |(i, j, l)| {
        let mut best = 0;
        for c in 1..k {
            if probs[[c, i, j, l]] > probs[[best, i, j, l]] {
                best = c;
            }
        }
        best as u8
    })
}

/// Write a prediction (and optionally its probabilities as `<name>_probabilities.nii.gz`,
/// 4D on the working grid).
pub fn write_prediction(
    path: &Path,
    p: &Prediction,
    probabilities: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
    }
    if p.nifti_version == 2 {
        crate::io::write_nifti2(path, &p.labels, DType::Int16)?;
    } else {
        write_nifti(path, &p.labels, DType::Int16)?;
    }
    let mut written = vec![path.to_path_buf()];
    if probabilities {
        let pp = probabilities_path(path).context("file name")?;
        crate::io::nifti::write_nifti_4d(&pp, &p.probabilities, p.work_spacing, &p.work_affine)?;
        written.push(pp);
    }
    Ok(written)
}

/// Where a label map's class probabilities go: `X_label.nii.gz` → `X_label_probabilities.nii.gz`.
pub fn probabilities_path(label: &Path) -> Option<PathBuf> {
    let name = label
        .file_name()?
        .to_string_lossy()
        .replace(".nii.gz", "")
        .replace(".nii", "");
    Some(label.with_file_name(format!("{name}_probabilities.nii.gz")))
}

/// A progress bar over `n` windows.
pub fn window_bar(n: u64) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(n);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:25}] {pos}/{len} windows {elapsed_precise}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    pb
}

/// Predict every case of one split (see [`batch::predict_batch`]), stopping at the
/// first bad case; the files written.
pub fn predict_dir(
    p: &Predictor,
    data: &Path,
    split: crate::data::layout::Split,
    out: &Path,
    probabilities: bool,
    show_progress: bool,
    each: impl FnMut(&crate::data::layout::Case, &Input, &Prediction) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<PathBuf>> {
    let opts = batch::BatchOptions {
        probabilities,
        show_progress,
        fail_fast: true,
        ..batch::BatchOptions::default()
    };
    Ok(batch::predict_batch(p, data, split, out, &opts, each)?.written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;

    fn predictor() -> Predictor {
        let cfg = TrainConfig::preset(Preset::Tiny);
        let device = Device::default();
        let model = RlU2Net::new(&cfg.model, &device);
        let stats = CtStats {
            clip_low: -1.0,
            clip_high: 1.0,
            mean: 0.0,
            std: 1.0,
        };
        Predictor::from_parts(cfg, stats, model, device, 0.5, false)
    }

    fn volume(shape: (usize, usize, usize), seed: f32) -> Array3<f32> {
        Array3::from_shape_fn(shape, |(i, j, k)| {
            ((i as f32 * 0.37 + j as f32 * 0.11 - k as f32 * 0.23 + seed).sin() * 2.0).round()
        })
    }

    #[test]
    fn a_pair_in_one_pass_equals_two_passes_for_equal_sizes_and_covers_a_larger_mri() {
        let p = predictor();
        let hidden = Progress::hidden();
        let (ct, mr) = (volume((40, 36, 34), 0.0), volume((40, 36, 34), 1.0));
        let (pc, pm) = p.probabilities_pair(&ct, &mr, &hidden).unwrap();
        // equal sizes: every MRI window is its CT window's partner, so the one pass
        // sees exactly the inputs of the two separate passes
        let c2 = p.probabilities(&ct, Some(&mr), true, &hidden).unwrap();
        let m2 = p.probabilities(&mr, Some(&ct), false, &hidden).unwrap();
        let max_diff = |a: &Array4<f32>, b: &Array4<f32>| {
            a.iter()
                .zip(b.iter())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        assert_eq!(pc.dim(), c2.dim());
        assert!(max_diff(&pc, &c2) < 1e-5, "CT {}", max_diff(&pc, &c2));
        assert!(max_diff(&pm, &m2) < 1e-5, "MRI {}", max_diff(&pm, &m2));
        // an MRI larger than its CT: partners leave its border strips, which are then
        // tiled too; every voxel gets probabilities that sum to 1
        let big = volume((60, 50, 45), 2.0);
        let (_, pb) = p.probabilities_pair(&ct, &big, &hidden).unwrap();
        assert_eq!(pb.dim(), (NUM_CLASSES, 60, 50, 45));
        for v in pb.lanes(ndarray::Axis(0)) {
            let s: f32 = v.sum();
            assert!((s - 1.0).abs() < 1e-4, "class probabilities sum to {s}");
        }
    }
}
