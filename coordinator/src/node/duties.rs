//! What a started replica keeps doing in the background on the Raft backend: leader
//! presence, scheduled snapshots, catching up and joining.

use super::{NodeConfig, NodeError};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::client::{BallastClient, ClientConfig};
use ballast_protocol::pb;
use tokio::sync::watch;

use crate::log::member::ReplicaNode;
use crate::log::raft::types::Raft;
use crate::replica::Replica;

/// The Raft backend's own duties: bootstrap or join, and the snapshot timer.
pub(super) async fn start_raft_duties(
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
            JoinAsk {
                through: config.join.clone(),
                token: config.join_token.clone(),
                learner: config.learner,
            },
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
        replica.store.clone(),
        config.snapshot_interval,
        stopped.clone(),
    ));
    tokio::spawn(flush_quiet_log(
        raft.clone(),
        replica.store.clone(),
        stopped.clone(),
    ));
    Ok(())
}

/// How long the log must go without appends before its memtable is flushed. It is checked
/// once per this interval, so the flush comes one to two intervals after the last append.
pub const QUIET_LOG_FLUSH_AFTER: Duration = Duration::from_secs(5);

/// Flushes the log's memtable once the log has had no append for [`QUIET_LOG_FLUSH_AFTER`]:
/// fjall flushes a memtable only past its size limit, so on a replica that goes quiet the
/// last megabytes of log would stay in memory until the next snapshot, which on a quiet
/// cluster comes only with `--snapshot-interval-secs` (ADR 0017, decision 8). A write burst
/// keeps the log busy and is not slowed.
pub(super) async fn flush_quiet_log(
    raft: Raft,
    store: crate::log::raft::data_dir::DataDir,
    mut stopped: watch::Receiver<bool>,
) {
    let last_index = || raft.metrics().borrow().last_log_index;
    let mut seen = last_index();
    let mut flushed = seen;
    loop {
        if crate::stopping::pause(QUIET_LOG_FLUSH_AFTER, &mut stopped).await {
            return;
        }
        let now = last_index();
        if now == seen && now != flushed {
            // It waits for the flush: off the async workers.
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.release_log_memory()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not release a quiet log's memtable")
                }
                Err(e) => tracing::warn!(error = %e, "releasing a quiet log's memtable failed"),
            }
            flushed = now;
        }
        seen = now;
    }
}

/// What a joining replica asks for (`--join`, `--join-token`, `--learner`).
pub(super) struct JoinAsk {
    /// Members to join through.
    through: Vec<String>,
    /// The join token, empty if none.
    token: String,
    /// Stay a learner.
    learner: bool,
}

/// Asks the leader (through any join address) to add this replica until it is a voter, or a
/// learner when it asked to stay one. Idempotent, so it also runs after a restart that still
/// passes `--join`.
pub(super) async fn join_loop(
    replica: Arc<Replica>,
    ask: JoinAsk,
    node: ReplicaNode,
    mut stopped: watch::Receiver<bool>,
) {
    let JoinAsk {
        through: join,
        token,
        learner,
    } = ask;
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
            learner,
        };
        let outcome = tokio::select! {
            r = client.cluster(|mut c, req| {
                let request = request.clone();
                async move { c.join(req.wrap(request)).await }
            }) => r,
            _ = stopped.wait_for(|s| *s) => return,
        };
        match outcome {
            Ok(answer) => {
                tracing::info!(id = replica.id, role = %answer.role, "joined the cluster");
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

/// Log bytes appended since the last snapshot past which a snapshot is taken, whatever
/// `--snapshot-entries` says. An entry carries a group of up to 512 requests (4 MiB), so a
/// count of entries bounds the log's bytes only loosely: after 300K KV puts of 256 B at 64 in
/// flight a replica's log keyspace held 10-11K entries of ~4.4 KB, 47 MB, and 93-134 MB after
/// 600K on runs slowed down (bigger groups). Under a steady write load the entry count
/// usually comes first; this bounds the rest.
pub const SNAPSHOT_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// How often [`snapshot_timer`] looks at the log's bytes.
const SNAPSHOT_CHECK: Duration = Duration::from_secs(1);

/// Takes a snapshot at least every `interval` when entries were applied since the last one,
/// so a quiet cluster still compacts its log, and whenever [`SNAPSHOT_LOG_BYTES`] of log were
/// appended since the last one (openraft ignores the request while a snapshot is building).
pub(super) async fn snapshot_timer(
    raft: Raft,
    store: crate::log::raft::data_dir::DataDir,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut since = std::time::Instant::now();
    loop {
        if crate::stopping::pause(SNAPSHOT_CHECK.min(interval), &mut stopped).await {
            return;
        }
        let by_bytes = store.log_bytes_since_snapshot() >= SNAPSHOT_LOG_BYTES;
        if !by_bytes && since.elapsed() < interval {
            continue;
        }
        since = std::time::Instant::now();
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
