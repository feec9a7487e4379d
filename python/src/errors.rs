//! Errors of the library as Python exceptions, with the one-line message the command
//! line prints after `error: `.

use pyo3::PyErr;
use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError,
};
use rlu2net::io::{Problem, problem_of};
use rlu2net::progress::Interrupted;

/// `ValueError`, `FileNotFoundError`, `OSError` or `KeyboardInterrupt`, with the
/// command line's message.
pub fn to_py(e: anyhow::Error) -> PyErr {
    let msg = format!("{e:#}");
    if e.chain().any(|c| c.is::<Interrupted>()) {
        return PyKeyboardInterrupt::new_err(msg);
    }
    match problem_of(&e) {
        Problem::NotFound => PyFileNotFoundError::new_err(msg),
        Problem::Unreadable => PyOSError::new_err(msg),
        Problem::Invalid => PyValueError::new_err(msg),
    }
}

/// A panic's message as a `RuntimeError` (a bug; it must not end the interpreter).
pub fn panic_to_py(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    PyRuntimeError::new_err(rlu2net::infer::batch::panic_message(payload.as_ref()))
}
