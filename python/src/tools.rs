//! The package's functions besides the model: statistics, evaluation, SynthWHS, training
//! and the device list. Results that the command line writes as JSON come back as that
//! JSON's text (the Python side parses it), so both speak the same fields.

use std::path::PathBuf;
use std::str::FromStr;

use numpy::{PyReadonlyArray2, PyReadonlyArrayDyn};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rlu2net::data::layout::Modality;
use rlu2net::io::Volume;
use rlu2net::progress::Progress;

use crate::convert::volume;
use crate::errors::to_py;
use crate::job::{Pool, run};

fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string(v)?)
}

fn enum_arg<T: serde::de::DeserializeOwned>(what: &str, s: &str, choices: &str) -> PyResult<T> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| PyValueError::new_err(format!("{what}={s:?}: use one of {choices}")))
}

fn modality(s: &str) -> PyResult<Modality> {
    match s.to_ascii_lowercase().as_str() {
        "ct" => Ok(Modality::Ct),
        "mr" | "mri" => Ok(Modality::Mr),
        _ => Err(PyValueError::new_err(format!(
            "modality={s:?}: use \"ct\" or \"mr\""
        ))),
    }
}

/// The class map (0 … 7) of MM-WHS label values (0, 205, …, 850), or of class indices
/// when `classes`; anything else is an error naming the value.
fn class_map(v: &Volume<f32>, classes: bool, name: &std::path::Path) -> anyhow::Result<Volume<u8>> {
    use rlu2net::io::labels::{NUM_CLASSES, labels_to_classes};
    if !classes {
        return Ok(labels_to_classes(v, name)?);
    }
    if let Some(bad) = v
        .data
        .iter()
        .find(|&&c| !(c.fract() == 0.0 && (0.0..NUM_CLASSES as f32).contains(&c)))
    {
        anyhow::bail!(
            "{}: {bad} is not a class index (0 … 7; labels=\"mmwhs\" reads MM-WHS values)",
            name.display()
        );
    }
    Ok(v.map(|&c| c as u8))
}

/// Statistics of a label map over its image (the CLI's statistics.json, as JSON text).
#[pyfunction]
#[pyo3(signature = (labels, image, affine, spacing, modality_name, classes))]
pub fn statistics(
    py: Python<'_>,
    labels: PyReadonlyArrayDyn<'_, f32>,
    image: PyReadonlyArrayDyn<'_, f32>,
    affine: PyReadonlyArray2<'_, f64>,
    spacing: Option<[f64; 3]>,
    modality_name: &str,
    classes: bool,
) -> PyResult<String> {
    let m = modality(modality_name)?;
    let lname = PathBuf::from("<labels>");
    let l = volume(&labels, &affine, spacing, &lname).map_err(to_py)?;
    let img = volume(&image, &affine, spacing, &PathBuf::from("<image>")).map_err(to_py)?;
    run(py, &Pool::Global, &Progress::hidden(), None, || {
        let values = class_map(&l, classes, &lname)?
            .map(|&c| rlu2net::io::labels::LABEL_VALUES[c as usize] as i16);
        let s = rlu2net::metrics::statistics::statistics(&img, &values, m == Modality::Ct)?;
        json(&s)
    })
}

/// Dice, HD95 and the confusion matrix of one predicted label map against its truth
/// (on the same grid; the truth's spacing for distances), as JSON text.
#[pyfunction]
#[pyo3(signature = (pred, truth, affine, spacing, modality_name, classes, case))]
#[allow(clippy::too_many_arguments)]
pub fn evaluate_arrays(
    py: Python<'_>,
    pred: PyReadonlyArrayDyn<'_, f32>,
    truth: PyReadonlyArrayDyn<'_, f32>,
    affine: PyReadonlyArray2<'_, f64>,
    spacing: Option<[f64; 3]>,
    modality_name: &str,
    classes: bool,
    case: String,
) -> PyResult<String> {
    let m = modality(modality_name)?;
    let (pn, tn) = (PathBuf::from("<pred>"), PathBuf::from("<truth>"));
    let p = volume(&pred, &affine, spacing, &pn).map_err(to_py)?;
    let t = volume(&truth, &affine, spacing, &tn).map_err(to_py)?;
    if p.shape() != t.shape() {
        return Err(PyValueError::new_err(format!(
            "pred has shape {:?}, truth {:?}: both must be on the same grid",
            p.shape(),
            t.shape()
        )));
    }
    run(py, &Pool::Global, &Progress::hidden(), None, || {
        let (pc, tc) = (class_map(&p, classes, &pn)?, class_map(&t, classes, &tn)?);
        json(&rlu2net::metrics::report::score_case(&case, m, &pc, &tc))
    })
}

/// `rlu2net evaluate --pred PRED --truth TRUTH [--out OUT]`: the report as JSON text.
#[pyfunction]
#[pyo3(signature = (pred, truth, out = None))]
pub fn evaluate_folders(
    py: Python<'_>,
    pred: PathBuf,
    truth: PathBuf,
    out: Option<PathBuf>,
) -> PyResult<String> {
    run(py, &Pool::Global, &Progress::hidden(), None, || {
        json(&rlu2net::metrics::evaluate::evaluate(
            &pred,
            &truth,
            out.as_deref(),
        )?)
    })
}

/// `rlu2net synth`: the manifest as JSON text.
#[pyfunction]
#[pyo3(signature = (out, cases, test_cases, seed, paired, mr_pose, scale, variety, preview, threads, progress))]
#[allow(clippy::too_many_arguments)]
pub fn synth(
    py: Python<'_>,
    out: PathBuf,
    cases: usize,
    test_cases: usize,
    seed: u64,
    paired: bool,
    mr_pose: Option<usize>,
    scale: &str,
    variety: &str,
    preview: bool,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    use rlu2net::data::synth::{Scale, SynthOptions, Variety, default_mr_pose, generate};
    let opts = SynthOptions {
        cases,
        test_cases,
        seed,
        paired,
        mr_pose: mr_pose.unwrap_or_else(default_mr_pose),
        scale: enum_arg::<Scale>("scale", scale, "\"small\", \"default\", \"paper\"")?,
        preview,
        variety: enum_arg::<Variety>(
            "variety",
            variety,
            "\"varied\", \"classic\", \"held-out\", \"held-out-anatomy\", \"held-out-appearance\", \"held-out-geometry\"",
        )?,
    };
    let watch = Progress::hidden();
    watch.set_length((cases + test_cases) as u64);
    run(py, &Pool::new(threads)?, &watch, progress.as_ref(), || {
        let manifest = generate(&opts, &out, &|| watch.inc(1))?;
        if preview {
            rlu2net::viz::dataset_previews(&out)?;
        }
        json(&manifest)
    })
}

/// `rlu2net train`: the summary as JSON text. Ctrl-C stops it with a checkpoint (the
/// run resumes with `resume=`).
#[pyfunction]
#[pyo3(signature = (data, out, resume, config, preset, epochs, steps_per_epoch, seed, max_minutes, device, threads, progress))]
#[allow(clippy::too_many_arguments)]
pub fn train(
    py: Python<'_>,
    data: Option<PathBuf>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    config: Option<PathBuf>,
    preset: Option<&str>,
    epochs: Option<u64>,
    steps_per_epoch: Option<u64>,
    seed: Option<u64>,
    max_minutes: Option<f64>,
    device: &str,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let backend = rlu2net::device::Backend::from_str(device).map_err(PyValueError::new_err)?;
    if resume.is_some() && (out.is_some() || config.is_some() || preset.is_some()) {
        return Err(PyValueError::new_err(
            "resume= continues a run as it was configured: leave out out=, config= and preset=",
        ));
    }
    if resume.is_none() && out.is_none() {
        return Err(PyValueError::new_err(
            "out= (the run folder to write) is needed",
        ));
    }
    let args = rlu2net::cli::TrainArgs {
        data,
        out,
        config,
        resume,
        preset: preset
            .map(|p| enum_arg("preset", p, "\"tiny\", \"cpu\", \"paper\""))
            .transpose()?,
        epochs,
        steps_per_epoch,
        seed,
        max_minutes,
        backend,
    };
    let watch = Progress::hidden();
    run(py, &Pool::new(threads)?, &watch, progress.as_ref(), || {
        let (out, cfg, data) = rlu2net::cli::train_setup(&args)?;
        let opts = rlu2net::train::TrainOptions {
            data,
            out,
            resume: args.resume.is_some(),
            device: rlu2net::device::select(args.backend)?.device,
            progress: false,
            stop_after_steps: None,
            watch: Some(watch.clone()),
        };
        json(&rlu2net::train::train(&cfg, &opts)?)
    })
}

/// Voxels, affine and spacing of a volume read.
type ReadVolume<'py> = (
    Bound<'py, numpy::PyArrayDyn<f32>>,
    Bound<'py, numpy::PyArray2<f64>>,
    [f64; 3],
);

/// A NIfTI file or DICOM series as `segment` reads it: (float32 voxels, affine, spacing).
#[pyfunction]
pub fn read<'py>(py: Python<'py>, path: PathBuf, modality_name: &str) -> PyResult<ReadVolume<'py>> {
    let m = modality(modality_name)?;
    let v = run(py, &Pool::Global, &Progress::hidden(), None, || {
        Ok(rlu2net::infer::read_input(&path, m)?.0)
    })?;
    Ok((
        crate::convert::array(py, v.data),
        crate::convert::affine_array(py, &v.affine),
        v.spacing,
    ))
}

/// `rlu2net devices`, as text.
#[pyfunction]
pub fn devices() -> String {
    rlu2net::device::list_text()
}
