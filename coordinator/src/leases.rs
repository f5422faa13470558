//! Shard leases as the leader sees them. Renewals stay in the leader's memory (like etcd's
//! lease refreshes, which never touch its log); the durable registration is in the fleet
//! state. After a leader change the new leader starts with no renewals and grants every
//! registered shard a fresh lease on its next heartbeat rather than expiring it early.

use std::collections::HashMap;
use std::sync::Mutex;

use ballast_protocol::pb::ShardSummary;

/// The last heartbeat of one shard.
#[derive(Clone, Debug, Default)]
pub struct Lease {
    /// Leader clock (ms since the epoch) when the lease runs out.
    pub expires_at_ms: u64,
    /// The shard's restart epoch at its last heartbeat.
    pub epoch: u64,
    /// Its last reported summary.
    pub summary: Option<ShardSummary>,
}

/// Leader-local lease table.
#[derive(Default)]
pub struct ShardLeases {
    leases: Mutex<HashMap<String, Lease>>,
}

impl ShardLeases {
    /// Records a heartbeat and returns the new expiry.
    pub fn renew(
        &self,
        shard: &str,
        now_ms: u64,
        ttl_ms: u64,
        epoch: u64,
        summary: Option<ShardSummary>,
    ) -> u64 {
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.insert(
            shard.to_string(),
            Lease {
                expires_at_ms,
                epoch,
                summary,
            },
        );
        expires_at_ms
    }

    /// The last heartbeat of `shard` seen by this replica while leading.
    pub fn get(&self, shard: &str) -> Option<Lease> {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(shard)
            .cloned()
    }
}
