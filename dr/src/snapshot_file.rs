//! Snapshot files in etcd's format: what `etcdctl snapshot save` writes when it asks a Ballast
//! replica for a snapshot (etcd's `Maintenance.Snapshot`). etcd's snapshot file is its bbolt
//! database, which `etcdctl snapshot status` opens and checks, so this one is a bbolt
//! database too ([`crate::bolt`]), holding:
//! - bucket `ballast`: the archive — `manifest` (as `dr export` writes it, unencrypted) and
//!   `data` (the state-machine snapshot);
//! - bucket `key`: the KV store's keys in etcd's shape (key: the revision, 8 bytes big-endian,
//!   `_`, 8 bytes big-endian sub-revision; value: an `mvccpb.KeyValue`), so `snapshot status`
//!   counts them and reports the newest one's revision;
//! - bucket `meta`: `consistent_index`, the Raft index of the snapshot (8 bytes big-endian).
//!
//! The stream ends with the SHA-256 of the file, which `etcdctl snapshot save` keeps at its end.
//! `ballastctl dr verify` and `dr restore` take the file's path as the archive and check that
//! hash, the manifest and the data's checksum. `etcdctl snapshot restore` cannot restore it:
//! etcd would find none of its own state in it.

use sha2::{Digest, Sha256};

use crate::archive::{parse_manifest, plain_manifest};
use crate::bolt::{self, Bucket};
use crate::key::checksum;
use crate::{ArchiveInput, DrError, Verified};

/// Length of the SHA-256 trailer.
const TRAILER: usize = 32;

/// The file's bytes (without the trailer, which the stream sends last) for `input` made at
/// `created_at_ms`, with the KV keys `kvs`: (mod revision, encoded `mvccpb.KeyValue`), in any
/// order.
pub fn write(
    input: &ArchiveInput,
    created_at_ms: u64,
    mut kvs: Vec<(u64, Vec<u8>)>,
) -> Result<Vec<u8>, DrError> {
    let manifest = plain_manifest(input, created_at_ms, checksum(&input.data));
    let manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    // Keys changed by one transaction share a revision: their sub-revisions tell them apart.
    kvs.sort_by_key(|(revision, _)| *revision);
    let mut keys = Vec::with_capacity(kvs.len());
    let mut sub = 0u64;
    let mut last = None;
    for (revision, kv) in kvs {
        sub = if last == Some(revision) { sub + 1 } else { 0 };
        last = Some(revision);
        let mut key = Vec::with_capacity(17);
        key.extend_from_slice(&revision.to_be_bytes());
        key.push(b'_');
        key.extend_from_slice(&sub.to_be_bytes());
        keys.push((key, kv));
    }
    let buckets = [
        Bucket {
            name: b"ballast".to_vec(),
            items: vec![
                (b"data".to_vec(), input.data.clone()),
                (b"manifest".to_vec(), manifest_json),
            ],
        },
        Bucket {
            name: b"key".to_vec(),
            items: keys,
        },
        Bucket {
            name: b"meta".to_vec(),
            items: vec![(
                b"consistent_index".to_vec(),
                input.log_index.to_be_bytes().to_vec(),
            )],
        },
    ];
    bolt::write(&buckets).map_err(|e| DrError::Corrupt {
        archive: manifest.name.clone(),
        reason: format!("cannot lay out the snapshot file: {e}"),
    })
}

/// The SHA-256 trailer of a file's bytes.
pub fn trailer(file: &[u8]) -> Vec<u8> {
    Sha256::digest(file).to_vec()
}

/// Reads and checks a snapshot file read from `path`: the SHA-256 trailer if there is one, the
/// database, the manifest, and the data's size and checksum.
pub fn read(bytes: &[u8], path: &str) -> Result<Verified, DrError> {
    let corrupt = |reason: String| DrError::Corrupt {
        archive: path.to_string(),
        reason,
    };
    let body = if bytes.len() % bolt::PAGE == TRAILER {
        let (body, sum) = bytes.split_at(bytes.len() - TRAILER);
        if Sha256::digest(body).as_slice() != sum {
            return Err(corrupt(
                "the SHA-256 at the end of the file does not match its contents".into(),
            ));
        }
        body
    } else {
        bytes
    };
    let buckets = bolt::read(body).map_err(|e| corrupt(format!("not a snapshot file: {e}")))?;
    let ballast = buckets
        .iter()
        .find(|b| b.name == b"ballast")
        .ok_or_else(|| {
            corrupt("no `ballast` bucket: an etcd snapshot, not one taken from Ballast".into())
        })?;
    let item = |name: &[u8]| {
        ballast
            .items
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                corrupt(format!(
                    "the `ballast` bucket lacks `{}`",
                    String::from_utf8_lossy(name)
                ))
            })
    };
    let manifest = parse_manifest(&item(b"manifest")?, path)?;
    let data = item(b"data")?;
    if data.len() as u64 != manifest.plain_size || checksum(&data) != manifest.plain_checksum {
        return Err(corrupt(
            "the snapshot does not match its manifest's size and checksum".into(),
        ));
    }
    Ok(Verified {
        manifest,
        data: Some(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ArchiveInput {
        ArchiveInput {
            cluster_id: "c".into(),
            term: 3,
            log_index: 42,
            revision: 17,
            restore_epoch: 0,
            payload: "test".into(),
            data: b"the fleet state".to_vec(),
        }
    }

    #[test]
    fn a_snapshot_file_reads_back_with_its_manifest_and_data() {
        let kvs = vec![
            (9, b"kv-b".to_vec()),
            (7, b"kv-a".to_vec()),
            (9, b"kv-c".to_vec()),
        ];
        let mut file = write(&input(), 1_700_000_000_000, kvs).expect("written");
        let buckets = bolt::read(&file).expect("a database");
        let keys: Vec<&Vec<u8>> = buckets[1].items.iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), 3);
        assert_eq!(&keys[0][..8], &7u64.to_be_bytes());
        assert_eq!((keys[1][8], &keys[2][9..]), (b'_', &1u64.to_be_bytes()[..]));
        let sum = trailer(&file);
        file.extend_from_slice(&sum);
        let verified = read(&file, "snap.db").expect("verified");
        assert_eq!(verified.data.as_deref(), Some(&b"the fleet state"[..]));
        assert_eq!(verified.manifest.revision, 17);
        assert_eq!(verified.manifest.log_index, 42);
        // A flipped byte anywhere is caught (the trailer covers the whole database).
        let mut damaged = file.clone();
        damaged[5 * 1000] ^= 1;
        assert!(matches!(
            read(&damaged, "snap.db"),
            Err(DrError::Corrupt { .. })
        ));
    }
}
