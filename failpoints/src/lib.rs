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
//!
//! Hold points stop one task instead of the process: the first time a task reaches an armed
//! hold point it creates `<name>.held` in `BALLAST_FAILPOINT_DIR` and waits until the test
//! creates `<name>.release` there. A test uses them to pin a task inside a narrow window (the
//! etcd backend's appender between registering its waiters and sending its transaction:
//! `etcd-append-hold`) and then pause, partition or kill around it. A shard worker has four:
//! `shard-delete-hold` (a surplus machine's return, after its grant is chosen and before the
//! provider is called), `shard-placement-hold` (the placement controller, before the first
//! round with a machine to release to idle) `shard-takeover-hold` (a takeover, after it
//! chose its grant and before it calls the providers) and `shard-adopted-hold` (a takeover,
//! after a provider answered and before what it adopted joins the ledger).
//!
//! A blocking hold point ([`block`]) stops a thread the same way and stands for a disk that
//! stalls: `shard-demand-fsync` (the shard's shared fsync of submitted demand, before the disk
//! is asked) and `log-leader-fsync-hold` (a coordinator leader's fsync of its own new log
//! entries, which it has already sent to its followers).

use parking_lot::Mutex;
use std::collections::HashSet;
use std::path::PathBuf;
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

/// Holds the calling task at hold point `name`, the first time it is reached, until the test
/// releases it (see the crate docs). Returns at once when `name` is not armed, when it already
/// held once, or when `BALLAST_FAILPOINT_DIR` is unset.
pub async fn hold(name: &str) {
    let Some(release) = start_holding(name) else {
        return;
    };
    while !release.exists() {
        tokio::time::sleep(HOLD_POLL).await;
    }
    eprintln!("failpoint {name}: released");
}

/// [`hold`] for code on a thread of its own (an fsync on a blocking thread): blocks the
/// calling thread instead of yielding a task.
pub fn block(name: &str) {
    let Some(release) = start_holding(name) else {
        return;
    };
    while !release.exists() {
        std::thread::sleep(HOLD_POLL);
    }
    eprintln!("failpoint {name}: released");
}

const HOLD_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Marks hold point `name` held and returns the file whose creation releases it, or `None`
/// when it does not hold (see [`hold`]).
fn start_holding(name: &str) -> Option<PathBuf> {
    static HELD: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    if !armed().iter().any(|a| a == name) {
        return None;
    }
    let Some(dir) = std::env::var_os("BALLAST_FAILPOINT_DIR").map(PathBuf::from) else {
        eprintln!("failpoint {name}: BALLAST_FAILPOINT_DIR is unset; not holding");
        return None;
    };
    if !HELD
        .lock()
        .get_or_insert_with(HashSet::new)
        .insert(name.to_string())
    {
        return None;
    }
    let release = dir.join(format!("{name}.release"));
    if let Err(e) = std::fs::write(dir.join(format!("{name}.held")), b"") {
        eprintln!(
            "failpoint {name}: cannot mark the hold in {}: {e}",
            dir.display()
        );
        return None;
    }
    eprintln!(
        "failpoint {name}: holding until {} exists",
        release.display()
    );
    Some(release)
}
