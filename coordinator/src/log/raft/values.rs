//! The replica's KV values off the heap (ADR 0019): a fjall database of their own in the data
//! dir's `kv-values` folder, keyed by ids this store hands out. It holds a copy of what the
//! applied state holds, never the truth: snapshots and the log carry the values, so the folder
//! is deleted when the replica opens its data dir and filled again as the snapshot loads and
//! the log applies. Its own database, because nothing in it is ever worth an fsync: in the
//! Raft database's journal, every log fsync would also write out the values.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::kv::ValueStore;
use ballast_memtables::{rotate_when_full, run_version_gc};

/// Folder of the value store inside the data dir (fjall reads only its own files there).
pub const VALUES_FOLDER: &str = "kv-values";

/// The store's memtable limit: what it holds is on the heap.
const MEMTABLE_BYTES: u64 = 1024 * 1024;

/// Values in a fjall keyspace.
pub struct FjallValues {
    /// Kept open with the keyspace; deletes its folder when dropped (the last value handle
    /// holds the store).
    _db: Database,
    keyspace: Keyspace,
    path: String,
    next: AtomicU64,
    /// Set once a write failed (logged once).
    refusing: std::sync::atomic::AtomicBool,
}

impl FjallValues {
    /// An empty store in a folder of its own under `data_dir`'s [`VALUES_FOLDER`], named for
    /// this process and this opening: a store of an earlier opening in this process may still
    /// be in use (value handles outlive a stopped replica) and is left to delete itself when
    /// dropped; what earlier processes left is deleted here.
    pub fn open(data_dir: &Path) -> Result<Self, fjall::Error> {
        static OPENINGS: AtomicU64 = AtomicU64::new(0);
        let root = data_dir.join(VALUES_FOLDER);
        let ours = format!("{}-", std::process::id());
        let name = format!("{ours}{}", OPENINGS.fetch_add(1, Ordering::Relaxed));
        std::fs::create_dir_all(&root)?;
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            let other = entry.file_name().to_string_lossy().into_owned();
            if !other.starts_with(&ours) || other == name {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        let dir = root.join(name);
        let db = Database::builder(&dir)
            .cache_size(256 * 1024)
            .worker_threads(1)
            .manual_journal_persist(true)
            .temporary(true)
            .open()?;
        // A small memtable: what it holds is on the heap.
        let keyspace = db.keyspace("values", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(MEMTABLE_BYTES)
                .manual_journal_persist(true)
        })?;
        Ok(Self {
            _db: db,
            keyspace,
            path: dir.display().to_string(),
            next: AtomicU64::new(1),
            refusing: Default::default(),
        })
    }

    /// Lets fjall delete the table files its compactions replaced, which otherwise stay until
    /// the next memtable rotation ([`ballast_memtables::run_version_gc`]): called after every
    /// snapshot.
    pub fn release_replaced_files(&self) -> Result<(), fjall::Error> {
        // Ids are 8 bytes; this key is never one.
        run_version_gc(&self.keyspace, b"gc")
    }

    /// A value that cannot be read means the local disk failed. The replica stops rather than
    /// answer without it (etcd does the same when its backend fails): its state would differ
    /// from the other replicas'. Restarted, it rebuilds from its snapshot and log.
    fn fail(&self, what: &str, id: u64, cause: &dyn std::fmt::Display) -> ! {
        tracing::error!(
            data_dir = %self.path,
            "KV value {id} could not be {what} ({cause}): stopping; a restart rebuilds the \
             values from the snapshot and the log"
        );
        eprintln!(
            "fatal: KV value {id} could not be {what} in {} ({cause})",
            self.path
        );
        std::process::abort()
    }
}

impl ValueStore for FjallValues {
    fn put(&self, bytes: &[u8]) -> Option<u64> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stored = self
            .keyspace
            .insert(id.to_be_bytes(), bytes)
            .and_then(|()| rotate_when_full(&self.keyspace, MEMTABLE_BYTES));
        match stored {
            Ok(()) => Some(id),
            Err(e) => {
                // A full disk, most likely: the value stays on the heap, and the Raft log on the
                // same disk stops the replica cleanly if it cannot append either.
                if !self.refusing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(data_dir = %self.path, error = %e, "KV values no longer fit in the value store; new ones stay on the heap");
                }
                None
            }
        }
    }

    fn get(&self, id: u64) -> Arc<[u8]> {
        match self.keyspace.get(id.to_be_bytes()) {
            Ok(Some(bytes)) => Arc::from(&bytes[..]),
            Ok(None) => self.fail("found", id, &"not in the keyspace"),
            Err(e) => self.fail("read", id, &e),
        }
    }

    fn remove(&self, id: u64) {
        // Not removed (a full disk): the bytes stay in a store deleted at the next start.
        let _ = self
            .keyspace
            .remove(id.to_be_bytes())
            .and_then(|()| rotate_when_full(&self.keyspace, MEMTABLE_BYTES));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of puts (a restart moves every value of the loaded snapshot into the store in
    /// one loop) leaves the store's memtables flushed, not held on the heap.
    #[test]
    fn a_burst_of_values_is_flushed_out_of_memory() {
        let data = tempfile::tempdir().expect("temp dir");
        let store = FjallValues::open(data.path()).expect("open");
        let value = [7u8; 256];
        let ids: Vec<u64> = (0..200_000)
            .map(|_| store.put(&value).expect("stored"))
            .collect();
        for id in &ids[..100_000] {
            store.remove(*id);
        }
        // Flushes run on fjall's worker; a healthy store gets below a few memtables soon.
        let held = ballast_memtables::wait_for_write_buffer(
            &store._db,
            4 * MEMTABLE_BYTES,
            std::time::Duration::from_secs(60),
        );
        assert!(
            held <= 4 * MEMTABLE_BYTES,
            "{held} bytes of values still in memtables 60 s after the burst: flushes stopped"
        );
        assert_eq!(&store.get(ids[150_000])[..], &value[..]);
    }

    fn folders(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root)
            .expect("values folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn values_round_trip_and_each_opening_starts_empty_in_its_own_folder() {
        let data = tempfile::tempdir().expect("temp dir");
        let root = data.path().join(VALUES_FOLDER);
        // What a crashed process left behind.
        std::fs::create_dir_all(root.join("999999999-0")).expect("stale folder");
        let first = FjallValues::open(data.path()).expect("open");
        assert_eq!(folders(&root).len(), 1, "the stale folder is gone");
        let a = first.put(b"alpha").expect("stored");
        let b = first.put(&[7u8; 5000]).expect("stored");
        assert_ne!(a, b);
        assert_eq!(&first.get(a)[..], b"alpha");
        assert_eq!(&first.get(b)[..], &[7u8; 5000][..]);
        first.remove(a);
        assert!(first.keyspace.get(a.to_be_bytes()).expect("read").is_none());

        // A second opening in this process leaves the first (still in use) alone.
        let second = FjallValues::open(data.path()).expect("open again");
        assert_eq!(folders(&root).len(), 2);
        assert_eq!(&first.get(b)[..], &[7u8; 5000][..]);
        assert!(
            second
                .keyspace
                .get(b.to_be_bytes())
                .expect("read")
                .is_none()
        );
        drop(first);
        assert_eq!(
            folders(&root).len(),
            1,
            "a store deletes its folder when dropped"
        );
        drop(second);
        assert!(folders(&root).is_empty());
    }
}
