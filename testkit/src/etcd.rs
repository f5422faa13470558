//! A real etcd on loopback (Debian's `etcd-server`, installed by `.ci/etcd` if missing): the
//! peer for the side-by-side benchmarks and the store behind the etcd-backend tests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::free_port_block;

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

/// An etcd cluster of one or more members on loopback (fsync on, default settings), killed
/// when dropped.
pub struct EtcdCluster {
    members: Vec<Child>,
    /// Client endpoints (`127.0.0.1:port`), one per member.
    pub endpoints: Vec<String>,
}

impl EtcdCluster {
    /// Installs etcd if needed and starts `size` members keeping data and logs under `dir`.
    pub fn start(dir: &Path, size: u16) -> std::io::Result<EtcdCluster> {
        install();
        let base = free_port_block(size * 2);
        let peer = |i: u16| format!("http://127.0.0.1:{}", base + size + i);
        let initial: Vec<String> = (0..size).map(|i| format!("e{i}={}", peer(i))).collect();
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            endpoints: Vec::new(),
        };
        for i in 0..size {
            let client = format!("http://127.0.0.1:{}", base + i);
            let log = File::create(dir.join(format!("etcd-{i}.log")))?;
            let child = Command::new("etcd")
                .args([
                    "--name",
                    &format!("e{i}"),
                    "--data-dir",
                    &dir.join(format!("etcd-{i}")).display().to_string(),
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
                    "ballast-test",
                ])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            cluster.members.push(child);
            cluster.endpoints.push(format!("127.0.0.1:{}", base + i));
        }
        Ok(cluster)
    }

    /// Process ids of the members.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.id()).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}
