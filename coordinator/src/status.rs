//! What a replica reports about itself and the fleet — `Cluster.Status`, `ListShards`, the
//! status page and the metrics all answer from here: members with their health, the
//! placement verdict, table sizes, the DR exporter, and each shard with the lease the leader
//! last renewed.

use std::collections::{BTreeMap, HashMap};

use ballast_protocol::pb;

use crate::fleet::{FleetState, ShardRecord};
use crate::history::status_name;
use crate::leases::ShardLeases;
use crate::replica::Replica;

/// Judges whether the voters are spread so that losing one AZ keeps a quorum.
pub fn placement(voter_azs: &[String]) -> pb::Placement {
    let mut per_az: BTreeMap<&str, usize> = BTreeMap::new();
    for az in voter_azs {
        *per_az.entry(az.as_str()).or_insert(0) += 1;
    }
    let crowded: Vec<String> = per_az
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(az, n)| format!("{az} holds {n} voters"))
        .collect();
    let (healthy, message) = if voter_azs.len() < 3 {
        (
            false,
            format!(
                "{} voter(s): at least three voters in three AZs are needed to survive an AZ loss",
                voter_azs.len()
            ),
        )
    } else if !crowded.is_empty() {
        (
            false,
            format!("losing one AZ may lose quorum: {}", crowded.join(", ")),
        )
    } else {
        (
            true,
            format!(
                "{} voters in {} distinct AZs",
                voter_azs.len(),
                per_az.len()
            ),
        )
    };
    let mut azs = voter_azs.to_vec();
    azs.sort();
    pb::Placement {
        healthy,
        voter_azs: azs,
        message,
    }
}

/// What `Cluster.Status`, the status page and the metrics report: this replica's view of the
/// group, the placement verdict, table sizes and the DR exporter.
pub fn status_report(replica: &Replica) -> pb::StatusResponse {
    let view = replica.view();
    let mut members = Vec::new();
    let mut voter_azs = Vec::new();
    for member in &view.members {
        if member.voter {
            voter_azs.push(member.node.az.clone());
        }
        let matched_index = member.matched_index.unwrap_or(0);
        let (health, last_contact_ms) = crate::autopilot::member_health(
            (replica.id, view.leader),
            member.id,
            replica.peer_contacts.age(member.id),
            replica.autopilot.unhealthy_after,
        );
        members.push(pb::Member {
            id: member.id,
            address: member.node.address.clone(),
            az: member.node.az.clone(),
            role: if member.voter { "voter" } else { "learner" }.to_string(),
            leader: view.leader == Some(member.id),
            matched_index,
            lag: member
                .matched_index
                .map_or(0, |m| view.last_log_index.saturating_sub(m)),
            health,
            last_contact_ms,
        });
    }
    let counts = replica.state.fleet().counts();
    let leader_address = replica.leader().map(|(_, n)| n.address).unwrap_or_default();
    let placement = placement(&voter_azs);
    let warnings = crate::autopilot::warnings(&members, &placement);
    pb::StatusResponse {
        warnings,
        membership_changing: view.membership_changing,
        evacuation: replica.evacuation.lock().clone(),
        dr: Some(replica.dr.status()),
        header: Some(replica.header()),
        state: view.state.to_string(),
        applied_index: view.applied_index,
        last_log_index: view.last_log_index,
        snapshot_index: view.snapshot_index,
        purged_index: view.purged_index,
        members,
        placement: Some(placement),
        az: replica.az.clone(),
        address: replica.address.clone(),
        leader_address,
        shard_count: counts.shards as u64,
        domain_count: counts.domains as u64,
        binding_count: counts.bindings as u64,
        quota_count: counts.quotas as u64,
        provider_count: counts.providers as u64,
    }
}

/// The wire form of a shard. `leases` holds renewals seen while leading, which are newer than
/// the registration's lease.
pub fn shard_message(
    record: &ShardRecord,
    (leases, term): (&ShardLeases, u64),
    domains: usize,
    bindings: usize,
) -> pb::Shard {
    let lease_expires_at_ms = leases
        .get(term, &record.id)
        .map(|l| l.expires_at_ms.max(record.lease_expires_at_ms))
        .unwrap_or(record.lease_expires_at_ms);
    pb::Shard {
        id: record.id.clone(),
        address: record.address.clone(),
        az: record.az.clone(),
        registered_at_ms: record.registered_at_ms,
        lease_expires_at_ms,
        status: status_name(Some(&record.status)).to_string(),
        domain_count: domains as u64,
        binding_count: bindings as u64,
    }
}

/// Every shard as `ListShards` answers it (lease ages from the leader's renewals in `term`).
pub fn shard_messages(fleet: &FleetState, leases: (&ShardLeases, u64)) -> Vec<pb::Shard> {
    let bindings = binding_counts(fleet);
    fleet
        .shards()
        .map(|s| {
            shard_message(
                s,
                leases,
                fleet.domain_count_of(&s.id),
                bindings.get(s.id.as_str()).copied().unwrap_or(0),
            )
        })
        .collect()
}

fn binding_counts(fleet: &FleetState) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for (_, shard) in fleet.bindings() {
        *counts.entry(shard).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::placement;

    fn azs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn three_voters_in_three_azs_is_healthy() {
        let p = placement(&azs(&["az-c", "az-a", "az-b"]));
        assert!(p.healthy, "{}", p.message);
        assert_eq!(p.voter_azs, azs(&["az-a", "az-b", "az-c"]));
    }

    #[test]
    fn shared_azs_and_small_clusters_are_at_risk() {
        let p = placement(&azs(&["az-a", "az-a", "az-b"]));
        assert!(!p.healthy);
        assert!(p.message.contains("az-a holds 2 voters"), "{}", p.message);
        assert!(!placement(&azs(&["az-a", "az-b"])).healthy);
        assert!(!placement(&[]).healthy);
    }
}
