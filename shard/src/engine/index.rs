//! The ordered indexes the engine finds machines in, and their maintenance. Kept in step with
//! every change:
//! - idle machines per domain and per AZ, by machine shape (smallest fitting machine first);
//! - assigned machines per domain and per AZ, by machine shape and then by the priority of
//!   the work they serve (cheapest victim first for preemption);
//! - machines held by each need (in the need's slot, `model.rs`).
//!
//! A need placed anywhere in the shard merges the per-AZ indexes rather than keeping a third,
//! shard-wide copy: every machine that changes state would update that copy too, and those
//! updates of the largest sets were most of a busy cycle's time.
//!
//! The containers are [`ByShape`] and [`Tiered`]; the `impl Engine` block below moves one
//! machine between them (idle, held, claimed, out of every index) and picks the part of an
//! index a placement may draw from.

use std::collections::{BTreeMap, BTreeSet};

// Dense ids the shard itself assigns: no need for a keyed hash (see `model.rs`).
use rustc_hash::FxHashMap as HashMap;

use super::Resources;
use super::model::{Engine, Where};

/// Items grouped by machine shape, each group in order. A shard has a handful of shapes, so
/// the shape is looked up once and the large ordered sets hold only small keys (a machine id,
/// or a priority and a machine id): a B-tree node's keys then fit in one or two cache lines,
/// which is what an insert or remove among half a million entries spends its time on.
#[derive(Debug)]
pub(super) struct ByShape<R: Ord> {
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
    /// Adds `item` to its shape's group.
    fn insert(&mut self, shape: Resources, item: R) {
        if self.groups.entry(shape).or_default().insert(item) {
            self.len += 1;
        }
    }

    /// Removes `item` from its shape's group, dropping the group once empty.
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

    /// Whether `item` is in its shape's group.
    fn contains(&self, shape: &Resources, item: &R) -> bool {
        self.groups.get(shape).is_some_and(|g| g.contains(item))
    }

    /// Items in all groups.
    fn len(&self) -> usize {
        self.len
    }

    /// The items of one shape, in order.
    pub(super) fn group(&self, shape: &Resources) -> Option<&BTreeSet<R>> {
        self.groups.get(shape)
    }

    /// The groups whose machines cover `wanted`, smallest shape first (so big machines stay
    /// for big needs). Every group listed is non-empty.
    pub(super) fn covering<'a>(
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
pub(super) struct Tiered<R: Ord> {
    /// One part per domain, by dense domain id.
    pub(super) by_domain: Vec<ByShape<R>>,
    /// One part per AZ (`None`: domains without a zone label).
    pub(super) by_az: HashMap<Option<u32>, ByShape<R>>,
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
    /// Adds `item` to its domain's and its AZ's parts (or holds it back while bulk loading).
    pub(super) fn insert(&mut self, domain: u32, az: Option<u32>, shape: Resources, item: R) {
        if let Some(pending) = &mut self.pending {
            pending.push((domain, az, shape, item));
            return;
        }
        self.by_domain[domain as usize].insert(shape, item);
        self.by_az.entry(az).or_default().insert(shape, item);
    }

    /// Removes `item` from its domain's and its AZ's parts.
    pub(super) fn remove(&mut self, domain: u32, az: Option<u32>, shape: Resources, item: &R) {
        self.merge_pending();
        self.by_domain[domain as usize].remove(&shape, item);
        if let Some(set) = self.by_az.get_mut(&az) {
            set.remove(&shape, item);
        }
    }

    /// Whether `item` is in its domain's part (or held back to go there).
    pub(super) fn contains(&self, domain: u32, shape: Resources, item: &R) -> bool {
        self.by_domain[domain as usize].contains(&shape, item)
            || self.pending.as_ref().is_some_and(|p| {
                p.iter()
                    .any(|(d, _, s, i)| *d == domain && *s == shape && i == item)
            })
    }

    /// Whether the per-domain and per-AZ tiers hold as many entries (consistency checks).
    pub(super) fn consistent(&self) -> bool {
        let by_domain: usize = self.by_domain.iter().map(ByShape::len).sum();
        let by_az: usize = self.by_az.values().map(ByShape::len).sum();
        by_domain == by_az
    }

    /// Starts holding inserts back (see `pending`).
    pub(super) fn begin_bulk(&mut self, expected: usize) {
        self.pending.get_or_insert_with(Vec::new).reserve(expected);
    }

    /// Merges held-back inserts and stops holding them back.
    pub(super) fn end_bulk(&mut self) {
        self.merge_pending();
        self.pending = None;
    }

    /// Adds every held-back insert to its parts.
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

impl Engine {
    /// Takes a machine out of every index; a held machine becomes a claim on its need.
    pub(super) fn detach(&mut self, m: u32) {
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
        } else {
            let az = self.domain_az[slot.domain as usize];
            self.idle.remove(slot.domain, az, slot.resources, &m);
        }
        if slot.claim.is_some() || slot.holder.is_some() {
            self.assigned -= 1;
        }
        self.orphans.remove(&m);
    }

    /// Indexes a machine that is in no index, given the need its record names.
    pub(super) fn place(&mut self, m: u32, claim: Option<&str>) {
        let slot = self.slot(m);
        let (domain, resources) = (slot.domain, slot.resources);
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
    /// is not yet fully served. A claim on a whole cluster (`cluster/`, a machine adopted with
    /// its cluster: the provider knows the cluster, not the row) holds for the cluster's short
    /// row with the largest requirement the machine covers (then the highest priority): the
    /// engine put each machine on the smallest that fits its row, so this finds the row it
    /// served, and a small row never takes the machine a large one needs.
    pub(super) fn claim_holds(&self, m: u32, claim: &str) -> Option<u32> {
        let open = |n: &u32| self.fits(m, *n) && self.served(*n) < self.need(*n).need.count;
        match claim.strip_suffix('/') {
            Some(cluster) => self
                .clusters
                .get(cluster)?
                .iter()
                .copied()
                .filter(open)
                .max_by_key(|n| {
                    let need = &self.need(*n).need;
                    let r = need.resources;
                    (r.gpus, r.cpu_millis, r.memory_mib, need.priority)
                }),
            None => self.need_ids.get(claim).copied().filter(open),
        }
    }

    /// Whether `claim` is on a whole cluster that has sent no demand yet: a machine adopted
    /// with its cluster waits, still counted at work, for the demand that follows the cluster.
    pub(super) fn awaits_demand(&self, claim: &str) -> bool {
        claim
            .strip_suffix('/')
            .is_some_and(|cluster| !self.clusters.contains_key(cluster))
    }

    /// Binds an idle or claimed machine (already out of the idle pool) to a need.
    pub(super) fn hold(&mut self, m: u32, n: u32) {
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
    pub(super) fn unhold(&mut self, m: u32, n: u32) {
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
    pub(super) fn make_idle(&mut self, m: u32) {
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

    /// The owned domains a placement allows, in name order.
    pub(super) fn candidates(&self, at: Where) -> &[u32] {
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
    pub(super) fn pool<'a, R: Ord>(&self, index: &'a Tiered<R>, at: Where) -> Vec<&'a ByShape<R>> {
        match at {
            Where::Any => index.by_az.values().collect(),
            Where::Az(az) => index.by_az.get(&Some(az)).into_iter().collect(),
            // A machine serves wherever its domain went: owning a domain is the right to
            // create there, not to use what is there (ADR 0016).
            Where::Domain(d) => vec![&index.by_domain[d as usize]],
        }
    }
}
