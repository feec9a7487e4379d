//! The largest single allocation (or reallocation) since the last `reset`, for the fuzz
//! tests' allocation bound: recorded by the library's allocator (jemalloc, the default),
//! or, built without it, by this test binary's own allocator over the system's.

#[cfg(feature = "jemalloc")]
pub use rlu2net::allocator::{largest, reset_largest as reset};

#[cfg(not(feature = "jemalloc"))]
pub use counting::{largest, reset};

#[cfg(not(feature = "jemalloc"))]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting;
    static LARGEST: AtomicUsize = AtomicUsize::new(0);

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            LARGEST.fetch_max(l.size(), Ordering::Relaxed);
            // SAFETY: the caller's guarantees
            unsafe { System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            // SAFETY: the caller's guarantees
            unsafe { System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            LARGEST.fetch_max(n, Ordering::Relaxed);
            // SAFETY: the caller's guarantees
            unsafe { System.realloc(p, l, n) }
        }
    }

    #[global_allocator]
    static A: Counting = Counting;

    pub fn reset() {
        LARGEST.store(0, Ordering::Relaxed);
    }

    /// The largest allocation since the last `reset`, in bytes.
    pub fn largest() -> usize {
        LARGEST.load(Ordering::Relaxed)
    }
}
