//! The quotas table: (provider, region) → total and per-shard slices; the slices never sum
//! above the total.

use std::collections::BTreeMap;

use crate::fleet::FleetError;
use crate::fleet::state::FleetState;
use crate::fleet::state::journal::Undo;
use crate::fleet::state::records::{QuotaRecord, ShardStatus};

impl FleetState {
    /// Sets a quota's total and all its slices (zero slices are dropped).
    pub(super) fn set_quota_total(
        &mut self,
        (provider, region): (&str, &str),
        total: u64,
        slices: &BTreeMap<String, u64>,
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        if !self.providers.contains_key(provider) {
            return Err(FleetError::UnknownProvider(provider.to_string()));
        }
        let previous = self.quota(provider, region).map(|q| q.slices.clone());
        let slices: BTreeMap<String, u64> = slices
            .iter()
            .filter(|(_, amount)| **amount > 0)
            .map(|(s, a)| (s.clone(), *a))
            .collect();
        self.check_quota(provider, region, total, &slices, previous.as_ref())?;
        let record = QuotaRecord {
            provider: provider.to_string(),
            region: region.to_string(),
            total,
            slices,
            // Stamped by `set_quota`.
            granted: 0,
        };
        self.set_quota(provider, region, Some(record), journal);
        Ok(())
    }

    /// Changes some slices of a quota (an amount of 0 removes a slice).
    pub(super) fn set_quota_slices(
        &mut self,
        (provider, region): (&str, &str),
        slices: &BTreeMap<String, u64>,
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        let existing =
            self.quota(provider, region)
                .cloned()
                .ok_or_else(|| FleetError::UnknownQuota {
                    provider: provider.to_string(),
                    region: region.to_string(),
                })?;
        let mut merged = existing.slices.clone();
        for (shard, amount) in slices {
            if *amount == 0 {
                merged.remove(shard);
            } else {
                merged.insert(shard.clone(), *amount);
            }
        }
        self.check_quota(
            provider,
            region,
            existing.total,
            &merged,
            Some(&existing.slices),
        )?;
        let record = QuotaRecord {
            slices: merged,
            ..existing
        };
        self.set_quota(provider, region, Some(record), journal);
        Ok(())
    }

    /// Deletes a quota.
    pub(super) fn delete_quota(
        &mut self,
        (provider, region): (&str, &str),
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        if self.quota(provider, region).is_none() {
            return Err(FleetError::UnknownQuota {
                provider: provider.to_string(),
                region: region.to_string(),
            });
        }
        self.set_quota(provider, region, None, journal);
        Ok(())
    }

    /// Slices must name registered shards, may not grow on draining shards, and may not sum
    /// above the total.
    fn check_quota(
        &self,
        provider: &str,
        region: &str,
        total: u64,
        slices: &BTreeMap<String, u64>,
        previous: Option<&BTreeMap<String, u64>>,
    ) -> Result<(), FleetError> {
        for (shard, amount) in slices {
            let record = self.require_shard(shard)?;
            let before = previous.and_then(|p| p.get(shard)).copied().unwrap_or(0);
            if record.status == ShardStatus::Draining && *amount > before {
                return Err(FleetError::ShardDraining(shard.clone()));
            }
        }
        let sum: u128 = slices.values().map(|a| *a as u128).sum();
        if sum > total as u128 {
            return Err(FleetError::OverQuota {
                provider: provider.to_string(),
                region: region.to_string(),
                sum,
                total,
            });
        }
        Ok(())
    }
}
