//! Commands that change the fleet state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One change to the fleet state. Commands are validated for syntax before they are proposed
/// ([`crate::fleet::FleetState::validate_command`]) and for state when applied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FleetCommand {
    /// Register a shard, or renew its registration: address, AZ and lease are updated,
    /// registration time and status are kept.
    RegisterShard {
        /// Shard id.
        id: String,
        /// Address the shard serves on.
        address: String,
        /// AZ of the shard.
        az: String,
        /// Proposer's clock (the leader's), in ms since the Unix epoch.
        now_ms: u64,
        /// Lease length in ms.
        lease_ttl_ms: u64,
    },
    /// Stop giving the shard new domains, bindings or quota.
    DrainShard {
        /// Shard id.
        id: String,
    },
    /// Undo a drain.
    ActivateShard {
        /// Shard id.
        id: String,
    },
    /// Remove a shard; its domains return to the pool, its bindings and slices are deleted.
    RemoveShard {
        /// Shard id.
        id: String,
    },
    /// Give domains to shards (a batch, one revision).
    AssignDomains {
        /// `(domain, shard)` pairs.
        assignments: Vec<(String, String)>,
        /// Allow taking a domain from the shard that owns it.
        allow_move: bool,
    },
    /// Return domains to the pool.
    UnassignDomains {
        /// Domains.
        domains: Vec<String>,
    },
    /// Bind a cluster to a shard; the first binding wins.
    BindCluster {
        /// Cluster id.
        cluster: String,
        /// Shard id.
        shard: String,
    },
    /// Move a bound cluster to another shard.
    MoveCluster {
        /// Cluster id.
        cluster: String,
        /// New shard id.
        shard: String,
    },
    /// Remove a cluster's binding.
    UnbindCluster {
        /// Cluster id.
        cluster: String,
    },
    /// Set a quota and all its slices (full replacement).
    SetQuota {
        /// Provider name.
        provider: String,
        /// Region.
        region: String,
        /// Total capacity.
        total: u64,
        /// Per-shard slices.
        slices: BTreeMap<String, u64>,
    },
    /// Replace the listed slices of an existing quota (an amount of 0 removes a slice).
    SetQuotaSlices {
        /// Provider name.
        provider: String,
        /// Region.
        region: String,
        /// Slices to set.
        slices: BTreeMap<String, u64>,
    },
    /// Delete a quota.
    DeleteQuota {
        /// Provider name.
        provider: String,
        /// Region.
        region: String,
    },
    /// Register or update a provider.
    SetProvider {
        /// Provider name.
        name: String,
        /// API endpoint.
        endpoint: String,
        /// Region it serves.
        region: String,
        /// Capacity types it offers.
        capacity_types: Vec<String>,
    },
    /// Remove a provider (refused while quotas reference it).
    RemoveProvider {
        /// Provider name.
        name: String,
    },
    /// Apply all commands or none, as one revision.
    Batch {
        /// The commands, in order.
        commands: Vec<FleetCommand>,
    },
    /// A coordination-KV command (etcd API); shares the revision counter.
    Kv(crate::kv::KvCommand),
    /// Remember a join token (only the SHA-256 of its secret); drops expired ones.
    CreateJoinToken {
        /// Public part of the token.
        id: String,
        /// Hex SHA-256 of the secret part.
        secret_sha256: String,
        /// Leader's clock when proposed.
        now_ms: u64,
        /// When the token stops working.
        expires_at_ms: u64,
    },
    /// Independent client requests proposed together as one log entry (group commit by the
    /// leader under load); each is applied, deduplicated and answered on its own, at its own
    /// revision. Never accepted from clients.
    Group(Vec<FleetRequest>),
    /// Spend a join token for a replica (again for the same replica is not an error, so a
    /// join that failed after spending it can be retried).
    UseJoinToken {
        /// Public part of the token.
        id: String,
        /// Hex SHA-256 of the secret part presented.
        secret_sha256: String,
        /// Replica joining with it.
        replica: u64,
        /// Leader's clock when proposed.
        now_ms: u64,
    },
    /// An entry that changes nothing, appended by the leader so a pending membership change
    /// commits (see `raft::membership`). Never accepted from clients.
    Nudge,
    /// A client request with the proposing leader's clock: moves the state's clock (which
    /// times the exactly-once window of request ids) to `now_ms`, then applies the request and
    /// answers its outcome. Every request with an id is proposed so. Never accepted from
    /// clients.
    Timed {
        /// Leader's clock when proposed, in ms since the Unix epoch.
        now_ms: u64,
        /// The request.
        request: Box<FleetRequest>,
    },
    /// A KV command from an etcd client with who sent it: while etcd auth is on it applies
    /// only if that user may run it at this point of the log ([`crate::auth`]).
    KvAs {
        /// The sender (`None`: the call named no user).
        caller: Option<crate::auth::Caller>,
        /// The command.
        command: crate::kv::KvCommand,
    },
    /// A change to etcd's users, roles or auth switch, with who asked for it (while auth is
    /// on, an administrator).
    Auth {
        /// The sender (`None`: the call named no user).
        caller: Option<crate::auth::Caller>,
        /// The change.
        command: crate::auth::AuthCommand,
    },
}

/// One command as the log carries it: a fleet change plus the client request id that makes it
/// exactly-once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FleetRequest {
    /// Client-chosen id; empty disables deduplication.
    pub request_id: String,
    /// The change itself.
    pub command: FleetCommand,
}
