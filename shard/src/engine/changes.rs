//! The changes a shard feeds its [`Engine`] between decisions: the domains and quota slices it
//! owns, machines arriving in or leaving the ledger (one at a time, or in bulk on a restart),
//! provisions starting and finishing, and a cluster's demand replaced. Each change updates the
//! indexes at once and marks what the next [`Engine::decide`] must look at again; none decides
//! anything itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

// Dense ids the shard itself assigns: no need for a keyed hash (see `model.rs`).

use super::model::{Engine, NeedSlot, Slot};
use super::{Machine, MachineView, Need, Provision, QuotaKey};

/// Puts `item` in a free slot of `slots` (or a new one) and returns its index.
fn allocate<T>(slots: &mut Vec<Option<T>>, free: &mut Vec<u32>, item: T) -> u32 {
    match free.pop() {
        Some(i) => {
            slots[i as usize] = Some(item);
            i
        }
        None => {
            slots.push(Some(item));
            (slots.len() - 1) as u32
        }
    }
}

impl Engine {
    /// Replaces the set of domains the shard owns: where it may create machines. Machines it
    /// holds keep serving wherever their domain went (ADR 0016).
    pub fn set_domains(&mut self, domains: &BTreeSet<String>) {
        let wanted: Vec<u32> = domains.iter().map(|d| self.domain_id(d)).collect();
        if wanted == self.owned_list {
            return;
        }
        let mut owned = vec![false; self.domain_names.len()];
        for d in &wanted {
            owned[*d as usize] = true;
        }
        self.owned_by_az.clear();
        for d in &wanted {
            if let Some(az) = self.domain_az[*d as usize] {
                self.owned_by_az.entry(az).or_default().push(*d);
            }
        }
        self.owned_list = wanted;
        self.owned = owned;
    }

    /// Marks `cluster` as being adopted with its machines (or no longer): meanwhile its needs
    /// are reported short and served from nothing else, so the adopted machines find them
    /// open when they arrive.
    pub fn await_adoption(&mut self, cluster: &str, waiting: bool) {
        if waiting {
            self.adopting.insert(cluster.to_string());
        } else if self.adopting.remove(cluster)
            && let Some(needs) = self.clusters.get(cluster)
        {
            self.dirty.extend(needs.iter().copied());
        }
    }

    /// Holds provisioning back (or lets it go again). While paused, decisions still assign
    /// idle machines and preempt, and report what they could not serve as shortfalls.
    pub fn pause_provisioning(&mut self, paused: bool) {
        self.provisioning_paused = paused;
    }

    /// Replaces the quota slices.
    pub fn set_slices(&mut self, slices: &BTreeMap<QuotaKey, u64>) {
        for s in self.slice.iter_mut() {
            *s = 0;
        }
        for (key, amount) in slices {
            let q = self.quota_id(key);
            self.slice[q as usize] = *amount;
        }
        self.refresh_sliced();
    }

    /// Holds new provisions back under these quotas (their slices still count, so nothing
    /// becomes surplus): the provider refused the slice table the shard holds for them.
    pub fn block_quotas(&mut self, blocked: &BTreeSet<QuotaKey>) {
        self.blocked_quotas = blocked.clone();
        self.refresh_sliced();
    }

    fn refresh_sliced(&mut self) {
        self.sliced = self
            .quota_keys
            .iter()
            .enumerate()
            .filter(|(q, key)| self.slice[*q] > 0 && !self.blocked_quotas.contains(*key))
            .map(|(q, _)| q as u32)
            .collect();
        // In key order, as before: spreading provisions over quotas stays deterministic.
        self.sliced
            .sort_by(|a, b| self.quota_keys[*a as usize].cmp(&self.quota_keys[*b as usize]));
    }

    /// Counts a provision as in flight: it uses its quota and serves its need until it finishes.
    pub fn provision_started(&mut self, provision: &Provision) {
        let q = self.quota_id(&provision.quota);
        self.quota_in_flight[q as usize] += 1;
        *self
            .in_flight_by_need
            .entry(provision.need.clone())
            .or_insert(0) += 1;
    }

    /// A provision finished: with the machine it made, or without (failed or fenced), in which
    /// case its need looks again next decision.
    pub fn provision_finished(&mut self, provision: &Provision, made: Option<&Machine>) {
        if let Some(q) = self.quota_ids.get(&provision.quota) {
            let count = &mut self.quota_in_flight[*q as usize];
            *count = count.saturating_sub(1);
        }
        if let Some(count) = self.in_flight_by_need.get_mut(&provision.need) {
            *count -= 1;
            if *count == 0 {
                self.in_flight_by_need.remove(&provision.need);
            }
        }
        if let Some(n) = self.need_ids.get(&provision.need) {
            self.dirty.insert(*n);
        }
        if let Some(machine) = made {
            self.upsert_machine(machine);
        }
    }

    /// Adds a machine to the ledger, or replaces what the ledger knew about it. Its
    /// `assigned_to` is a claim, checked at the next decision.
    pub fn upsert_machine(&mut self, machine: &Machine) {
        self.upsert(machine.view());
    }

    /// Loads many machines at once (a restart): the same as calling [`Engine::upsert`] for
    /// each, with the indexes built in bulk at the end. `expected` is how many machines
    /// `load` brings (a hint: the tables are sized for it up front instead of growing).
    pub fn bulk_load<E>(
        &mut self,
        expected: usize,
        load: impl FnOnce(&mut dyn FnMut(MachineView<'_>)) -> Result<(), E>,
    ) -> Result<(), E> {
        self.machines.reserve(expected);
        self.machine_ids.reserve(expected);
        self.idle.begin_bulk(expected);
        self.victims.begin_bulk(expected);
        let loaded = load(&mut |machine| self.upsert(machine));
        self.idle.end_bulk();
        self.victims.end_bulk();
        loaded
    }

    /// [`Engine::upsert_machine`] from a borrowed record (no copies of its strings).
    pub fn upsert(&mut self, machine: MachineView<'_>) {
        if let Some(&m) = self.machine_ids.get(machine.id) {
            self.remove_slot(m);
        }
        let domain = self.domain_id(machine.domain);
        let quota = machine.quota.map(|q| self.quota_of(q));
        if let Some(q) = quota {
            self.quota_held[q as usize] += 1;
        }
        let id: Arc<str> = machine.id.into();
        let slot = Slot {
            id: id.clone(),
            domain,
            resources: machine.resources,
            quota,
            holder: None,
            claim: None,
        };
        let m = allocate(&mut self.machines, &mut self.free_machines, slot);
        self.machine_ids.insert(id, m);
        self.place(m, machine.assigned_to);
    }

    /// Drops a machine from the ledger (it was returned to the provider).
    pub fn remove_machine(&mut self, id: &str) -> bool {
        match self.machine_ids.get(id) {
            Some(&m) => {
                self.remove_slot(m);
                true
            }
            None => false,
        }
    }

    /// Takes machine `m` out of every index and frees its slot.
    fn remove_slot(&mut self, m: u32) {
        self.detach(m);
        let slot = self.machines[m as usize].take().expect("live machine slot");
        if let Some(q) = slot.quota {
            self.quota_held[q as usize] -= 1;
        }
        self.machine_ids.remove(&slot.id);
        self.free_machines.push(m);
    }

    /// Replaces a cluster's demand (full replacement). Rows that did not change keep their
    /// machines untouched; machines of rows that went away become idle.
    pub fn set_demand(&mut self, cluster: &str, rows: Vec<Need>) {
        let old = self.clusters.remove(cluster).unwrap_or_default();
        for n in &old {
            self.demand_total -= u64::from(self.need(*n).need.count);
        }
        let mut kept = Vec::with_capacity(rows.len());
        for (i, row) in rows.into_iter().enumerate() {
            self.demand_total += u64::from(row.count);
            // A cluster sends its rows in the same order each time: the row at the same
            // position is found without hashing its id.
            let same_place = old
                .get(i)
                .copied()
                .filter(|n| self.need(*n).need.id == row.id);
            match same_place.or_else(|| self.need_ids.get(&row.id).copied()) {
                Some(n) => {
                    self.update_need(n, row);
                    kept.push(n);
                }
                None => {
                    let at = self.resolve(&row.placement);
                    let id = row.id.clone();
                    let slot = NeedSlot {
                        need: row,
                        at,
                        held: BTreeSet::new(),
                    };
                    let n = allocate(&mut self.needs, &mut self.free_needs, slot);
                    self.need_ids.insert(id, n);
                    self.dirty.insert(n);
                    kept.push(n);
                }
            }
        }
        // An id names one need, so an old row is still present exactly when its need is kept.
        let mut present = kept.clone();
        present.sort_unstable();
        for n in old {
            if present.binary_search(&n).is_err() {
                self.remove_need(n);
            }
        }
        if !kept.is_empty() {
            self.clusters.insert(cluster.to_string(), kept);
        }
    }

    /// Replaces need `n`'s row, re-keying its machines among the victims if its priority
    /// changed; the next decision checks what it holds.
    fn update_need(&mut self, n: u32, row: Need) {
        let current = &self.need(n).need;
        if *current == row {
            return;
        }
        let priority_changed = current.priority != row.priority;
        let at = self.resolve(&row.placement);
        if priority_changed {
            let held: Vec<u32> = self.need(n).held.iter().copied().collect();
            for m in &held {
                self.unhold(*m, n);
            }
            self.need_mut(n).need.priority = row.priority;
            for m in held {
                self.hold(m, n);
            }
        }
        let slot = self.need_mut(n);
        slot.need = row;
        slot.at = at;
        self.dirty.insert(n);
    }

    /// Drops need `n`: its machines become idle (the next plan releases them) and its slot is
    /// freed.
    fn remove_need(&mut self, n: u32) {
        let held: Vec<u32> = self.need(n).held.iter().copied().collect();
        for m in held {
            self.make_idle(m);
            self.released.push(m);
        }
        let slot = self.needs[n as usize].take().expect("live need slot");
        self.need_ids.remove(&slot.need.id);
        self.dirty.remove(&n);
        self.short.remove(&n);
        self.free_needs.push(n);
    }
}
