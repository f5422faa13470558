//! Errors of DR operations. Messages name the archive or destination and never contain key
//! material.

/// Why a DR operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DrError {
    /// The destination or archive URL cannot be used.
    #[error("bad destination {url}: {reason}")]
    Destination {
        /// URL as given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Object storage failed.
    #[error("object storage at {url}: {source}")]
    Storage {
        /// Destination.
        url: String,
        /// Underlying error.
        source: object_store::Error,
    },
    /// There is no archive (manifest) at the URL.
    #[error("no archive at {0} (no manifest.json there)")]
    NotFound(String),
    /// The archive is damaged: checksum mismatch, truncation, unreadable manifest.
    #[error("archive {archive} is corrupt: {reason}")]
    Corrupt {
        /// Archive URL.
        archive: String,
        /// What failed.
        reason: String,
    },
    /// The archive was written by a newer (or unknown) format.
    #[error(
        "archive {archive} has format version {found}; this build reads version {supported} only"
    )]
    UnknownFormat {
        /// Archive URL.
        archive: String,
        /// Version in the manifest.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The archive is encrypted and no key was given.
    #[error(
        "archive {archive} is encrypted (key id {key_id}); give the key with --key-file or --key-env"
    )]
    KeyRequired {
        /// Archive URL.
        archive: String,
        /// Fingerprint of the key it needs.
        key_id: String,
    },
    /// The key given is not the archive's key.
    #[error(
        "archive {archive} was encrypted with key id {expected}, not with the given key ({given})"
    )]
    WrongKey {
        /// Archive URL.
        archive: String,
        /// Key id in the manifest.
        expected: String,
        /// Fingerprint of the key given.
        given: String,
    },
    /// The key material is unusable.
    #[error("encryption key {source_name}: {reason}")]
    BadKey {
        /// Where the key came from (file path or variable name, never the key).
        source_name: String,
        /// What is wrong.
        reason: String,
    },
}
