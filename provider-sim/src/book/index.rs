//! The book's indexes: machine ids by domain, by owner and by the cluster they are configured
//! for, live machines per (owner, quota) and in all. Every rule that counts or scans — the
//! slice check, capacity, a cluster's handover, a listing by domain, owner or cluster — reads
//! these instead of every machine the provider ever made.

use std::collections::{BTreeSet, HashMap};

use ballast_protocol::providerpb::Machine;

use super::live;

/// Indexes over the book's machines, kept in step by [`Index::added`] and [`Index::removed`].
#[derive(Debug, Default)]
pub(super) struct Index {
    by_domain: HashMap<String, BTreeSet<String>>,
    by_owner: HashMap<String, BTreeSet<String>>,
    /// Machines configured for a cluster (the field set), by cluster.
    by_cluster: HashMap<String, BTreeSet<String>>,
    /// Live machines per (owner, quota provider, region).
    held: HashMap<(String, String, String), u64>,
    /// Live machines.
    live: u64,
}

fn held_key(machine: &Machine) -> (String, String, String) {
    (
        machine.owner_shard.clone(),
        machine.quota_provider.clone(),
        machine.region.clone(),
    )
}

impl Index {
    /// Counts a machine as it is now.
    pub(super) fn added(&mut self, machine: &Machine) {
        self.by_domain
            .entry(machine.domain.clone())
            .or_default()
            .insert(machine.id.clone());
        self.by_owner
            .entry(machine.owner_shard.clone())
            .or_default()
            .insert(machine.id.clone());
        if !machine.cluster.is_empty() {
            self.by_cluster
                .entry(machine.cluster.clone())
                .or_default()
                .insert(machine.id.clone());
        }
        if live(machine) {
            *self.held.entry(held_key(machine)).or_default() += 1;
            self.live += 1;
        }
    }

    /// Stops counting a machine as it was.
    pub(super) fn removed(&mut self, machine: &Machine) {
        if let Some(ids) = self.by_domain.get_mut(&machine.domain) {
            ids.remove(&machine.id);
            if ids.is_empty() {
                self.by_domain.remove(&machine.domain);
            }
        }
        if let Some(ids) = self.by_owner.get_mut(&machine.owner_shard) {
            ids.remove(&machine.id);
            if ids.is_empty() {
                self.by_owner.remove(&machine.owner_shard);
            }
        }
        if let Some(ids) = self.by_cluster.get_mut(&machine.cluster) {
            ids.remove(&machine.id);
            if ids.is_empty() {
                self.by_cluster.remove(&machine.cluster);
            }
        }
        if live(machine) {
            let key = held_key(machine);
            if let Some(count) = self.held.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.held.remove(&key);
                }
            }
            self.live -= 1;
        }
    }

    /// Live machines `owner` holds of a quota.
    pub(super) fn held(&self, owner: &str, quota_provider: &str, region: &str) -> u64 {
        self.held
            .get(&(
                owner.to_string(),
                quota_provider.to_string(),
                region.to_string(),
            ))
            .copied()
            .unwrap_or(0)
    }

    /// Live machines in all.
    pub(super) fn live(&self) -> u64 {
        self.live
    }

    /// Ids of the machines in a domain, in order.
    pub(super) fn in_domain(&self, domain: &str) -> Option<&BTreeSet<String>> {
        self.by_domain.get(domain)
    }

    /// Ids of the machines configured for a cluster, in order.
    pub(super) fn of_cluster(&self, cluster: &str) -> Option<&BTreeSet<String>> {
        self.by_cluster.get(cluster)
    }

    /// Ids of the machines an owner has, in order.
    pub(super) fn of_owner(&self, owner: &str) -> Option<&BTreeSet<String>> {
        self.by_owner.get(owner)
    }
}
