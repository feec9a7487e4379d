//! Errors of the library as Python exceptions, with the one-line message the command
//! line prints after `error: `.

use pyo3::PyErr;
use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError,
};
use rlu2net::io::{Problem, VolumeError};
use rlu2net::progress::Interrupted;

/// The exception class an error maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Ctrl-C (or a progress callback) stopped the computation.
    Interrupted,
    NotFound,
    Os,
    Value,
}

/// What a chain of causes is: the first cause that says decides.
pub fn kind_of(e: &anyhow::Error) -> Kind {
    if e.chain().any(|c| c.is::<Interrupted>()) {
        return Kind::Interrupted;
    }
    for c in e.chain() {
        if let Some(v) = c.downcast_ref::<VolumeError>() {
            return match v.kind {
                Problem::NotFound => Kind::NotFound,
                Problem::Unreadable => Kind::Os,
                Problem::Invalid => Kind::Value,
            };
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::NotFound => Kind::NotFound,
                // the bytes were read and are not what they should be
                K::InvalidData | K::UnexpectedEof | K::InvalidInput => Kind::Value,
                _ => Kind::Os,
            };
        }
    }
    Kind::Value
}

/// `ValueError`, `FileNotFoundError`, `OSError` or `KeyboardInterrupt`, with the
/// command line's message.
pub fn to_py(e: anyhow::Error) -> PyErr {
    let msg = format!("{e:#}");
    match kind_of(&e) {
        Kind::Interrupted => PyKeyboardInterrupt::new_err(msg),
        Kind::NotFound => PyFileNotFoundError::new_err(msg),
        Kind::Os => PyOSError::new_err(msg),
        Kind::Value => PyValueError::new_err(msg),
    }
}

/// A panic's message as a `RuntimeError` (a bug; it must not end the interpreter).
pub fn panic_to_py(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let what = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    PyRuntimeError::new_err(format!(
        "internal error (a panic: {what}); please report it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn causes_decide_the_class() {
        let nf = anyhow::Error::new(
            VolumeError::new(Path::new("a.nii"), "file not found").with_kind(Problem::NotFound),
        );
        assert_eq!(kind_of(&nf), Kind::NotFound);
        assert_eq!(kind_of(&nf.context("reading the CT")), Kind::NotFound);
        let bad = anyhow::Error::new(VolumeError::new(Path::new("a.nii"), "truncated"));
        assert_eq!(kind_of(&bad), Kind::Value);
        let denied = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(kind_of(&denied), Kind::Os);
        let eof = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert_eq!(kind_of(&eof), Kind::Value);
        let stop = anyhow::Error::new(Interrupted).context("training stopped");
        assert_eq!(kind_of(&stop), Kind::Interrupted);
        assert_eq!(
            kind_of(&anyhow::anyhow!("--threads must be at least 1")),
            Kind::Value
        );
    }
}
