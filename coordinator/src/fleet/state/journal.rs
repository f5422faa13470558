//! The only code that writes the tables: each mutation journaled (so a refused command is
//! undone exactly), and the journal turned into the net changes assignment watches are built
//! from.

use std::collections::{BTreeMap, HashSet};

use crate::fleet::names::Name;
use crate::fleet::state::FleetState;
use crate::fleet::state::records::{
    BindingRow, DomainRow, ProviderRecord, QuotaRecord, ShardRecord,
};
use crate::fleet::table::NameTable;

/// Sets or removes `key` in `map`, returning the previous value.
pub(super) fn put<V>(map: &mut BTreeMap<String, V>, key: &str, value: Option<V>) -> Option<V> {
    match value {
        Some(v) => map.insert(key.to_string(), v),
        None => map.remove(key),
    }
}

/// Sets or removes a row of a name table, returning the previous value.
pub(super) fn put_row<V: Clone>(
    table: &mut NameTable<V>,
    key: &str,
    value: Option<V>,
) -> Option<V> {
    match value {
        Some(v) => table.insert(key, v).1,
        None => table.remove(key).map(|(_, old)| old),
    }
}

/// One net change made by a command, with the value before and after; assignment watches are
/// built from these. Replicas keep thousands of changes in memory and most are domain moves:
/// names are thin pointers, shard names shared with the state ([`Name`]), and records boxed,
/// so a domain move costs one 32-byte slot and its domain's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A shard record changed (registered, renewed, drained, activated, removed).
    Shard {
        /// Shard id.
        id: Name,
        /// Before.
        old: Option<Box<ShardRecord>>,
        /// After.
        new: Option<Box<ShardRecord>>,
    },
    /// A domain changed owner (or was given again to the same owner, with a new grant: its
    /// grant is the revision of the change).
    Domain {
        /// Domain.
        domain: Name,
        /// Owner before.
        old: Option<Name>,
        /// Owner after.
        new: Option<Name>,
    },
    /// A cluster binding changed.
    Binding {
        /// Cluster.
        cluster: Name,
        /// Shard before.
        old: Option<Name>,
        /// Shard after.
        new: Option<Name>,
    },
    /// A quota or its slices changed. Its provider and region are in the records (one of
    /// them is there: a change has a value before or after).
    Quota {
        /// Before.
        old: Option<Box<QuotaRecord>>,
        /// After.
        new: Option<Box<QuotaRecord>>,
    },
    /// A provider changed.
    Provider {
        /// Name.
        name: Name,
        /// Before.
        old: Option<Box<ProviderRecord>>,
        /// After.
        new: Option<Box<ProviderRecord>>,
    },
}

/// One reversible mutation, recorded so a failed command (or batch) can be undone exactly.
pub(super) enum Undo {
    Shard(String, Option<ShardRecord>),
    /// The name in the form the change history keeps, so a change reuses it.
    Domain(Name, Option<DomainRow>),
    Binding(Name, Option<BindingRow>),
    Quota(String, String, Option<QuotaRecord>),
    Provider(String, Option<ProviderRecord>),
}

impl FleetState {
    /// A domain or cluster that left its shard and came back within one command (a batch)
    /// was never observably elsewhere: it keeps the grant it had, so its shard's calls stay
    /// valid.
    pub(super) fn keep_grants_of_round_trips(&mut self, journal: &[Undo]) {
        let mut seen: HashSet<(bool, &str)> = HashSet::new();
        for undo in journal {
            match undo {
                Undo::Domain(domain, Some(old)) if seen.insert((true, &**domain)) => {
                    if let Some(row) = self.domains.get_mut(domain)
                        && row.shard == old.shard
                    {
                        row.granted = old.granted;
                    }
                }
                Undo::Binding(cluster, Some(old)) if seen.insert((false, &**cluster)) => {
                    if let Some(row) = self.bindings.get_mut(cluster)
                        && row.shard == old.shard
                    {
                        row.granted = old.granted;
                    }
                }
                Undo::Domain(domain, None) => {
                    seen.insert((true, &**domain));
                }
                Undo::Binding(cluster, None) => {
                    seen.insert((false, &**cluster));
                }
                _ => {}
            }
        }
    }

    /// Turns a journal into net changes: one per key, the old value from its first mutation,
    /// the new value from the state now; keys that ended where they started are left out.
    pub(super) fn changes_from(&self, journal: Vec<Undo>) -> Vec<Change> {
        // Keyed by shared names: a domain or binding change costs no allocation here.
        let mut seen: HashSet<(&'static str, Name)> = HashSet::new();
        let mut changes = Vec::new();
        for undo in journal {
            let change = match undo {
                Undo::Shard(id, old) => {
                    let new = self.shards.get(&id).cloned();
                    (seen.insert(("shard", Name::from(id.as_str()))) && old != new).then(|| {
                        Change::Shard {
                            id: id.into(),
                            old: old.map(Box::new),
                            new: new.map(Box::new),
                        }
                    })
                }
                Undo::Domain(domain, old) => {
                    let new = self.domains.get(&domain).cloned();
                    (seen.insert(("domain", domain.clone())) && old != new).then(|| {
                        Change::Domain {
                            domain,
                            old: old.map(|row| row.shard),
                            new: new.map(|row| row.shard),
                        }
                    })
                }
                Undo::Binding(cluster, old) => {
                    let new = self.bindings.get(&cluster).cloned();
                    (seen.insert(("binding", cluster.clone())) && old != new).then(|| {
                        Change::Binding {
                            cluster,
                            old: old.map(|row| row.shard),
                            new: new.map(|row| row.shard),
                        }
                    })
                }
                Undo::Quota(provider, region, old) => {
                    let new = self.quota(&provider, &region).cloned();
                    let key = format!("{provider}/{region}");
                    (seen.insert(("quota", Name::from(key))) && old != new).then(|| Change::Quota {
                        old: old.map(Box::new),
                        new: new.map(Box::new),
                    })
                }
                Undo::Provider(name, old) => {
                    let new = self.providers.get(&name).cloned();
                    (seen.insert(("provider", Name::from(name.as_str()))) && old != new).then(
                        || Change::Provider {
                            name: name.into(),
                            old: old.map(Box::new),
                            new: new.map(Box::new),
                        },
                    )
                }
            };
            changes.extend(change);
        }
        changes
    }

    pub(super) fn set_shard(
        &mut self,
        id: &str,
        value: Option<ShardRecord>,
        journal: &mut Vec<Undo>,
    ) {
        let old = put(&mut self.shards, id, value.clone());
        if old != value {
            journal.push(Undo::Shard(id.to_string(), old));
        }
    }

    pub(super) fn set_domain(
        &mut self,
        domain: &str,
        owner: Option<&str>,
        journal: &mut Vec<Undo>,
    ) {
        let current = self.domains.get(domain);
        if current.map(|row| &*row.shard) == owner {
            // Already so: the owner keeps the grant it has.
            return;
        }
        // A new owner's grant is the revision this command will produce.
        let row = owner.map(|shard| DomainRow {
            shard: self.names.get(shard),
            granted: self.revision + 1,
        });
        let old = self.put_domain(domain, row);
        journal.push(Undo::Domain(Name::from(domain), old));
    }

    /// Writes a domain's row and keeps the per-shard index in step.
    pub(super) fn put_domain(&mut self, domain: &str, row: Option<DomainRow>) -> Option<DomainRow> {
        let (slot, owner, old) = match row {
            Some(row) => {
                let owner = row.shard.clone();
                let (slot, old) = self.domains.insert(domain, row);
                (slot, Some(owner), old)
            }
            None => {
                let (slot, old) = self.domains.remove(domain)?;
                (slot, None, Some(old))
            }
        };
        if let Some(previous) = &old
            && let Some(set) = self.domains_by_shard.get_mut(&previous.shard)
        {
            set.remove(&slot);
            if set.is_empty() {
                self.domains_by_shard.remove(&previous.shard);
            }
        }
        if let Some(shard) = owner {
            self.domains_by_shard.entry(shard).or_default().insert(slot);
        }
        old
    }

    pub(super) fn set_binding(
        &mut self,
        cluster: &str,
        shard: Option<&str>,
        journal: &mut Vec<Undo>,
    ) {
        if self.bindings.get(cluster).map(|row| &*row.shard) == shard {
            // Already so: the shard keeps the grant it has.
            return;
        }
        // A new shard's grant is the revision this command will produce.
        let row = shard.map(|shard| BindingRow {
            shard: self.names.get(shard),
            granted: self.revision + 1,
        });
        let old = put_row(&mut self.bindings, cluster, row);
        journal.push(Undo::Binding(Name::from(cluster), old));
    }

    pub(super) fn set_quota(
        &mut self,
        provider: &str,
        region: &str,
        value: Option<QuotaRecord>,
        journal: &mut Vec<Undo>,
    ) {
        // The slice table's grant moves only when a slice does: a new total alone leaves
        // every holder's grant as it was.
        let value = value.map(|mut record| {
            record.granted = match self.quota(provider, region) {
                Some(current) if current.slices == record.slices => current.granted,
                _ => self.revision + 1,
            };
            record
        });
        let old = self.put_quota(provider, region, value.clone());
        if old != value {
            journal.push(Undo::Quota(provider.to_string(), region.to_string(), old));
        }
    }

    pub(super) fn put_quota(
        &mut self,
        provider: &str,
        region: &str,
        value: Option<QuotaRecord>,
    ) -> Option<QuotaRecord> {
        match value {
            Some(v) => self
                .quotas
                .entry(provider.to_string())
                .or_default()
                .insert(region.to_string(), v),
            None => {
                let regions = self.quotas.get_mut(provider)?;
                let old = regions.remove(region);
                if regions.is_empty() {
                    self.quotas.remove(provider);
                }
                old
            }
        }
    }

    pub(super) fn set_provider(
        &mut self,
        name: &str,
        value: Option<ProviderRecord>,
        journal: &mut Vec<Undo>,
    ) {
        let old = put(&mut self.providers, name, value.clone());
        if old != value {
            journal.push(Undo::Provider(name.to_string(), old));
        }
    }

    /// Undoes journaled mutations newest first, restoring the exact previous state.
    pub(super) fn rollback(&mut self, journal: Vec<Undo>) {
        for undo in journal.into_iter().rev() {
            match undo {
                Undo::Shard(id, old) => {
                    put(&mut self.shards, &id, old);
                }
                Undo::Domain(domain, old) => {
                    self.put_domain(&domain, old);
                }
                Undo::Binding(cluster, old) => {
                    put_row(&mut self.bindings, &cluster, old);
                }
                Undo::Quota(provider, region, old) => {
                    self.put_quota(&provider, &region, old);
                }
                Undo::Provider(name, old) => {
                    put(&mut self.providers, &name, old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The history keeps thousands of changes, most of them domain moves: three thin names.
    #[test]
    fn a_change_is_four_words() {
        assert_eq!(std::mem::size_of::<Change>(), 32);
    }
}
