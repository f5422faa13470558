//! The shards table: register (or renew), drain, activate, remove — a removal cascades: its
//! domains return to the pool, its bindings and quota slices are deleted.

use crate::fleet::FleetError;
use crate::fleet::state::FleetState;
use crate::fleet::state::journal::Undo;
use crate::fleet::state::records::{QuotaRecord, ShardRecord, ShardStatus};

impl FleetState {
    /// Registers a shard or renews its registration: address, AZ and lease are updated,
    /// registration time and status kept.
    pub(super) fn register_shard(
        &mut self,
        (id, address, az): (&str, &str, &str),
        (now_ms, lease_ttl_ms): (u64, u64),
        journal: &mut Vec<Undo>,
    ) {
        let existing = self.shards.get(id);
        let record = ShardRecord {
            id: id.to_string(),
            address: address.to_string(),
            az: az.to_string(),
            registered_at_ms: existing.map(|s| s.registered_at_ms).unwrap_or(now_ms),
            lease_expires_at_ms: now_ms.saturating_add(lease_ttl_ms),
            status: existing
                .map(|s| s.status.clone())
                .unwrap_or(ShardStatus::Active),
        };
        self.set_shard(id, Some(record), journal);
    }

    /// Drains or activates a shard.
    pub(super) fn set_status(
        &mut self,
        id: &str,
        status: ShardStatus,
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        let record = self.require_shard(id)?;
        if record.status != status {
            let mut record = record.clone();
            record.status = status;
            self.set_shard(id, Some(record), journal);
        }
        Ok(())
    }

    /// Removes a shard with everything it holds.
    pub(super) fn remove_shard(
        &mut self,
        id: &str,
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        self.require_shard(id)?;
        // In name order, so every replica journals (and reports) the same sequence.
        let owned: Vec<String> = self.domains_of(id).into_iter().map(String::from).collect();
        for domain in owned {
            self.set_domain(&domain, None, journal);
        }
        let bound: Vec<String> = self
            .bindings()
            .filter(|(_, shard)| *shard == id)
            .map(|(c, _)| c.to_string())
            .collect();
        for cluster in bound {
            self.set_binding(&cluster, None, journal);
        }
        let sliced: Vec<QuotaRecord> = self
            .quotas()
            .filter(|q| q.slices.contains_key(id))
            .cloned()
            .collect();
        for mut quota in sliced {
            quota.slices.remove(id);
            let (provider, region) = (quota.provider.clone(), quota.region.clone());
            self.set_quota(&provider, &region, Some(quota), journal);
        }
        self.set_shard(id, None, journal);
        self.names.prune();
        Ok(())
    }

    /// The shard's record, or the refusal for an unknown shard.
    pub(super) fn require_shard(&self, id: &str) -> Result<&ShardRecord, FleetError> {
        self.shards
            .get(id)
            .ok_or_else(|| FleetError::UnknownShard(id.to_string()))
    }

    /// Refuses a shard that is unknown or draining (it takes nothing new).
    pub(super) fn require_active(&self, id: &str) -> Result<(), FleetError> {
        match self.require_shard(id)?.status {
            ShardStatus::Active => Ok(()),
            ShardStatus::Draining => Err(FleetError::ShardDraining(id.to_string())),
        }
    }
}
