//! The engine's state: the [`Engine`] struct and the slots it keeps per machine and per need,
//! with domain, AZ, quota, machine and need names interned to dense ids (so indexes hold small
//! integers, not strings), and what a caller can read from it (counts, quota use, records).
//! How the state changes lives in `changes.rs`, how machines move between indexes in
//! `index.rs`, and the decision itself in `decide.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

// Keys are machine, domain and need ids the shard itself holds, not attacker-chosen: a fast
// non-keyed hash halves the time to rebuild the engine on a restart.
use rustc_hash::FxHashMap as HashMap;

use super::index::{ByShape, Tiered};
use super::{Inputs, Machine, Need, Placement, QuotaKey, Resources};

/// Where a need may take machines, with names resolved to dense ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Where {
    /// Anywhere in the shard's domains.
    Any,
    /// In domains of this AZ.
    Az(u32),
    /// In exactly this domain.
    Domain(u32),
}

/// One machine of the ledger.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    /// Shared with the `machine_ids` key: one allocation per machine.
    pub(super) id: Arc<str>,
    /// Domain it sits in.
    pub(super) domain: u32,
    /// Its shape.
    pub(super) resources: Resources,
    /// Quota it counts against, if the shard provisioned it.
    pub(super) quota: Option<u32>,
    /// The need it serves, once resolved.
    pub(super) holder: Option<u32>,
    /// A need named by the ledger but not held by it: the machine is outside the shard's
    /// domains, or the claim did not hold (unknown need, no fit, need full) and the next
    /// decision releases it.
    pub(super) claim: Option<Box<str>>,
}

/// One demand row and what it holds.
#[derive(Clone, Debug)]
pub(super) struct NeedSlot {
    /// The row as the cluster sent it.
    pub(super) need: Need,
    /// Its placement, resolved.
    pub(super) at: Where,
    /// Machines serving it.
    pub(super) held: BTreeSet<u32>,
}

/// Machines by state, kept current.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineCounts {
    /// In the shard's domains and serving no need.
    pub idle: u64,
    /// Serving a need (or claimed by one and about to be resolved).
    pub assigned: u64,
}

impl MachineCounts {
    /// Every machine in the ledger.
    pub fn total(&self) -> u64 {
        self.idle + self.assigned
    }
}

/// The provisioning engine with its indexes. See the [module documentation](crate::engine).
#[derive(Debug, Default)]
pub struct Engine {
    /// Domain names by dense id: every domain seen, owned or not.
    pub(super) domain_names: Vec<String>,
    /// Dense id of each domain name.
    pub(super) domain_ids: HashMap<String, u32>,
    /// AZ of each domain, if its name carries a zone label.
    pub(super) domain_az: Vec<Option<u32>>,
    /// Dense id of each AZ name.
    pub(super) az_ids: HashMap<String, u32>,
    /// Whether the shard owns each domain.
    pub(super) owned: Vec<bool>,
    /// Owned domains in name order (placement `Any` candidates).
    pub(super) owned_list: Vec<u32>,
    /// Owned domains of each AZ, in name order.
    pub(super) owned_by_az: HashMap<u32, Vec<u32>>,

    /// Dense id of each quota.
    pub(super) quota_ids: HashMap<QuotaKey, u32>,
    /// Quota keys by dense id.
    pub(super) quota_keys: Vec<QuotaKey>,
    /// The shard's slice of each quota (0 without one).
    pub(super) slice: Vec<u64>,
    /// Quotas with a slice that may take new provisions, in key order.
    pub(super) sliced: Vec<u32>,
    /// Quotas whose provisions are held back: the provider refused the slice table the shard
    /// holds (a newer one was accepted), so creates wait for the newer table to arrive.
    pub(super) blocked_quotas: BTreeSet<QuotaKey>,
    /// Machines in the ledger counted against each quota.
    pub(super) quota_held: Vec<u64>,
    /// Provisions in flight against each quota.
    pub(super) quota_in_flight: Vec<u64>,
    /// Idle machines set aside to go back to the provider because their quota holds more than
    /// its slice (the slice shrank, or moved to another shard with the clusters it served).
    pub(super) surplus: BTreeSet<u32>,
    /// Per quota, how many of `surplus` it has.
    pub(super) surplus_by_quota: Vec<u64>,

    /// The ledger by dense machine id (`None`: a freed slot).
    pub(super) machines: Vec<Option<Slot>>,
    /// Dense id of each machine.
    pub(super) machine_ids: HashMap<Arc<str>, u32>,
    /// Freed slots of `machines`, reused first.
    pub(super) free_machines: Vec<u32>,
    /// Idle machines in owned domains, by shape.
    pub(super) idle: Tiered<u32>,
    /// Assigned machines by shape: `(priority of the work, machine)`.
    pub(super) victims: Tiered<(i32, u32)>,
    /// Machines in owned domains whose claim did not hold when they arrived: the next
    /// decision gives them to a need or releases them.
    pub(super) orphans: BTreeSet<u32>,
    /// Machines in owned domains that are held or claimed.
    pub(super) assigned: u64,
    /// Machines whose claim the model dropped outside a decision; the next plan reports them.
    pub(super) released: Vec<u32>,

    /// Demand rows by dense need id (`None`: a freed slot).
    pub(super) needs: Vec<Option<NeedSlot>>,
    /// Dense id of each need.
    pub(super) need_ids: HashMap<String, u32>,
    /// Freed slots of `needs`, reused first.
    pub(super) free_needs: Vec<u32>,
    /// Each cluster's rows, in the order it sent them.
    pub(super) clusters: BTreeMap<String, Vec<u32>>,
    /// Provisions in flight per need id.
    pub(super) in_flight_by_need: HashMap<String, u32>,
    /// Needs whose row changed, that lost machines or whose provision finished since the
    /// last decision.
    pub(super) dirty: BTreeSet<u32>,
    /// Needs the last decision left short: the next one serves them again.
    pub(super) short: BTreeSet<u32>,
    /// Machines asked for by all current demand.
    pub(super) demand_total: u64,
    /// Round-robin position over candidate domains when spreading provisions.
    pub(super) cursor: usize,
    /// Provisioning held back (the provider is failing); needs go short instead.
    pub(super) provisioning_paused: bool,
    /// Clusters whose machines are being adopted at their providers: their needs wait for
    /// them rather than take or make others (which would churn the adopted ones).
    pub(super) adopting: BTreeSet<String>,
}

/// Whether `domain` is where a need placed `at` may take machines.
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

    /// Dense id of a domain, interning it (with its AZ) on first sight.
    pub(super) fn domain_id(&mut self, name: &str) -> u32 {
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

    /// Dense id of an AZ, interning it on first sight.
    fn az_id(&mut self, az: &str) -> u32 {
        let next = self.az_ids.len() as u32;
        *self.az_ids.entry(az.to_string()).or_insert(next)
    }

    /// Dense id of a quota, interning it (with zero slice and use) on first sight.
    pub(super) fn quota_id(&mut self, key: &QuotaKey) -> u32 {
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

    /// [`Engine::quota_id`] from borrowed names.
    pub(super) fn quota_of(&mut self, (provider, region): (&str, &str)) -> u32 {
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

    /// A placement with its names resolved to dense ids.
    pub(super) fn resolve(&mut self, placement: &Placement) -> Where {
        match placement {
            Placement::Any => Where::Any,
            Placement::Az(az) => Where::Az(self.az_id(az)),
            Placement::Domain(d) => Where::Domain(self.domain_id(d)),
        }
    }

    /// Live machine `m`.
    pub(super) fn slot(&self, m: u32) -> &Slot {
        self.machines[m as usize]
            .as_ref()
            .expect("live machine slot")
    }

    /// Live machine `m`, to change.
    pub(super) fn slot_mut(&mut self, m: u32) -> &mut Slot {
        self.machines[m as usize]
            .as_mut()
            .expect("live machine slot")
    }

    /// Live need `n`.
    pub(super) fn need(&self, n: u32) -> &NeedSlot {
        self.needs[n as usize].as_ref().expect("live need slot")
    }

    /// Live need `n`, to change.
    pub(super) fn need_mut(&mut self, n: u32) -> &mut NeedSlot {
        self.needs[n as usize].as_mut().expect("live need slot")
    }

    /// Machines serving need `n`: held, plus provisions in flight for it.
    pub(super) fn served(&self, n: u32) -> u32 {
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

    /// Whether machine `m` may serve need `n`: in a domain its placement allows (owned or
    /// not: a domain grant is the right to create there), and big enough.
    pub(super) fn fits(&self, m: u32, n: u32) -> bool {
        let (slot, need) = (self.slot(m), self.need(n));
        slot.resources.covers(&need.need.resources) && placed(need.at, slot.domain, &self.domain_az)
    }

    /// Machines by state.
    pub fn counts(&self) -> MachineCounts {
        let total = self.machine_ids.len() as u64;
        MachineCounts {
            idle: total - self.assigned,
            assigned: self.assigned,
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

    /// Every quota the shard holds a slice of or machines under, in key order, with its use
    /// as [`Engine::quota_use`] gives it: machines held, provisions in flight, slice.
    pub fn quota_uses(&self) -> Vec<(QuotaKey, (u64, u64, u64))> {
        let mut uses: Vec<(QuotaKey, (u64, u64, u64))> = self
            .quota_keys
            .iter()
            .enumerate()
            .map(|(q, key)| {
                (
                    key.clone(),
                    (self.quota_held[q], self.quota_in_flight[q], self.slice[q]),
                )
            })
            .filter(|(_, (held, in_flight, slice))| *slice > 0 || held + in_flight > 0)
            .collect();
        uses.sort();
        uses
    }

    /// Machines each cluster's demand asks for, clusters with rows only, in cluster order.
    pub fn cluster_demands(&self) -> Vec<(String, u64)> {
        self.clusters
            .iter()
            .map(|(cluster, rows)| {
                let asked = rows
                    .iter()
                    .map(|n| u64::from(self.need(*n).need.count))
                    .sum();
                (cluster.clone(), asked)
            })
            .collect()
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

    /// The ledger record of live machine `m`.
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
}
