//! How a long computation (inference over many windows, a training run) reports how
//! far it is and is asked to stop from outside: a progress bar (shown or hidden; a
//! hidden one still counts, so another thread can read it) and a stop flag that the
//! computation checks between units of work. The command line shows the bar; the
//! Python package reads it for its callback and sets the flag on Ctrl-C.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::ProgressBar;

/// The computation stopped because [`Progress::request_stop`] was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// A progress bar and a stop flag, shared by cloning.
#[derive(Clone, Debug)]
pub struct Progress {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
}

impl Progress {
    /// Report to `bar`.
    pub fn new(bar: ProgressBar) -> Progress {
        Progress {
            bar,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Count without drawing anything.
    pub fn hidden() -> Progress {
        Progress::new(ProgressBar::hidden())
    }

    /// Ask the computation to stop at its next check.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// `Err(Interrupted)` once a stop has been requested.
    pub fn check(&self) -> Result<(), Interrupted> {
        if self.stop_requested() {
            Err(Interrupted)
        } else {
            Ok(())
        }
    }
}

impl Deref for Progress {
    type Target = ProgressBar;
    fn deref(&self) -> &ProgressBar {
        &self.bar
    }
}

impl From<ProgressBar> for Progress {
    fn from(bar: ProgressBar) -> Progress {
        Progress::new(bar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_sees_the_stop_and_the_count() {
        let p = Progress::hidden();
        let q = p.clone();
        p.set_length(10);
        p.inc(3);
        assert_eq!((q.position(), q.length()), (3, Some(10)));
        assert_eq!(q.check(), Ok(()));
        p.request_stop();
        assert_eq!(q.check(), Err(Interrupted));
    }
}
