//! The Python example provider (`examples/providers/python/`) as a real process, held to the
//! whole conformance suite with a SIGKILL and restart in the middle. The contract is only
//! language-neutral if a second, independent implementation in another language keeps it.
//!
//! `.ci/python-provider` installs its dependencies (once, into a cached virtualenv); if that
//! fails the test fails with the script's stderr rather than skipping: a provider nobody checks
//! is one that quietly stops keeping the contract.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ballast_testkit::free_port;

const SIM: &str = env!("CARGO_BIN_EXE_ballast-sim");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `command` to the end with its output captured, killing it after `limit`.
fn run_bounded(command: &mut Command, what: &str, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    // Drained on threads, so a chatty child never blocks on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} ran for over {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
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

/// Whether `pid` is a live process. The provider is not our child (start.sh puts it in the
/// background), so a dead one may linger as a zombie until it is reaped: that counts as dead.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// The Python provider, started (and restartable) by shell scripts that record its pid.
struct PythonProvider {
    dir: tempfile::TempDir,
    endpoint: String,
}

impl PythonProvider {
    fn start(python: &str) -> PythonProvider {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let provider = repo().join("examples/providers/python/provider.py");
        let (data, pidfile, log) = (
            dir.path().join("data"),
            dir.path().join("pid"),
            dir.path().join("provider.log"),
        );
        // The output goes to a file: the suite waits for the restart command's own output to
        // close, so the restarted provider must not hold it open.
        let start = format!(
            "'{python}' '{}' --listen 127.0.0.1:{port} --data-dir '{}' >>'{}' 2>&1 &\n\
             echo $! > '{}'\n",
            provider.display(),
            data.display(),
            log.display(),
            pidfile.display()
        );
        std::fs::write(dir.path().join("start.sh"), &start).unwrap();
        // SIGKILL, not SIGTERM: the data dir must be all the provider remembers.
        std::fs::write(
            dir.path().join("restart.sh"),
            format!(
                "set -e\nkill -9 $(cat '{pid}')\n\
                 while kill -0 $(cat '{pid}') 2>/dev/null; do sleep 0.05; done\n{start}",
                pid = pidfile.display()
            ),
        )
        .unwrap();
        let started = run_bounded(
            Command::new("sh").arg(dir.path().join("start.sh")),
            "start.sh",
            Duration::from_secs(30),
        );
        assert!(started.status.success(), "start.sh failed: {started:?}");
        let provider = PythonProvider {
            dir,
            endpoint: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !provider.log().contains("listening on") {
            let pid = provider.pid().expect("start.sh records the pid");
            assert!(
                running(pid),
                "the Python provider exited before listening:\n{}",
                provider.log()
            );
            assert!(
                Instant::now() < deadline,
                "the Python provider did not start listening within 60 s:\n{}",
                provider.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        provider
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn restart_command(&self) -> String {
        format!("sh '{}'", self.dir.path().join("restart.sh").display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }
}

impl Drop for PythonProvider {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

#[test]
fn the_python_provider_passes_the_whole_suite_with_a_sigkill_restart_in_the_middle() {
    let provider = PythonProvider::start(&python());
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
    let state = provider.dir.path().join("data/state.json");
    assert!(
        state.is_file(),
        "the provider keeps its state in {}",
        state.display()
    );
}
