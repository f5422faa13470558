//! Crash points for crash-consistency tests. `BALLAST_FAILPOINTS=name[,name...]` makes the
//! process abort — no destructors, no flushes, like SIGKILL — the first time it reaches a point
//! with one of those names. Unset (always, outside tests) a point costs one atomic load.
//!
//! Points: `snapshot-before-save`, `snapshot-after-save` (a replica's snapshot), `log-purge`
//! (right after the log behind a snapshot is removed), `dr-export-before-manifest` (archive data
//! uploaded, manifest not yet), `restore-rewrite` (a restore or `--force-new-cluster` halfway
//! through rewriting the data dir).

use std::sync::OnceLock;

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

/// Aborts the process if `name` is armed.
pub fn hit(name: &str) {
    if armed().iter().any(|a| a == name) {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}
