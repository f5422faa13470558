//! The engine's live model. A shard keeps one [`Engine`] for its whole life and tells it what
//! changed (domains, slices, machines, a cluster's demand, provisions finishing); each
//! [`Engine::decide`] then looks only at what can have moved: needs whose demand changed or
//! that lost machines, needs that were short, machines whose claim is unresolved. Nothing in a
//! steady cycle is proportional to the size of the ledger, which is what keeps a 500K-machine
//! shard's cycle in milliseconds.
//!
//! Indexes, all kept in step with every change:
//! - idle machines per domain and per AZ, by machine shape (smallest fitting machine first);
//! - assigned machines per domain and per AZ, by machine shape and then by the priority of
//!   the work they serve (cheapest victim first for preemption);
//! - machines held by each need; quota use per (provider, region).
//!
//! A need placed anywhere in the shard merges the per-AZ indexes rather than keeping a third,
//! shard-wide copy: every machine that changes state would update that copy too, and those
//! updates of the largest sets were most of a busy cycle's time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

// Keys are machine, domain and need ids the shard itself holds, not attacker-chosen: a fast
// non-keyed hash halves the time to rebuild the engine on a restart.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::ops::Bound::{Excluded, Unbounded};

use super::{
    Inputs, Machine, MachineView, Need, Placement, Plan, Provision, QuotaKey, Resources, Shortfall,
};

/// Items grouped by machine shape, each group in order. A shard has a handful of shapes, so
/// the shape is looked up once and the large ordered sets hold only small keys (a machine id,
/// or a priority and a machine id): a B-tree node's keys then fit in one or two cache lines,
/// which is what an insert or remove among half a million entries spends its time on.
#[derive(Debug)]
struct ByShape<R: Ord> {
    groups: BTreeMap<Resources, BTreeSet<R>>,
    len: usize,
}

impl<R: Ord> Default for ByShape<R> {
    fn default() -> Self {
        ByShape {
            groups: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<R: Ord + Copy> ByShape<R> {
    fn insert(&mut self, shape: Resources, item: R) {
        if self.groups.entry(shape).or_default().insert(item) {
            self.len += 1;
        }
    }

    fn remove(&mut self, shape: &Resources, item: &R) {
        let Some(group) = self.groups.get_mut(shape) else {
            return;
        };
        if group.remove(item) {
            self.len -= 1;
            if group.is_empty() {
                self.groups.remove(shape);
            }
        }
    }

    fn contains(&self, shape: &Resources, item: &R) -> bool {
        self.groups.get(shape).is_some_and(|g| g.contains(item))
    }

    fn len(&self) -> usize {
        self.len
    }

    fn group(&self, shape: &Resources) -> Option<&BTreeSet<R>> {
        self.groups.get(shape)
    }

    /// The groups whose machines cover `wanted`, smallest shape first (so big machines stay
    /// for big needs). Every group listed is non-empty.
    fn covering<'a>(
        &'a self,
        wanted: &'a Resources,
    ) -> impl Iterator<Item = (&'a Resources, &'a BTreeSet<R>)> + 'a {
        self.groups
            .range(*wanted..)
            .filter(move |(shape, _)| shape.covers(wanted))
    }

    /// Adds items sorted by `(shape, item)`, a run per shape built in linear time.
    fn extend_sorted(&mut self, items: &[(Resources, R)]) {
        for run in items.chunk_by(|a, b| a.0 == b.0) {
            let mut set: BTreeSet<R> = run.iter().map(|(_, item)| *item).collect();
            let before = self.groups.get(&run[0].0).map_or(0, BTreeSet::len);
            let group = self.groups.entry(run[0].0).or_default();
            group.append(&mut set);
            self.len += group.len() - before;
        }
    }
}

/// An insert held back while bulk loading: domain, AZ, shape, item.
type PendingInsert<R> = (u32, Option<u32>, Resources, R);

/// One ordered index kept two ways, per domain and per AZ, so that a need placed in a domain
/// or an AZ finds its candidates in one set. A need placed anywhere merges the per-AZ sets (a
/// region has a handful of AZs): a shard-wide set as well would make every machine that
/// changes state pay two more updates of the largest set, the dearest part of a busy cycle.
#[derive(Debug)]
struct Tiered<R: Ord> {
    by_domain: Vec<ByShape<R>>,
    by_az: HashMap<Option<u32>, ByShape<R>>,
    /// Inserts held back while bulk loading: sorted and merged at once, several times faster
    /// than inserting half a million entries one by one.
    pending: Option<Vec<PendingInsert<R>>>,
}

impl<R: Ord> Default for Tiered<R> {
    fn default() -> Self {
        Tiered {
            by_domain: Vec::new(),
            by_az: HashMap::default(),
            pending: None,
        }
    }
}

impl<R: Ord + Copy> Tiered<R> {
    fn insert(&mut self, domain: u32, az: Option<u32>, shape: Resources, item: R) {
        if let Some(pending) = &mut self.pending {
            pending.push((domain, az, shape, item));
            return;
        }
        self.by_domain[domain as usize].insert(shape, item);
        self.by_az.entry(az).or_default().insert(shape, item);
    }

    fn remove(&mut self, domain: u32, az: Option<u32>, shape: Resources, item: &R) {
        self.merge_pending();
        self.by_domain[domain as usize].remove(&shape, item);
        if let Some(set) = self.by_az.get_mut(&az) {
            set.remove(&shape, item);
        }
    }

    fn contains(&self, domain: u32, shape: Resources, item: &R) -> bool {
        self.by_domain[domain as usize].contains(&shape, item)
            || self.pending.as_ref().is_some_and(|p| {
                p.iter()
                    .any(|(d, _, s, i)| *d == domain && *s == shape && i == item)
            })
    }

    /// Whether the per-domain and per-AZ tiers hold as many entries (consistency checks).
    fn consistent(&self) -> bool {
        let by_domain: usize = self.by_domain.iter().map(ByShape::len).sum();
        let by_az: usize = self.by_az.values().map(ByShape::len).sum();
        by_domain == by_az
    }

    /// Starts holding inserts back (see `pending`).
    fn begin_bulk(&mut self, expected: usize) {
        self.pending.get_or_insert_with(Vec::new).reserve(expected);
    }

    /// Merges held-back inserts and stops holding them back.
    fn end_bulk(&mut self) {
        self.merge_pending();
        self.pending = None;
    }

    fn merge_pending(&mut self) {
        let Some(pending) = self.pending.as_mut().filter(|p| !p.is_empty()) else {
            return;
        };
        let mut items = std::mem::take(pending);
        // One sort by (shape, item); bucketing keeps that order, so every tier is built from
        // sorted runs (BTreeSet::from_iter and append take sorted input in linear time).
        items.sort_unstable_by_key(|(_, _, shape, item)| (*shape, *item));
        let mut by_domain: BTreeMap<u32, Vec<(Resources, R)>> = BTreeMap::new();
        let mut by_az: BTreeMap<Option<u32>, Vec<(Resources, R)>> = BTreeMap::new();
        for (domain, az, shape, item) in items {
            by_domain.entry(domain).or_default().push((shape, item));
            by_az.entry(az).or_default().push((shape, item));
        }
        for (domain, run) in by_domain {
            self.by_domain[domain as usize].extend_sorted(&run);
        }
        for (az, run) in by_az {
            self.by_az.entry(az).or_default().extend_sorted(&run);
        }
    }
}

/// Where a need may take machines, with names resolved to dense ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Where {
    Any,
    Az(u32),
    Domain(u32),
}

/// One machine of the ledger.
#[derive(Clone, Debug)]
struct Slot {
    /// Shared with the `machine_ids` key: one allocation per machine.
    id: Arc<str>,
    domain: u32,
    resources: Resources,
    quota: Option<u32>,
    /// The need it serves, once resolved.
    holder: Option<u32>,
    /// A need named by the ledger but not held by it: the machine is outside the shard's
    /// domains, or the claim did not hold (unknown need, no fit, need full) and the next
    /// decision releases it.
    claim: Option<Box<str>>,
}

/// One demand row and what it holds.
#[derive(Clone, Debug)]
struct NeedSlot {
    need: Need,
    at: Where,
    held: BTreeSet<u32>,
}

/// Machines by state, kept current.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineCounts {
    /// In the shard's domains and serving no need.
    pub idle: u64,
    /// Serving a need (or claimed by one and about to be resolved).
    pub assigned: u64,
    /// Outside the shard's domains.
    pub foreign: u64,
}

impl MachineCounts {
    /// Every machine in the ledger.
    pub fn total(&self) -> u64 {
        self.idle + self.assigned + self.foreign
    }
}

/// The provisioning engine with its indexes. See the module documentation.
#[derive(Debug, Default)]
pub struct Engine {
    domain_names: Vec<String>,
    domain_ids: HashMap<String, u32>,
    domain_az: Vec<Option<u32>>,
    az_ids: HashMap<String, u32>,
    owned: Vec<bool>,
    /// Owned domains in name order (placement `Any` candidates).
    owned_list: Vec<u32>,
    owned_by_az: HashMap<u32, Vec<u32>>,

    quota_ids: HashMap<QuotaKey, u32>,
    quota_keys: Vec<QuotaKey>,
    slice: Vec<u64>,
    /// Quotas with a slice, in key order.
    sliced: Vec<u32>,
    quota_held: Vec<u64>,
    quota_in_flight: Vec<u64>,
    /// Idle machines set aside to go back to the provider because their quota holds more than
    /// its slice (the slice shrank, or moved to another shard with the clusters it served).
    surplus: BTreeSet<u32>,
    /// Per quota, how many of `surplus` it has.
    surplus_by_quota: Vec<u64>,

    machines: Vec<Option<Slot>>,
    machine_ids: HashMap<Arc<str>, u32>,
    free_machines: Vec<u32>,
    /// Idle machines in owned domains, by shape.
    idle: Tiered<u32>,
    /// Assigned machines by shape: `(priority of the work, machine)`.
    victims: Tiered<(i32, u32)>,
    foreign: BTreeSet<u32>,
    orphans: BTreeSet<u32>,
    assigned: u64,
    /// Machines whose claim the model dropped outside a decision; the next plan reports them.
    released: Vec<u32>,

    needs: Vec<Option<NeedSlot>>,
    need_ids: HashMap<String, u32>,
    free_needs: Vec<u32>,
    clusters: BTreeMap<String, Vec<u32>>,
    in_flight_by_need: HashMap<String, u32>,
    dirty: BTreeSet<u32>,
    short: BTreeSet<u32>,
    demand_total: u64,
    cursor: usize,
    /// Provisioning held back (the provider is failing); needs go short instead.
    provisioning_paused: bool,
}

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

fn placed(at: Where, domain: u32, domain_az: &[Option<u32>]) -> bool {
    match at {
        Where::Any => true,
        Where::Az(az) => domain_az[domain as usize] == Some(az),
        Where::Domain(d) => d == domain,
    }
}

impl Engine {
    /// An engine holding everything in `inputs`.
    pub fn from_inputs(inputs: &Inputs) -> Engine {
        let mut engine = Engine::default();
        engine.set_domains(&inputs.domains);
        engine.set_slices(&inputs.slices);
        for provision in &inputs.in_flight {
            engine.provision_started(provision);
        }
        for (cluster, rows) in inputs.demand_by_cluster() {
            engine.set_demand(cluster, rows);
        }
        for machine in &inputs.machines {
            engine.upsert_machine(machine);
        }
        engine
    }

    fn domain_id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.domain_ids.get(name) {
            return *id;
        }
        let id = self.domain_names.len() as u32;
        let az = super::domain_az(name).map(|az| self.az_id(&az));
        self.domain_names.push(name.to_string());
        self.domain_ids.insert(name.to_string(), id);
        self.domain_az.push(az);
        self.owned.push(false);
        self.idle.by_domain.push(ByShape::default());
        self.victims.by_domain.push(ByShape::default());
        id
    }

    fn az_id(&mut self, az: &str) -> u32 {
        let next = self.az_ids.len() as u32;
        *self.az_ids.entry(az.to_string()).or_insert(next)
    }

    fn quota_id(&mut self, key: &QuotaKey) -> u32 {
        if let Some(id) = self.quota_ids.get(key) {
            return *id;
        }
        let id = self.quota_keys.len() as u32;
        self.quota_keys.push(key.clone());
        self.quota_ids.insert(key.clone(), id);
        self.slice.push(0);
        self.quota_held.push(0);
        self.quota_in_flight.push(0);
        self.surplus_by_quota.push(0);
        id
    }

    fn quota_of(&mut self, (provider, region): (&str, &str)) -> u32 {
        // A shard has a handful of quotas: a scan beats building an owned key per machine.
        match self
            .quota_keys
            .iter()
            .position(|(p, r)| p == provider && r == region)
        {
            Some(q) => q as u32,
            None => self.quota_id(&(provider.to_string(), region.to_string())),
        }
    }

    fn resolve(&mut self, placement: &Placement) -> Where {
        match placement {
            Placement::Any => Where::Any,
            Placement::Az(az) => Where::Az(self.az_id(az)),
            Placement::Domain(d) => Where::Domain(self.domain_id(d)),
        }
    }

    fn slot(&self, m: u32) -> &Slot {
        self.machines[m as usize]
            .as_ref()
            .expect("live machine slot")
    }

    fn slot_mut(&mut self, m: u32) -> &mut Slot {
        self.machines[m as usize]
            .as_mut()
            .expect("live machine slot")
    }

    fn need(&self, n: u32) -> &NeedSlot {
        self.needs[n as usize].as_ref().expect("live need slot")
    }

    fn need_mut(&mut self, n: u32) -> &mut NeedSlot {
        self.needs[n as usize].as_mut().expect("live need slot")
    }

    fn served(&self, n: u32) -> u32 {
        let need = self.need(n);
        // Usually nothing is being provisioned: no need to hash the id then.
        let in_flight = if self.in_flight_by_need.is_empty() {
            0
        } else {
            self.in_flight_by_need
                .get(&need.need.id)
                .copied()
                .unwrap_or(0)
        };
        need.held.len() as u32 + in_flight
    }

    fn fits(&self, m: u32, n: u32) -> bool {
        let (slot, need) = (self.slot(m), self.need(n));
        self.owned[slot.domain as usize]
            && slot.resources.covers(&need.need.resources)
            && placed(need.at, slot.domain, &self.domain_az)
    }

    /// Replaces the set of domains the shard owns. Machines in domains it lost stop counting
    /// toward their needs (which look for replacements); machines in domains it gained
    /// become usable.
    pub fn set_domains(&mut self, domains: &BTreeSet<String>) {
        let wanted: Vec<u32> = domains.iter().map(|d| self.domain_id(d)).collect();
        if wanted == self.owned_list {
            return;
        }
        let mut owned = vec![false; self.domain_names.len()];
        for d in &wanted {
            owned[*d as usize] = true;
        }
        let changed: HashSet<u32> = (0..owned.len() as u32)
            .filter(|d| owned[*d as usize] != self.owned[*d as usize])
            .collect();
        self.owned_by_az.clear();
        for d in &wanted {
            if let Some(az) = self.domain_az[*d as usize] {
                self.owned_by_az.entry(az).or_default().push(*d);
            }
        }
        self.owned_list = wanted;
        let affected: Vec<u32> = (0..self.machines.len() as u32)
            .filter(|m| {
                self.machines[*m as usize]
                    .as_ref()
                    .is_some_and(|s| changed.contains(&s.domain))
            })
            .collect();
        for m in &affected {
            self.detach(*m);
        }
        self.owned = owned;
        for m in affected {
            self.attach(m);
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
        self.sliced.clear();
        for (key, amount) in slices {
            let q = self.quota_id(key);
            self.slice[q as usize] = *amount;
            self.sliced.push(q);
        }
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

    fn remove_slot(&mut self, m: u32) {
        self.detach(m);
        let slot = self.machines[m as usize].take().expect("live machine slot");
        if let Some(q) = slot.quota {
            self.quota_held[q as usize] -= 1;
        }
        self.machine_ids.remove(&slot.id);
        self.free_machines.push(m);
    }

    /// Takes a machine out of every index; a held machine becomes a claim on its need.
    fn detach(&mut self, m: u32) {
        let slot = self.slot(m).clone();
        if let Some(n) = slot.holder {
            self.unhold(m, n);
            let id: Box<str> = self.need(n).need.id.as_str().into();
            self.slot_mut(m).claim = Some(id);
            self.assigned += 1;
            self.dirty.insert(n);
        } else if self.surplus.remove(&m) {
            if let Some(q) = slot.quota {
                self.surplus_by_quota[q as usize] -= 1;
            }
        } else if self.owned[slot.domain as usize] {
            let az = self.domain_az[slot.domain as usize];
            self.idle.remove(slot.domain, az, slot.resources, &m);
        }
        if (slot.claim.is_some() || slot.holder.is_some()) && self.owned[slot.domain as usize] {
            self.assigned -= 1;
        }
        self.foreign.remove(&m);
        self.orphans.remove(&m);
    }

    /// Puts a detached machine into the indexes its domain and claim call for.
    fn attach(&mut self, m: u32) {
        let claim = self.slot_mut(m).claim.take();
        self.place(m, claim.as_deref());
    }

    /// Indexes a machine that is in no index, given the need its record names.
    fn place(&mut self, m: u32, claim: Option<&str>) {
        let slot = self.slot(m);
        let (domain, resources) = (slot.domain, slot.resources);
        if !self.owned[domain as usize] {
            self.slot_mut(m).claim = claim.map(Into::into);
            self.foreign.insert(m);
            return;
        }
        let Some(claim) = claim else {
            let az = self.domain_az[domain as usize];
            self.idle.insert(domain, az, resources, m);
            return;
        };
        // Adopt at once when the claim holds (the common case on a restart); otherwise the
        // next decision releases it.
        match self.claim_holds(m, claim) {
            Some(n) => self.hold(m, n),
            None => {
                self.slot_mut(m).claim = Some(claim.into());
                self.orphans.insert(m);
                self.assigned += 1;
            }
        }
    }

    /// The need machine `m` may serve under `claim`: it exists, the machine fits it, and it
    /// is not yet fully served.
    fn claim_holds(&self, m: u32, claim: &str) -> Option<u32> {
        self.need_ids
            .get(claim)
            .copied()
            .filter(|n| self.fits(m, *n) && self.served(*n) < self.need(*n).need.count)
    }

    /// Binds an idle or claimed machine (already out of the idle pool) to a need.
    fn hold(&mut self, m: u32, n: u32) {
        let priority = self.need(n).need.priority;
        let slot = self.slot_mut(m);
        let was_claimed = slot.claim.take().is_some();
        slot.holder = Some(n);
        let (domain, resources) = (slot.domain, slot.resources);
        if !was_claimed {
            self.assigned += 1;
        }
        self.need_mut(n).held.insert(m);
        let az = self.domain_az[domain as usize];
        self.victims.insert(domain, az, resources, (priority, m));
    }

    /// Unbinds a held machine from its need (the caller decides where it goes next).
    fn unhold(&mut self, m: u32, n: u32) {
        let priority = self.need(n).need.priority;
        self.need_mut(n).held.remove(&m);
        let slot = self.slot_mut(m);
        slot.holder = None;
        let (domain, resources) = (slot.domain, slot.resources);
        self.assigned -= 1;
        let az = self.domain_az[domain as usize];
        self.victims.remove(domain, az, resources, &(priority, m));
    }

    /// Returns a held or claimed machine to its domain's idle pool.
    fn make_idle(&mut self, m: u32) {
        let slot = self.slot(m);
        let (holder, domain, resources) = (slot.holder, slot.domain, slot.resources);
        if let Some(n) = holder {
            self.unhold(m, n);
        } else if self.slot_mut(m).claim.take().is_some() {
            self.assigned -= 1;
        }
        let az = self.domain_az[domain as usize];
        self.idle.insert(domain, az, resources, m);
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

    /// Machines by state.
    pub fn counts(&self) -> MachineCounts {
        let total = self.machine_ids.len() as u64;
        let foreign = self.foreign.len() as u64;
        MachineCounts {
            idle: total - foreign - self.assigned,
            assigned: self.assigned,
            foreign,
        }
    }

    /// Machines asked for by all current demand.
    pub fn demand_total(&self) -> u64 {
        self.demand_total
    }

    /// Provisions in flight.
    pub fn in_flight(&self) -> u64 {
        self.quota_in_flight.iter().sum()
    }

    /// Machines (held or in flight) above this shard's slices, summed over its quotas: what a
    /// shrunken slice left it holding. Surplus on its way back to the provider counts until
    /// it is gone.
    pub fn above_slices(&self) -> u64 {
        (0..self.slice.len())
            .map(|q| (self.quota_held[q] + self.quota_in_flight[q]).saturating_sub(self.slice[q]))
            .sum()
    }

    /// Use of one quota: machines held, provisions in flight, slice.
    pub fn quota_use(&self, key: &QuotaKey) -> (u64, u64, u64) {
        match self.quota_ids.get(key) {
            Some(q) => {
                let q = *q as usize;
                (self.quota_held[q], self.quota_in_flight[q], self.slice[q])
            }
            None => (0, 0, 0),
        }
    }

    /// The ledger record of one machine as the model holds it now.
    pub fn machine(&self, id: &str) -> Option<Machine> {
        self.machine_ids.get(id).map(|m| self.record(*m))
    }

    fn record(&self, m: u32) -> Machine {
        let slot = self.slot(m);
        Machine {
            id: slot.id.to_string(),
            domain: self.domain_names[slot.domain as usize].clone(),
            resources: slot.resources,
            quota: slot.quota.map(|q| self.quota_keys[q as usize].clone()),
            assigned_to: match slot.holder {
                Some(n) => Some(self.need(n).need.id.clone()),
                None => slot.claim.as_deref().map(str::to_string),
            },
        }
    }

    /// Machines serving `cluster`'s needs, or every machine when `cluster` is empty.
    pub fn allocations(&self, cluster: &str) -> Vec<Machine> {
        if cluster.is_empty() {
            return (0..self.machines.len() as u32)
                .filter(|m| self.machines[*m as usize].is_some())
                .map(|m| self.record(m))
                .collect();
        }
        self.clusters
            .get(cluster)
            .into_iter()
            .flatten()
            .flat_map(|n| self.need(*n).held.iter())
            .map(|m| self.record(*m))
            .collect()
    }

    fn candidates(&self, at: Where) -> &[u32] {
        match at {
            Where::Any => &self.owned_list,
            Where::Az(az) => self.owned_by_az.get(&az).map(Vec::as_slice).unwrap_or(&[]),
            Where::Domain(d) if self.owned[d as usize] => {
                let i = self
                    .owned_list
                    .binary_search_by(|x| {
                        self.domain_names[*x as usize].cmp(&self.domain_names[d as usize])
                    })
                    .expect("owned domain is listed");
                std::slice::from_ref(&self.owned_list[i])
            }
            Where::Domain(_) => &[],
        }
    }

    /// The parts of a tiered index a placement may draw from (every AZ's for `Any`).
    fn pool<'a, R: Ord>(&self, index: &'a Tiered<R>, at: Where) -> Vec<&'a ByShape<R>> {
        match at {
            Where::Any => index.by_az.values().collect(),
            Where::Az(az) => index.by_az.get(&Some(az)).into_iter().collect(),
            Where::Domain(d) if self.owned[d as usize] => vec![&index.by_domain[d as usize]],
            Where::Domain(_) => Vec::new(),
        }
    }

    /// Decides one cycle and applies the decision to the model. The caller persists the
    /// machine records the plan names and the provisions, then starts the provisions.
    pub fn decide(&mut self) -> Plan {
        let mut plan = Plan::default();
        for m in std::mem::take(&mut self.released) {
            if self.machines[m as usize].is_some() {
                plan.release.push(self.slot(m).id.to_string());
            }
        }

        // Changed needs keep only the machines that still fit, up to their count.
        for n in std::mem::take(&mut self.dirty) {
            if self.needs[n as usize].is_none() {
                continue;
            }
            let held: Vec<u32> = self.need(n).held.iter().copied().collect();
            for m in held {
                if !self.fits(m, n) {
                    self.release(m, &mut plan);
                }
            }
            while self.served(n) > self.need(n).need.count {
                let Some(&m) = self.need(n).held.last() else {
                    break;
                };
                self.release(m, &mut plan);
            }
            self.short.insert(n);
        }

        // Claims that did not hold when their machine arrived. A need arriving since may take
        // them; otherwise they are released.
        for m in std::mem::take(&mut self.orphans) {
            let claim = self
                .slot(m)
                .claim
                .as_deref()
                .expect("orphans carry a claim");
            match self.claim_holds(m, claim) {
                Some(n) => self.hold(m, n),
                None => self.release(m, &mut plan),
            }
        }

        // Serve what is short, by priority (then id, for determinism).
        let mut queue: BTreeSet<(Reverse<i32>, String, u32)> = std::mem::take(&mut self.short)
            .into_iter()
            .map(|n| {
                let need = &self.need(n).need;
                (Reverse(need.priority), need.id.clone(), n)
            })
            .collect();
        // Pools only shrink while serving, so once a shape found nothing, later needs of the
        // same shape (and no higher priority) find nothing either.
        let mut idle_exhausted: HashSet<(Resources, Where)> = HashSet::default();
        let mut victims_exhausted: HashMap<(Resources, Where), i32> = HashMap::default();
        while let Some((_, _, n)) = queue.pop_first() {
            let need = self.need(n);
            let (resources, at, priority) = (need.need.resources, need.at, need.need.priority);
            let mut missing = need.need.count.saturating_sub(self.served(n));
            if missing == 0 {
                continue;
            }
            let shape = (resources, at);
            if !idle_exhausted.contains(&shape) {
                missing -= self.take_idle(n, missing, &mut plan);
                if missing > 0 {
                    idle_exhausted.insert(shape);
                }
            }
            if missing > 0 {
                missing -= self.provision(n, missing, &mut plan);
            }
            if missing > 0 && victims_exhausted.get(&shape).is_none_or(|p| *p < priority) {
                for from in self.preempt(n, &mut missing, &mut plan) {
                    let need = &self.need(from).need;
                    queue.insert((Reverse(need.priority), need.id.clone(), from));
                }
                if missing > 0 {
                    victims_exhausted.insert(shape, priority);
                }
            }
            if missing > 0 {
                self.short.insert(n);
                plan.shortfalls.push(Shortfall {
                    need: self.need(n).need.id.clone(),
                    missing,
                });
            }
        }
        plan.foreign = self
            .foreign
            .iter()
            .map(|m| self.slot(*m).id.to_string())
            .collect();
        self.set_aside_surplus();
        plan.surplus = self
            .surplus
            .iter()
            .map(|m| self.slot(*m).id.to_string())
            .collect();
        plan
    }

    /// Sets an idle machine aside for return to the provider (a restart resuming returns that
    /// were under way). Machines at work or outside the shard's domains stay where they are.
    pub fn set_aside(&mut self, id: &str) {
        let Some(&m) = self.machine_ids.get(id) else {
            return;
        };
        let slot = self.slot(m);
        let (domain, shape, quota) = (slot.domain, slot.resources, slot.quota);
        let idle = slot.holder.is_none() && slot.claim.is_none() && self.owned[domain as usize];
        let Some(q) = quota.filter(|_| idle && !self.surplus.contains(&m)) else {
            return;
        };
        let az = self.domain_az[domain as usize];
        self.idle.remove(domain, az, shape, &m);
        self.surplus.insert(m);
        self.surplus_by_quota[q as usize] += 1;
    }

    /// Sets idle machines aside for return to the provider wherever a quota holds more than
    /// its slice. Foreign machines count toward the quota but are on their way out already, so
    /// they are not replaced by idle ones; machines serving a need are never taken: a shard
    /// above a shrunken slice gets back under it as its work lets machines go.
    fn set_aside_surplus(&mut self) {
        let over = |e: &Engine, q: usize| {
            e.quota_held[q] + e.quota_in_flight[q] > e.slice[q] + e.surplus_by_quota[q]
        };
        if !(0..self.slice.len()).any(|q| over(self, q)) {
            return;
        }
        // Rare (a slice shrank): one pass over the ledger finds foreign and idle machines.
        let mut foreign = vec![0u64; self.slice.len()];
        for &m in &self.foreign {
            if let Some(q) = self.slot(m).quota {
                foreign[q as usize] += 1;
            }
        }
        let mut excess: Vec<u64> = (0..self.slice.len())
            .map(|q| {
                (self.quota_held[q] + self.quota_in_flight[q])
                    .saturating_sub(self.slice[q] + self.surplus_by_quota[q] + foreign[q])
            })
            .collect();
        let idle: Vec<(u32, u32)> = self
            .machines
            .iter()
            .enumerate()
            .filter_map(|(m, slot)| {
                let slot = slot.as_ref()?;
                let q = slot.quota?;
                let free = slot.holder.is_none()
                    && slot.claim.is_none()
                    && self.owned[slot.domain as usize]
                    && !self.surplus.contains(&(m as u32));
                (free && excess[q as usize] > 0).then_some((m as u32, q))
            })
            .collect();
        for (m, q) in idle {
            if excess[q as usize] == 0 {
                continue;
            }
            excess[q as usize] -= 1;
            let id = self.slot(m).id.clone();
            self.set_aside(&id);
        }
    }

    fn release(&mut self, m: u32, plan: &mut Plan) {
        self.make_idle(m);
        plan.release.push(self.slot(m).id.to_string());
    }

    /// Takes up to `wanted` idle machines that fit need `n`, smallest first so big machines
    /// stay for big needs. Returns how many it took.
    fn take_idle(&mut self, n: u32, wanted: u32, plan: &mut Plan) -> u32 {
        let (resources, at) = (self.need(n).need.resources, self.need(n).at);
        let pools = self.pool(&self.idle, at);
        // The first `wanted` of each part, merged: the first `wanted` in (shape, machine) order.
        let mut picked: Vec<(Resources, u32)> = Vec::new();
        for pool in &pools {
            picked.extend(
                pool.covering(&resources)
                    .flat_map(|(shape, machines)| machines.iter().map(|m| (*shape, *m)))
                    .take(wanted as usize),
            );
        }
        if pools.len() > 1 {
            picked.sort_unstable();
            picked.truncate(wanted as usize);
        }
        for &(_, m) in &picked {
            let slot = self.slot(m);
            let (domain, shape) = (slot.domain, slot.resources);
            let az = self.domain_az[domain as usize];
            self.idle.remove(domain, az, shape, &m);
            self.hold(m, n);
            plan.assign
                .push((self.slot(m).id.to_string(), self.need(n).need.id.clone()));
        }
        picked.len() as u32
    }

    /// Starts up to `wanted` provisions for need `n` within quota, spreading them over the
    /// domains its placement allows. Returns how many it started.
    fn provision(&mut self, n: u32, wanted: u32, plan: &mut Plan) -> u32 {
        if self.provisioning_paused {
            return 0;
        }
        let has_room = self.sliced.iter().any(|q| {
            let q = *q as usize;
            self.slice[q] > self.quota_held[q] + self.quota_in_flight[q]
        });
        if !has_room {
            return 0;
        }
        let candidates = self.candidates(self.need(n).at).to_vec();
        if candidates.is_empty() {
            return 0;
        }
        let mut started = 0;
        for q in self.sliced.clone() {
            let used = self.quota_held[q as usize] + self.quota_in_flight[q as usize];
            let mut room = self.slice[q as usize].saturating_sub(used);
            while started < wanted && room > 0 {
                let domain = candidates[self.cursor % candidates.len()];
                self.cursor = self.cursor.wrapping_add(1);
                let provision = Provision {
                    need: self.need(n).need.id.clone(),
                    domain: self.domain_names[domain as usize].clone(),
                    quota: self.quota_keys[q as usize].clone(),
                    resources: self.need(n).need.resources,
                };
                self.provision_started(&provision);
                plan.provision.push(provision);
                room -= 1;
                started += 1;
            }
        }
        started
    }

    /// Moves machines serving lower-priority needs to need `n`, cheapest victim first.
    /// Returns the needs that lost machines (they look for replacements this same cycle).
    fn preempt(&mut self, n: u32, missing: &mut u32, plan: &mut Plan) -> Vec<u32> {
        let (resources, at, priority) = {
            let need = self.need(n);
            (need.need.resources, need.at, need.need.priority)
        };
        // The cheapest victim of each machine shape that fits in each part of the pool,
        // merged by priority.
        let pools = self.pool(&self.victims, at);
        let mut heads: BinaryHeap<Reverse<(i32, u32, Resources, usize)>> = pools
            .iter()
            .enumerate()
            .flat_map(|(part, pool)| {
                pool.covering(&resources)
                    .filter_map(move |(shape, victims)| {
                        victims.first().map(|&(p, m)| (p, m, *shape, part))
                    })
            })
            .filter(|(p, ..)| *p < priority)
            .map(Reverse)
            .collect();
        let mut taken: Vec<u32> = Vec::new();
        while taken.len() < *missing as usize {
            let Some(Reverse((p, m, shape, part))) = heads.pop() else {
                break;
            };
            taken.push(m);
            let after = pools[part]
                .group(&shape)
                .and_then(|victims| victims.range((Excluded((p, m)), Unbounded)).next())
                .filter(|(p, _)| *p < priority);
            if let Some(&(p, m)) = after {
                heads.push(Reverse((p, m, shape, part)));
            }
        }
        let mut losers = Vec::new();
        for m in taken {
            let from = self.slot(m).holder.expect("victims are held");
            self.unhold(m, from);
            self.hold(m, n);
            plan.preempt.push((
                self.slot(m).id.to_string(),
                self.need(from).need.id.clone(),
                self.need(n).need.id.clone(),
            ));
            *missing -= 1;
            losers.push(from);
        }
        losers.sort_unstable();
        losers.dedup();
        losers
    }

    /// Checks that every index agrees with the machines and needs (tests and debugging).
    pub fn check(&self) -> Result<(), String> {
        let mut assigned = 0;
        for (m, slot) in self.machines.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let m = m as u32;
            let owned = self.owned[slot.domain as usize];
            let idle = self.idle.contains(slot.domain, slot.resources, &m);
            if owned == self.foreign.contains(&m) {
                return Err(format!("machine {}: foreign index wrong", slot.id));
            }
            if let Some(n) = slot.holder {
                assigned += 1;
                if slot.claim.is_some() || idle || self.orphans.contains(&m) {
                    return Err(format!("machine {}: held and also elsewhere", slot.id));
                }
                if !self.need(n).held.contains(&m) || !self.fits(m, n) {
                    return Err(format!("machine {}: holder does not hold it", slot.id));
                }
                let key = (self.need(n).need.priority, m);
                if !self.victims.contains(slot.domain, slot.resources, &key) {
                    return Err(format!("machine {}: missing from victims", slot.id));
                }
            } else if owned {
                let orphan = self.orphans.contains(&m);
                let idle = idle || self.surplus.contains(&m);
                if orphan != slot.claim.is_some() || orphan == idle {
                    return Err(format!("machine {}: neither idle nor claimed", slot.id));
                }
                if orphan {
                    assigned += 1;
                }
            }
        }
        if !self.idle.consistent() || !self.victims.consistent() {
            return Err("per-domain, per-AZ and shard-wide indexes disagree".into());
        }
        if assigned != self.assigned {
            return Err(format!(
                "assigned count {} but {assigned} machines assigned",
                self.assigned
            ));
        }
        for (n, need) in self.needs.iter().enumerate() {
            let Some(need) = need else { continue };
            let n = n as u32;
            if need.held.iter().any(|m| self.slot(*m).holder != Some(n)) {
                return Err(format!(
                    "need {} lists a machine it does not hold",
                    need.need.id
                ));
            }
            let in_flight = self.in_flight_by_need.get(&need.need.id).copied();
            if need.held.len() as u32 + in_flight.unwrap_or(0) > need.need.count
                && !need.held.is_empty()
                && !self.dirty.contains(&n)
            {
                return Err(format!("need {} holds more than it asks", need.need.id));
            }
        }
        Ok(())
    }

    /// Every need served (held plus in flight) below its count, with what it lacks, by id
    /// (tests: after a decision these are exactly the plan's shortfalls).
    pub fn unserved(&self) -> Vec<(String, u32)> {
        let mut unserved: Vec<(String, u32)> = (0..self.needs.len() as u32)
            .filter(|n| self.needs[*n as usize].is_some())
            .filter_map(|n| {
                let missing = self.need(n).need.count.checked_sub(self.served(n))?;
                (missing > 0).then(|| (self.need(n).need.id.clone(), missing))
            })
            .collect();
        unserved.sort();
        unserved
    }

    /// Whether an idle machine in the shard's domains would fit a need that is short — after a
    /// decision this must be false for every short need (tests).
    pub fn idle_fits_a_short_need(&self) -> Option<String> {
        for n in &self.short {
            let need = self.need(*n);
            for &d in self.candidates(need.at) {
                if self.idle.by_domain[d as usize]
                    .covering(&need.need.resources)
                    .next()
                    .is_some()
                {
                    return Some(need.need.id.clone());
                }
            }
        }
        None
    }
}
