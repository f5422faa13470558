//! Ballast disaster recovery: snapshot archives in object storage.
//!
//! An archive is two objects under a destination: `<name>/data` (the state-machine snapshot,
//! optionally encrypted) and `<name>/manifest.json` (what it is and how to check it). The
//! manifest is written last, after the data has been read back and its checksum matched, so an
//! archive with a manifest is complete. Names sort by creation time.
//!
//! Destinations are object_store URLs: a local directory (a path or `file://`) or S3
//! (`s3://bucket/prefix`, standard AWS environment variables, `?endpoint=..&allow_http=true&
//! region=..` for on-prem stores). This crate knows nothing of the coordinator: the snapshot is
//! opaque bytes plus the identity fields the caller puts in the manifest.
//!
//! The same archive also travels as one file in etcd's snapshot format ([`snapshot_file`]),
//! which is what `etcdctl snapshot save` gets from a Ballast replica.

mod archive;
pub mod bolt;
mod destination;
mod error;
mod key;
mod manifest;
pub mod snapshot_file;

pub use archive::{
    ArchiveInput, Listed, Retention, Verified, delete, export, list, read_manifest, retain, verify,
    verify_any,
};
pub use destination::{ArchiveUrl, Destination};
pub use error::DrError;
pub use key::Key;
pub use manifest::{Encryption, FORMAT_VERSION, Manifest};

/// Receives transfer progress (bytes done of a total), e.g. to draw a progress bar.
pub trait Progress: Send + Sync {
    /// `done` of `total` bytes moved.
    fn update(&self, done: u64, total: u64);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _done: u64, _total: u64) {}
}
