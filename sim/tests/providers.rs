//! Out-of-process providers: the reference provider as a real process, checked by the
//! conformance suite as a provider author would run it — including a SIGKILL and restart in the
//! middle, with the provider's own data dir as the only memory it has.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ballast_testkit::free_port;

const SIM: &str = env!("CARGO_BIN_EXE_ballast-sim");

/// A provider process started (and restartable) by a shell script that records its pid, as
/// an operator's restart hook would.
struct ProviderProcess {
    dir: tempfile::TempDir,
    endpoint: String,
}

impl ProviderProcess {
    fn start(flags: &str) -> ProviderProcess {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let data = dir.path().join("data");
        let pidfile = dir.path().join("pid");
        let log = dir.path().join("provider.log");
        // The provider's output goes to a file: the suite waits for the restart command's own
        // output to close, so the restarted process must not hold it open.
        let start = format!(
            "'{SIM}' provider --listen 127.0.0.1:{port} --data-dir '{}' {flags} >>'{}' 2>&1 &\n\
             echo $! > '{}'\n",
            data.display(),
            log.display(),
            pidfile.display()
        );
        std::fs::write(dir.path().join("start.sh"), &start).unwrap();
        std::fs::write(
            dir.path().join("restart.sh"),
            format!(
                "set -e\nkill -9 $(cat '{pid}')\n\
                 while kill -0 $(cat '{pid}') 2>/dev/null; do sleep 0.05; done\n{start}",
                pid = pidfile.display()
            ),
        )
        .unwrap();
        let status = Command::new("sh")
            .arg(dir.path().join("start.sh"))
            .status()
            .unwrap();
        assert!(status.success(), "start.sh failed");
        let provider = ProviderProcess {
            dir,
            endpoint: format!("127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !provider.log().contains("listening on") {
            assert!(
                std::time::Instant::now() < deadline,
                "the provider did not start listening within 30 s:\n{}",
                provider.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        provider
    }

    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn restart_command(&self) -> String {
        format!("sh '{}'", self.dir.path().join("restart.sh").display())
    }

    /// A restart that loses the data dir: the provider comes back empty while still saying
    /// it is durable.
    fn amnesiac_restart_command(&self) -> String {
        format!(
            "rm -rf '{}' && sh '{}'",
            self.data_dir().display(),
            self.dir.path().join("restart.sh").display()
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for ProviderProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.pid().to_string()])
            .status();
    }
}

fn check(args: &[&str]) -> Output {
    let mut child = Command::new(SIM)
        .arg("provider-check")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    // The suite bounds every call and the restart; this bounds the process as a whole.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ballast-provider-check ran for over 300 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
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
    let provider = ProviderProcess::start("");
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
    let provider = ProviderProcess::start("--broken not-idempotent");
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
    let provider = ProviderProcess::start("");
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
