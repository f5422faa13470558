//! Membership changes that do not wedge on an idle cluster.
//!
//! openraft 0.9 refuses a membership change while the previous one is not committed. After a
//! promotion the final configuration can stay uncommitted on an idle cluster: the follower's
//! acknowledgement of it may arrive on a replication stream of the previous configuration,
//! which openraft drops, and nothing new is replicated until the next entry. If a voter then
//! dies, every later change (an operator's `remove`, autopilot's removal) fails with "already
//! undergoing a configuration change" until some client happens to write. A nudge entry
//! (a command that changes nothing) commits under the current configuration's majority and
//! takes the pending configuration with it.

use std::collections::BTreeSet;

use openraft::ChangeMembers;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};

use super::types::{NodeId, Raft, ReplicaNode, TypeConfig};
use crate::fleet::FleetCommand;
use crate::fleet::FleetRequest;

type WriteResult = Result<
    openraft::raft::ClientWriteResponse<TypeConfig>,
    RaftError<NodeId, ClientWriteError<NodeId, ReplicaNode>>,
>;

/// `raft.change_membership(change, false)`, nudging a pending change through and retrying
/// once when openraft reports one in progress.
pub async fn change_membership(
    raft: &Raft,
    change: ChangeMembers<NodeId, ReplicaNode>,
) -> WriteResult {
    match raft.change_membership(change.clone(), false).await {
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(pending),
        ))) => {
            tracing::info!(
                ?pending,
                "a membership change is pending; appending a nudge entry"
            );
            raft.client_write(FleetRequest {
                request_id: String::new(),
                command: FleetCommand::Nudge,
            })
            .await?;
            raft.change_membership(change, false).await
        }
        other => other,
    }
}

/// Removes `ids` as voters (see [`change_membership`]).
pub async fn remove_voters(raft: &Raft, ids: BTreeSet<NodeId>) -> WriteResult {
    change_membership(raft, ChangeMembers::RemoveVoters(ids)).await
}

/// Whether replica `id` holds this leader's whole log (by the leader's replication metrics):
/// the condition for it to win a transferred election or be promoted without slowing commits.
pub fn holds_whole_log(metrics: &openraft::RaftMetrics<NodeId, ReplicaNode>, id: NodeId) -> bool {
    let matched = metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map(|l| l.index);
    matched.is_some() && matched == metrics.last_log_index
}

/// The membership the Raft node works with now.
pub fn current(raft: &Raft) -> crate::log::member::Membership {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .clone()
}
