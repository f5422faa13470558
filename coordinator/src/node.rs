//! Starting a replica: open the data dir, settle the cluster identity (bootstrap, join or
//! restart), start openraft and the gRPC server, and run the background duties.

use ballast_protocol::etcdserverpb::{
    cluster_server as etcd_cluster, kv_server as etcd_kv, lease_server as etcd_lease,
    maintenance_server as etcd_maintenance, watch_server as etcd_watch,
};

use crate::service::etcd::EtcdApi;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::client::{BallastClient, ClientConfig};
use ballast_protocol::pb;
use ballast_protocol::pb::assignments_server::AssignmentsServer;
use ballast_protocol::pb::cluster_server::ClusterServer;
use ballast_protocol::pb::fleet_server::FleetServer;
use ballast_protocol::pb::raft_server::RaftServer;
use ballast_protocol::validate::{validate_address, validate_id};
use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::dr::{DrConfig, DrExporter};
use crate::faults::FaultRules;
use crate::log::Consensus;
use crate::log::applied::SharedState;
use crate::log::etcd::{EtcdBackendConfig, EtcdLog, EtcdLogError};
use crate::log::member::{NodeId, ReplicaNode};
use crate::log::raft::log_store::LogStore;
use crate::log::raft::network::{PeerContacts, PeerDialer, PeerNetwork};
use crate::log::raft::presence::PresenceWatch;
use crate::log::raft::state_machine::StateMachineStore;
use crate::log::raft::store::{
    META_CLUSTER_ID, META_NODE_ID, META_UNFINISHED_REWRITE, Store, StoreError,
};
use crate::log::raft::types::Raft;
use crate::replica::{Replica, ReplicaParts, Timing};
use crate::security::Security;
use crate::service::assignments::AssignmentsService;
use crate::service::cluster::ClusterService;
use crate::service::fleet::FleetService;
use crate::service::raft::RaftService;
use ballast_tls::{ClientTls, ServerTls, TlsFiles};

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
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout range.
    pub election_timeout: (Duration, Duration),
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
    Store(#[from] StoreError),
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

fn raft_config(config: &NodeConfig, cluster_id: &str) -> Result<Config, NodeError> {
    let (min, max) = config.election_timeout;
    Config {
        cluster_name: cluster_id.to_string(),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        election_timeout_min: min.as_millis() as u64,
        election_timeout_max: max.as_millis() as u64,
        install_snapshot_timeout: 5_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_entries),
        max_in_snapshot_log_to_keep: config.logs_to_keep,
        purge_batch_size: 64,
        max_payload_entries: 256,
        snapshot_max_chunk_size: 3 * 1024 * 1024,
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Config(e.to_string()))
}

/// Refuses a data dir a crash left halfway through a restore or `--force-new-cluster`.
fn check_finished_rewrite(config: &NodeConfig, store: &Store) -> Result<(), NodeError> {
    match store.read_meta::<String>(META_UNFINISHED_REWRITE)? {
        Some(what) => Err(NodeError::Identity {
            dir: config.data_dir.display().to_string(),
            reason: format!(
                "it holds an interrupted {what}, so its contents are incomplete; restore it \
                 again (`ballastctl dr restore --force ...`), or delete it and join the cluster \
                 with a fresh data dir"
            ),
        }),
        None => Ok(()),
    }
}

/// Refuses a data dir that belongs to another replica id.
fn check_replica_id(config: &NodeConfig, store: &Store) -> Result<(), NodeError> {
    match store.read_meta::<NodeId>(META_NODE_ID)? {
        Some(stored) if stored != config.id => Err(NodeError::Identity {
            dir: config.data_dir.display().to_string(),
            reason: format!("it holds replica {stored}, not replica {}", config.id),
        }),
        _ => Ok(()),
    }
}

/// Records this replica's id and its cluster id in a fresh data dir.
fn stamp_identity(config: &NodeConfig, store: &Store, cluster_id: &str) -> Result<(), NodeError> {
    store.write_meta(META_NODE_ID, &config.id, false)?;
    store.write_meta(META_CLUSTER_ID, &cluster_id, true)?;
    Ok(())
}

/// Settles which cluster this data dir belongs to, creating or learning the id as needed.
async fn cluster_identity(
    config: &NodeConfig,
    store: &Store,
    tls: Option<Arc<ClientTls>>,
) -> Result<String, NodeError> {
    check_replica_id(config, store)?;
    let dir = config.data_dir.display().to_string();
    if let Some(id) = store.read_meta::<String>(META_CLUSTER_ID)? {
        return Ok(id);
    }
    let cluster_id = if config.bootstrap {
        uuid::Uuid::new_v4().to_string()
    } else if !config.join.is_empty() {
        learn_cluster_id(&config.join, tls).await?
    } else {
        return Err(NodeError::Config(format!(
            "data dir {dir} is empty: pass --bootstrap to start a new cluster or --join ADDR to join one"
        )));
    };
    stamp_identity(config, store, &cluster_id)?;
    Ok(cluster_id)
}

async fn learn_cluster_id(
    join: &[String],
    tls: Option<Arc<ClientTls>>,
) -> Result<String, NodeError> {
    let mut client_config = ClientConfig::new(join.to_vec());
    client_config.tls = tls;
    client_config.retry_budget = Duration::from_secs(60);
    let client = BallastClient::new(client_config).map_err(|e| NodeError::Join {
        through: join.join(","),
        reason: e.to_string(),
    })?;
    let status = client
        .cluster(|mut c, req| async move {
            c.status(req.wrap(pb::StatusRequest { options: None }))
                .await
        })
        .await
        .map_err(|e| NodeError::Join {
            through: join.join(","),
            reason: e.to_string(),
        })?;
    status
        .header
        .map(|h| h.cluster_id)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| NodeError::Join {
            through: join.join(","),
            reason: "the answer carried no cluster id".into(),
        })
}

/// Starts a replica and returns once it serves.
pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeError> {
    if config.id == 0 {
        return Err(NodeError::Config("--id must be at least 1".into()));
    }
    validate_id("az", &config.az).map_err(|e| NodeError::Config(e.to_string()))?;
    // Unusable TLS files are a start-up error, before anything is bound or created.
    let security = match &config.tls {
        Some(files) => {
            let load = files
                .require_role(&ballast_tls::Role::Peer)
                .and_then(|()| Security::load(files));
            Some(load.map_err(|e| NodeError::Config(e.to_string()))?)
        }
        None => None,
    };
    let client_tls = security.as_ref().map(|s| s.client.clone());
    let faults = config
        .fault_rules
        .clone()
        .map(|path| Arc::new(FaultRules::new(path)));
    std::fs::create_dir_all(&config.data_dir).map_err(|e| NodeError::Identity {
        dir: config.data_dir.display().to_string(),
        reason: format!("cannot create it: {e}"),
    })?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| NodeError::Listen {
        addr: config.listen,
        source,
    })?;
    // Port 0 binds an ephemeral port; peers must be told the real one.
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| local_addr.to_string());
    validate_address("advertise", &advertise).map_err(|e| NodeError::Config(e.to_string()))?;
    let http_listener = match config.http_listen {
        Some(addr) => Some(
            crate::observe::bind(addr)
                .await
                .map_err(|source| NodeError::Listen { addr, source })?,
        ),
        None => None,
    };
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    let store = Store::open(&config.data_dir)?;
    check_finished_rewrite(&config, &store)?;
    let node = ReplicaNode {
        address: advertise,
        az: config.az.clone(),
    };
    let (stop, stopped) = watch::channel(false);
    let peer_contacts = PeerContacts::default();
    let (consensus, shared, cluster_id) = match &config.backend {
        Backend::Raft => {
            let peers = (peer_contacts.clone(), client_tls.clone(), faults.clone());
            start_raft(&config, &store, &node, peers).await?
        }
        Backend::Etcd(etcd) => start_etcd(&config, etcd, &store, &node, stopped.clone()).await?,
    };
    let replica = Arc::new(Replica::new(
        config.id,
        node.clone(),
        cluster_id.clone(),
        consensus,
        shared,
        store,
        ReplicaParts {
            timing: Timing {
                heartbeat: config.heartbeat,
                election_timeout_max: config.election_timeout.1,
                default_shard_lease: config.default_shard_lease,
            },
            dr: DrExporter::new(config.dr.clone()),
            peer_contacts,
            autopilot: config.autopilot.clone(),
            client_tls,
            faults,
        },
    ));

    let server = serve(
        replica.clone(),
        listener,
        security.as_ref().map(|s| s.grpc.clone()),
        stopped.clone(),
    );
    if let Some(http) = http_listener {
        let tls = security.as_ref().map(|s| ballast_telemetry::HttpTls {
            server: s.http.clone(),
            open_probes: config.http_open_probes,
        });
        crate::observe::serve(replica.clone(), http, tls, stopped.clone());
    }

    if let Consensus::Raft(raft) = &replica.consensus {
        start_raft_duties(&config, &replica, raft, node, &stopped).await?;
    }
    if let Some(interval) = config.rebalance_interval {
        tokio::spawn(crate::leader::rebalance::rebalance_loop(
            replica.clone(),
            interval,
            stopped.clone(),
        ));
    }
    tokio::spawn(crate::leader::dr::export_loop(
        replica.clone(),
        stopped.clone(),
    ));
    tokio::spawn(crate::leader::autopilot::run(
        replica.clone(),
        stopped.clone(),
    ));
    tokio::spawn(crate::memory::trim_loop(stopped.clone()));
    tokio::spawn(crate::leader::leases::lease_expiry_loop(
        replica.clone(),
        stopped.clone(),
    ));
    tracing::info!(id = config.id, az = %config.az, %local_addr, cluster_id = %cluster_id, "replica serving");
    Ok(RunningNode {
        replica,
        local_addr,
        http_addr,
        server,
        stop,
    })
}

/// Opens the Raft backend: settles the cluster identity, applies `--force-new-cluster`, and
/// starts openraft over the data dir.
async fn start_raft(
    config: &NodeConfig,
    store: &Store,
    node: &ReplicaNode,
    (contacts, tls, faults): (
        PeerContacts,
        Option<Arc<ClientTls>>,
        Option<Arc<FaultRules>>,
    ),
) -> Result<(Consensus, Arc<SharedState>, String), NodeError> {
    let cluster_id = cluster_identity(config, store, tls.clone()).await?;
    if config.force_new_cluster {
        let outcome =
            crate::restore::force_new_cluster(store, config.id, node.clone(), RESTORE_BUMP)
                .map_err(|e| NodeError::Config(e.to_string()))?;
        tracing::warn!(
            revision = outcome.revision,
            restore_epoch = outcome.restore_epoch,
            replayed = outcome.replayed_entries,
            "forced a new single-voter cluster from this replica's data; other replicas must rejoin with fresh data dirs"
        );
    }
    let raft_config = Arc::new(raft_config(config, &cluster_id)?);
    let log_store = LogStore::new(store.clone());
    let state_machine =
        StateMachineStore::open(store.clone()).map_err(|e| NodeError::Raft(e.to_string()))?;
    let shared = state_machine.shared();
    let raft = Raft::new(
        config.id,
        raft_config,
        PeerNetwork::new(cluster_id.clone(), contacts, PeerDialer { tls, faults }),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    Ok((Consensus::Raft(raft), shared, cluster_id))
}

/// Opens the etcd backend: learns (or creates) the group's cluster id under the prefix,
/// checks it against the data dir, and loads the state from etcd.
async fn start_etcd(
    config: &NodeConfig,
    etcd: &EtcdBackendConfig,
    store: &Store,
    node: &ReplicaNode,
    stopped: watch::Receiver<bool>,
) -> Result<(Consensus, Arc<SharedState>, String), NodeError> {
    let etcd_error = |e: EtcdLogError| NodeError::Etcd {
        endpoints: etcd.endpoints.join(","),
        reason: e.to_string(),
    };
    let (client, cluster_id) = crate::log::etcd::connect(etcd).await.map_err(etcd_error)?;
    check_replica_id(config, store)?;
    let dir = config.data_dir.display().to_string();
    match store.read_meta::<String>(META_CLUSTER_ID)? {
        Some(stored) if stored != cluster_id => {
            return Err(NodeError::Identity {
                dir,
                reason: format!(
                    "it belongs to cluster {stored}, but etcd prefix {} holds cluster {cluster_id}",
                    etcd.prefix
                ),
            });
        }
        Some(_) => {}
        None => {
            stamp_identity(config, store, &cluster_id)?;
        }
    }
    let (log, shared) = EtcdLog::start(client, etcd.clone(), (config.id, node.clone()), stopped)
        .await
        .map_err(etcd_error)?;
    Ok((Consensus::Etcd(log), shared, cluster_id))
}

/// The Raft backend's own duties: bootstrap or join, and the snapshot timer.
async fn start_raft_duties(
    config: &NodeConfig,
    replica: &Arc<Replica>,
    raft: &Raft,
    node: ReplicaNode,
    stopped: &watch::Receiver<bool>,
) -> Result<(), NodeError> {
    let cluster_id = &replica.cluster_id;
    if config.bootstrap
        && !raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
    {
        tracing::info!(cluster_id = %cluster_id, id = config.id, "bootstrapping a new cluster");
        raft.initialize(
            [(config.id, node.clone())]
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    }
    if !config.join.is_empty() {
        tokio::spawn(join_loop(
            replica.clone(),
            (config.join.clone(), config.join_token.clone()),
            node,
            stopped.clone(),
        ));
    }
    tokio::spawn(crate::log::raft::presence::announce_while_leading(
        raft.clone(),
        config.id,
        cluster_id.clone(),
        replica.dialer(),
        config.heartbeat,
        stopped.clone(),
    ));
    tokio::spawn(snapshot_timer(
        raft.clone(),
        config.snapshot_interval,
        stopped.clone(),
    ));
    Ok(())
}

fn serve(
    replica: Arc<Replica>,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    let presence = PresenceWatch::new(
        replica.timing.heartbeat,
        replica.timing.election_timeout_max,
        stopped.clone(),
    );
    let raft = RaftServer::new(RaftService::new(replica.clone(), presence))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let fleet = FleetServer::new(FleetService::new(replica.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let assignments = AssignmentsServer::new(AssignmentsService::new(replica.clone()));
    let etcd = EtcdApi::new(replica.clone());
    let cluster = ClusterServer::new(ClusterService::new(replica));
    let layers = tower::ServiceBuilder::new()
        .layer(crate::metrics::RpcMetricsLayer)
        .option_layer(tls.is_some().then(Security::auth_layer));
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(layers)
        .add_service(raft)
        .add_service(fleet)
        .add_service(cluster)
        .add_service(assignments)
        .add_service(
            etcd_kv::KvServer::new(etcd.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(etcd_watch::WatchServer::new(etcd.clone()))
        .add_service(etcd_lease::LeaseServer::new(etcd.clone()))
        .add_service(etcd_cluster::ClusterServer::new(etcd.clone()))
        .add_service(etcd_maintenance::MaintenanceServer::new(etcd));
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    match tls {
        Some(tls) => {
            tokio::spawn(router.serve_with_incoming_shutdown(tls.incoming(listener), shutdown))
        }
        // Without TCP_NODELAY, answers larger than a segment wait out delayed ACKs (~40 ms).
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )),
    }
}

/// Asks the leader (through any join address) to add this replica until it is a voter.
/// Idempotent, so it also runs after a restart that still passes `--join`.
async fn join_loop(
    replica: Arc<Replica>,
    (join, token): (Vec<String>, String),
    node: ReplicaNode,
    mut stopped: watch::Receiver<bool>,
) {
    let mut client_config = ClientConfig::new(join.clone());
    client_config.cluster_id = Some(replica.cluster_id.clone());
    client_config.tls = replica.client_tls.clone();
    // Adding a learner waits for it to catch up, which may take a snapshot transfer.
    client_config.attempt_timeout = Duration::from_secs(120);
    let client = match BallastClient::new(client_config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the join client");
            return;
        }
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let request = pb::JoinRequest {
            id: replica.id,
            address: node.address.clone(),
            az: node.az.clone(),
            token: token.clone(),
        };
        let outcome = tokio::select! {
            r = client.cluster(|mut c, req| {
                let request = request.clone();
                async move { c.join(req.wrap(request)).await }
            }) => r,
            _ = stopped.wait_for(|s| *s) => return,
        };
        match outcome {
            Ok(_) => {
                tracing::info!(id = replica.id, "joined the cluster as a voter");
                return;
            }
            Err(ballast_protocol::client::ClientError::Rejected(status))
                if status.code() == tonic::Code::PermissionDenied =>
            {
                tracing::error!(
                    reason = %status.message(),
                    "the cluster refused to let this replica join; not retrying (start it again with a valid --join-token)"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, through = %join.join(","), "join attempt failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Takes a snapshot at least every `interval` when entries were applied since the last one,
/// so a quiet cluster still compacts its log.
async fn snapshot_timer(raft: Raft, interval: Duration, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let metrics = raft.metrics().borrow().clone();
        let applied = metrics.last_applied.map(|l| l.index);
        let snapshot = metrics.snapshot.map(|l| l.index);
        if applied > snapshot
            && let Err(e) = raft.trigger().snapshot().await
        {
            tracing::warn!(error = %e, "scheduled snapshot could not start");
            return;
        }
    }
}
