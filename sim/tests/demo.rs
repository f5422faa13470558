//! The README's main command must keep working: run the whole demo (3 replicas, 6 shard
//! workers, a seeded fleet through leader kills, a full outage with a shard restart, the loss
//! of an AZ, a burst of moves and a DR restore, then an election over the etcd-compatible KV)
//! and check that it reaches the end with every invariant held and a report written.

use std::process::Command;

#[test]
fn the_demo_runs_to_the_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = ballast_testkit::free_base_port(3);
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
        "scenario Outage",
        "ok   provisioning never stalled by the coordinator",
        "ok   a shard restarted during the outage serves from its cache",
        "ok   returning shards drop the domains they lost",
        "ok   the restore is the archive, nothing later",
        ", 0 violations",
        "worker-2 waits: true",
        "worker-2 leads with fencing token",
        "The cluster is serving",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    for file in ["report.json", "report.html", "timeline.svg"] {
        assert!(
            dir.path().join("demo").join(file).exists(),
            "{file} missing"
        );
    }
}
