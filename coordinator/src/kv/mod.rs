//! The coordination KV: etcd's data model as a plain struct inside the replicated state
//! machine. Keys carry create/mod revisions and a version, deletes leave tombstone events,
//! transactions apply atomically at one revision, leases own keys. Revisions are the fleet's
//! revisions (one counter for fleet tables and KV). The event history is bounded: past
//! `MAX_EVENTS` the oldest revisions are compacted automatically, so the store never needs a
//! defragment step. No I/O here; the services wrap it.

pub(crate) mod b64;
mod store;
#[cfg(test)]
mod tests;
pub mod value;

#[cfg(test)]
use store::MAX_EVENTS;
pub use store::{KvStore, check_command};
pub use value::{Value, ValueStore};

use serde::{Deserialize, Serialize};

/// Largest key accepted.
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// Largest value accepted.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;
/// Most operations in one transaction (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// Longest lease TTL in seconds (etcd's limit).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Shortest lease TTL in seconds; shorter requests get this.
pub const MIN_LEASE_TTL: i64 = 2;

/// One key as stored.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// Key (shared, as the value is).
    #[serde(with = "b64::shared")]
    pub key: std::sync::Arc<[u8]>,
    /// Value, shared by the key and the history events that carry it, so a value is held
    /// once however many events name it and copying the store (for a snapshot) copies none;
    /// on a replica with a value store, its bytes are there (ADR 0019).
    #[serde(with = "value")]
    pub value: Value,
    /// Revision that created the key (since its last delete).
    pub create_revision: u64,
    /// Revision of its last change.
    pub mod_revision: u64,
    /// Changes since creation.
    pub version: u64,
    /// Lease owning it (0 = none).
    pub lease: i64,
}

/// What happened to a key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Created or changed.
    Put,
    /// Deleted.
    Delete,
}

/// One change in the history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Revision of the change.
    pub revision: u64,
    /// Put or delete.
    pub kind: EventKind,
    /// The key after a put; for a delete, the key with `mod_revision` = the delete's revision.
    pub kv: KeyValue,
    /// The key before the change, if it existed.
    pub prev: Option<KeyValue>,
}

/// A key range with etcd's conventions: empty `end` = the single key; `end` = `[0]` = every key
/// from `key` on (and `key` = `[0]` too = every key); otherwise `[key, end)`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    /// First key.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// End (see above).
    #[serde(with = "b64")]
    pub end: Vec<u8>,
}

impl KeyRange {
    /// Whether `k` falls in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            return k == self.key.as_slice();
        }
        let from_start = self.key == [0];
        (from_start || k >= self.key.as_slice()) && (self.end == [0] || k < self.end.as_slice())
    }

    /// Whether the range is one key.
    pub fn is_single(&self) -> bool {
        self.end.is_empty()
    }
}

/// Sort order of a range read.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Key order.
    #[default]
    None,
    /// Ascending by target.
    Ascend,
    /// Descending by target.
    Descend,
}

/// Field a range read sorts by.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    /// Key.
    #[default]
    Key,
    /// Version.
    Version,
    /// Create revision.
    Create,
    /// Mod revision.
    Mod,
    /// Value.
    Value,
}

/// A range read.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeOp {
    /// Keys.
    pub range: KeyRange,
    /// Most keys returned (0 = all).
    pub limit: u64,
    /// Read as of this revision (0 = now).
    pub revision: u64,
    /// Order.
    pub sort_order: SortOrder,
    /// Sort field.
    pub sort_target: SortTarget,
    /// Keys without values.
    pub keys_only: bool,
    /// Only the count.
    pub count_only: bool,
    /// Mod revision lower bound (0 = none).
    pub min_mod_revision: u64,
    /// Mod revision upper bound (0 = none).
    pub max_mod_revision: u64,
    /// Create revision lower bound (0 = none).
    pub min_create_revision: u64,
    /// Create revision upper bound (0 = none).
    pub max_create_revision: u64,
}

/// A put.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOp {
    /// Key.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// Value.
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    /// Lease to attach (0 = none).
    pub lease: i64,
    /// Return the previous key.
    pub prev_kv: bool,
    /// Keep the current value.
    pub ignore_value: bool,
    /// Keep the current lease.
    pub ignore_lease: bool,
}

/// A delete of a range.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOp {
    /// Keys.
    pub range: KeyRange,
    /// Return the deleted keys.
    pub prev_kv: bool,
}

/// What a comparison looks at, with the operand.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// Version (0 for a missing key).
    Version(i64),
    /// Create revision (0 for a missing key).
    Create(i64),
    /// Mod revision (0 for a missing key).
    Mod(i64),
    /// Value (a missing key never compares).
    Value(#[serde(with = "b64")] Vec<u8>),
    /// Lease (0 for a missing key).
    Lease(i64),
}

/// Comparison operator.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    /// ==
    Equal,
    /// >
    Greater,
    /// <
    Less,
    /// !=
    NotEqual,
}

/// One guard of a transaction.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// Keys compared (all must satisfy it).
    pub range: KeyRange,
    /// Field and operand.
    pub target: CompareTarget,
    /// Operator.
    pub result: CompareResult,
}

/// One operation of a transaction.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read.
    Range(RangeOp),
    /// Put.
    Put(PutOp),
    /// Delete.
    Delete(DeleteOp),
    /// Nested transaction.
    Txn(TxnOp),
}

/// A transaction: if every compare holds, `success`, else `failure`, atomically.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnOp {
    /// Guards.
    pub compare: Vec<Compare>,
    /// Ops when all guards hold.
    pub success: Vec<Op>,
    /// Ops otherwise.
    pub failure: Vec<Op>,
}

/// A replicated KV command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum KvCommand {
    /// Put one key.
    Put(PutOp),
    /// Delete a range.
    Delete(DeleteOp),
    /// Transaction.
    Txn(TxnOp),
    /// Drop history up to a revision.
    Compact {
        /// Revision.
        revision: u64,
    },
    /// Create a lease (the proposer picked the id).
    LeaseGrant {
        /// Lease id.
        id: i64,
        /// TTL in seconds.
        ttl: i64,
    },
    /// Revoke (or expire) a lease, deleting its keys.
    LeaseRevoke {
        /// Lease id.
        id: i64,
    },
}

/// Result of a range read.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeReply {
    /// Keys returned.
    pub kvs: Vec<KeyValue>,
    /// More matched than returned.
    pub more: bool,
    /// Keys matched.
    pub count: u64,
}

/// Result of a KV command or op.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum KvReply {
    /// Read result.
    Range(RangeReply),
    /// Put result.
    Put {
        /// Previous key, when asked for.
        prev: Option<KeyValue>,
    },
    /// Delete result.
    Delete {
        /// Keys deleted.
        deleted: u64,
        /// Them, when asked for.
        prev: Vec<KeyValue>,
    },
    /// Transaction result.
    Txn {
        /// Whether the guards held.
        succeeded: bool,
        /// One reply per op of the branch taken.
        responses: Vec<KvReply>,
    },
    /// Compaction done.
    Compacted,
    /// Lease created.
    LeaseGranted {
        /// Id.
        id: i64,
        /// TTL in seconds.
        ttl: i64,
    },
    /// Lease revoked.
    LeaseRevoked,
}

/// A refused KV command. Messages are etcd's where etcd has one, so clients that match on
/// them keep working.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// Key or value too large.
    #[error("etcdserver: request is too large")]
    TooLarge,
    /// Unknown lease.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// Lease id taken.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// TTL out of range.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// Negative TTL.
    #[error("etcdserver: lease TTL must not be negative")]
    LeaseTtlNegative,
    /// Revision compacted.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted {
        /// Oldest revision still readable.
        compacted: u64,
    },
    /// Revision in the future.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// Same key written twice in a transaction.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// Too many transaction ops.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// `ignore_value`/`ignore_lease` on a missing key.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// Lease id 0 or negative in a grant.
    #[error("etcdserver: lease id must be positive")]
    BadLeaseId,
}
