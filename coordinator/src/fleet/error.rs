//! Why a fleet command was refused.

use ballast_protocol::validate::InvalidInput;
use serde::{Deserialize, Serialize};

/// Class of a refusal; the service layer maps it to a gRPC code.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command itself is malformed.
    InvalidArgument,
    /// It names something that does not exist.
    NotFound,
    /// It would create something that exists in another form.
    AlreadyExists,
    /// The current state forbids it.
    FailedPrecondition,
    /// It exceeds a size limit.
    ResourceExhausted,
    /// The caller may not do this (a missing, wrong, used or expired join token).
    PermissionDenied,
    /// Not now: retry later.
    Unavailable,
}

/// A refused command. Refusals are deterministic and part of the replicated outcome (they are
/// remembered for exactly-once retries), hence serializable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// A join token was refused.
    #[error("join token refused: {0}")]
    JoinToken(String),
    /// Malformed input.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Unknown shard.
    #[error("shard {0:?} is not registered")]
    UnknownShard(String),
    /// Unknown domain.
    #[error("domain {0:?} is not assigned to any shard")]
    UnknownDomain(String),
    /// Unknown cluster binding.
    #[error("cluster {0:?} is not bound to any shard")]
    UnknownCluster(String),
    /// Unknown quota.
    #[error("no quota for provider {provider:?} in region {region:?}")]
    UnknownQuota {
        /// Provider.
        provider: String,
        /// Region.
        region: String,
    },
    /// Unknown provider.
    #[error("provider {0:?} is not registered")]
    UnknownProvider(String),
    /// Domain held by another shard.
    #[error(
        "domain {domain:?} belongs to shard {owner:?}; pass allow_move (ballastctl --move) to take it"
    )]
    DomainOwned {
        /// Domain.
        domain: String,
        /// Current owner.
        owner: String,
    },
    /// Cluster bound elsewhere.
    #[error("cluster {cluster:?} is already bound to shard {shard:?}; move it explicitly")]
    ClusterBound {
        /// Cluster.
        cluster: String,
        /// Current shard.
        shard: String,
    },
    /// Shard draining.
    #[error("shard {0:?} is draining and takes no new domains, clusters or quota")]
    ShardDraining(String),
    /// Slices above the total.
    #[error("quota {provider}/{region}: slices sum to {sum}, above the total of {total}")]
    OverQuota {
        /// Provider.
        provider: String,
        /// Region.
        region: String,
        /// Sum of slices.
        sum: u128,
        /// Total.
        total: u64,
    },
    /// Provider still referenced.
    #[error("provider {provider:?} still has quotas in regions {regions:?}; delete them first")]
    ProviderInUse {
        /// Provider.
        provider: String,
        /// Regions with quotas.
        regions: Vec<String>,
    },
    /// Batch too large.
    #[error("{what} has {count} items, above the limit of {limit}")]
    TooLarge {
        /// What is too large.
        what: String,
        /// Items.
        count: usize,
        /// Limit.
        limit: usize,
    },
    /// Command inside a batch failed.
    #[error("batch command {index}: {source}")]
    InBatch {
        /// Position in the batch.
        index: usize,
        /// Refusal.
        source: Box<FleetError>,
    },
    /// Snapshot bytes did not decode.
    #[error("fleet snapshot is corrupt: {0}")]
    CorruptSnapshot(String),
    /// A KV command was refused.
    #[error(transparent)]
    Kv(#[from] crate::kv::KvError),
    /// Too many request ids are inside the exactly-once window to remember another.
    #[error(
        "{ids} request ids were used in the last {window_secs} s, the most remembered for \
         exactly-once retries; not applied, retry later"
    )]
    DedupFull {
        /// Ids remembered.
        ids: usize,
        /// The window.
        window_secs: u64,
    },
    /// etcd auth refused a command.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

impl FleetError {
    /// The class of this refusal.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FleetError::Invalid { .. } | FleetError::CorruptSnapshot(_) => {
                ErrorKind::InvalidArgument
            }
            FleetError::UnknownShard(_)
            | FleetError::UnknownDomain(_)
            | FleetError::UnknownCluster(_)
            | FleetError::UnknownQuota { .. }
            | FleetError::UnknownProvider(_) => ErrorKind::NotFound,
            FleetError::ClusterBound { .. } => ErrorKind::AlreadyExists,
            FleetError::DomainOwned { .. }
            | FleetError::ShardDraining(_)
            | FleetError::OverQuota { .. }
            | FleetError::ProviderInUse { .. } => ErrorKind::FailedPrecondition,
            FleetError::TooLarge { .. } => ErrorKind::InvalidArgument,
            FleetError::InBatch { source, .. } => source.kind(),
            // The KV services map these to etcd's codes themselves.
            FleetError::Kv(_) => ErrorKind::InvalidArgument,
            FleetError::JoinToken(_) => ErrorKind::PermissionDenied,
            FleetError::DedupFull { .. } => ErrorKind::Unavailable,
            // The etcd services map these to etcd's codes themselves.
            FleetError::Auth(_) => ErrorKind::PermissionDenied,
        }
    }

    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        FleetError::Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

impl From<InvalidInput> for FleetError {
    fn from(e: InvalidInput) -> Self {
        FleetError::Invalid {
            field: e.field.to_string(),
            reason: e.reason,
        }
    }
}
