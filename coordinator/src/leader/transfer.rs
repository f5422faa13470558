//! Leadership transfer from this leader to a caught-up voter: the other voters pause their
//! election timers, this leader stops granting its lease, and the target, which holds the
//! whole log, campaigns and wins. The cluster keeps a leader throughout; if leadership does not
//! move in time, this leader resumes.

use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::pb::raft_client::RaftClient;

use crate::error::ReplicaError;
use crate::log::member::NodeId;
use crate::replica::Replica;

/// Moves leadership from this replica (the leader) to voter `target`.
pub async fn transfer_leadership(replica: &Replica, target: NodeId) -> Result<(), ReplicaError> {
    let raft = replica.raft()?;
    if target == replica.id {
        return Ok(());
    }
    let membership = crate::log::raft::membership::current(raft);
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let Some(target_node) = membership.get_node(&target).cloned() else {
        return Err(ReplicaError::not_found(format!(
            "replica {target} is not a member"
        )));
    };
    if !voters.contains(&target) {
        return Err(ReplicaError::precondition(format!(
            "replica {target} is a learner; only a voter can lead"
        )));
    }
    // The target must hold the whole log, or it cannot win the election.
    let caught_up = raft
        .wait(Some(Duration::from_secs(3)))
        .metrics(
            |m| crate::log::raft::membership::holds_whole_log(m, target),
            "transfer target caught up",
        )
        .await;
    if caught_up.is_err() {
        return Err(ReplicaError::retry(format!(
            "replica {target} has not caught up with the leader's log; retry later"
        )));
    }
    let lease = replica.timing.election_timeout_max;
    let pause_ms = (lease * 4).as_millis() as u64;
    for voter in voters.iter().filter(|v| **v != target && **v != replica.id) {
        if let Some(node) = membership.get_node(voter) {
            let control = pb::ElectionControl {
                cluster_id: replica.cluster_id.clone(),
                millis: pause_ms,
            };
            if let Err(e) = RaftClient::new(replica.channel_to(&node.address)?)
                .pause_election(control)
                .await
            {
                tracing::warn!(voter, error = %e, "could not pause a voter's election timer");
            }
        }
    }
    // Stop granting the lease: once it runs out on every follower, the target campaigns
    // and, holding the whole log, wins.
    raft.runtime_config().heartbeat(false);
    raft.runtime_config().elect(false);
    let campaign = pb::ElectionControl {
        cluster_id: replica.cluster_id.clone(),
        millis: (lease + Duration::from_millis(50)).as_millis() as u64,
    };
    let started = RaftClient::new(replica.channel_to(&target_node.address)?)
        .campaign(campaign)
        .await;
    let moved = match started {
        Ok(_) => raft
            .wait(Some(lease * 4))
            .metrics(|m| m.current_leader == Some(target), "leadership moved")
            .await
            .is_ok(),
        Err(e) => {
            tracing::warn!(target, error = %e, "transfer target refused to campaign");
            false
        }
    };
    raft.runtime_config().heartbeat(true);
    raft.runtime_config().elect(true);
    if !moved {
        return Err(ReplicaError::aborted(format!(
            "leadership did not move to replica {target} in time; the cluster keeps a leader, retry"
        )));
    }
    Ok(())
}
