//! Starting a replica: the data dir, the log backend (Ballast's Raft group or etcd), the
//! replica, its duties and the gRPC server.

use super::{Backend, MAX_MESSAGE_BYTES, NodeConfig, NodeError, RESTORE_BUMP, RunningNode};

use ballast_protocol::etcdserverpb::{
    auth_server as etcd_auth, cluster_server as etcd_cluster, kv_server as etcd_kv,
    lease_server as etcd_lease, maintenance_server as etcd_maintenance, watch_server as etcd_watch,
};

use crate::service::etcd_api::EtcdApi;
use std::sync::Arc;

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

use crate::dr::DrExporter;
use crate::faults::FaultRules;
use crate::log::Consensus;
use crate::log::applied::SharedState;
use crate::log::etcd::{EtcdBackendConfig, EtcdLog, EtcdLogError};
use crate::log::member::ReplicaNode;
use crate::log::raft::data_dir::{DataDir, META_CLUSTER_ID};
use crate::log::raft::log_store::LogStore;
use crate::log::raft::network::{LeaderDisk, PeerContacts, PeerDialer, PeerNetwork};
use crate::log::raft::presence::PresenceWatch;
use crate::log::raft::state_machine::StateMachineStore;
use crate::log::raft::types::Raft;
use crate::replica::{Replica, ReplicaParts, Timing};
use crate::security::Security;
use crate::service::assignments::AssignmentsService;
use crate::service::cluster::ClusterService;
use crate::service::fleet::FleetService;
use crate::service::raft::RaftService;
use ballast_tls::{ClientTls, ServerTls};

use super::duties::start_raft_duties;
use super::identity::{check_finished_rewrite, check_replica_id, cluster_identity, stamp_identity};

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
    let store = DataDir::open(&config.data_dir)?;
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
            read_policy: config.read_policy,
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
            (interval, config.evacuation, config.slices),
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
    let mut trim_stopped = stopped.clone();
    tokio::spawn(ballast_telemetry::memory::trim_loop(async move {
        let _ = trim_stopped.wait_for(|s| *s).await;
    }));
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
pub(super) async fn start_raft(
    config: &NodeConfig,
    store: &DataDir,
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
    let log_store =
        LogStore::new(store.clone(), config.id).map_err(|e| NodeError::Raft(e.to_string()))?;
    let local_log = log_store.local_log();
    let state_machine = StateMachineStore::open(store.clone())
        .map_err(|e| NodeError::Raft(e.to_string()))?
        .waiting_for(local_log.clone());
    let shared = state_machine.shared();
    let leader_disk = LeaderDisk {
        log: local_log,
        patience: config.heartbeat / 2,
        stall_limit: config.election_timeout.1,
    };
    let raft = Raft::new(
        config.id,
        raft_config,
        PeerNetwork::new(
            cluster_id.clone(),
            contacts,
            PeerDialer { tls, faults },
            leader_disk,
        ),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    Ok((Consensus::Raft(raft), shared, cluster_id))
}

/// Opens the etcd backend: learns (or creates) the group's cluster id under the prefix,
/// checks it against the data dir, and loads the state from etcd.
pub(super) async fn start_etcd(
    config: &NodeConfig,
    etcd: &EtcdBackendConfig,
    store: &DataDir,
    node: &ReplicaNode,
    stopped: watch::Receiver<bool>,
) -> Result<(Consensus, Arc<SharedState>, String), NodeError> {
    let etcd_error = |e: EtcdLogError| NodeError::Etcd {
        endpoints: etcd.endpoints.join(","),
        reason: e.to_string(),
    };
    let (client, cluster_id) = crate::log::etcd::connect_when_reachable(etcd, stopped.clone())
        .await
        .map_err(etcd_error)?;
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

pub(super) fn raft_config(config: &NodeConfig, cluster_id: &str) -> Result<Config, NodeError> {
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

pub(super) fn serve(
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
    if let Ok(raft) = replica.raft() {
        tokio::spawn(crate::log::raft::presence::hold_campaigns_after_start(
            raft.clone(),
            presence.clone(),
            replica.timing.election_timeout_max,
        ));
    }
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
    let mut services = tonic::service::Routes::builder();
    services
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
        .add_service(etcd_maintenance::MaintenanceServer::new(etcd.clone()))
        .add_service(etcd_auth::AuthServer::new(etcd.clone()));
    // etcd's HTTP/JSON gateway shares the port, as on etcd's client port (HTTP/1.1 beside
    // gRPC's HTTP/2).
    let routes = tonic::service::Routes::from(
        services
            .routes()
            .into_axum_router()
            .merge(crate::service::etcd_api::gateway::routes(etcd)),
    );
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .accept_http1(true)
        .layer(layers)
        .add_routes(routes);
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
