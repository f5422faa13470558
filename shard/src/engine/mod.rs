//! The provisioning engine: one pure decision per cycle, no I/O. Given the shard's allocation
//! (domains and quota slices), its machine ledger and the clusters' demand, it decides which
//! idle machines to assign, what to provision within quota, what lower-priority work to
//! preempt, what surplus to release, and what remains short.
//!
//! Invariants (checked by property tests): a quota slice is never exceeded, no machine outside
//! the shard's domains is ever used, and no machine is assigned twice.

use std::collections::{BTreeMap, BTreeSet};

mod incremental;

pub use incremental::{Engine, MachineCounts};

use ballast_protocol::validate::DomainKey;
use serde::{Deserialize, Serialize};

/// Resources of one machine, or asked for per machine by a need.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// GPUs.
    pub gpus: u32,
}

impl Resources {
    /// Whether a machine with `self` can serve a need asking for `want`.
    pub fn covers(&self, want: &Resources) -> bool {
        self.cpu_millis >= want.cpu_millis
            && self.memory_mib >= want.memory_mib
            && self.gpus >= want.gpus
    }
}

/// Where a need's machines must be.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Placement {
    /// Anywhere in the shard's domains.
    Any,
    /// In domains of this AZ (the domain's `zone` or `topology.kubernetes.io/zone` label).
    Az(String),
    /// In exactly this domain.
    Domain(String),
}

/// One row of a cluster's demand: `count` machines with at least `resources`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    /// Unique within the shard (cluster id + the cluster's own row id).
    pub id: String,
    /// Cluster asking.
    pub cluster: String,
    /// Machines wanted.
    pub count: u32,
    /// Per-machine minimum.
    pub resources: Resources,
    /// Higher wins; lower-priority work may be preempted for it.
    pub priority: i32,
    /// Placement constraint.
    pub placement: Placement,
}

/// Quota a machine was provisioned under.
pub type QuotaKey = (String, String);

/// What the ledger knows about one machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Machine id.
    pub id: String,
    /// Topology domain it sits in.
    pub domain: String,
    /// Its resources.
    pub resources: Resources,
    /// Quota it counts against, if the shard provisioned it.
    pub quota: Option<QuotaKey>,
    /// Need it serves, if any.
    pub assigned_to: Option<String>,
}

/// A ledger record borrowed from its encoded bytes (same encoding as [`Machine`]), so a
/// restart feeds half a million records to the engine without copying their strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineView<'a> {
    /// Machine id.
    pub id: &'a str,
    /// Topology domain it sits in.
    pub domain: &'a str,
    /// Its resources.
    pub resources: Resources,
    /// Quota it counts against, if the shard provisioned it.
    #[serde(borrow)]
    pub quota: Option<(&'a str, &'a str)>,
    /// Need it serves, if any.
    #[serde(borrow)]
    pub assigned_to: Option<&'a str>,
}

impl Machine {
    /// The record borrowed as a [`MachineView`].
    pub fn view(&self) -> MachineView<'_> {
        MachineView {
            id: &self.id,
            domain: &self.domain,
            resources: self.resources,
            quota: self.quota.as_ref().map(|(p, r)| (p.as_str(), r.as_str())),
            assigned_to: self.assigned_to.as_deref(),
        }
    }
}

/// Everything one decision looks at.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Domains the shard owns.
    pub domains: BTreeSet<String>,
    /// Quota slices: machines the shard may hold per (provider, region).
    pub slices: BTreeMap<QuotaKey, u64>,
    /// Machine ledger.
    pub machines: Vec<Machine>,
    /// Current demand of every cluster (full replacement: a cluster's rows replace its old ones).
    pub needs: Vec<Need>,
    /// Provisions started and not yet answered (they count against their quota and toward
    /// their need).
    pub in_flight: Vec<Provision>,
}

impl Inputs {
    /// The demand rows grouped by cluster (each cluster's full replacement).
    pub fn demand_by_cluster(&self) -> BTreeMap<&str, Vec<Need>> {
        let mut by_cluster: BTreeMap<&str, Vec<Need>> = BTreeMap::new();
        for need in &self.needs {
            by_cluster
                .entry(&need.cluster)
                .or_default()
                .push(need.clone());
        }
        by_cluster
    }
}

/// A machine to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provision {
    /// Need it is for.
    pub need: String,
    /// Domain to create it in.
    pub domain: String,
    /// Quota it counts against.
    pub quota: QuotaKey,
    /// Resources to ask for.
    pub resources: Resources,
}

/// A shortfall: a need the shard could not fully serve this cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// Need.
    pub need: String,
    /// Machines missing.
    pub missing: u32,
}

/// The decision of one cycle, already applied to the [`Engine`] that made it: the caller makes
/// it durable (machine records named here, provisions as in flight) and starts the provisions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `(machine, need)`: idle (or released) machines put to work.
    pub assign: Vec<(String, String)>,
    /// Machines to create.
    pub provision: Vec<Provision>,
    /// `(machine, from need, to need)`: lower-priority work displaced.
    pub preempt: Vec<(String, String, String)>,
    /// Machines no need wants any more (they become idle).
    pub release: Vec<String>,
    /// Machines in the ledger outside the shard's domains (lost in a rebalance); never used
    /// and not counted toward any need.
    pub foreign: Vec<String>,
    /// Idle machines to return to the provider now: their quota holds more than this shard's
    /// slice of it. Listed every decision until they are gone.
    pub surplus: Vec<String>,
    /// What could not be served.
    pub shortfalls: Vec<Shortfall>,
}

const ZONE_LABELS: [&str; 2] = ["topology.kubernetes.io/zone", "zone"];

/// AZ of a domain, from its zone label.
pub fn domain_az(domain: &str) -> Option<String> {
    let key = DomainKey::parse(domain).ok()?;
    ZONE_LABELS
        .iter()
        .find_map(|label| key.get(label))
        .map(str::to_string)
}

/// Decides one cycle from scratch: builds an [`Engine`] from `inputs` and runs one decision.
/// The run loop keeps one [`Engine`] alive and feeds it changes instead; this form is for tests
/// and one-off decisions.
pub fn decide(inputs: &Inputs) -> Plan {
    Engine::from_inputs(inputs).decide()
}

#[cfg(test)]
mod tests;
