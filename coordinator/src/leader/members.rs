//! Membership changes an operator asks the leader for, shared by Ballast's admin API and
//! etcd's `Cluster` service (each words the refusals its own way): removing a replica, and
//! promoting a learner that holds the whole log to voter.

use std::collections::BTreeSet;

use openraft::ChangeMembers;

use crate::error::{ReplicaError, raft_write_error};
use crate::log::member::NodeId;
use crate::log::raft::membership;
use crate::replica::Replica;

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemberChangeError {
    /// No member has that id.
    #[error("replica {0} is not a member")]
    NotMember(NodeId),
    /// Removing the last voter would leave no cluster.
    #[error("replica {0} is the last voter; removing it would leave no cluster")]
    LastVoter(NodeId),
    /// Only a learner can be promoted.
    #[error("replica {0} is already a voter")]
    NotLearner(NodeId),
    /// A learner behind the leader's log would slow every commit once it votes.
    #[error("replica {0} has not caught up with the leader's log; retry once it has")]
    Behind(NodeId),
    /// Raft refused or failed.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// Removes replica `id` (voter or learner). Run on the leader.
pub async fn remove(replica: &Replica, id: NodeId) -> Result<(), MemberChangeError> {
    let raft = replica.raft()?;
    let current = membership::current(raft);
    if current.get_node(&id).is_none() {
        return Err(MemberChangeError::NotMember(id));
    }
    let voters: BTreeSet<NodeId> = current.voter_ids().collect();
    let change = if voters.contains(&id) {
        if voters.len() == 1 {
            return Err(MemberChangeError::LastVoter(id));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    membership::change_membership(raft, change)
        .await
        .map_err(raft_write_error)?;
    Ok(())
}

/// Promotes learner `id` to voter, if it holds the leader's whole log. Run on the leader.
pub async fn promote(replica: &Replica, id: NodeId) -> Result<(), MemberChangeError> {
    let raft = replica.raft()?;
    let current = membership::current(raft);
    if current.get_node(&id).is_none() {
        return Err(MemberChangeError::NotMember(id));
    }
    if current.voter_ids().any(|v| v == id) {
        return Err(MemberChangeError::NotLearner(id));
    }
    if !membership::holds_whole_log(&raft.metrics().borrow(), id) {
        return Err(MemberChangeError::Behind(id));
    }
    membership::change_membership(raft, ChangeMembers::AddVoterIds(BTreeSet::from([id])))
        .await
        .map_err(raft_write_error)?;
    Ok(())
}
