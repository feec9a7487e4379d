use clap::Parser;

/// Keep freed memory in the process instead of handing it back to the kernel after
/// every large tensor: glibc trims the heap top once 128 KiB–64 MiB lie free, so each
/// step's multi-megabyte buffers were mapped, zero-filled by page faults and unmapped
/// again (about 7 % of a step in page faults). Peak RSS is unchanged: the memory is
/// reused for the next step's tensors (BENCHMARKS.md, "Speed").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // M_TRIM_THRESHOLD (-1): never trim the heap top; M_MMAP_THRESHOLD (-3): buffers up to
    // 32 MiB (glibc's maximum) come from the heap, not from a fresh mapping each time
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = rlu2net::cli::Cli::parse();
    if let Err(e) = rlu2net::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
