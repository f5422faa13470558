//! Leases as the leader sees them: shard leases ([`ShardLeases`]) and the deadlines of the
//! coordination KV's leases ([`KvLeaseClock`]).
//!
//! Shard leases as the leader sees them. Renewals stay in the leader's memory (like etcd's
//! lease refreshes, which never touch its log); the durable registration is in the fleet
//! state. Renewals belong to the term in which the leader saw them: a replica that leads
//! again after another replica led has none, and grants every registered shard a full lease
//! of grace rather than judging it by heartbeats from an earlier term (which would evacuate
//! shards that kept heartbeating to the other leader).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ballast_protocol::pb::ShardSummary;

use crate::leadership::TermScoped;

/// The last heartbeat of one shard.
#[derive(Clone, Debug, Default)]
pub struct Lease {
    /// Leader clock (ms since the epoch) when the lease runs out.
    pub expires_at_ms: u64,
    /// The shard's restart epoch at its last heartbeat.
    pub epoch: u64,
    /// Its last reported summary.
    pub summary: Option<ShardSummary>,
    /// The lease length it asked for (ms).
    pub ttl_ms: u64,
}

/// Leader-local lease table, valid for one term.
#[derive(Default)]
pub struct ShardLeases {
    leases: TermScoped<HashMap<String, Lease>>,
}

impl ShardLeases {
    /// Records a heartbeat received while leading in `term` and returns the new expiry.
    pub fn renew(
        &self,
        term: u64,
        shard: &str,
        (now_ms, ttl_ms): (u64, u64),
        epoch: u64,
        summary: Option<ShardSummary>,
    ) -> u64 {
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        self.leases.with(term, |leases| {
            leases.insert(
                shard.to_string(),
                Lease {
                    expires_at_ms,
                    epoch,
                    summary,
                    ttl_ms,
                },
            )
        });
        expires_at_ms
    }

    /// The last heartbeat of `shard` seen by this replica while leading in `term`.
    pub fn get(&self, term: u64, shard: &str) -> Option<Lease> {
        self.read(term, shard, Lease::clone)
    }

    /// `f` of the last heartbeat of `shard` seen while leading in `term`, read in place: the
    /// rebalancer looks at every shard's lease each round, and a copy would carry its whole
    /// summary (every quota and cluster it reports).
    pub fn read<T>(&self, term: u64, shard: &str, f: impl FnOnce(&Lease) -> T) -> Option<T> {
        self.leases
            .read(term, |leases| leases.and_then(|l| l.get(shard)).map(f))
    }
}

/// Leader-side lease deadlines, kept for the term in which this replica leads. Not
/// replicated: a new leader starts every lease afresh, and so does a replica that leads again.
#[derive(Default)]
pub struct KvLeaseClock {
    deadlines: TermScoped<HashMap<i64, Instant>>,
}

impl KvLeaseClock {
    /// Starts or renews a lease for `ttl` seconds from `from` (when the renewal was asked for:
    /// a leadership confirmation may lie between the two).
    pub fn renew(&self, term: u64, id: i64, ttl: i64, from: Instant) {
        self.deadlines.with(term, |deadlines| {
            deadlines.insert(id, from + Duration::from_secs(ttl.max(0) as u64))
        });
    }

    /// Seconds left (rounded up), if the lease is being timed in `term`.
    pub fn remaining(&self, term: u64, id: i64) -> Option<i64> {
        self.deadlines.read(term, |deadlines| {
            deadlines?.get(&id).map(|deadline| {
                let left = deadline.saturating_duration_since(Instant::now());
                left.as_millis().div_ceil(1000) as i64
            })
        })
    }

    /// Forgets every deadline (leadership lost).
    pub fn forget_all(&self) {
        self.deadlines.clear();
    }

    /// Stops timing leases that no longer exist.
    pub fn retain(&self, term: u64, live: &std::collections::HashSet<i64>) {
        self.deadlines.with(term, |deadlines| {
            deadlines.retain(|id, _| live.contains(id))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_count_only_in_the_term_they_were_seen() {
        let leases = ShardLeases::default();
        leases.renew(3, "s1", (1_000, 500), 1, None);
        assert_eq!(leases.get(3, "s1").map(|l| l.expires_at_ms), Some(1_500));
        // Another replica led in term 4; this one leads again in term 5.
        assert!(leases.get(5, "s1").is_none(), "no renewal seen in term 5");
        leases.renew(5, "s2", (2_000, 500), 1, None);
        assert!(
            leases.get(3, "s1").is_none(),
            "a new term's first renewal drops the old term's"
        );
        assert_eq!(leases.get(5, "s2").map(|l| l.expires_at_ms), Some(2_500));
    }
}
