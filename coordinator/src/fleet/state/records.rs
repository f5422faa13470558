//! The rows of the fleet tables and what applying a command answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Revision;
use crate::fleet::names::Name;

/// A domain's row: its owner, and the revision at which the owner was given it — the domain
/// grant the owner presents to providers (with the restore epoch; ADR 0016).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DomainRow {
    /// Owning shard (the name shared through the state's interner).
    pub shard: Name,
    /// Revision of the change that gave the domain to `shard`.
    pub granted: Revision,
}

/// A cluster's binding: its shard, and the revision at which the cluster was bound to that
/// shard — the cluster grant the shard presents to providers for the cluster's machines
/// (ADR 0016).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BindingRow {
    /// Serving shard (the name shared through the state's interner).
    pub shard: Name,
    /// Revision of the change that bound the cluster to `shard`.
    pub granted: Revision,
}

/// Lifecycle of a shard.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ShardStatus {
    /// Takes new domains, clusters and quota.
    Active,
    /// Keeps what it has, takes nothing new.
    Draining,
}

/// A registered shard worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShardRecord {
    /// Shard id.
    pub id: String,
    /// Address it serves on.
    pub address: String,
    /// Its AZ.
    pub az: String,
    /// First registration (leader clock, ms since the epoch).
    pub registered_at_ms: u64,
    /// When its lease runs out unless renewed.
    pub lease_expires_at_ms: u64,
    /// Lifecycle status.
    pub status: ShardStatus,
}

/// Capacity of one provider in one region and its split across shards.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct QuotaRecord {
    /// Provider name.
    pub provider: String,
    /// Region.
    pub region: String,
    /// Total capacity.
    pub total: u64,
    /// Shard → slice; the sum never exceeds `total`.
    pub slices: BTreeMap<String, u64>,
    /// The slice table's grant: the revision at which `slices` last changed. Every slice
    /// holder presents it to providers with its creates (ADR 0016).
    pub granted: Revision,
}

/// A registered capacity provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProviderRecord {
    /// Name.
    pub name: String,
    /// API endpoint.
    pub endpoint: String,
    /// Region it serves.
    pub region: String,
    /// Capacity types offered.
    pub capacity_types: Vec<String>,
}

/// Outcome of a successful command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Revision after the command.
    pub revision: Revision,
    /// False when the command changed nothing (the revision did not move).
    pub changed: bool,
    /// What a KV command answered.
    // Always written: binary snapshots cannot skip fields. `default` reads older JSON.
    #[serde(default)]
    pub kv: Option<crate::kv::KvReply>,
}

/// Table sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Registered shards.
    pub shards: usize,
    /// Assigned domains.
    pub domains: usize,
    /// Cluster bindings.
    pub bindings: usize,
    /// Quotas.
    pub quotas: usize,
    /// Providers.
    pub providers: usize,
}
