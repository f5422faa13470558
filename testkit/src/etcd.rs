//! A real etcd on loopback (Debian's `etcd-server`, installed by `.ci/etcd` if missing): the
//! peer for the side-by-side benchmarks and the store behind the etcd-backend tests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::ports::free_port_block;
use crate::process;

/// Installs etcd and etcdctl if missing (`.ci/etcd`) and returns the path of `etcdctl`.
pub fn install() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/etcd");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `etcd --version`'s first line, without its label.
pub fn version() -> String {
    Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.replace("etcd Version: ", ""))
        })
        .unwrap_or_default()
}

/// One etcd member: its flags (to start it again) and its process while running.
struct Member {
    args: Vec<String>,
    log: PathBuf,
    data_dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn spawn(&mut self) -> std::io::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        self.child = Some(
            Command::new("etcd")
                .args(&self.args)
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        Ok(())
    }
}

/// An etcd cluster of one or more members on loopback (fsync on, default settings), killed
/// when dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// Client endpoints (`127.0.0.1:port`), one per member.
    pub endpoints: Vec<String>,
}

impl EtcdCluster {
    /// Installs etcd if needed and starts `size` members keeping data and logs under `dir`.
    pub fn start(dir: &Path, size: u16) -> std::io::Result<EtcdCluster> {
        Self::start_with(dir, size, &[])
    }

    /// Like [`EtcdCluster::start`], with `extra` flags for every member (say,
    /// `--heartbeat-interval 50`). Clusters started this way under different `dir`s are
    /// independent of one another.
    pub fn start_with(dir: &Path, size: u16, extra: &[&str]) -> std::io::Result<EtcdCluster> {
        install();
        std::fs::create_dir_all(dir)?;
        let base = free_port_block(size * 2);
        let peer = |i: u16| format!("http://127.0.0.1:{}", base + size + i);
        let initial: Vec<String> = (0..size).map(|i| format!("e{i}={}", peer(i))).collect();
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            endpoints: Vec::new(),
        };
        for i in 0..size {
            let client = format!("http://127.0.0.1:{}", base + i);
            let data_dir = dir.join(format!("etcd-{i}"));
            let args = [
                "--name",
                &format!("e{i}"),
                "--data-dir",
                &data_dir.display().to_string(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer(i),
                "--initial-advertise-peer-urls",
                &peer(i),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &format!("ballast-test-{base}"),
            ]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
            let mut member = Member {
                args,
                log: dir.join(format!("etcd-{i}.log")),
                data_dir,
                child: None,
            };
            member.spawn()?;
            cluster.members.push(member);
            cluster.endpoints.push(format!("127.0.0.1:{}", base + i));
        }
        Ok(cluster)
    }

    /// Process ids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// Whether member `index` runs (it was not killed, or was restarted since).
    pub fn is_running(&self, index: usize) -> bool {
        self.members[index].child.is_some()
    }

    /// Data directories of the members.
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        self.members.iter().map(|m| m.data_dir.clone()).collect()
    }

    /// SIGKILLs member `index`.
    pub fn kill(&mut self, index: usize) {
        process::kill(&mut self.members[index].child);
    }

    /// Starts killed member `index` again from its data dir (its membership is on disk; the
    /// bootstrap flags are ignored then).
    pub fn restart(&mut self, index: usize) -> std::io::Result<()> {
        assert!(
            self.members[index].child.is_none(),
            "etcd member {index} still runs"
        );
        self.members[index].spawn()
    }

    /// Index of the member that leads, as the running members report it (Maintenance.Status).
    pub async fn leader(&self) -> Option<usize> {
        use ballast_protocol::etcdserverpb::StatusRequest;
        use ballast_protocol::etcdserverpb::maintenance_client::MaintenanceClient;
        let mut ids = Vec::new();
        let mut leader = None;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if self.members[i].child.is_none() {
                ids.push(None);
                continue;
            }
            let status = async {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
                    .ok()?
                    .connect_timeout(std::time::Duration::from_millis(500))
                    .timeout(std::time::Duration::from_millis(500))
                    .connect()
                    .await
                    .ok()?;
                MaintenanceClient::new(channel)
                    .status(StatusRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            }
            .await;
            ids.push(
                status
                    .as_ref()
                    .and_then(|s| s.header.as_ref())
                    .map(|h| h.member_id),
            );
            if let Some(s) = status
                && s.leader != 0
            {
                leader = Some(s.leader);
            }
        }
        let leader = leader?;
        ids.iter().position(|id| *id == Some(leader))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
