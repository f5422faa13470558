//! Harness for tests that run real `ballast-coord` processes on loopback: free ports, data
//! dirs, bootstrap/join, SIGKILL, restart and waiting for conditions. Every test that starts
//! processes uses this one harness instead of rolling its own; the demo and the benchmarks
//! launch their clusters with it too.

pub mod deps;
pub mod etcd;
pub mod fleet;
pub mod pki;
mod s3;
pub mod svg;

pub use pki::TestPki;
pub use s3::S3Server;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ballast_protocol::client::{BallastClient, ClientConfig};
use ballast_protocol::pb;
use ballast_protocol::pb::cluster_client::ClusterClient;
use ballast_protocol::pb::shard_worker_client::ShardWorkerClient;
use ballast_tls::{ClientTls, Role};

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

/// A base port for a cluster started with `base_port`: replica N's client port is
/// base + N - 1 and its HTTP port base + 1000 + N - 1, and both blocks are free now.
pub fn free_base_port(replicas: u16) -> u16 {
    loop {
        let base = free_port_block(replicas);
        if (0..replicas).all(|i| {
            TcpListener::bind(("127.0.0.1", port_http(Some(base), u64::from(i) + 1))).is_ok()
        }) {
            return base;
        }
    }
}

/// A loopback port nobody listens on right now (see [`free_port_block`]).
pub fn free_port() -> u16 {
    free_port_block(1)
}

/// The first of `count` consecutive loopback ports that are free now. Ports come from below
/// the kernel's ephemeral range (32768+), so outgoing connections cannot grab them between
/// this check and the process that binds them, and from a per-process cursor, so tests running
/// in parallel threads never get the same port.
pub fn free_port_block(count: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = (std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0))
        % SPAN;
    let _ = NEXT.compare_exchange(0, seed + 1, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..2_000 {
        let offset = NEXT.fetch_add(count as u32, Ordering::SeqCst) % SPAN;
        let base = (LOW + offset) as u16;
        if u32::from(base) + u32::from(count) > LOW + SPAN {
            continue;
        }
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no block of {count} free loopback ports between 20000 and 32000");
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
    options: ClusterOptions,
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
        let mut args = vec!["--join".to_string(), self.running_endpoints().join(",")];
        if !token.is_empty() {
            args.extend(["--join-token".to_string(), token.to_string()]);
        }
        self.spawn_new(id, &args);
    }

    /// A fresh single-use join token from the cluster.
    pub async fn join_token(&self) -> String {
        self.client()
            .cluster(|mut c, req| async move {
                c.create_join_token(req.wrap(pb::CreateJoinTokenRequest { ttl_seconds: 600 }))
                    .await
            })
            .await
            .expect("creating a join token")
            .token
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
        if let Some(mut child) = self.replicas[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
            // SAFETY: kill(2) on a child process we own; no memory is shared.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// Replica `id`'s own applied state as text — revision, domains, shards, quotas and the
    /// KV keys under `kv_prefix` — read without going to the leader, for comparing replicas.
    pub async fn state_of(&self, id: u64, kv_prefix: &str) -> Result<String, tonic::Status> {
        let stale = Some(pb::ReadOptions { stale: true });
        let mut fleet = pb::fleet_client::FleetClient::new(self.channel(id));
        let domains = fleet
            .list_domains(pb::ListDomainsRequest {
                options: stale,
                shard: String::new(),
                after: String::new(),
                limit: 10_000,
            })
            .await?
            .into_inner();
        let shards = fleet
            .list_shards(pb::ListShardsRequest { options: stale })
            .await?
            .into_inner();
        let quotas = fleet
            .list_quotas(pb::ListQuotasRequest { options: stale })
            .await?
            .into_inner();
        let kv = ballast_protocol::etcdserverpb::kv_client::KvClient::new(self.channel(id))
            .max_decoding_message_size(ballast_protocol::client::MAX_MESSAGE_BYTES)
            .range(ballast_protocol::etcdserverpb::RangeRequest {
                // An empty prefix means every key: etcd's "\0" to "\0".
                key: if kv_prefix.is_empty() {
                    vec![0]
                } else {
                    kv_prefix.as_bytes().to_vec()
                },
                range_end: ballast_protocol::coordination::prefix_end(kv_prefix.as_bytes()),
                serializable: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        let revision = domains.header.as_ref().map_or(0, |h| h.revision);
        let shards: Vec<(String, String)> = shards
            .shards
            .iter()
            .map(|s| (s.id.clone(), s.status.clone()))
            .collect();
        let quotas: Vec<String> = quotas.quotas.iter().map(|q| format!("{q:?}")).collect();
        let kvs: Vec<(String, String, i64)> = kv
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).to_string(),
                    String::from_utf8_lossy(&kv.value).to_string(),
                    kv.mod_revision,
                )
            })
            .collect();
        let domains: Vec<(String, String)> = domains
            .domains
            .iter()
            .map(|d| (d.domain.clone(), d.shard.clone()))
            .collect();
        Ok(format!(
            "revision {revision}\n{domains:?}\n{shards:?}\n{quotas:?}\n{kvs:?}"
        ))
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
        self.kill(id);
        let index = self.index_of(id);
        let dir = self.replicas[index].data_dir.clone();
        let _ = std::fs::remove_dir_all(&dir);
        let join = self.running_endpoints().join(",");
        let voters = self.voter_count().await + 1;
        let token = self.join_token().await;
        self.spawn(
            index,
            &[
                "--join".to_string(),
                join,
                "--join-token".to_string(),
                token,
            ],
        );
        self.wait_for_voters(voters).await;
    }

    /// Forgets a replica entirely (after it was removed from the cluster).
    pub fn discard(&mut self, id: u64) {
        self.kill(id);
        let index = self.index_of(id);
        self.replicas.remove(index);
    }

    /// Addresses of the replicas the harness believes are running.
    pub fn running_endpoints(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|r| r.is_running())
            .map(|r| r.address.clone())
            .collect()
    }

    /// Addresses of every replica, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.address.clone()).collect()
    }

    /// A leader-aware client over every replica.
    pub fn client(&self) -> BallastClient {
        let mut config = ClientConfig::new(self.endpoints());
        config.tls = self.client_tls.clone();
        BallastClient::new(config).expect("building a client")
    }

    /// A lazily connected channel to replica `id` (over the cluster's TLS, if any).
    pub fn channel(&self, id: u64) -> tonic::transport::Channel {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.replica(id).address))
                .expect("replica addresses are valid URIs")
                .connect_timeout(Duration::from_secs(2));
        ballast_tls::client::lazy_channel(endpoint, self.client_tls.as_ref())
    }

    /// A client that talks to replica `id` only.
    pub fn client_of(&self, id: u64) -> BallastClient {
        let mut config = ClientConfig::new(vec![self.replica(id).address.clone()]);
        config.retry_budget = Duration::from_secs(10);
        config.tls = self.client_tls.clone();
        BallastClient::new(config).expect("building a client")
    }

    /// Status as replica `id` sees it (no retries beyond its own endpoint).
    pub async fn status(&self, id: u64) -> Option<pb::StatusResponse> {
        let mut client = ClusterClient::new(self.channel(id));
        client
            .status(pb::StatusRequest {
                options: Some(pb::ReadOptions { stale: true }),
            })
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// The leader id agreed by a running replica, waiting up to 20 s for one.
    pub async fn leader(&self) -> u64 {
        let ids: Vec<u64> = self
            .replicas
            .iter()
            .filter(|r| r.is_running())
            .map(|r| r.id)
            .collect();
        wait_for("a leader", Duration::from_secs(20), || async {
            for id in &ids {
                if let Some(status) = self.status(*id).await
                    && status.state == "leader"
                {
                    return Some(*id);
                }
            }
            None
        })
        .await
    }

    async fn voter_count(&self) -> usize {
        let leader = self.leader().await;
        self.status(leader)
            .await
            .map(|s| s.members.iter().filter(|m| m.role == "voter").count())
            .unwrap_or(0)
    }

    /// Waits until the leader reports `count` voters and no membership change in flight:
    /// until the change is committed, killing a voter of the old configuration can stall it.
    pub async fn wait_for_voters(&self, count: usize) {
        wait_for(
            &format!("{count} voters"),
            Duration::from_secs(30),
            || async {
                let leader = self.leader().await;
                let status = self.status(leader).await?;
                let voters = status.members.iter().filter(|m| m.role == "voter").count();
                (voters == count && !status.membership_changing).then_some(())
            },
        )
        .await
    }

    /// Waits until replica `id` has applied at least fleet revision `revision`.
    pub async fn wait_for_revision(&self, id: u64, revision: u64) {
        wait_for(
            &format!("replica {id} at revision {revision}"),
            Duration::from_secs(30),
            || async {
                let status = self.status(id).await?;
                (status.header?.revision >= revision).then_some(())
            },
        )
        .await
    }

    /// Waits until every running replica has applied at least `revision`.
    pub async fn wait_until_converged(&self, revision: u64) {
        let running: Vec<u64> = self
            .replicas
            .iter()
            .filter(|r| r.is_running())
            .map(|r| r.id)
            .collect();
        for id in running {
            self.wait_for_revision(id, revision).await;
        }
    }

    /// Waits until `count` shards are registered.
    pub async fn wait_for_shards(&self, count: usize) {
        self.wait_for_shards_within(count, Duration::from_secs(30))
            .await
    }

    /// Waits up to `limit` until `count` shards are registered.
    pub async fn wait_for_shards_within(&self, count: usize, limit: Duration) {
        let client = self.client();
        wait_for(&format!("{count} registered shards"), limit, || async {
            let listed = client
                .fleet(|mut c, req| async move {
                    c.list_shards(req.wrap(pb::ListShardsRequest { options: None }))
                        .await
                })
                .await
                .ok()?;
            (listed.shards.len() == count).then_some(())
        })
        .await
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

/// Resident set size of a process in bytes (Linux `/proc`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// The file-backed part of a process's RSS in bytes: its program's code and read-only data,
/// shared by every process running the same binary and dropped by the kernel under pressure.
pub fn rss_file_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "RssFile:")
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Assigns `domain` to `shard` (moving it from another shard only with `allow_move`) and
/// returns the revision of the write; panics if the cluster refuses.
pub async fn assign_domain(
    client: &BallastClient,
    domain: &str,
    shard: &str,
    allow_move: bool,
) -> u64 {
    client
        .write(pb::Command {
            command: Some(pb::command::Command::AssignDomains(pb::AssignDomains {
                assignments: vec![pb::DomainAssignment {
                    domain: domain.into(),
                    shard: shard.into(),
                }],
                allow_move,
            })),
        })
        .await
        .unwrap_or_else(|e| panic!("assigning {domain} to {shard}: {e}"))
        .header
        .expect("header")
        .revision
}

/// Machines a shard reports as assigned to demand.
pub fn assigned_machines(status: &pb::ShardStatusResponse) -> u64 {
    status
        .machines_by_state
        .get("assigned")
        .copied()
        .unwrap_or(0)
}

/// A shard worker process (possibly stopped), killed when dropped.
pub struct ShardProcess {
    /// Shard id.
    pub id: String,
    /// AZ label.
    pub az: String,
    /// `127.0.0.1:port` of its status API.
    pub address: String,
    /// Its cache directory.
    pub data_dir: PathBuf,
    /// `127.0.0.1:port` of its HTTP port (metrics, probes).
    pub http_address: String,
    program: PathBuf,
    leading_args: Vec<String>,
    coordinators: Vec<String>,
    extra: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// TLS of calls to this worker (an admin certificate), when the cluster runs TLS.
    pub client_tls: Option<Arc<ClientTls>>,
}

impl ShardProcess {
    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the shard log");
        let child = Command::new(&self.program)
            .args(&self.leading_args)
            .arg("--id")
            .arg(&self.id)
            .arg("--az")
            .arg(&self.az)
            .arg("--coordinators")
            .arg(self.coordinators.join(","))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&self.address)
            .arg("--http-listen")
            .arg(&self.http_address)
            .args(&self.extra)
            .env("RUST_LOG", "info,fjall=warn,lsm_tree=warn")
            .current_dir(self.data_dir.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("starting the shard worker");
        self.child = Some(child);
    }

    /// SIGKILLs the shard.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the shard with SIGSTOP (a frozen process or VM) until [`ShardProcess::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Continues a paused shard (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on a child process we own; no memory is shared.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// The shard's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the shard again with the same flags (it resumes from its cache).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "shard {} is still running", self.id);
        self.spawn();
    }

    /// A lazily connected client of the worker's gRPC port.
    pub fn client(&self) -> ShardWorkerClient<tonic::transport::Channel> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.address))
            .expect("shard addresses are valid URIs")
            .connect_timeout(Duration::from_secs(2));
        ShardWorkerClient::new(ballast_tls::client::lazy_channel(
            endpoint,
            self.client_tls.as_ref(),
        ))
    }

    /// The shard's own view of its assignments, if it answers.
    pub async fn status(&self) -> Option<pb::ShardStatusResponse> {
        let mut client = self.client();
        client
            .status(pb::ShardStatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Replaces `cluster`'s demand with one row ("web") of `count` machines of `resources`.
    pub async fn submit_demand(
        &self,
        cluster: &str,
        count: u32,
        resources: pb::ResourceSpec,
    ) -> Result<(), tonic::Status> {
        let mut client = self.client();
        client
            .submit_demand(pb::SubmitDemandRequest {
                cluster: cluster.to_string(),
                rows: vec![pb::DemandRow {
                    id: "web".into(),
                    count,
                    resources: Some(resources),
                    priority: 0,
                    az: String::new(),
                    domain: String::new(),
                }],
            })
            .await
            .map(|_| ())
    }

    /// Waits until the shard's status satisfies `check`.
    pub async fn wait_until(
        &self,
        what: &str,
        check: impl Fn(&pb::ShardStatusResponse) -> bool,
    ) -> pb::ShardStatusResponse {
        wait_for(
            &format!("shard {}: {what}", self.id),
            Duration::from_secs(30),
            || async {
                let status = self.status().await?;
                check(&status).then_some(status)
            },
        )
        .await
    }
}

impl Drop for ShardProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestCluster {
    /// Starts a shard worker that talks to every replica of this cluster. `program` and
    /// `leading_args` run the worker (e.g. `ballast-sim` with `["shard"]`).
    pub fn spawn_shard(
        &self,
        program: &Path,
        leading_args: &[&str],
        id: &str,
        az: &str,
        extra: &[&str],
    ) -> ShardProcess {
        let mut shard = ShardProcess {
            id: id.to_string(),
            az: az.to_string(),
            address: format!("127.0.0.1:{}", free_port()),
            data_dir: self.dir.path().join(format!("shard-{id}")),
            http_address: format!("127.0.0.1:{}", free_port()),
            program: program.to_path_buf(),
            leading_args: leading_args.iter().map(|s| s.to_string()).collect(),
            coordinators: self.endpoints(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: self.dir.path().join(format!("shard-{id}.log")),
            child: None,
            client_tls: self.client_tls.clone(),
        };
        if let Some(pki) = &self.options.tls {
            let files = pki.issue(&format!("shard-{id}"), &[Role::Shard(id.to_string())]);
            shard.extra.splice(0..0, pki::tls_flags(&files));
        }
        shard.spawn();
        shard
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            if let Some(mut child) = replica.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() && matches!(self.dir, Dir::Temp(_)) {
            eprintln!("{}", self.logs());
        }
    }
}

/// Polls `probe` every 50 ms until it yields a value; panics with `what` after `limit`.
/// The limits are generous on purpose: they bound a hung test, they do not measure speed.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if started.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn port_http(base_port: Option<u16>, id: u64) -> u16 {
    match base_port {
        Some(base) => base + 1000 + (id as u16 - 1),
        None => free_port(),
    }
}

/// A plain HTTP/1.1 GET on loopback: status code and body (for the metrics, probe and status
/// endpoints). `None` when nothing answers.
pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(get_request(address, path).as_bytes())
        .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    parse_response(&raw)
}

/// [`http_get`] over TLS with `tls`'s certificate (or none). `None` when the connection or the
/// handshake fails.
pub async fn https_get(address: &str, path: &str, tls: &ClientTls) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, port) = address.rsplit_once(':')?;
    let exchange = async {
        let mut stream = tls.connect(host, port.parse().ok()?).await.ok()?;
        stream
            .write_all(get_request(address, path).as_bytes())
            .await
            .ok()?;
        let mut raw = Vec::new();
        // A peer that closes without close_notify still delivered the whole answer.
        let _ = stream.read_to_end(&mut raw).await;
        parse_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

fn get_request(address: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
}

fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Some((status, String::from_utf8_lossy(&body).to_string()))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let rest = &body[end + 2..];
        match size {
            Some(size) if size > 0 && rest.len() >= size => {
                out.extend_from_slice(&rest[..size]);
                body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
            }
            _ => break,
        }
    }
    out
}

/// The cluster's current revision, read linearizably through `client`.
pub async fn current_revision(client: &BallastClient) -> u64 {
    client
        .fleet(|mut c, req| async move {
            c.list_shards(req.wrap(pb::ListShardsRequest { options: None }))
                .await
        })
        .await
        .expect("listing shards")
        .header
        .expect("header")
        .revision
}

/// The value of one sample (`name{labels} value`) in a Prometheus text page.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
