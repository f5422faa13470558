//! One decision cycle: [`Engine::decide`] turns what changed since the last cycle into a
//! [`Plan`] and applies it to the model. In order: changed needs drop machines that no longer
//! fit or exceed their count; unresolved claims are adopted or released; then every short need,
//! highest priority first, takes idle machines (smallest fitting first), starts provisions within
//! quota (spread over its domains), and preempts lower-priority work (cheapest victim first),
//! reporting what is still missing as a shortfall. Last, idle machines above a shrunken quota
//! slice are set aside to go back to the provider.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::ops::Bound::{Excluded, Unbounded};

// Keys the shard itself holds: no need for a keyed hash (see `model.rs`).
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::model::{Engine, Where};
use super::{Plan, Provision, Resources, Shortfall};

impl Engine {
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
        // them; otherwise they are released — except claims on a cluster whose demand has not
        // arrived yet (machines adopted with their cluster), which wait for it.
        let mut waiting = BTreeSet::new();
        for m in std::mem::take(&mut self.orphans) {
            let claim = self
                .slot(m)
                .claim
                .as_deref()
                .expect("orphans carry a claim");
            match self.claim_holds(m, claim) {
                Some(n) => self.hold(m, n),
                None if self.awaits_demand(claim) => {
                    waiting.insert(m);
                }
                None => self.release(m, &mut plan),
            }
        }
        self.orphans = waiting;

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
            if self.adopting.contains(&need.need.cluster) {
                let id = need.need.id.clone();
                self.short.insert(n);
                plan.shortfalls.push(Shortfall { need: id, missing });
                continue;
            }
            let shape = (resources, at);
            if !idle_exhausted.contains(&shape) {
                missing -= self.take_idle(n, missing, &mut plan);
                if missing > 0 {
                    idle_exhausted.insert(shape);
                }
            }
            let mut out_of_room = false;
            if missing > 0 {
                let (started, full) = self.provision(n, missing, &mut plan);
                missing -= started;
                out_of_room = full;
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
                if out_of_room {
                    plan.quota_short += u64::from(missing);
                }
                plan.shortfalls.push(Shortfall {
                    need: self.need(n).need.id.clone(),
                    missing,
                });
            }
        }
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
        let idle = slot.holder.is_none() && slot.claim.is_none();
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
        // Rare (a slice shrank): one pass over the ledger finds the idle machines.
        let mut excess: Vec<u64> = (0..self.slice.len())
            .map(|q| {
                (self.quota_held[q] + self.quota_in_flight[q])
                    .saturating_sub(self.slice[q] + self.surplus_by_quota[q])
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

    /// Returns machine `m` to the idle pool and reports it released.
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
    /// domains its placement allows. Returns how many it started, and whether it stopped
    /// short because every slice was full (not because provisioning is paused, a slice table
    /// is refused, or no domain fits: a larger slice would not help those).
    fn provision(&mut self, n: u32, wanted: u32, plan: &mut Plan) -> (u32, bool) {
        if self.provisioning_paused {
            return (0, false);
        }
        let candidates = self.candidates(self.need(n).at).to_vec();
        if candidates.is_empty() {
            return (0, false);
        }
        let out_of_room = self.blocked_quotas.is_empty();
        let has_room = self.sliced.iter().any(|q| {
            let q = *q as usize;
            self.slice[q] > self.quota_held[q] + self.quota_in_flight[q]
        });
        if !has_room {
            return (0, out_of_room);
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
        (started, started < wanted && out_of_room)
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
}
