//! The gauges that describe a replica's current state, refreshed just before a scrape renders
//! them, and the leadership-change counter. What the layers record as they go is in
//! [`crate::metrics`].

use std::time::Duration;

use metrics::{counter, gauge};

use crate::replica::Replica;
use crate::status::status_report;

/// Updates the gauges that describe current state, just before a scrape renders them.
pub fn refresh(replica: &Replica) {
    let status = status_report(replica);
    let header = status.header.clone().unwrap_or_default();
    for state in ["leader", "follower", "candidate", "learner", "shutdown"] {
        gauge!("ballast_raft_state", "state" => state)
            .set(f64::from(u8::from(status.state == state)));
    }
    gauge!("ballast_raft_term").set(header.raft_term as f64);
    gauge!("ballast_raft_applied_index").set(status.applied_index as f64);
    gauge!("ballast_raft_last_log_index").set(status.last_log_index as f64);
    gauge!("ballast_raft_snapshot_index").set(status.snapshot_index as f64);
    gauge!("ballast_raft_log_entries")
        .set(status.last_log_index.saturating_sub(status.purged_index) as f64);
    gauge!("ballast_raft_members").set(status.members.len() as f64);
    if header.leader_id == replica.id {
        // The leader's own view, which tells a peer at index 0 from one it knows nothing of.
        let view = replica.view();
        for member in view.members.iter().filter(|m| m.id != replica.id) {
            let peer = member.id.to_string();
            if let Some(matched) = member.matched_index {
                gauge!("ballast_raft_peer_lag_entries", "peer" => peer.clone())
                    .set(view.last_log_index.saturating_sub(matched) as f64);
            }
            if let Some(age) = replica.peer_contacts.age(member.id) {
                gauge!("ballast_raft_peer_last_contact_seconds", "peer" => peer)
                    .set(age.as_secs_f64());
            }
        }
    }
    gauge!("ballast_fleet_revision").set(header.revision as f64);
    gauge!("ballast_restore_epoch").set(header.restore_epoch as f64);
    gauge!("ballast_placement_healthy").set(f64::from(u8::from(
        status.placement.as_ref().is_some_and(|p| p.healthy),
    )));
    gauge!("ballast_membership_changing").set(f64::from(u8::from(status.membership_changing)));
    gauge!("ballast_domains").set(status.domain_count as f64);
    gauge!("ballast_bindings").set(status.binding_count as f64);
    gauge!("ballast_quotas").set(status.quota_count as f64);
    gauge!("ballast_providers").set(status.provider_count as f64);
    let shards = {
        let fleet = replica.state.fleet();
        crate::status::shard_messages(&fleet, replica.shard_leases())
    };
    for wanted in ["active", "draining"] {
        let count = shards.iter().filter(|s| s.status == wanted).count();
        gauge!("ballast_shards", "status" => wanted).set(count as f64);
    }
    let now = ballast_protocol::clock::unix_ms();
    let expired = shards
        .iter()
        .filter(|s| s.lease_expires_at_ms < now)
        .count();
    gauge!("ballast_shards_lease_expired").set(expired as f64);
    for shard in &shards {
        gauge!("ballast_shard_domains", "shard" => shard.id.clone()).set(shard.domain_count as f64);
    }
    gauge!("ballast_storage_write_buffer_bytes").set(replica.store.write_buffer_bytes() as f64);
    if let Some(dr) = &status.dr {
        gauge!("ballast_dr_exports").set(dr.exports_total as f64);
        gauge!("ballast_dr_export_failures").set(dr.failures_total as f64);
        gauge!("ballast_dr_last_export_duration_seconds").set(dr.last_duration_ms as f64 / 1000.0);
        gauge!("ballast_dr_last_export_bytes").set(dr.last_size_bytes as f64);
        if dr.last_success_unix_ms > 0 {
            gauge!("ballast_dr_last_export_age_seconds")
                .set(now.saturating_sub(dr.last_success_unix_ms) as f64 / 1000.0);
        }
    }
}

/// Counts leadership changes as this replica sees them.
pub async fn leader_changes(
    replica: std::sync::Arc<Replica>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut last = replica.leader().map(|(id, _)| id);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let now = replica.leader().map(|(id, _)| id);
        if now != last {
            if now.is_some() {
                counter!("ballast_raft_leader_changes_total").increment(1);
            }
            last = now;
        }
    }
}
