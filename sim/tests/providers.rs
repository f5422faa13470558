//! Out-of-process providers: the reference provider as a real process, checked by the
//! conformance suite as a provider author would run it — including a SIGKILL and restart in the
//! middle, with the provider's own data dir as the only memory it has.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ballast_testkit::{ProviderProcess, free_port, run_bounded};

const SIM: &str = env!("CARGO_BIN_EXE_ballast-sim");

fn start(flags: &str) -> ProviderProcess {
    ProviderProcess::start(&format!("'{SIM}' provider"), flags)
}

/// Runs the suite as a process, as a provider author would.
fn check(args: &[&str]) -> Output {
    // The suite bounds every call and the restart; this bounds the run as a whole.
    run_bounded(
        Command::new(SIM).arg("provider-check").args(args),
        "ballast-sim provider-check",
        Duration::from_secs(300),
    )
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the suite's --json output does not parse ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn the_reference_provider_passes_the_suite_with_a_sigkill_restart_in_the_middle() {
    let provider = start("");
    let before = provider.pid();
    let restart = provider.restart_command();
    let output = check(&[
        "--endpoint",
        &format!("grpc://{}", provider.endpoint),
        "--restart-command",
        &restart,
        "--restart-timeout-ms",
        "30000",
        "--json",
    ]);
    let report = json(&output);
    let context = format!("{report:#}\nprovider log:\n{}", provider.log());
    assert_eq!(output.status.code(), Some(0), "{context}");
    assert_eq!(report["failed"], 0, "{context}");
    assert_eq!(
        report["skipped"], 0,
        "every check runs, restart included: {context}"
    );
    let restart_row = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["name"] == "restart")
        .expect("a restart row");
    assert_eq!(restart_row["outcome"], "pass", "{context}");
    assert_ne!(
        provider.pid(),
        before,
        "the restart command must have replaced the provider process"
    );
    assert!(is_dir_with_files(&provider.data_dir()));
}

fn is_dir_with_files(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_some())
}

#[test]
fn a_broken_provider_process_fails_the_suite_with_exit_status_1_and_says_why() {
    let provider = start("--broken not-idempotent");
    let output = check(&[
        "--endpoint",
        &provider.endpoint,
        "--only",
        "idempotency/create",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  idempotency/create") && text.contains("1 failed"),
        "{text}"
    );
}

#[test]
fn an_unreachable_provider_is_a_usage_error_with_exit_status_2() {
    let port = free_port();
    let output = check(&[
        "--endpoint",
        &format!("127.0.0.1:{port}"),
        "--call-timeout-ms",
        "2000",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach the provider"), "{stderr}");
}

#[test]
fn a_provider_that_forgets_across_its_restart_fails_the_restart_check() {
    let provider = start("");
    let restart = provider.amnesiac_restart_command();
    let output = check(&[
        "--endpoint",
        &provider.endpoint,
        "--only",
        "restart",
        "--restart-command",
        &restart,
        "--json",
    ]);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    let row = &report["checks"][0];
    assert_eq!(row["outcome"], "fail", "{report:#}");
    assert!(
        row["message"]
            .as_str()
            .unwrap()
            .contains("after the restart"),
        "{report:#}"
    );
}
