//! What the engine is given and the records it is given them in: machine shapes
//! ([`Resources`]), where a need's machines must be ([`Placement`], resolved to an AZ by
//! [`domain_az`]), demand rows ([`Need`]), ledger records ([`Machine`], and [`MachineView`] for
//! a restart that borrows them from their encoded bytes), and everything one decision looks at
//! ([`Inputs`]). Plain, serialisable data with no engine state: the cache, the demand API and
//! the provider share these types with the engine.

use std::collections::{BTreeMap, BTreeSet};

use ballast_protocol::validate::DomainKey;
use serde::{Deserialize, Serialize};

use super::Provision;

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

const ZONE_LABELS: [&str; 2] = ["topology.kubernetes.io/zone", "zone"];

/// AZ of a domain, from its zone label.
pub fn domain_az(domain: &str) -> Option<String> {
    let key = DomainKey::parse(domain).ok()?;
    ZONE_LABELS
        .iter()
        .find_map(|label| key.get(label))
        .map(str::to_string)
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
