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

/// glibc's tunable that backs the heap's growth and its large mapped buffers with
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`, glibc ≥ 2.35).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HUGE_PAGE_TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// Run with the heap on transparent huge pages: each fresh 4 KiB page of a tensor costs
/// a page fault and its zeroing, about 250 000 of them in `bench model --preset cpu
/// --patch 64 --runs 3`; on 2 MiB pages about 6 000, and that forward pass is about 10 %
/// faster (BENCHMARKS.md, "Speed"). glibc reads its tunables only at start,
/// so the process starts itself again once with `GLIBC_TUNABLES` extended; a tunable
/// the user set is kept, and if the restart fails the run simply goes on without it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn with_huge_page_heap() {
    use std::os::unix::process::CommandExt;
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains("glibc.malloc.hugetlb") {
        return;
    }
    let value = if current.is_empty() {
        HUGE_PAGE_TUNABLE.to_string()
    } else {
        format!("{current}:{HUGE_PAGE_TUNABLE}")
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    // exec returns only on failure
    let _ = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", value)
        .exec();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn with_huge_page_heap() {}

fn main() {
    with_huge_page_heap();
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
