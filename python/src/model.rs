//! `rlu2net.Model`: a trained run loaded once, segmenting volumes in memory.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Condvar, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rlu2net::data::layout::Modality;
use rlu2net::infer::{Input, Prediction, Predictor};
use rlu2net::io::labels::class_of_value;
use rlu2net::progress::Progress;

use crate::convert::{Loaded, Source, affine_array, array};
use crate::job::{Pool, run};

/// A trained model (a run folder or an exported `.rlu2net` file) on its device.
#[pyclass(module = "rlu2net._rlu2net", frozen)]
pub struct Model {
    predictor: Predictor,
    /// Whether a call is running: one at a time, a second Python thread waits for the
    /// first (before its work is handed to the pool, so no pool thread ever waits).
    busy: Mutex<bool>,
    idle: Condvar,
    pool: Pool,
    path: PathBuf,
    device: String,
}

/// Label values as they go back to Python.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LabelKind {
    MmWhs,
    Classes,
}

impl FromStr for LabelKind {
    type Err = PyErr;
    fn from_str(s: &str) -> PyResult<LabelKind> {
        match s {
            "mmwhs" => Ok(LabelKind::MmWhs),
            "classes" => Ok(LabelKind::Classes),
            _ => Err(PyValueError::new_err(format!(
                "labels={s:?}: use \"mmwhs\" (0, 205, 420, …, 850) or \"classes\" (0 … 7)"
            ))),
        }
    }
}

/// One prediction, ready for numpy.
struct Output {
    labels: ndarray::Array3<i16>,
    affine: nalgebra::Matrix4<f64>,
    spacing: [f64; 3],
    probabilities: Option<(ndarray::Array4<f32>, nalgebra::Matrix4<f64>)>,
}

fn output(p: Prediction, probabilities: bool) -> Output {
    Output {
        labels: p.labels.data,
        affine: p.labels.affine,
        spacing: p.labels.spacing,
        probabilities: probabilities.then_some((p.probabilities, p.work_affine)),
    }
}

fn prepare(p: &Predictor, input: Loaded, m: Modality) -> anyhow::Result<Input> {
    match input {
        Loaded::Path(path) => p.prepare(&path, m),
        Loaded::Volume(v, name) => p.prepare_volume(*v, m, &name),
    }
}

#[pymethods]
impl Model {
    /// Load a run folder (its best checkpoint, else its last) or an exported model file.
    #[new]
    #[pyo3(signature = (path, device = "auto", threads = None, overlap = 0.5, tta = false, postprocess = true))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        threads: Option<usize>,
        overlap: f64,
        tta: bool,
        postprocess: bool,
    ) -> PyResult<Model> {
        let backend = rlu2net::device::Backend::from_str(device).map_err(PyValueError::new_err)?;
        if !(0.0..1.0).contains(&overlap) {
            return Err(PyValueError::new_err(format!(
                "overlap={overlap}: must be at least 0 and below 1"
            )));
        }
        let pool = Pool::new(threads)?;
        let (predictor, device) = run(py, &pool, &Progress::hidden(), None, || {
            let selected = rlu2net::device::select(backend)?;
            let mut p = Predictor::load(&path, selected.device, overlap, tta)?;
            p.keep_largest = postprocess;
            Ok((p, selected.description))
        })?;
        Ok(Model {
            predictor,
            busy: Mutex::new(false),
            idle: Condvar::new(),
            pool,
            path,
            device,
        })
    }

    /// The model's path as given.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Where it computes (as `rlu2net devices` names it).
    #[getter]
    fn device(&self) -> String {
        self.device.clone()
    }

    /// The training configuration (TOML), as the run folder's config.toml.
    #[getter]
    fn config(&self) -> String {
        self.predictor.cfg.to_toml()
    }

    fn __repr__(&self) -> String {
        format!(
            "rlu2net.Model({:?}, device={:?})",
            self.path.display().to_string(),
            self.device
        )
    }

    /// Segment a CT and/or an MRI (paired in one tiling when both are given). Each
    /// result: labels on the input's own grid, its affine and spacing, and optionally
    /// the class probabilities [8, …] on the working grid with that grid's affine.
    #[pyo3(signature = (ct = None, mr = None, labels = "mmwhs", probabilities = false, progress = None))]
    fn segment<'py>(
        &self,
        py: Python<'py>,
        ct: Option<Source<'py>>,
        mr: Option<Source<'py>>,
        labels: &str,
        probabilities: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let kind = LabelKind::from_str(labels)?;
        if ct.is_none() && mr.is_none() {
            return Err(PyValueError::new_err("give ct= and/or mr="));
        }
        let load = |s: Option<Source<'py>>| {
            s.map(Source::load)
                .transpose()
                .map_err(crate::errors::to_py)
        };
        let (ct, mr) = (load(ct)?, load(mr)?);
        let watch = Progress::hidden();
        let _turn = py.detach(|| Turn::take(&self.busy, &self.idle));
        let p = &self.predictor;
        let outputs = run(py, &self.pool, &watch, progress.as_ref(), || {
            let ci = ct.map(|c| prepare(p, c, Modality::Ct)).transpose()?;
            let mi = mr.map(|m| prepare(p, m, Modality::Mr)).transpose()?;
            watch.set_length(p.window_total(ci.as_ref(), mi.as_ref()));
            let [pc, pm] = p.predict_any(ci.as_ref(), mi.as_ref(), &watch)?;
            Ok([pc, pm].map(|x| x.map(|x| output(x, probabilities))))
        })?;
        let out = PyDict::new(py);
        for (name, o) in ["ct", "mr"].into_iter().zip(outputs) {
            if let Some(o) = o {
                out.set_item(name, to_dict(py, o, kind)?)?;
            }
        }
        Ok(out)
    }
}

/// This thread's turn with the model, until dropped.
struct Turn<'m> {
    busy: &'m Mutex<bool>,
    idle: &'m Condvar,
}

impl<'m> Turn<'m> {
    fn take(busy: &'m Mutex<bool>, idle: &'m Condvar) -> Turn<'m> {
        let mut b = busy.lock().unwrap_or_else(|e| e.into_inner());
        while *b {
            b = idle.wait(b).unwrap_or_else(|e| e.into_inner());
        }
        *b = true;
        Turn { busy, idle }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.busy.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.idle.notify_one();
    }
}

fn to_dict<'py>(py: Python<'py>, o: Output, kind: LabelKind) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match kind {
        LabelKind::MmWhs => d.set_item("labels", array(py, o.labels))?,
        LabelKind::Classes => d.set_item(
            "labels",
            array(
                py,
                o.labels
                    .mapv(|v| class_of_value(v as i32).expect("labels are MM-WHS values")),
            ),
        )?,
    }
    d.set_item("affine", affine_array(py, &o.affine))?;
    d.set_item("spacing", o.spacing.to_vec())?;
    if let Some((p, a)) = o.probabilities {
        d.set_item("probabilities", array(py, p))?;
        d.set_item("probabilities_affine", affine_array(py, &a))?;
    }
    Ok(d)
}
