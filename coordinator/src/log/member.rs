//! Who the members of a replica group are, and the positions in its log: the types both log
//! backends (Ballast's Raft group and the etcd backend) and every layer above them share.

use std::fmt;

use serde::{Deserialize, Serialize};

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

/// A log position (term of the leader that wrote it, that leader, index).
pub type LogId = openraft::LogId<NodeId>;
/// A group's membership as stored in the state machine and snapshots.
pub type StoredMembership = openraft::StoredMembership<NodeId, ReplicaNode>;
/// A group's membership (voters and learners with their records).
pub type Membership = openraft::Membership<NodeId, ReplicaNode>;
