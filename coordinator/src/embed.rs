//! Running a coordinator replica inside another program: the same binary serves its own work
//! and, in coordinator mode, the fleet state and the coordination KV — one replica for a solo
//! deploy or a laptop, three or five for HA, each started the way `ballast-coord` is.
//!
//! ```no_run
//! # async fn run() -> Result<(), ballast_coordinator::NodeError> {
//! use ballast_coordinator::Coordinator;
//!
//! let coordinator = Coordinator::builder()
//!     .id(1)
//!     .az("az-a")
//!     .listen("127.0.0.1:7701")
//!     .data_dir("/var/lib/myapp/coordinator")
//!     .bootstrap()
//!     .start()
//!     .await?;
//! coordinator.ready(std::time::Duration::from_secs(10)).await?;
//! let revision = coordinator.client().revision().await;
//! coordinator.shutdown().await;
//! # let _ = revision;
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ballast_protocol::client::{BallastClient, ClientConfig};
use clap::Parser;

use crate::config::CoordArgs;
use crate::node::{NodeError, RunningNode};

/// Settings of an embedded replica: the same settings as `ballast-coord`'s flags (one
/// source of truth, checked the same way), set one by one or passed as flags.
#[derive(Clone, Debug, Default)]
pub struct CoordinatorBuilder {
    flags: Vec<OsString>,
}

impl CoordinatorBuilder {
    fn set(mut self, flag: &str, value: impl Into<OsString>) -> Self {
        self.flags.push(flag.into());
        self.flags.push(value.into());
        self
    }

    /// Replica id (`--id`), unique within the cluster.
    pub fn id(self, id: u64) -> Self {
        self.set("--id", id.to_string())
    }

    /// Availability-zone label (`--az`).
    pub fn az(self, az: &str) -> Self {
        self.set("--az", az)
    }

    /// Address serving the client API and Raft traffic (`--listen`; port 0 picks one).
    pub fn listen(self, address: &str) -> Self {
        self.set("--listen", address)
    }

    /// Data directory (`--data-dir`).
    pub fn data_dir(self, dir: impl AsRef<Path>) -> Self {
        self.set("--data-dir", dir.as_ref().as_os_str())
    }

    /// Create a new cluster with this replica as its first voter (`--bootstrap`; ignored once
    /// the data dir is initialised).
    pub fn bootstrap(mut self) -> Self {
        self.flags.push("--bootstrap".into());
        self
    }

    /// Join the cluster through these members with a single-use token (`--join`,
    /// `--join-token`).
    pub fn join(self, members: &[String], token: &str) -> Self {
        self.set("--join", members.join(","))
            .set("--join-token", token)
    }

    /// Any other `ballast-coord` flag with its value (`--snapshot-entries`, `--http-listen`,
    /// `--dr-destination`, ...); `ballast-coord --help` lists them.
    pub fn flag(self, flag: &str, value: &str) -> Self {
        self.set(flag, value)
    }

    /// Starts the replica: opens the data dir, settles its identity (bootstrap, join or
    /// restart) and serves. Settings are checked first, exactly as the flags are.
    pub async fn start(self) -> Result<Coordinator, NodeError> {
        let flags = std::iter::once(OsString::from("ballast-coord")).chain(self.flags);
        let args =
            CoordArgs::try_parse_from(flags).map_err(|e| NodeError::Config(e.to_string()))?;
        let node = crate::node::start(args.into_config()?).await?;
        let address = node.local_addr;
        let client = BallastClient::new(ClientConfig::new(vec![address.to_string()]))
            .map_err(|e| NodeError::Config(e.to_string()))?;
        Ok(Coordinator {
            node,
            client,
            address,
        })
    }
}

/// A replica running inside this process.
pub struct Coordinator {
    node: RunningNode,
    client: BallastClient,
    address: SocketAddr,
}

impl Coordinator {
    /// Settings for a replica to embed.
    pub fn builder() -> CoordinatorBuilder {
        CoordinatorBuilder::default()
    }

    /// A client of the fleet API that starts at this replica and follows the leader (writes
    /// are forwarded, reads linearizable unless asked stale). The coordination KV speaks
    /// etcd's v3 API on [`Coordinator::address`]: any etcd client library reaches it there.
    pub fn client(&self) -> &BallastClient {
        &self.client
    }

    /// The address the replica serves on (its client API, etcd's API and Raft).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The HTTP port (metrics, probes, status page), if one was asked for (`--http-listen`).
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.node.http_addr
    }

    /// Whether this replica leads its group now (with a majority heard from).
    pub fn is_leader(&self) -> bool {
        self.node.replica.is_leader()
    }

    /// Waits until the group has a leader and this replica answers a linearizable read: it
    /// serves what every acknowledged write wrote.
    pub async fn ready(&self, limit: Duration) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let attempt = async {
                self.node
                    .replica
                    .leader()
                    .ok_or("no leader yet".to_string())?;
                self.node
                    .replica
                    .linearize()
                    .await
                    .map_err(|e| e.to_string())
            };
            let last = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(reason)) => reason,
                Err(_) => "a linearizable read did not finish".to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Runtime(format!(
                    "replica at {} not ready within {limit:?}: {last}",
                    self.address
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops serving, lets the log backend shut down, and returns when both have.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
    }
}
