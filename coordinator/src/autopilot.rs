//! Autopilot, after Consul's: the leader judges each member's health from when it last
//! answered, warns about voters that share an AZ or stopped answering, and — only when
//! configured — removes a voter that stayed down past a threshold, if the group keeps a
//! healthy quorum and its minimum size without it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_protocol::pb;
use tokio::sync::watch;

use crate::consensus::{Consensus, View};
use crate::raft::types::NodeId;
use crate::replica::Replica;

/// Autopilot settings; from `ballast-coord`'s `--autopilot-*` flags.
#[derive(Clone, Debug)]
pub struct AutopilotConfig {
    /// A member that has not answered the leader for this long is unreachable.
    pub unhealthy_after: Duration,
    /// Remove a voter unreachable for this long (`None`: never remove automatically).
    pub remove_dead_after: Option<Duration>,
    /// Never shrink the voters below this many.
    pub min_voters: usize,
}

impl Default for AutopilotConfig {
    fn default() -> Self {
        Self {
            unhealthy_after: Duration::from_secs(2),
            remove_dead_after: None,
            min_voters: 3,
        }
    }
}

/// How long `member` has gone without answering the leader, as seen from this replica; `None`
/// when this replica does not lead (it cannot know) or for itself.
fn silence(
    replica: &Replica,
    view: &View,
    member: NodeId,
    leading_for: Duration,
) -> Option<Duration> {
    if view.leader != Some(replica.id) || member == replica.id {
        return None;
    }
    // A member that never answered this leader has been silent since it took over.
    Some(replica.peer_contacts.age(member).unwrap_or(leading_for))
}

/// Per-member health for status answers: (`health`, last contact in ms).
pub fn member_health(replica: &Replica, view: &View, member: NodeId) -> (String, u64) {
    if view.leader != Some(replica.id) {
        return ("unknown".into(), 0);
    }
    if member == replica.id {
        return ("healthy".into(), 0);
    }
    match replica.peer_contacts.age(member) {
        Some(age) if age < replica.autopilot.unhealthy_after => {
            ("healthy".into(), age.as_millis() as u64)
        }
        Some(age) => ("unreachable".into(), age.as_millis() as u64),
        None => ("unreachable".into(), 0),
    }
}

/// What an operator should act on, in words.
pub fn warnings(members: &[pb::Member], placement: &pb::Placement) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for member in members.iter().filter(|m| m.role == "voter") {
        let sharing: Vec<u64> = members
            .iter()
            .filter(|o| o.role == "voter" && o.az == member.az)
            .map(|o| o.id)
            .collect();
        if sharing.len() > 1 && seen.insert(member.az.clone()) {
            out.push(format!(
                "voters {} share AZ {}: losing that AZ loses {} votes",
                sharing
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" and "),
                member.az,
                sharing.len()
            ));
        }
    }
    if !placement.healthy && seen.is_empty() {
        out.push(placement.message.clone());
    }
    for member in members.iter().filter(|m| m.health == "unreachable") {
        out.push(format!(
            "replica {} ({}) has not answered the leader for {} ms",
            member.id, member.az, member.last_contact_ms
        ));
    }
    out
}

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
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let view = replica.view();
        if view.leader != Some(replica.id) {
            leading_since = None;
            continue;
        }
        let leading_for = leading_since.get_or_insert_with(Instant::now).elapsed();
        let voters = view.voters();
        let silent = |id: NodeId| silence(&replica, &view, id, leading_for).unwrap_or_default();
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
        match crate::raft::membership::remove_voters(raft, BTreeSet::from([dead])).await {
            Ok(_) => metrics::counter!("ballast_autopilot_removals_total").increment(1),
            Err(e) => tracing::warn!(replica = dead, error = %e, "autopilot removal failed"),
        }
    }
}
