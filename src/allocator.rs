//! The process's allocator: jemalloc (feature `jemalloc`, on by default), configured
//! here, so that the command line, the tests and every program built on this library
//! allocate alike.
//!
//! Why: a training step frees and allocates many multi-megabyte tensors, and each fresh
//! 4 KiB page is a page fault and a zeroing. jemalloc on transparent huge pages, with
//! freed memory kept for reuse and its default arenas, ran `bench model` 5–13 % faster
//! than glibc on huge pages; with the one arena configured below (which bounds the demo's
//! memory) at the same speed as with its default arenas, and the build as a whole 1–8 %
//! faster than the glibc build it replaced, for a peak RSS about 8 % higher (BENCHMARKS.md,
//! "The kernels at home, jemalloc, and the speed before and after").
//!
//! It can also record the largest single request (for the readers' allocation-bound
//! tests): [`reset_largest`] starts recording, [`largest`] reads it.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tikv_jemallocator::Jemalloc;

/// jemalloc, recording the largest request while [`TRACKING`] is on.
pub struct Allocator;

static TRACKING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn record(size: usize) {
    if TRACKING.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to jemalloc unchanged; the recording touches only two
// atomics and never allocates
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        record(l.size());
        // SAFETY: the caller's guarantees for `alloc`
        unsafe { Jemalloc.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        record(l.size());
        // SAFETY: the caller's guarantees for `alloc_zeroed`
        unsafe { Jemalloc.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller's guarantees for `dealloc`
        unsafe { Jemalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        record(n);
        // SAFETY: the caller's guarantees for `realloc`
        unsafe { Jemalloc.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Allocator = Allocator;

/// Start recording the largest single allocation (or reallocation), from zero.
pub fn reset_largest() {
    LARGEST.store(0, Ordering::Relaxed);
    TRACKING.store(true, Ordering::Relaxed);
}

/// The largest allocation since [`reset_largest`], in bytes, on any thread.
pub fn largest() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

/// A C string jemalloc reads when it starts.
#[repr(transparent)]
pub struct Conf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable, NUL-terminated string
unsafe impl Sync for Conf {}

/// One arena (with jemalloc's default of four per core the demo's peak RSS grew to
/// 6.8 GiB, apparently because memory freed in one arena was not reused by the others;
/// with one arena it stays near glibc's, at the same speed), transparent huge pages for all
/// memory and its metadata, mappings retained and freed pages never returned to the
/// kernel (the tensors of the next step reuse them; any decay, even 30 s, made the `cpu`
/// step 15–19 % slower; the training loop instead hands them back once an epoch,
/// [`release_free_memory`], because after some allocation histories the freed pages were
/// not reused and the demo's RSS grew to 6–8 GiB again). The
/// symbol is the one tikv-jemalloc-sys's prefixed jemalloc reads; `_RJEM_MALLOC_CONF` in
/// the environment still overrides it.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: Conf = Conf(
    c"narenas:1,thp:always,metadata_thp:auto,retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"
        .as_ptr(),
);

/// Hand the pages jemalloc holds unused back to the kernel (its `arena.<all>.purge`).
/// A process that keeps running after a computation (the Python package, after each
/// call) calls this so that its resident memory falls back to what it still uses, and
/// the training loop calls it at each epoch's end. Returns whether jemalloc accepted it.
pub fn release_free_memory() -> bool {
    // jemalloc's MALLCTL_ARENAS_ALL: the command applies to every arena
    let name = c"arena.4096.purge";
    // SAFETY: a NUL-terminated name of a command that reads and writes nothing (null
    // old/new pointers, zero lengths), as the mallctl manual allows
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    rc == 0
}
