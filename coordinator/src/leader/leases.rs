//! KV lease expiry on the leader: every lease is timed from when this replica first saw it
//! in its term, and one that ran out is revoked through the log, so every replica deletes its
//! keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::ReplicaError;
use crate::fleet::{FleetCommand, FleetError, FleetRequest};
use crate::kv::{KvCommand, KvError};
use crate::replica::Replica;

/// On the leader: times every lease (a lease first seen in this term gets its full TTL) and
/// revokes those that ran out, through Raft, so every replica deletes their keys. A leader
/// without a quorum (check-quorum) times nothing.
pub async fn lease_expiry_loop(replica: Arc<Replica>, mut stopped: watch::Receiver<bool>) {
    let mut leading = false;
    loop {
        if crate::stopping::pause(Duration::from_millis(100), &mut stopped).await {
            return;
        }
        let now_leading = replica.is_leader();
        if !now_leading {
            if leading {
                replica.lease_clock.forget_all();
            }
            leading = false;
            continue;
        }
        leading = true;
        let term = replica.consensus.term();
        let leases: Vec<(i64, i64)> = {
            let fleet = replica.state.fleet();
            fleet
                .kv()
                .lease_ids()
                .into_iter()
                .filter_map(|id| fleet.kv().lease(id).map(|l| (id, l.ttl)))
                .collect()
        };
        let live: std::collections::HashSet<i64> = leases.iter().map(|(id, _)| *id).collect();
        replica.lease_clock.retain(term, &live);
        let mut expired = Vec::new();
        for (id, ttl) in leases {
            match replica.lease_clock.remaining(term, id) {
                None => replica.lease_clock.renew(term, id, ttl, Instant::now()),
                Some(0) => expired.push(id),
                Some(_) => {}
            }
        }
        for id in expired {
            let revoke = FleetRequest {
                request_id: String::new(),
                command: FleetCommand::Kv(KvCommand::LeaseRevoke { id }),
            };
            match replica.propose(revoke).await {
                Ok(_) => tracing::debug!(lease = id, "lease expired"),
                Err(ReplicaError::Fleet(FleetError::Kv(KvError::LeaseNotFound))) => {}
                Err(error) => tracing::warn!(lease = id, %error, "could not expire a lease"),
            }
        }
    }
}
