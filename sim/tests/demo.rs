//! The README's main command must keep working: run the whole scripted demo (3 replicas,
//! 6 shard workers, leader SIGKILL, full coordinator outage, shard restart, drain, a DR
//! export, an election over the etcd-compatible KV) and check
//! that it reaches the end.

use std::process::Command;

#[test]
fn the_demo_runs_to_the_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = ballast_testkit::free_port_block(3);
    let out = Command::new(env!("CARGO_BIN_EXE_ballast-sim"))
        .args(["demo", "--exit", "--base-port", &base.to_string(), "--dir"])
        .arg(dir.path().join("demo"))
        .output()
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "placement: healthy",
        "holds 100 domains",
        "coordinator reachable: false",
        "shard-0 is back: epoch 2",
        "shard-5 holds 0 domains",
        "verified",
        "worker-2 waits: true",
        "worker-2 leads with fencing token",
        "The cluster is serving",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
