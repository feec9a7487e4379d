//! Running a library computation from Python: on a worker of the thread pool, with the
//! GIL released (other Python threads run meanwhile), while the calling thread wakes
//! every 50 ms to run Python's signal handlers (Ctrl-C raises `KeyboardInterrupt` there,
//! and the computation is asked to stop at its next check) and to call the progress
//! callback. Unused memory goes back to the system when the call ends.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

use pyo3::prelude::*;
use rlu2net::progress::Progress;

use crate::errors::{panic_to_py, to_py};

/// How often the waiting thread looks at signals and progress.
const POLL: Duration = Duration::from_millis(50);

/// Where a call computes: the pool of its own thread count, or the global one (every core).
pub enum Pool {
    Global,
    Own(rayon::ThreadPool),
}

impl Pool {
    /// `threads` CPU threads, or all cores.
    pub fn new(threads: Option<usize>) -> PyResult<Pool> {
        match threads {
            None => Ok(Pool::Global),
            Some(0) => Err(pyo3::exceptions::PyValueError::new_err(
                "threads must be at least 1",
            )),
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("rlu2net-{i}"))
                .build()
                .map(Pool::Own)
                .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("threads={n}: {e}"))),
        }
    }

    fn scope<'s, R: Send>(&self, op: impl FnOnce(&rayon::Scope<'s>) -> R + Send) -> R {
        match self {
            Pool::Global => rayon::in_place_scope(op),
            Pool::Own(p) => p.in_place_scope(op),
        }
    }
}

/// What the waiting thread saw: a Python exception to raise instead of the result
/// (Ctrl-C, or one from the callback).
fn poll_python(
    progress: &Progress,
    callback: Option<&Py<PyAny>>,
    last: &mut (u64, u64),
) -> PyResult<()> {
    Python::attach(|py| {
        py.check_signals()?;
        if let Some(cb) = callback {
            let now = (progress.position(), progress.length().unwrap_or(0));
            if now != *last {
                *last = now;
                cb.bind(py).call1((now.0, now.1, progress.message()))?;
            }
        }
        Ok(())
    })
}

/// Run `job` as described above; `progress` is what it reports to and checks.
pub fn run<T: Send>(
    py: Python<'_>,
    pool: &Pool,
    progress: &Progress,
    callback: Option<&Py<PyAny>>,
    job: impl FnOnce() -> anyhow::Result<T> + Send,
) -> PyResult<T> {
    let outcome = py.detach(|| {
        pool.scope(|s| {
            let (tx, rx) = mpsc::channel();
            s.spawn(move |_| {
                let _ = tx.send(catch_unwind(AssertUnwindSafe(job)));
            });
            let mut raised: Option<PyErr> = None;
            let mut last = (u64::MAX, u64::MAX);
            loop {
                match rx.recv_timeout(POLL) {
                    Ok(done) => return (done, raised),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if raised.is_none()
                            && let Err(e) = poll_python(progress, callback, &mut last)
                        {
                            progress.request_stop();
                            raised = Some(e);
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        unreachable!("the job always sends its outcome")
                    }
                }
            }
        })
    });
    rlu2net::allocator::release_free_memory();
    let (done, raised) = outcome;
    if let Some(e) = raised {
        return Err(e);
    }
    let value = match done {
        Ok(r) => r.map_err(to_py)?,
        Err(panic) => return Err(panic_to_py(panic)),
    };
    // the final count, so a bar ends full
    if let Some(cb) = callback {
        cb.bind(py).call1((
            progress.position(),
            progress.length().unwrap_or(0),
            progress.message(),
        ))?;
    }
    Ok(value)
}
