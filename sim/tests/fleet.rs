//! The fleet simulator at CI scale (`ballast-sim fleet --scale ci`): real replicas and six real
//! shard workers through every scenario — steady demand, three leader SIGKILLs, a full
//! coordinator outage with a shard restarted in the middle, the loss of az-c, a burst moving
//! every domain, a DR restore — with every invariant checked after each. The full scale is
//! `cargo run --release -p ballast-sim -- fleet --scale full` (docs/simulator.md).

use std::process::Command;

/// Runs `ballast-sim fleet --scale ci --seed 7` with `extra` flags; the report, the output and
/// the directory holding the report's files. Fails with the output unless the run passed.
fn run_fleet(extra: &[&str]) -> (serde_json::Value, String, tempfile::TempDir) {
    let out = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_ballast-sim"))
        .args(["fleet", "--scale", "ci", "--seed", "7"])
        .args(extra)
        .arg("--out")
        .arg(out.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running ballast-sim fleet");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("report.json")).expect("report.json"),
    )
    .expect("report.json is JSON");
    (report, text, out)
}

#[test]
fn every_scenario_keeps_every_invariant_at_ci_scale() {
    let (report, text, out) = run_fleet(&[]);

    let scenarios = report["scenarios"].as_array().expect("scenarios");
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "steady",
            "leader-kill",
            "outage",
            "az-loss",
            "partition",
            "starved-coordinator",
            "demand-shift",
            "burst",
            "dr"
        ]
    );
    let mut checked = std::collections::BTreeSet::new();
    for scenario in scenarios {
        for check in scenario["invariants"].as_array().unwrap() {
            assert!(check["holds"].as_bool().unwrap(), "{check}\n{text}");
            checked.insert(check["name"].as_str().unwrap().to_string());
        }
    }
    // Every invariant the simulator promises was actually evaluated.
    for name in [
        "no domain owned by two live shards",
        "no quota slice exceeded",
        "no machine double-assigned",
        "provisioning never stalled by the coordinator",
        "no acknowledged write lost",
        "a shard restarted during the outage serves from its cache",
        "returning shards drop the domains they lost",
        "every live shard meets its demand",
        "the restore is the archive, nothing later",
        "the cut-off shard serves its clusters' new demand from its cache",
        "the clusters of the cut-off shard are served by their new shards",
        "the healed shard drops the domains and clusters it lost",
        "no domain moves when the leader is stopped past the shards' lease",
        "no domain moves when every replica is stopped past the shards' lease",
        "a demand shift is met by slices following demand",
        "slices move no more than the demand shift needs",
        "no slice swings back and forth",
        "domains and clusters move only off shards whose state changed",
        "the coordinator moves nothing onto a shard that is down",
        "no slice moves back and forth unless its shard's state changed",
        "az-c is found lost within its leases, the leader's allowance and a round",
        "the round that finds az-c lost moves all of its work",
        "the lost AZ's work moves in one step",
    ] {
        assert!(checked.contains(name), "{name} never checked: {checked:?}");
    }
    // The measurements behind the report exist and are plausible.
    let figure = |scenario: usize, key: &str| {
        scenarios[scenario]["measurements"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    assert_eq!(figure(1, "kills"), 3.0);
    assert!(figure(2, "machines_added_during_outage") > 0.0);
    assert_eq!(figure(3, "domains_evacuated"), 200.0);
    assert!(figure(4, "cut_to_reassigned_ms") > 0.0);
    assert!(figure(5, "stop_ms") > 0.0);
    assert!(
        figure(6, "slice_needed") > 0.0,
        "the shift outgrew the slices"
    );
    assert!(figure(6, "slice_moved") > 0.0);
    assert_eq!(figure(7, "moves"), 600.0);
    // Moves per scenario, as the shards' watches delivered them: the coordinator moves the
    // lost AZ's domains once and the operator moves them home; the burst is the operator's
    // alone; a starved coordinator moves nothing.
    assert_eq!(figure(3, "moves.domains_by_coordinator"), 200.0);
    assert_eq!(figure(3, "moves.domains_by_operator"), 200.0);
    assert_eq!(figure(3, "moves.most_moves_of_one"), 1.0);
    assert_eq!(figure(5, "moves.domains_by_coordinator"), 0.0);
    assert_eq!(figure(5, "moves.clusters_by_coordinator"), 0.0);
    assert!(figure(6, "moves.slice_changes_by_coordinator") > 0.0);
    assert_eq!(figure(7, "moves.domains_by_operator"), 600.0);
    assert_eq!(figure(7, "moves.domains_by_coordinator"), 0.0);
    for scenario in scenarios {
        assert!(
            scenario["measurements"]["moves.slices_changed"].is_f64(),
            "moves are reported for every scenario: {scenario}"
        );
    }
    assert!(figure(8, "archive_bytes") > 0.0);
    assert!(report["samples"].as_array().unwrap().len() > 20);
    assert!(!report["leader_changes"].as_array().unwrap().is_empty());
    for file in [
        "report.html",
        "timeline.svg",
        "provisioning.svg",
        "latency.svg",
    ] {
        let body = std::fs::read_to_string(out.path().join(file)).expect(file);
        assert!(body.contains("<svg"), "{file} has no chart");
    }
}

/// The same run with every quota provider as its own durable process shared by the shards
/// (`--provider-processes`): ownership is fenced at the provider and moved domains are adopted
/// there with their machines; the providers' own record is judged after every scenario.
#[test]
fn every_scenario_keeps_every_invariant_with_provider_processes() {
    let (report, text, _out) = run_fleet(&["--provider-processes"]);
    let mut judged_by_the_providers = 0;
    let mut fenced_checked = false;
    for scenario in report["scenarios"].as_array().expect("scenarios") {
        for check in scenario["invariants"].as_array().unwrap() {
            assert!(check["holds"].as_bool().unwrap(), "{check}\n{text}");
            let name = check["name"].as_str().unwrap();
            if name.starts_with("the providers' record") {
                judged_by_the_providers += 1;
            }
            fenced_checked |= name
                == "the providers' record: the cut-off shard acted on nothing after the new shards took over";
        }
    }
    assert!(
        fenced_checked,
        "the partition is judged by the providers: {text}"
    );
    // After every scenario (and once more with az-c down).
    assert!(
        judged_by_the_providers >= 7,
        "{judged_by_the_providers}\n{text}"
    );
    assert!(
        text.contains("provider provider-0 (region-0, region-1) at 127.0.0.1:"),
        "the quota provider ran as its own process: {text}"
    );
}
