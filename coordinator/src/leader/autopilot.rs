//! The autopilot's removal of dead voters, on the leader (the judgement: [`crate::autopilot`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::autopilot::silence;
use crate::log::Consensus;
use crate::log::member::NodeId;
use crate::replica::Replica;

/// On the leader: removes voters that stayed unreachable past the threshold, one at a time,
/// only while the remaining voters keep a healthy majority and the configured minimum.
pub async fn run(replica: Arc<Replica>, mut stopped: watch::Receiver<bool>) {
    let Some(remove_after) = replica.autopilot.remove_dead_after else {
        return;
    };
    let Consensus::Raft(raft) = &replica.consensus else {
        return;
    };
    let mut leading_since: Option<Instant> = None;
    loop {
        if crate::stopping::pause(Duration::from_millis(500), &mut stopped).await {
            return;
        }
        let view = replica.view();
        if view.leader != Some(replica.id) {
            leading_since = None;
            continue;
        }
        let leading_for = leading_since.get_or_insert_with(Instant::now).elapsed();
        let voters = view.voters();
        let silent = |id: NodeId| {
            silence(
                (replica.id, view.leader),
                id,
                replica.peer_contacts.age(id),
                leading_for,
            )
            .unwrap_or_default()
        };
        let Some(dead) = voters
            .iter()
            .copied()
            .filter(|id| silent(*id) >= remove_after)
            .max_by_key(|id| silent(*id))
        else {
            continue;
        };
        let remaining: Vec<NodeId> = voters.iter().copied().filter(|id| *id != dead).collect();
        let healthy = remaining
            .iter()
            .filter(|id| silent(**id) < replica.autopilot.unhealthy_after)
            .count();
        if remaining.len() < replica.autopilot.min_voters || healthy * 2 <= remaining.len() {
            tracing::warn!(
                replica = dead,
                voters = voters.len(),
                healthy,
                min_voters = replica.autopilot.min_voters,
                "autopilot keeps an unreachable voter: removing it would break the minimum or the healthy quorum"
            );
            continue;
        }
        tracing::warn!(
            replica = dead,
            silent_ms = silent(dead).as_millis() as u64,
            "autopilot removes a voter that stayed unreachable"
        );
        match crate::log::raft::membership::remove_voters(raft, BTreeSet::from([dead])).await {
            Ok(_) => metrics::counter!("ballast_autopilot_removals_total").increment(1),
            Err(e) => tracing::warn!(replica = dead, error = %e, "autopilot removal failed"),
        }
    }
}
