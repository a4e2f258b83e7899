//! Allocator tuning, applied first thing in `main`.
//!
//! libtorch's large activation buffers (megabytes each) are above glibc's default mmap threshold,
//! so with the default malloc every step maps and unmaps them: page faults eat half the CPU time and
//! inference runs ~4× slower (docs/BENCHMARKS.md). Turning mmap off for malloc and never trimming the
//! heap keeps freed buffers in the process for reuse — the same as
//! `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736`, but from inside
//! the binary, so it cannot be forgotten. libtorch's C++ `new` goes through this same malloc.

const TRIM_THRESHOLD: i32 = i32::MAX;

pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        // SAFETY: mallopt only adjusts glibc's allocator parameters; called before any threads start.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

pub fn describe() -> String {
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        format!("glibc, mmap_max=0, trim_threshold={TRIM_THRESHOLD} (set at start-up)")
    } else {
        "platform default".to_string()
    }
}
