//! The native part of the `rlu2net` Python package (`rlu2net._rlu2net`): the library's
//! inference, statistics, evaluation, SynthWHS and training, called in memory. The
//! Python side (`rlu2net/__init__.py`) turns paths, nibabel images and numpy arrays
//! into what these functions take; no method logic is written here.

mod convert;
mod errors;
mod job;
mod model;
mod tools;

use pyo3::prelude::*;

#[pymodule]
fn _rlu2net(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(tools::statistics, m)?)?;
    m.add_function(wrap_pyfunction!(tools::evaluate_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(tools::evaluate_folders, m)?)?;
    m.add_function(wrap_pyfunction!(tools::synth, m)?)?;
    m.add_function(wrap_pyfunction!(tools::train, m)?)?;
    m.add_function(wrap_pyfunction!(tools::devices, m)?)?;
    m.add_function(wrap_pyfunction!(tools::read, m)?)?;
    Ok(())
}
