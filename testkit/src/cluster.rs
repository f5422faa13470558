//! [`TestCluster`]: coordinator replicas as real processes on loopback — how they are
//! launched ([`ClusterOptions`]), bootstrapped and joined, killed, paused, restarted and
//! cleaned up. Clients of a running cluster and the waits built on them are in
//! `cluster/queries.rs`.

mod queries;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_tls::{ClientTls, Role};

use crate::pki::{self, TestPki};
use crate::ports::{free_port, port_http};
use crate::process;

/// Timing flags that keep test clusters quick to elect and to compact.
pub const FAST_FLAGS: &[&str] = &[
    "--heartbeat-ms",
    "50",
    "--election-min-ms",
    "300",
    "--election-max-ms",
    "600",
];

/// AZ label for replica `id` (1 → az-a, 2 → az-b, ...).
pub fn az_of(id: u64) -> String {
    format!("az-{}", (b'a' + ((id - 1) % 26) as u8) as char)
}

/// One replica process (possibly stopped).
pub struct Replica {
    /// Replica id.
    pub id: u64,
    /// AZ label.
    pub az: String,
    /// `127.0.0.1:port`.
    pub address: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// `127.0.0.1:port` of its HTTP port (metrics, probes, status page).
    pub http_address: String,
    child: Option<Child>,
}

impl Replica {
    /// OS process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is running (as far as the harness knows).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// How to launch replicas and where to keep their files.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Program to run (`ballast-coord`, or another binary embedding it).
    pub program: PathBuf,
    /// Arguments placed before the replica flags (e.g. a subcommand name).
    pub leading_args: Vec<String>,
    /// Flags appended for every replica.
    pub extra: Vec<String>,
    /// Keep data dirs and logs here instead of in a temporary directory.
    pub dir: Option<PathBuf>,
    /// Listen on `base_port + id - 1` instead of ephemeral ports.
    pub base_port: Option<u16>,
    /// AZ of replica `id` is `azs[id - 1]` when given (default: az-a, az-b, ...).
    pub azs: Vec<String>,
    /// Run with mutual TLS: every replica gets a `peer` certificate from this CA and the
    /// cluster's own clients an `admin` one.
    pub tls: Option<Arc<TestPki>>,
    /// Give every replica a fault-rules file (`--fault-rules`) the test controls with
    /// [`TestCluster::set_faults`].
    pub faults: bool,
}

impl ClusterOptions {
    /// Replicas run as `<program> replica` (`ballast-sim`'s replica subcommand) with
    /// [`FAST_FLAGS`], everything else default. Only the test crate knows the binary's path, so
    /// it passes its own `env!("CARGO_BIN_EXE_ballast-sim")`. Other fields change with struct
    /// update syntax, `ClusterOptions { faults: true, ..ClusterOptions::sim(program) }`;
    /// setting `extra` that way replaces the fast timers.
    pub fn sim(program: impl AsRef<Path>) -> ClusterOptions {
        ClusterOptions {
            program: program.as_ref().to_path_buf(),
            leading_args: vec!["replica".into()],
            extra: FAST_FLAGS.iter().map(|s| s.to_string()).collect(),
            ..ClusterOptions::default()
        }
    }

    /// These options with the Raft timers set to these (instead of [`FAST_FLAGS`]'s), in
    /// milliseconds.
    pub fn with_timers(mut self, heartbeat: u64, election_min: u64, election_max: u64) -> Self {
        let timers = [
            ("--heartbeat-ms", heartbeat),
            ("--election-min-ms", election_min),
            ("--election-max-ms", election_max),
        ];
        // Each timer flag already there goes, with the value after it.
        let mut kept = Vec::with_capacity(self.extra.len());
        let mut flags = std::mem::take(&mut self.extra).into_iter();
        while let Some(flag) = flags.next() {
            if timers.iter().any(|(name, _)| *name == flag) {
                flags.next();
            } else {
                kept.push(flag);
            }
        }
        for (flag, ms) in timers {
            kept.extend([flag.to_string(), ms.to_string()]);
        }
        self.extra = kept;
        self
    }

    /// These options with `flags` appended to [`ClusterOptions::extra`].
    pub fn with_extra(mut self, flags: &[&str]) -> ClusterOptions {
        self.extra.extend(flags.iter().map(|s| s.to_string()));
        self
    }
}

enum Dir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Dir {
    fn path(&self) -> &Path {
        match self {
            Dir::Temp(t) => t.path(),
            Dir::Kept(p) => p,
        }
    }
}

/// A set of coordinator replicas on loopback, killed when dropped.
pub struct TestCluster {
    /// Replicas by position (ids are 1-based and need not be contiguous after removals).
    pub replicas: Vec<Replica>,
    pub(crate) options: ClusterOptions,
    dir: Dir,
    /// TLS of the cluster's own clients (an admin certificate), when the cluster runs TLS.
    pub client_tls: Option<Arc<ClientTls>>,
}

impl TestCluster {
    /// Starts `size` replicas: replica 1 bootstraps, the others join through it. Returns once
    /// every replica is a voter. `extra` flags go to every replica.
    pub async fn start(binary: &Path, size: u64, extra: &[&str]) -> TestCluster {
        Self::start_with(
            ClusterOptions {
                program: binary.to_path_buf(),
                extra: extra.iter().map(|s| s.to_string()).collect(),
                ..ClusterOptions::default()
            },
            size,
        )
        .await
    }

    /// Like [`TestCluster::start`] with full control over program, directory and ports.
    pub async fn start_with(options: ClusterOptions, size: u64) -> TestCluster {
        let mut cluster = Self::empty(options);
        cluster.spawn_new(1, &["--bootstrap".to_string()]);
        cluster.wait_for_voters(1).await;
        for id in 2..=size {
            cluster.add(id).await;
        }
        cluster
    }

    /// A cluster with no replicas yet, its files in `options.dir` or a temporary directory.
    fn empty(options: ClusterOptions) -> TestCluster {
        let dir = match &options.dir {
            Some(path) => {
                std::fs::create_dir_all(path).expect("creating the cluster directory");
                // Absolute: replicas run in it, so a relative path would point elsewhere.
                Dir::Kept(std::path::absolute(path).expect("an absolute cluster directory"))
            }
            None => Dir::Temp(tempfile::tempdir().expect("creating a temp dir")),
        };
        let client_tls = options
            .tls
            .as_ref()
            .map(|pki| pki.client("test-admin", &[Role::Admin]));
        TestCluster {
            replicas: Vec::new(),
            options,
            dir,
            client_tls,
        }
    }

    /// Starts replicas `1..=size` with no bootstrap or join flags (for backends where the
    /// group forms outside Ballast, such as `--backend etcd`) and waits until one leads.
    pub async fn start_unformed(options: ClusterOptions, size: u64) -> TestCluster {
        let mut cluster = Self::empty(options);
        for id in 1..=size {
            cluster.spawn_new(id, &[]);
        }
        cluster.leader().await;
        cluster
    }

    /// Starts a fresh replica `id` that joins through the running members, and waits until
    /// it is a voter.
    pub async fn add(&mut self, id: u64) {
        let voters = self.voter_count().await + 1;
        let token = self.join_token().await;
        self.spawn_joiner(id, &token);
        self.wait_for_voters(voters).await;
    }

    /// Starts a fresh replica `id` joining through the running members with `token` (none if
    /// empty), without waiting for the outcome.
    pub fn spawn_joiner(&mut self, id: u64, token: &str) {
        self.spawn_joiner_with(id, token, &[]);
    }

    /// [`TestCluster::spawn_joiner`] with extra flags (`--learner`).
    pub fn spawn_joiner_with(&mut self, id: u64, token: &str, extra: &[&str]) {
        let mut args = self.join_args(token);
        args.extend(extra.iter().map(|f| f.to_string()));
        self.spawn_new(id, &args);
    }

    /// `--join` through the running members, with `--join-token` unless `token` is empty.
    fn join_args(&self, token: &str) -> Vec<String> {
        let mut args = vec!["--join".to_string(), self.running_endpoints().join(",")];
        if !token.is_empty() {
            args.extend(["--join-token".to_string(), token.to_string()]);
        }
        args
    }

    fn spawn_new(&mut self, id: u64, role_args: &[String]) {
        let port = match self.options.base_port {
            Some(base) => base + (id as u16 - 1),
            None => free_port(),
        };
        let replica = Replica {
            id,
            az: self
                .options
                .azs
                .get(id as usize - 1)
                .cloned()
                .unwrap_or_else(|| az_of(id)),
            address: format!("127.0.0.1:{port}"),
            data_dir: self.dir.path().join(format!("replica-{id}")),
            // With fixed ports (the demo), the HTTP port is the client port + 1000.
            http_address: format!("127.0.0.1:{}", port_http(self.options.base_port, id)),
            child: None,
        };
        self.replicas.push(replica);
        let index = self.replicas.len() - 1;
        self.spawn(index, role_args);
    }

    fn spawn(&mut self, index: usize, role_args: &[String]) {
        self.spawn_with_env(index, role_args, &[]);
    }

    fn spawn_with_env(&mut self, index: usize, role_args: &[String], env: &[(&str, &str)]) {
        let replica = &self.replicas[index];
        let mut tls_args = match &self.options.tls {
            Some(pki) => {
                pki::tls_flags(&pki.issue(&format!("replica-{}", replica.id), &[Role::Peer]))
            }
            None => Vec::new(),
        };
        if self.options.faults {
            tls_args.push("--fault-rules".into());
            tls_args.push(self.fault_file(replica.id).display().to_string());
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("replica-{}.log", replica.id)))
            .expect("opening the replica log");
        let child = Command::new(&self.options.program)
            .args(&self.options.leading_args)
            .arg("--id")
            .arg(replica.id.to_string())
            .arg("--az")
            .arg(&replica.az)
            .arg("--listen")
            .arg(&replica.address)
            .arg("--data-dir")
            .arg(&replica.data_dir)
            .arg("--http-listen")
            .arg(&replica.http_address)
            .args(role_args)
            .args(tls_args)
            .args(&self.options.extra)
            .env("RUST_LOG", "info,openraft=warn,fjall=warn,lsm_tree=warn")
            .envs(env.iter().copied())
            // Anything a replica writes by a relative path lands in the test's own directory,
            // never in the source tree.
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("starting ballast-coord");
        self.replicas[index].child = Some(child);
    }

    fn index_of(&self, id: u64) -> usize {
        self.replicas
            .iter()
            .position(|r| r.id == id)
            .unwrap_or_else(|| panic!("no replica {id} in the test cluster"))
    }

    /// The replica with id `id`.
    pub fn replica(&self, id: u64) -> &Replica {
        &self.replicas[self.index_of(id)]
    }

    /// SIGKILLs replica `id` (no shutdown path runs).
    pub fn kill(&mut self, id: u64) {
        let index = self.index_of(id);
        process::kill(&mut self.replicas[index].child);
    }

    /// Sends replica `id` a SIGKILL and returns without waiting for it to die; [`Self::kill`]
    /// then reaps it. Several processes that must die at one moment get their signals first.
    pub fn send_kill(&self, id: u64) {
        self.signal(id, libc::SIGKILL);
    }

    /// Restarts a killed replica with only its identity flags: membership is on disk.
    pub fn restart(&mut self, id: u64) {
        let index = self.index_of(id);
        assert!(
            self.replicas[index].child.is_none(),
            "replica {id} is still running"
        );
        self.spawn(index, &[]);
    }

    fn fault_file(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("faults-{id}"))
    }

    /// Replaces replica `id`'s network fault rules (see `ballast_coordinator::faults`); the
    /// replica applies them within ~20 ms. Needs [`ClusterOptions::faults`].
    pub fn set_faults(&self, id: u64, rules: &str) {
        assert!(
            self.options.faults,
            "the cluster was started without fault rules"
        );
        let path = self.fault_file(id);
        let staging = path.with_extension("new");
        std::fs::write(&staging, rules).expect("writing fault rules");
        // A rename, so the replica never reads half a file.
        std::fs::rename(&staging, &path).expect("installing fault rules");
    }

    /// Stops replica `id` with SIGSTOP (a GC pause, a frozen VM): it keeps its sockets but
    /// answers nothing until [`TestCluster::resume`].
    pub fn pause(&self, id: u64) {
        self.signal(id, libc::SIGSTOP);
    }

    /// Continues a paused replica (SIGCONT).
    pub fn resume(&self, id: u64) {
        self.signal(id, libc::SIGCONT);
    }

    fn signal(&self, id: u64, signal: i32) {
        if let Some(pid) = self.replica(id).pid() {
            process::signal(pid, signal);
        }
    }

    /// Restarts a killed replica with extra flags (e.g. `--force-new-cluster`).
    pub fn restart_with(&mut self, id: u64, flags: &[&str]) {
        let index = self.index_of(id);
        assert!(
            self.replicas[index].child.is_none(),
            "replica {id} is still running"
        );
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        self.spawn(index, &flags);
    }

    /// Restarts a killed replica with extra flags and environment variables (for example
    /// `BALLAST_FAILPOINTS`, which makes it abort at a named point).
    pub fn restart_with_env(&mut self, id: u64, flags: &[&str], env: &[(&str, &str)]) {
        let index = self.index_of(id);
        assert!(
            self.replicas[index].child.is_none(),
            "replica {id} is still running"
        );
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        self.spawn_with_env(index, &flags, env);
    }

    /// Waits up to `limit` for replica `id`'s process to end on its own and returns how it
    /// ended (`None`: still running).
    pub async fn wait_for_exit(
        &mut self,
        id: u64,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let index = self.index_of(id);
        let deadline = Instant::now() + limit;
        loop {
            let child = self.replicas[index].child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.replicas[index].child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Replaces replica `id`'s data dir with a fresh one and starts it joining through the
    /// running members (how replicas come back after a restore); waits until it is a voter.
    pub async fn rejoin_fresh(&mut self, id: u64) {
        let voters = self.voter_count().await + 1;
        let token = self.join_token().await;
        self.spawn_fresh_rejoiner(id, &token);
        self.wait_for_voters(voters).await;
    }

    /// Replaces replica `id` by a fresh one (empty data dir) joining through the running
    /// members with `token`, without waiting for it to join: until it does, it serves an
    /// empty state.
    pub fn spawn_fresh_rejoiner(&mut self, id: u64, token: &str) {
        self.kill(id);
        let index = self.index_of(id);
        let dir = self.replicas[index].data_dir.clone();
        let _ = std::fs::remove_dir_all(&dir);
        let args = self.join_args(token);
        self.spawn(index, &args);
    }

    /// Forgets a replica entirely (after it was removed from the cluster).
    pub fn discard(&mut self, id: u64) {
        self.kill(id);
        let index = self.index_of(id);
        self.replicas.remove(index);
    }

    /// The directory holding data dirs and `replica-N.log` files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Concatenated process logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return out;
        };
        let mut logs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for path in logs {
            out.push_str(&format!("==== {} ====\n", path.display()));
            out.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            process::kill(&mut replica.child);
        }
        if std::thread::panicking() && matches!(self.dir, Dir::Temp(_)) {
            eprintln!("{}", self.logs());
        }
    }
}
