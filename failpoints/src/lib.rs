//! Crash points for crash-consistency tests. `BALLAST_FAILPOINTS=name[,name...]` makes the
//! process abort — no destructors, no flushes, like SIGKILL — the first time it reaches a point
//! with one of those names. Unset (always, outside tests) a point costs one atomic load.
//!
//! Points: `snapshot-before-save`, `snapshot-after-save` (a replica's snapshot), `log-purge`
//! (right after the log behind a snapshot is removed), `dr-export-before-manifest` (archive data
//! uploaded, manifest not yet), `restore-rewrite` (a restore or `--force-new-cluster` halfway
//! through rewriting the data dir).
//!
//! Error points make an operation fail instead: `fsync-error` (every journal fsync fails),
//! `fsync-error@N` (the N-th fsync and every later one fail), so a process can start before
//! its disk "breaks".

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("BALLAST_FAILPOINTS")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Whether the operation at error point `name` should fail now (see the crate docs).
pub fn fails(name: &str) -> bool {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    for armed in armed() {
        let (point, from) = match armed.split_once('@') {
            Some((point, n)) => (point, n.parse::<u64>().unwrap_or(1)),
            None => (armed.as_str(), 1),
        };
        if point == name {
            // One error point per process is all the tests arm, so one counter will do.
            return CALLS.fetch_add(1, Ordering::Relaxed) + 1 >= from;
        }
    }
    false
}

/// Aborts the process if `name` is armed.
pub fn hit(name: &str) {
    if armed().iter().any(|a| a == name) {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}
