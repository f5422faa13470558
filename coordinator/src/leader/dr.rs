//! Archive exports from the leader: on demand (`Cluster.Export`, `ballastctl dr export`) and on
//! the configured schedule.

use std::sync::Arc;

use ballast_dr::ArchiveInput;
use ballast_protocol::pb;
use tokio::sync::watch;

use crate::dr::PAYLOAD;
use crate::error::ReplicaError;
use crate::replica::Replica;

/// Exports the current state to `to` (or the configured destination), after a linearizable
/// barrier: every write acknowledged before the call is in the archive.
pub async fn export_now(
    replica: &Replica,
    to: Option<&str>,
) -> Result<pb::ExportResponse, ReplicaError> {
    replica
        .dr
        .export(to, || async {
            replica.linearize().await?;
            let (fleet, applied, _) = replica.state.copy_applied();
            let input = archive_input(replica, &fleet, applied);
            Ok((input, replica.header()))
        })
        .await
}

/// What an archive of `fleet`, this replica's state as applied up to `applied`, holds.
pub fn archive_input(
    replica: &Replica,
    fleet: &crate::fleet::FleetState,
    applied: Option<crate::log::member::LogId>,
) -> ArchiveInput {
    ArchiveInput {
        cluster_id: replica.cluster_id.clone(),
        term: applied.map(|l| l.leader_id.term).unwrap_or(0),
        log_index: applied.map(|l| l.index).unwrap_or(0),
        revision: fleet.revision(),
        restore_epoch: fleet.restore_epoch(),
        payload: PAYLOAD.to_string(),
        data: fleet.encode(),
    }
}

/// Exports on the configured schedule while this replica leads.
pub async fn export_loop(replica: Arc<Replica>, mut stopped: watch::Receiver<bool>) {
    let Some(interval) = replica.dr.interval() else {
        return;
    };
    loop {
        if crate::stopping::pause(interval, &mut stopped).await {
            return;
        }
        if !replica.is_leader() {
            continue;
        }
        if let Err(e) = export_now(&replica, None).await {
            tracing::warn!(error = %e, "scheduled archive export failed");
        }
    }
}
