//! The openraft type configuration: what travels in Ballast's own Raft log.

use std::io::Cursor;

use crate::fleet::FleetRequest;
use crate::log::applied::EntryOutcome;
pub use crate::log::member::{LogId, Membership, NodeId, ReplicaNode, StoredMembership};

openraft::declare_raft_types!(
    /// Ballast's Raft type configuration.
    pub TypeConfig:
        D = FleetRequest,
        R = EntryOutcome,
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
/// Raft vote (term + candidate).
pub type Vote = openraft::Vote<NodeId>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ReplicaNode>;
/// Storage error type.
pub type StorageError = openraft::StorageError<NodeId>;
