//! Processes the harness starts: their memory from Linux `/proc`, signals, and kill-and-reap.

use std::process::Child;

/// Resident set size of a process in bytes (Linux `/proc`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// SIGKILLs the process in `slot`, if any, and reaps it, leaving `slot` empty.
pub(crate) fn kill(slot: &mut Option<Child>) {
    if let Some(mut child) = slot.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends `signal` to process `pid`, a child the harness started.
pub(crate) fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child process we own; no memory is shared.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}
