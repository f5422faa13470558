//! Hands the heap a burst of calls freed back to the operating system. glibc keeps memory freed
//! inside its arenas, so without this a provider's RSS stays at the high-water mark of its
//! busiest moment (every shard taking over its domains at once) long after the calls are
//! answered. Measured under one fleet provider's load (`ballast-bench provider-memory`).

use std::time::Duration;

/// How often freed memory is returned.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps glibc from giving each thread that allocates its own arena (up to 8 per core), each
/// holding its own freed memory: the provider's heap is one book plus short-lived call
/// buffers. Call before the async runtime starts its threads.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed heap pages to the OS every [`TRIM_INTERVAL`], for as long as the runtime runs.
pub async fn trim_loop() {
    loop {
        tokio::time::sleep(TRIM_INTERVAL).await;
        // It walks the arenas' free lists under their locks: a blocking call, off the runtime.
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

/// Returns freed heap pages to the OS now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds as free; it has no
    // preconditions and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
