//! [`ProviderProcess`]: a provider (the reference one, the Python example, any program serving
//! the provider contract) as a real process, started — and restartable, with a SIGKILL — by
//! shell scripts that record its pid, as an operator's restart hook would. The scripts are also
//! what the conformance suite's `--restart-command` runs. And [`run_bounded`], to run a command
//! to its end with a time limit.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;

/// Runs `command` to the end with its output captured, killing it (and failing) after `limit`.
pub fn run_bounded(command: &mut Command, what: &str, limit: Duration) -> Output {
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
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
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
        stdout: stdout.join().expect("stdout drain"),
        stderr: stderr.join().expect("stderr drain"),
    }
}

/// Whether `pid` is a live process. A provider is not the test's child (the start script puts
/// it in the background), so a dead one may linger as a zombie until reaped: that counts as dead.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// A provider process on a loopback port with a data dir, SIGKILLed when dropped.
pub struct ProviderProcess {
    dir: tempfile::TempDir,
    /// `127.0.0.1:port`.
    pub endpoint: String,
    program: String,
    durable: bool,
}

impl ProviderProcess {
    /// Starts `program` (a shell word list, e.g. `'/path/ballast-sim' provider`) with
    /// `--listen 127.0.0.1:PORT --data-dir DIR` and `flags`, and waits (60 s at most) until it
    /// prints `listening on`.
    pub fn start(program: &str, flags: &str) -> ProviderProcess {
        Self::spawn(program, flags, true)
    }

    /// [`ProviderProcess::start`] without `--data-dir`: the provider keeps everything in memory.
    pub fn start_in_memory(program: &str, flags: &str) -> ProviderProcess {
        Self::spawn(program, flags, false)
    }

    fn spawn(program: &str, flags: &str, durable: bool) -> ProviderProcess {
        let provider = ProviderProcess {
            dir: tempfile::tempdir().expect("a temporary directory"),
            endpoint: format!("127.0.0.1:{}", free_port()),
            program: program.to_string(),
            durable,
        };
        provider.write_scripts(flags);
        provider.run_script("start.sh");
        provider
    }

    /// Writes `start.sh` and `restart.sh`, which start the provider with `flags`.
    fn write_scripts(&self, flags: &str) {
        let dir = self.dir.path();
        let (pidfile, log) = (dir.join("pid"), dir.join("provider.log"));
        // The output goes to a file: the suite waits for the restart command's own output to
        // close, so the restarted provider must not hold it open.
        let data = if self.durable {
            format!("--data-dir '{}'", self.data_dir().display())
        } else {
            String::new()
        };
        let start = format!(
            "{program} --listen {endpoint} {data} {flags} >>'{}' 2>&1 &\n\
             echo $! > '{}'\n",
            log.display(),
            pidfile.display(),
            program = self.program,
            endpoint = self.endpoint,
        );
        std::fs::write(dir.join("start.sh"), &start).expect("writing start.sh");
        // SIGKILL, not SIGTERM: the data dir must be all the provider remembers.
        std::fs::write(
            dir.join("restart.sh"),
            format!(
                "set -e\nkill -9 $(cat '{pid}')\n\
                 while kill -0 $(cat '{pid}') 2>/dev/null; do sleep 0.05; done\n{start}",
                pid = pidfile.display()
            ),
        )
        .expect("writing restart.sh");
    }

    fn run_script(&self, script: &str) {
        let before = self.log().matches("listening on").count();
        let ran = run_bounded(
            Command::new("sh").arg(self.dir.path().join(script)),
            script,
            Duration::from_secs(30),
        );
        assert!(ran.status.success(), "{script} failed: {ran:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log().matches("listening on").count() == before {
            let pid = self.pid().expect("the start script records the pid");
            assert!(
                running(pid),
                "the provider exited before listening:\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "the provider did not start listening within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the provider and starts it again on the same port and data dir; returns once
    /// it listens.
    pub fn restart(&self) {
        self.run_script("restart.sh");
    }

    /// [`ProviderProcess::restart`] with other `flags` than it was started with (say, with or
    /// without a `--broken` breach); later restarts keep them.
    pub fn restart_with(&self, flags: &str) {
        self.write_scripts(flags);
        self.run_script("restart.sh");
    }

    /// Stops the provider with SIGSTOP (a hung provider: calls connect and get no answer)
    /// until [`ProviderProcess::resume`].
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            crate::process::signal(pid, libc::SIGSTOP);
        }
    }

    /// Continues a paused provider (SIGCONT).
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            crate::process::signal(pid, libc::SIGCONT);
        }
    }

    /// The provider's pid, once started.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// A shell command that restarts the provider (for `--restart-command`).
    pub fn restart_command(&self) -> String {
        format!("sh '{}'", self.dir.path().join("restart.sh").display())
    }

    /// A restart that loses the data dir first: the provider comes back empty while it still
    /// says it is durable.
    pub fn amnesiac_restart_command(&self) -> String {
        format!(
            "rm -rf '{}' && sh '{}'",
            self.data_dir().display(),
            self.dir.path().join("restart.sh").display()
        )
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    /// Its data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for ProviderProcess {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Whether a machine counts (not deleted or failed).
pub fn live(machine: &ballast_protocol::providerpb::Machine) -> bool {
    use ballast_protocol::providerpb::MachineState;
    !matches!(
        MachineState::try_from(machine.state),
        Ok(MachineState::Deleted) | Ok(MachineState::Failed)
    )
}

/// Every machine the provider at `endpoint` records for `owner` ("" for every shard's), live
/// or not, through all pages.
pub async fn provider_machines(
    endpoint: &str,
    owner: &str,
) -> Vec<ballast_protocol::providerpb::Machine> {
    use ballast_protocol::providerpb::ListMachinesRequest;
    use ballast_protocol::providerpb::provider_client::ProviderClient;
    let mut client = ProviderClient::connect(format!("http://{endpoint}"))
        .await
        .expect("connecting to the provider");
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_machines(ListMachinesRequest {
                domain: String::new(),
                owner_shard: owner.to_string(),
                cursor: cursor.clone(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("listing the provider's machines")
            .into_inner();
        all.extend(page.machines);
        if page.next_cursor.is_empty() {
            return all;
        }
        cursor = page.next_cursor;
    }
}
