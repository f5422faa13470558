//! The rebalancing loop on the leader: judges every shard's lease each round and proposes
//! the moves the rebalancer ([`crate::rebalance`]) plans away from draining and expired shards.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::fleet::FleetRequest;
use crate::rebalance;
use crate::replica::Replica;

/// On the leader: moves domains, bindings and quota slices away from draining shards and from
/// shards whose lease ran out. A leader judges only by heartbeats it saw in its current term;
/// at the start of a term it has seen none, so it gives every shard one full lease of grace
/// before judging it dead (leases get a fresh TTL after a leader change instead of expiring
/// early, and a replica that leads again does not trust what it saw in an earlier term).
pub async fn rebalance_loop(
    replica: Arc<Replica>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    // (term, when this replica was first seen leading in it).
    let mut leader_since: Option<(u64, u64)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        if !replica.is_leader() {
            leader_since = None;
            continue;
        }
        let term = replica.consensus.term();
        let now = ballast_protocol::clock::unix_ms();
        if leader_since.is_none_or(|(t, _)| t != term) {
            leader_since = Some((term, now));
        }
        let since = leader_since.map_or(now, |(_, since)| since);
        let grace_until =
            since.saturating_add(replica.timing.default_shard_lease.as_millis() as u64);
        let plan = {
            let fleet = replica.state.fleet();
            let unhealthy: BTreeSet<String> = fleet
                .shards()
                .filter(|s| match replica.leases.get(term, &s.id) {
                    Some(lease) => lease.expires_at_ms < now,
                    None => now > grace_until && s.lease_expires_at_ms < now,
                })
                .map(|s| s.id.clone())
                .collect();
            rebalance::plan(&fleet, &unhealthy, rebalance::Limits::default())
        };
        crate::metrics::rebalance_round();
        if let Some(command) = plan {
            let (domains, clusters, quotas) = rebalance::moves(&command);
            tracing::info!(
                domains,
                clusters,
                quotas,
                "rebalancing away from draining or expired shards"
            );
            match replica
                .propose(FleetRequest {
                    request_id: String::new(),
                    command,
                })
                .await
            {
                Ok(_) => crate::metrics::rebalanced(domains, clusters, quotas),
                Err(status) => {
                    tracing::warn!(%status, "rebalancing round refused; retrying next round")
                }
            }
        }
    }
}
