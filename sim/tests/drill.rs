//! The DR drill end to end at a small scale, against a local directory and a real S3-protocol
//! server: the restored state must equal the exported one (the drill exits non-zero otherwise).

use std::process::Command;

#[test]
fn the_dr_drill_restores_an_identical_state() {
    let dir = tempfile::tempdir().expect("dir");
    let report = dir.path().join("drill.md");
    let out = Command::new(env!("CARGO_BIN_EXE_ballast-sim"))
        .args([
            "drill",
            "dr",
            "--stores",
            "both",
            "--shards",
            "6",
            "--domains",
            "600",
            "--bindings",
            "120",
            "--quotas",
            "4",
            "--writes-after-export",
            "10",
            "--out",
        ])
        .arg(&report)
        .output()
        .expect("running the drill");
    assert!(
        out.status.success(),
        "drill failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&report).expect("report");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("| local") || l.starts_with("| S3"))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        assert!(row.ends_with("| yes |"), "state not identical: {row}");
        assert!(row.contains("10 writes"), "{row}");
    }
}
