//! Writing, listing, checking, pruning and reading archives.

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::key::{NONCE_PREFIX, SEGMENT, checksum, hex, unhex};
use crate::{
    ArchiveUrl, Destination, DrError, Encryption, FORMAT_VERSION, Key, Manifest, Progress,
};

const DATA: &str = "data";
const MANIFEST: &str = "manifest.json";
/// Archives above this size are uploaded in parts of this size.
const PART: usize = 8 << 20;

/// What to archive: the snapshot bytes and the identity the manifest records.
#[derive(Clone, Debug)]
pub struct ArchiveInput {
    /// Cluster id.
    pub cluster_id: String,
    /// Raft term of the snapshot's last entry.
    pub term: u64,
    /// Raft index of the snapshot's last entry.
    pub log_index: u64,
    /// Fleet revision.
    pub revision: u64,
    /// Restore epoch.
    pub restore_epoch: u64,
    /// Description of the payload format.
    pub payload: String,
    /// The snapshot.
    pub data: Vec<u8>,
}

/// One archive found by [`list`]: its manifest, or why it could not be read.
#[derive(Debug)]
pub struct Listed {
    /// Archive name.
    pub name: String,
    /// Its manifest.
    pub manifest: Result<Manifest, DrError>,
}

/// An archive that passed every check, with its snapshot.
#[derive(Debug)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// The snapshot, decrypted; `None` when it is encrypted and no key was given (checksums
    /// of the stored bytes were still checked).
    pub data: Option<Vec<u8>>,
}

/// Which archives to keep.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    /// Keep at most this many (newest first).
    pub keep_last: Option<usize>,
    /// Delete archives older than this.
    pub max_age: Option<Duration>,
}

/// Writes an archive: seals the snapshot (if a key is given), uploads it (in parts when large),
/// reads it back and checks its checksum, then writes the manifest. Returns the manifest.
pub async fn export(
    destination: &Destination,
    input: &ArchiveInput,
    key: Option<&Key>,
    progress: &dyn Progress,
) -> Result<Manifest, DrError> {
    let created_at_ms = ballast_protocol::clock::unix_ms();
    let name = archive_name(input, created_at_ms);
    let plain_checksum = checksum(&input.data);
    let (stored, encryption) = match key {
        Some(key) => {
            let (sealed, prefix) = key.encrypt(&input.data);
            let encryption = Encryption::XChaCha20Poly1305Stream {
                key_id: key.id(),
                nonce_prefix: hex(&prefix),
                segment_size: SEGMENT as u64,
            };
            (Bytes::from(sealed), encryption)
        }
        None => (Bytes::from(input.data.clone()), Encryption::None),
    };
    let manifest = Manifest {
        size: stored.len() as u64,
        checksum: checksum(&stored),
        encryption,
        ..plain_manifest(input, created_at_ms, plain_checksum)
    };
    let data_path = destination.object(&name, DATA);
    let store = &destination.store;
    let total = stored.len() as u64;
    if stored.len() > PART {
        let upload = store
            .put_multipart(&data_path)
            .await
            .map_err(|e| destination.storage_error(e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut done = 0u64;
        for part in stored.chunks(PART) {
            writer
                .wait_for_capacity(2)
                .await
                .map_err(|e| destination.storage_error(e))?;
            writer.put(stored.slice_ref(part));
            done += part.len() as u64;
            progress.update(done, total);
        }
        writer
            .finish()
            .await
            .map_err(|e| destination.storage_error(e))?;
    } else {
        store
            .put(&data_path, PutPayload::from(stored.clone()))
            .await
            .map_err(|e| destination.storage_error(e))?;
        progress.update(total, total);
    }
    // Read back what the store holds before declaring the archive complete.
    let back = store
        .get(&data_path)
        .await
        .map_err(|e| destination.storage_error(e))?
        .bytes()
        .await
        .map_err(|e| destination.storage_error(e))?;
    if checksum(&back) != manifest.checksum {
        return Err(DrError::Corrupt {
            archive: destination.archive_url(&name),
            reason: "the uploaded data reads back with a different checksum".into(),
        });
    }
    ballast_failpoints::hit("dr-export-before-manifest");
    let manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    store
        .put(
            &destination.object(&name, MANIFEST),
            PutPayload::from(manifest_json),
        )
        .await
        .map_err(|e| destination.storage_error(e))?;
    Ok(manifest)
}

/// An archive's name when made at `created_at_ms`: names sort by creation time.
pub(crate) fn archive_name(input: &ArchiveInput, created_at_ms: u64) -> String {
    format!("{created_at_ms:016}-r{}", input.revision)
}

/// The manifest of `input` stored as is (no encryption), made at `created_at_ms`.
pub(crate) fn plain_manifest(
    input: &ArchiveInput,
    created_at_ms: u64,
    plain_checksum: String,
) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        name: archive_name(input, created_at_ms),
        cluster_id: input.cluster_id.clone(),
        term: input.term,
        log_index: input.log_index,
        revision: input.revision,
        restore_epoch: input.restore_epoch,
        created_at: chrono::DateTime::from_timestamp_millis(created_at_ms as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default(),
        created_at_ms,
        size: input.data.len() as u64,
        checksum: plain_checksum.clone(),
        plain_size: input.data.len() as u64,
        plain_checksum,
        encryption: Encryption::None,
        payload: input.payload.clone(),
    }
}

/// Parses a manifest read from `url`, refusing a format this build does not read.
pub(crate) fn parse_manifest(raw: &[u8], url: &str) -> Result<Manifest, DrError> {
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        format_version: u32,
    }
    let version: VersionOnly = serde_json::from_slice(raw).map_err(|e| DrError::Corrupt {
        archive: url.to_string(),
        reason: format!("unreadable manifest: {e}"),
    })?;
    if version.format_version != FORMAT_VERSION {
        return Err(DrError::UnknownFormat {
            archive: url.to_string(),
            found: version.format_version,
            supported: FORMAT_VERSION,
        });
    }
    serde_json::from_slice(raw).map_err(|e| DrError::Corrupt {
        archive: url.to_string(),
        reason: format!("unreadable manifest: {e}"),
    })
}

/// Reads and checks an archive's manifest.
pub async fn read_manifest(archive: &ArchiveUrl) -> Result<Manifest, DrError> {
    let destination = &archive.destination;
    let url = archive.url();
    let raw = match destination
        .store
        .get(&destination.object(&archive.name, MANIFEST))
        .await
    {
        Ok(found) => found
            .bytes()
            .await
            .map_err(|e| destination.storage_error(e))?,
        Err(object_store::Error::NotFound { .. }) => return Err(DrError::NotFound(url)),
        Err(e) => return Err(destination.storage_error(e)),
    };
    parse_manifest(&raw, &url)
}

/// Checks an archive end to end: manifest, size and checksum of the stored data, and — when
/// it is encrypted and `key` is given (required with `need_data`) — decryption and the
/// plaintext checksum. Returns the snapshot when it could be read.
pub async fn verify(
    archive: &ArchiveUrl,
    key: Option<&Key>,
    need_data: bool,
    progress: &dyn Progress,
) -> Result<Verified, DrError> {
    let manifest = read_manifest(archive).await?;
    let url = archive.url();
    let corrupt = |reason: String| DrError::Corrupt {
        archive: url.clone(),
        reason,
    };
    let key_to_use = match (&manifest.encryption, key) {
        (Encryption::None, _) => None,
        (Encryption::XChaCha20Poly1305Stream { key_id, .. }, Some(key)) => {
            if &key.id() != key_id {
                return Err(DrError::WrongKey {
                    archive: url,
                    expected: key_id.clone(),
                    given: key.id(),
                });
            }
            Some(key)
        }
        (Encryption::XChaCha20Poly1305Stream { key_id, .. }, None) if need_data => {
            return Err(DrError::KeyRequired {
                archive: url,
                key_id: key_id.clone(),
            });
        }
        (Encryption::XChaCha20Poly1305Stream { .. }, None) => None,
    };
    let destination = &archive.destination;
    let mut chunks = match destination
        .store
        .get(&destination.object(&archive.name, DATA))
        .await
    {
        Ok(found) => found.into_stream(),
        Err(object_store::Error::NotFound { .. }) => {
            return Err(corrupt("the data object is missing".into()));
        }
        Err(e) => return Err(destination.storage_error(e)),
    };
    let mut stored = Vec::with_capacity(manifest.size.min(1 << 30) as usize);
    while let Some(chunk) = chunks
        .try_next()
        .await
        .map_err(|e| destination.storage_error(e))?
    {
        stored.extend_from_slice(&chunk);
        progress.update(stored.len() as u64, manifest.size);
    }
    if stored.len() as u64 != manifest.size {
        return Err(corrupt(format!(
            "data is {} bytes, the manifest says {} (truncated or replaced)",
            stored.len(),
            manifest.size
        )));
    }
    if checksum(&stored) != manifest.checksum {
        return Err(corrupt(format!(
            "data checksum does not match the manifest ({})",
            manifest.checksum
        )));
    }
    let data = match (&manifest.encryption, key_to_use) {
        (Encryption::None, _) => Some(stored),
        (Encryption::XChaCha20Poly1305Stream { nonce_prefix, .. }, Some(key)) => {
            let prefix = unhex(nonce_prefix)
                .filter(|p| p.len() == NONCE_PREFIX)
                .ok_or_else(|| corrupt("bad nonce prefix in the manifest".into()))?;
            let plain = key.decrypt(&stored, &prefix).ok_or_else(|| {
                corrupt("decryption failed: the data was altered or cut short".into())
            })?;
            Some(plain)
        }
        (Encryption::XChaCha20Poly1305Stream { .. }, None) => None,
    };
    if let Some(plain) = &data
        && (plain.len() as u64 != manifest.plain_size || checksum(plain) != manifest.plain_checksum)
    {
        return Err(corrupt(
            "decrypted snapshot does not match the manifest's plaintext checksum".into(),
        ));
    }
    Ok(Verified { manifest, data })
}

/// [`verify`] for an archive URL, or for the path of a snapshot file in etcd's format
/// (`etcdctl snapshot save`; see [`crate::snapshot_file`]). Returns the archive's URL or path
/// as given, for messages, with what was verified.
pub async fn verify_any(
    url: &str,
    key: Option<&Key>,
    need_data: bool,
    progress: &dyn Progress,
) -> Result<(String, Verified), DrError> {
    let local = url.strip_prefix("file://").unwrap_or(url);
    if std::path::Path::new(local).is_file() {
        let bytes = tokio::fs::read(local)
            .await
            .map_err(|e| DrError::Destination {
                url: url.to_string(),
                reason: format!("cannot read the file: {e}"),
            })?;
        progress.update(bytes.len() as u64, bytes.len() as u64);
        return Ok((url.to_string(), crate::snapshot_file::read(&bytes, url)?));
    }
    let archive = ArchiveUrl::parse(url)?;
    let verified = verify(&archive, key, need_data, progress).await?;
    Ok((archive.url(), verified))
}

/// Archive names under a destination, oldest first (complete or not).
async fn names(destination: &Destination) -> Result<Vec<(String, bool)>, DrError> {
    let objects: Vec<object_store::ObjectMeta> = destination
        .store
        .list(Some(&destination.prefix))
        .try_collect()
        .await
        .map_err(|e| destination.storage_error(e))?;
    let depth = destination.prefix.parts().count();
    let mut found: std::collections::BTreeMap<String, bool> = Default::default();
    for object in objects {
        let parts: Vec<String> = object
            .location
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        if parts.len() != depth + 2 {
            continue;
        }
        let complete = found.entry(parts[depth].clone()).or_insert(false);
        *complete |= parts[depth + 1] == MANIFEST;
    }
    Ok(found.into_iter().collect())
}

/// Lists the archives of a destination, oldest first. Uploads that never got a manifest are
/// left out.
pub async fn list(destination: &Destination) -> Result<Vec<Listed>, DrError> {
    let mut out = Vec::new();
    for (name, complete) in names(destination).await? {
        if !complete {
            continue;
        }
        let archive = ArchiveUrl {
            destination: destination.clone(),
            name: name.clone(),
        };
        out.push(Listed {
            manifest: read_manifest(&archive).await,
            name,
        });
    }
    Ok(out)
}

/// Deletes one archive (manifest first, so it stops being listed at once).
pub async fn delete(destination: &Destination, name: &str) -> Result<(), DrError> {
    for leaf in [MANIFEST, DATA] {
        match destination
            .store
            .delete(&destination.object(name, leaf))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(destination.storage_error(e)),
        }
    }
    Ok(())
}

/// Applies a retention policy; returns the names deleted. The newest complete archive is never
/// deleted. Uploads without a manifest older than an hour are removed too.
pub async fn retain(destination: &Destination, policy: Retention) -> Result<Vec<String>, DrError> {
    let now = ballast_protocol::clock::unix_ms();
    let all = names(destination).await?;
    let created = |name: &str| -> Option<u64> { name.split('-').next()?.parse().ok() };
    let complete: Vec<&String> = all.iter().filter(|(_, c)| *c).map(|(n, _)| n).collect();
    let mut doomed = Vec::new();
    for (rank, name) in complete.iter().rev().enumerate() {
        if rank == 0 {
            continue;
        }
        let too_many = policy.keep_last.is_some_and(|keep| rank >= keep);
        let too_old = match (policy.max_age, created(name)) {
            (Some(age), Some(at)) => now.saturating_sub(at) > age.as_millis() as u64,
            _ => false,
        };
        if too_many || too_old {
            doomed.push((*name).clone());
        }
    }
    for (name, complete) in &all {
        let stale = created(name).is_some_and(|at| now.saturating_sub(at) > 3_600_000);
        if !complete && stale {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        delete(destination, name).await?;
    }
    Ok(doomed)
}
