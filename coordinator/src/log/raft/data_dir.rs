//! The replica's one fjall database: the Raft log and Raft metadata (vote, committed index,
//! purge point, cluster identity) live in separate keyspaces of it, so a single journal fsync
//! makes a log append durable. The latest state-machine snapshot has a file of its own in the
//! same directory ([`super::snapshot_file`]).

use std::path::{Path, PathBuf};

use ballast_memtables::{rotate_when_full, run_version_gc};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why the replica's disk state could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// fjall failed (I/O, corruption, locked by another process).
    #[error("storage at {path}: {source}")]
    Fjall {
        /// Data directory involved.
        path: String,
        /// The underlying error.
        source: fjall::Error,
    },
    /// A stored record did not decode.
    #[error("storage at {path}: record {key:?} in keyspace {keyspace} is corrupt: {reason}")]
    Corrupt {
        /// Data directory involved.
        path: String,
        /// Keyspace of the record.
        keyspace: &'static str,
        /// Key of the record.
        key: String,
        /// Decoder message.
        reason: String,
    },
}

/// Handles to the database and its keyspaces; clones share the same database.
#[derive(Clone)]
pub struct DataDir {
    /// The database (journal shared by all keyspaces).
    pub db: Database,
    /// Raft log: big-endian index → JSON entry.
    pub log: Keyspace,
    /// Raft and cluster metadata: small JSON records under fixed keys.
    pub meta: Keyspace,
    /// Where snapshots were kept before they had their own file: in a data dir written since,
    /// only a marker that turns older builds away
    /// ([`super::state_machine::MOVED_TO_FILE`]).
    pub snapshot: Keyspace,
    /// KV values off the heap (ADR 0019): emptied at open, filled by the applied state.
    values: std::sync::Arc<super::values::FjallValues>,
    /// Bytes of log entries appended since the last snapshot was saved (this process's count).
    log_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    dir: PathBuf,
    path: String,
}

/// Meta key: the Raft vote.
pub const META_VOTE: &str = "vote";
/// Meta key: last committed log id (lets a restart re-apply committed entries).
pub const META_COMMITTED: &str = "committed";
/// Meta key: last purged log id.
pub const META_PURGED: &str = "last_purged";
/// Meta key: cluster id stamped at bootstrap (or learned when joining).
pub const META_CLUSTER_ID: &str = "cluster_id";
/// Meta key: this replica's node id, so a data dir cannot be started under another id.
pub const META_NODE_ID: &str = "node_id";
/// Meta key: an empty value written only to give the meta keyspace a memtable to rotate,
/// which runs fjall's version GC ([`DataDir::release_log_memory`]). Never read.
pub const META_VERSION_GC: &str = "version_gc";
/// How long [`DataDir::release_log_memory`] waits for fjall's flush worker.
pub const LOG_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Meta key: present while a restore or `--force-new-cluster` rewrites the data dir; a data
/// dir still holding it after a crash is incomplete and refuses to start.
pub const META_UNFINISHED_REWRITE: &str = "unfinished_rewrite";

impl DataDir {
    /// Opens (or creates) the database in `dir`. The cache is kept small: the coordinator's
    /// working set is the in-memory fleet state, not the log.
    pub fn open(dir: &Path) -> Result<Self, DataDirError> {
        let path = dir.display().to_string();
        let wrap = |source| DataDirError::Fjall {
            path: path.clone(),
            source,
        };
        let db = Database::builder(dir)
            .cache_size(1024 * 1024)
            // fjall's smallest journal budget (default 512 MiB): a rarely written keyspace
            // (meta, snapshot) pins journal segments until the budget forces its flush, and a
            // restart replays all of them into memtables.
            .max_journaling_size(64 * 1024 * 1024)
            .worker_threads(1)
            .open()
            .map_err(wrap)?;
        let log = db.keyspace("log", keyspace_options).map_err(wrap)?;
        let meta = db
            .keyspace("meta", || {
                KeyspaceCreateOptions::default().max_memtable_size(META_MEMTABLE_BYTES)
            })
            .map_err(wrap)?;
        let snapshot = db.keyspace("snapshot", keyspace_options).map_err(wrap)?;
        let values = std::sync::Arc::new(super::values::FjallValues::open(dir).map_err(wrap)?);
        Ok(Self {
            db,
            log,
            meta,
            snapshot,
            values,
            log_bytes: Default::default(),
            dir: dir.to_path_buf(),
            path,
        })
    }

    /// The value store itself, for its upkeep.
    pub(crate) fn values_store(&self) -> &super::values::FjallValues {
        &self.values
    }

    /// Counts `bytes` of log entries appended.
    pub fn count_log_bytes(&self, bytes: u64) {
        self.log_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes of log entries appended since the last snapshot was saved.
    pub fn log_bytes_since_snapshot(&self) -> u64 {
        self.log_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Restarts the count of [`DataDir::log_bytes_since_snapshot`]: a snapshot was saved. The
    /// entries appended while it was built count as covered, which errs by one build's worth.
    pub fn snapshot_saved(&self) {
        self.log_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where the applied state keeps its KV values.
    pub fn values(&self) -> std::sync::Arc<dyn crate::kv::ValueStore> {
        self.values.clone()
    }

    /// Data directory path, for messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Wraps a fjall error with the data directory.
    pub fn err(&self, source: fjall::Error) -> DataDirError {
        DataDirError::Fjall {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads a JSON record from the meta keyspace.
    pub fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, DataDirError> {
        self.read_json(&self.meta, "meta", key)
    }

    /// Reads a JSON record from `keyspace`.
    pub fn read_json<T: DeserializeOwned>(
        &self,
        keyspace: &Keyspace,
        name: &'static str,
        key: &str,
    ) -> Result<Option<T>, DataDirError> {
        let Some(bytes) = keyspace.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DataDirError::Corrupt {
                path: self.path.clone(),
                keyspace: name,
                key: key.to_string(),
                reason: e.to_string(),
            })
    }

    /// Writes a JSON record to the meta keyspace; `durable` fsyncs the journal before returning.
    pub fn write_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        durable: bool,
    ) -> Result<(), DataDirError> {
        let bytes = serde_json::to_vec(value).map_err(|e| DataDirError::Corrupt {
            path: self.path.clone(),
            keyspace: "meta",
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        self.meta.insert(key, bytes).map_err(|e| self.err(e))?;
        self.rotate_full_memtables()?;
        if durable {
            self.sync()?;
        }
        Ok(())
    }

    /// Removes a meta record; `durable` fsyncs the journal before returning.
    pub fn remove_meta(&self, key: &str, durable: bool) -> Result<(), DataDirError> {
        self.meta.remove(key).map_err(|e| self.err(e))?;
        self.rotate_full_memtables()?;
        if durable {
            self.sync()?;
        }
        Ok(())
    }

    /// Rotates every keyspace's memtable that is past its limit, on this thread
    /// ([`ballast_memtables::rotate_when_full`]: fjall's one worker can stall on its own
    /// queue); every write to the database is followed by this.
    pub fn rotate_full_memtables(&self) -> Result<(), DataDirError> {
        for (keyspace, limit) in [
            (&self.log, LOG_MEMTABLE_BYTES),
            (&self.meta, META_MEMTABLE_BYTES),
            (&self.snapshot, LOG_MEMTABLE_BYTES),
        ] {
            rotate_when_full(keyspace, limit).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Fsyncs the journal: everything written so far survives a crash.
    pub fn sync(&self) -> Result<(), DataDirError> {
        if ballast_failpoints::fails("fsync-error") {
            return Err(self.err(fjall::Error::Io(std::io::Error::other(
                "fsync failed (injected by BALLAST_FAILPOINTS)",
            ))));
        }
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.err(e))
    }

    /// Hands the log's memtable to fjall's flush worker and, once it is flushed, releases
    /// the memory it held: the entries are then read from a table file. Blocks for the
    /// flush (a few milliseconds for the log's 2 MiB memtable), at most
    /// [`LOG_FLUSH_WAIT`].
    pub fn release_log_memory(&self) -> Result<(), DataDirError> {
        if !self.log.rotate_memtable().map_err(|e| self.err(e))? {
            return Ok(());
        }
        // A flush drops the memtable from the keyspace's current version, but the version
        // before it, which still lists the memtable, stays in fjall's version history until a
        // version GC runs under a newer watermark. Only a later memtable rotation runs one
        // (fjall 3.1.13 `inner_rotate_memtable`, lsm-tree 3.1.10 `SuperVersions::
        // maintenance`), and on a quiet replica none may come for hours: the entries stayed on
        // the heap, though the memtable gauge read 0 (a heap profile found 1.7 MB a replica).
        // So once the flush is done, one small write to the meta keyspace and its rotation run
        // that GC for every keyspace.
        let deadline = std::time::Instant::now() + LOG_FLUSH_WAIT;
        while self.log.sealed_memtable_count() > 0 {
            if std::time::Instant::now() > deadline {
                tracing::warn!(
                    "the log's memtable was not flushed within {LOG_FLUSH_WAIT:?}; its memory \
                     is released at the next rotation"
                );
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        run_version_gc(&self.meta, META_VERSION_GC.as_bytes()).map_err(|e| self.err(e))
    }

    /// Bytes the memtables of every keyspace hold (active and sealed, not yet flushed): the
    /// part of the storage engine's memory that grows with writes.
    pub fn write_buffer_bytes(&self) -> u64 {
        self.db.write_buffer_size()
    }

    /// Bytes the files under the data dir take on disk (what `du` counts: allocated blocks):
    /// the log, the snapshot, the journals and metadata, measured alike on every replica. Not
    /// their apparent length: fjall preallocates its journal, which then reads as 64 MiB
    /// however little is in it.
    pub fn bytes_on_disk(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => walk(&entry.path()),
                    Ok(meta) => meta.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir)
    }
}

/// Memtable limit of the log (and the old snapshot keyspace). Small: the log is written once,
/// read rarely (replication of recent entries hits the memtable anyway) and purged behind
/// snapshots, so large write buffers only cost memory. A memtable below its limit is never
/// flushed, so on a quiet replica this much of the log stays in memory for good. 2 MiB still
/// takes a second of a write burst between flushes.
const LOG_MEMTABLE_BYTES: u64 = 2 * 1024 * 1024;

/// Memtable limit of the meta keyspace, rewritten on every commit (the committed index): a
/// memtable keeps every version until it is flushed, so a small one bounds that history.
const META_MEMTABLE_BYTES: u64 = 512 * 1024;

fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(LOG_MEMTABLE_BYTES)
}

/// Log keys are big-endian indexes so that key order is log order.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of small log appends, one commit each as the Raft log makes them, leaves the
    /// log's memtables flushed rather than held on the heap.
    #[test]
    fn a_burst_of_log_appends_is_flushed_out_of_memory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = DataDir::open(dir.path()).expect("open");
        let entry = [3u8; 350];
        for index in 0..300_000u64 {
            let mut batch = store.db.batch();
            batch.insert(&store.log, log_key(index), entry);
            batch.commit().expect("commit");
            store.rotate_full_memtables().expect("rotate");
        }
        let held = ballast_memtables::wait_for_write_buffer(
            &store.db,
            4 * LOG_MEMTABLE_BYTES,
            std::time::Duration::from_secs(60),
        );
        assert!(
            held <= 4 * LOG_MEMTABLE_BYTES,
            "{held} bytes of log still in memtables 60 s after the burst: flushes stopped"
        );
    }
}
