//! Processes the harness starts: their memory from Linux `/proc`, signals, and kill-and-reap.

use std::process::Child;

/// Resident set size of a process in bytes (Linux `/proc`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// CPU time `pid` has used, user and system, all its threads (`/proc/<pid>/stat`; the kernel
/// counts it in USER_HZ ticks, 100 a second on Linux whatever the kernel's own tick).
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis,
    // where utime and stime are the 12th and 13th.
    let mut fields = stat
        .get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(std::time::Duration::from_millis((user + system) * 10))
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

/// Sends SIGINT to process `pid`, a child the caller started, as Ctrl-C would.
pub fn interrupt(pid: u32) {
    signal(pid, libc::SIGINT);
}

/// Sends `signal` to process `pid`, a child the harness started.
pub(crate) fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child process we own; no memory is shared.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_while_the_process_computes() {
        let pid = std::process::id();
        let before = cpu_time(pid).expect("this process's /proc/<pid>/stat");
        // Work until the kernel's 10 ms tick has surely counted some of it.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = cpu_time(pid).expect("still there");
        assert!(
            after > before,
            "{before:?} -> {after:?} after 200 ms of work"
        );
        assert!(cpu_time(u32::MAX).is_none(), "no such process");
    }
}
