//! Allocator settings for the processes that carry large WRITEs and READs.
//!
//! A 1 MiB WRITE passes through several buffers of its own size in every replica (the
//! frame read off the link, the decoded request, the log record, the reply). glibc
//! serves allocations that large with `mmap` and gives them back with `munmap` (its
//! adaptive threshold only grows after a free, and trimming returns the heap's top), so
//! each buffer cost a page fault and a zeroed page per 4 KiB: 12–23% of the samples of a
//! large copy (`perf`, twelfth session). Keeping such buffers in the heap and the heap's
//! free top in the process avoids that.

/// Serve allocations up to 8 MiB from the heap and keep up to 256 MiB of freed heap
/// top per arena (glibc only; elsewhere nothing changes). Call once, at the start of
/// `main`, before threads start.
pub fn keep_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; called before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
