//! Hands freed heap back to the operating system. glibc keeps memory freed inside its arenas
//! (after a large batch is applied, a snapshot built or installed, a burst of watch events
//! drained) and RSS stays at the high-water mark; measured on a replica holding a
//! 100M-machine fleet's state, trimming took a restarted replica from 81 to 53 MiB. Other
//! allocators (mimalloc, jemalloc) were measured and held more, not less.

use std::time::Duration;

use tokio::sync::watch;

/// How often freed memory is returned.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Returns freed heap pages to the OS every [`TRIM_INTERVAL`] until `stopped`.
pub async fn trim_loop(mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TRIM_INTERVAL) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
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
