//! The Python example provider (`examples/providers/python/`) as a real process, held to the
//! whole conformance suite with a SIGKILL and restart in the middle. The contract is only
//! language-neutral if a second, independent implementation in another language keeps it.
//!
//! `.ci/python-provider` installs its dependencies (once, into a cached virtualenv); if that
//! fails the test fails with the script's stderr rather than skipping: a provider nobody checks
//! is one that quietly stops keeping the contract.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ballast_testkit::{ProviderProcess, run_bounded};

const SIM: &str = env!("CARGO_BIN_EXE_ballast-sim");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The virtualenv's python, installed by `.ci/python-provider` if needed.
fn python() -> String {
    let script = repo().join(".ci/python-provider");
    let output = run_bounded(
        &mut Command::new(&script),
        ".ci/python-provider",
        Duration::from_secs(900),
    );
    assert!(
        output.status.success(),
        "{} failed ({}), so the Python provider cannot be checked:\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn the_python_provider_passes_the_whole_suite_with_a_sigkill_restart_in_the_middle() {
    let program = format!(
        "'{}' '{}'",
        python(),
        repo()
            .join("examples/providers/python/provider.py")
            .display()
    );
    let provider = ProviderProcess::start(&program, "");
    let before = provider.pid();
    // The suite bounds every call (10 s) and the restart (120 s for the command, 30 s for
    // Describe to answer again); this bounds the run as a whole.
    let output = run_bounded(
        Command::new(SIM).args([
            "provider-check",
            "--endpoint",
            &format!("grpc://{}", provider.endpoint),
            "--restart-command",
            &provider.restart_command(),
            "--restart-timeout-ms",
            "30000",
            "--json",
        ]),
        "ballast-sim provider-check",
        Duration::from_secs(300),
    );
    let context = format!(
        "{}\n{}\nprovider log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        provider.log()
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("the suite's --json output does not parse ({e}):\n{context}"));
    assert_eq!(output.status.code(), Some(0), "{context}");
    assert_eq!(report["contract"], "ballast.provider.v1", "{context}");
    assert_eq!(report["failed"], 0, "{context}");
    assert_eq!(
        report["skipped"], 0,
        "every check runs, restart included: {context}"
    );
    let restart = report["checks"]
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["name"] == "restart"))
        .unwrap_or_else(|| panic!("no restart row: {context}"));
    assert_eq!(restart["outcome"], "pass", "{context}");
    assert_ne!(
        provider.pid(),
        before,
        "the restart command must have replaced the provider process: {context}"
    );
    let state = provider.data_dir().join("state.json");
    assert!(
        state.is_file(),
        "the provider keeps its state in {}",
        state.display()
    );
}
