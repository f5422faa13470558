//! The openraft type configuration: what travels in the log and what a replica looks like.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::fleet::{Applied, FleetCommand, FleetError};

/// A replica's id within its cluster (`--id`).
pub type NodeId = u64;

/// What the cluster knows about a replica: where to reach it and which AZ it sits in.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaNode {
    /// Address serving both the client API and Raft traffic (`host:port`).
    pub address: String,
    /// Availability-zone label (`--az`).
    pub az: String,
}

impl fmt::Display for ReplicaNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.address, self.az)
    }
}

/// One replicated command: a fleet change plus the client request id that makes it exactly-once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RaftRequest {
    /// Client-chosen id; empty disables deduplication.
    pub request_id: String,
    /// The change itself.
    pub command: FleetCommand,
}

/// The state machine's answer to one [`RaftRequest`]: applied revision or a precise refusal.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RaftResponse {
    /// Outcome of the command; membership entries and blanks answer `Ok` with the current
    /// revision.
    pub outcome: Result<Applied, FleetError>,
    /// For a request group: each member's outcome, in order.
    pub group: Vec<Result<Applied, FleetError>>,
}

impl Default for RaftResponse {
    fn default() -> Self {
        Self {
            outcome: Ok(Applied {
                revision: 0,
                changed: false,
                kv: None,
            }),
            group: Vec::new(),
        }
    }
}

openraft::declare_raft_types!(
    /// Ballast's Raft type configuration.
    pub TypeConfig:
        D = RaftRequest,
        R = RaftResponse,
        NodeId = NodeId,
        Node = ReplicaNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle type used throughout the coordinator.
pub type Raft = openraft::Raft<TypeConfig>;
/// Log entries as openraft stores them.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log position.
pub type LogId = openraft::LogId<NodeId>;
/// Raft vote (term + candidate).
pub type Vote = openraft::Vote<NodeId>;
/// Membership as stored in the state machine and snapshots.
pub type StoredMembership = openraft::StoredMembership<NodeId, ReplicaNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ReplicaNode>;
/// Storage error type.
pub type StorageError = openraft::StorageError<NodeId>;
/// A Raft membership configuration.
pub type Membership = openraft::Membership<NodeId, ReplicaNode>;
