//! A running replica process: its settings ([`NodeConfig`]), how it starts ([`start`]: open
//! the data dir, start the log backend and the gRPC server), its identity in a cluster
//! ([`identity`]: bootstrap, join or restart, checked against the data dir) and the background
//! duties it runs ([`duties`]).

mod duties;
mod identity;
mod start;

pub use duties::QUIET_LOG_FLUSH_AFTER;
pub use start::start;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::dr::DrConfig;
use crate::log::Consensus;
use crate::log::etcd::EtcdBackendConfig;
use crate::log::member::NodeId;
use crate::log::raft::data_dir::DataDirError;
use crate::log::raft::read_lease::ReadPolicy;
use crate::replica::Replica;
use ballast_tls::TlsFiles;

/// Largest gRPC message a replica accepts or sends (bulk domain moves, snapshot chunks).
pub use ballast_protocol::client::MAX_MESSAGE_BYTES;

/// How far a restore or forced new cluster moves the revision past the archived one: more
/// writes than a cluster could have acknowledged after its last export at any realistic rate.
pub const RESTORE_BUMP: u64 = 1_000_000_000;

/// Everything a replica needs to start; built from `ballast-coord`'s flags.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Replica id, unique in the cluster, never reused for another data dir.
    pub id: NodeId,
    /// AZ label.
    pub az: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this replica (defaults to `listen`).
    pub advertise: Option<String>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Create a new cluster with this replica as its only voter (ignored once initialised).
    pub bootstrap: bool,
    /// Addresses of existing members to join through.
    pub join: Vec<String>,
    /// Join token presented when joining (`ballastctl cluster token create`).
    pub join_token: String,
    /// Stay a learner after joining (`--learner`).
    pub learner: bool,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout range.
    pub election_timeout: (Duration, Duration),
    /// How a leader makes its linearizable reads (ADR 0020).
    pub read_policy: ReadPolicy,
    /// Snapshot after this many entries since the last one.
    pub snapshot_entries: u64,
    /// Snapshot at least this often when anything was applied.
    pub snapshot_interval: Duration,
    /// Entries kept in the log behind a snapshot (for followers that lag slightly).
    pub logs_to_keep: u64,
    /// Lease given to shards that register without naming one.
    pub default_shard_lease: Duration,
    /// How often the leader looks for draining or expired shards to move work from
    /// (`None` disables the rebalancer).
    pub rebalance_interval: Option<Duration>,
    /// How lapsed shards are evacuated when many lapse together.
    pub evacuation: crate::disruption::EvacuationPolicy,
    /// How slices follow demand between live shards (`None`: they stay where put).
    pub slices: Option<crate::slice_placement::SlicePolicy>,
    /// Archive exports.
    pub dr: DrConfig,
    /// Rewrite the data dir into a new single-voter cluster before starting (quorum loss).
    pub force_new_cluster: bool,
    /// Which log orders the state machine.
    pub backend: Backend,
    /// Address of the HTTP port (metrics, health, status page); none to serve no HTTP.
    pub http_listen: Option<SocketAddr>,
    /// Mutual TLS on every port and every connection to peers (`None`: plain text).
    pub tls: Option<TlsFiles>,
    /// With TLS, let `/healthz` and `/readyz` answer callers without a client certificate.
    pub http_open_probes: bool,
    /// Test-only network faults toward peers, read from this file (`--fault-rules`).
    pub fault_rules: Option<PathBuf>,
    /// Member health thresholds and automatic removal of dead voters.
    pub autopilot: crate::autopilot::AutopilotConfig,
}

/// Which log orders the state machine: Ballast's own Raft group or an existing etcd.
#[derive(Clone, Debug, Default)]
pub enum Backend {
    /// openraft over fjall, replicated between ballast-coord replicas (the default).
    #[default]
    Raft,
    /// The log kept in an etcd cluster (`--backend etcd`).
    Etcd(EtcdBackendConfig),
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Flags are inconsistent or invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The data dir could not be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The data dir belongs to another replica or cluster.
    #[error("data dir {dir}: {reason}")]
    Identity {
        /// Data directory.
        dir: String,
        /// What does not match.
        reason: String,
    },
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The etcd backend could not reach etcd or read the group from it.
    #[error("etcd backend ({endpoints}): {reason}")]
    Etcd {
        /// etcd endpoints.
        endpoints: String,
        /// What failed.
        reason: String,
    },
    /// The process could not keep running (signal setup, server failure).
    #[error("{0}")]
    Runtime(String),
    /// Joining through the given addresses failed.
    #[error("joining through {through}: {reason}")]
    Join {
        /// Join addresses.
        through: String,
        /// Last failure.
        reason: String,
    },
}

/// A started replica: its shared handle, the server task and a way to stop both.
pub struct RunningNode {
    /// The replica (for embedding and tests).
    pub replica: Arc<Replica>,
    /// Address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
    /// Address of the HTTP port actually bound, if one was asked for.
    pub http_addr: Option<SocketAddr>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    stop: watch::Sender<bool>,
}

impl RunningNode {
    /// Stops serving and shuts Raft down.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        match &self.replica.consensus {
            Consensus::Raft(raft) => {
                let _ = raft.shutdown().await;
            }
            Consensus::Etcd(log) => log.shutdown().await,
        }
    }

    /// Waits until the server ends (it ends only on shutdown or a fatal server error).
    ///
    /// Also ends, with the reason, when the Raft core stops on a fatal error (a disk that
    /// cannot be written, a poisoned store): a replica that can no longer store what it
    /// acknowledges must exit, so the supervisor restarts it and operators see why, rather
    /// than linger answering every call with an error.
    pub async fn wait(&mut self) -> Result<(), String> {
        let core = async {
            match &self.replica.consensus {
                Consensus::Raft(raft) => {
                    let failed = raft
                        .wait(None)
                        .metrics(|m| m.running_state.is_err(), "Raft core failure")
                        .await;
                    match failed {
                        Ok(m) => m
                            .running_state
                            .err()
                            .map(|e| e.to_string())
                            .unwrap_or_default(),
                        Err(e) => e.to_string(),
                    }
                }
                Consensus::Etcd(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            served = &mut self.server => match served {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            reason = core => {
                tracing::error!(%reason, "the Raft core stopped; exiting");
                Err(format!("the Raft core stopped: {reason}"))
            }
        }
    }
}
