//! The archive manifest: identity of the snapshot, how to check it, how it is sealed.

use serde::{Deserialize, Serialize};

/// Archive format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// How the data object is sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "kebab-case")]
pub enum Encryption {
    /// Stored in the clear.
    None,
    /// XChaCha20-Poly1305, STREAM construction, big-endian 32-bit segment counter.
    XChaCha20Poly1305Stream {
        /// Fingerprint of the key (never the key).
        key_id: String,
        /// Nonce prefix, hex.
        nonce_prefix: String,
        /// Plaintext bytes per segment.
        segment_size: u64,
    },
}

/// What an archive holds and how to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Archive format version.
    pub format_version: u32,
    /// Archive name (its folder under the destination).
    pub name: String,
    /// Cluster the snapshot comes from.
    pub cluster_id: String,
    /// Raft term of the last entry in the snapshot.
    pub term: u64,
    /// Raft log index of the last entry in the snapshot.
    pub log_index: u64,
    /// Fleet revision of the snapshot.
    pub revision: u64,
    /// Restore epoch of the cluster when the snapshot was taken.
    pub restore_epoch: u64,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Bytes of the data object as stored.
    pub size: u64,
    /// Checksum of the data object as stored (`sha256:<hex>`).
    pub checksum: String,
    /// Bytes of the snapshot before encryption.
    pub plain_size: u64,
    /// Checksum of the snapshot before encryption.
    pub plain_checksum: String,
    /// How the data object is sealed.
    pub encryption: Encryption,
    /// Free-form description of the payload (the coordinator puts its snapshot format here).
    pub payload: String,
}
