//! Autopilot, after Consul's: the leader judges each member's health from when it last
//! answered, warns about voters that share an AZ or stopped answering, and — only when
//! configured — removes a voter that stayed down past a threshold, if the group keeps a
//! healthy quorum and its minimum size without it. The judgement is here, on plain inputs;
//! the leader's removal loop is [`crate::leader::autopilot`].

use std::collections::BTreeSet;
use std::time::Duration;

use ballast_protocol::pb;

use crate::log::member::NodeId;

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

/// How long `member` has gone without answering the leader, as seen by replica `me` that knows
/// `leader` leads and heard from `member` `age` ago; `None` when `me` does not lead (it cannot
/// know) or for itself. A member that never answered this leader has been silent since it
/// took over (`leading_for`).
pub fn silence(
    (me, leader): (NodeId, Option<NodeId>),
    member: NodeId,
    age: Option<Duration>,
    leading_for: Duration,
) -> Option<Duration> {
    if leader != Some(me) || member == me {
        return None;
    }
    Some(age.unwrap_or(leading_for))
}

/// Per-member health for status answers, as replica `me` sees it: (`health`, last contact in
/// ms), from when `member` last answered (`age`).
pub fn member_health(
    (me, leader): (NodeId, Option<NodeId>),
    member: NodeId,
    age: Option<Duration>,
    unhealthy_after: Duration,
) -> (String, u64) {
    if leader != Some(me) {
        return ("unknown".into(), 0);
    }
    if member == me {
        return ("healthy".into(), 0);
    }
    match age {
        Some(age) if age < unhealthy_after => ("healthy".into(), age.as_millis() as u64),
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
