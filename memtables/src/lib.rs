//! Upkeep of fjall keyspaces that fjall 3.1.13 leaves to its worker threads and that Ballast's
//! databases (one worker each: the coordinator's Raft log and KV values, the shard's cache)
//! do on the writing thread instead.
//!
//! **Rotation.** fjall rotates a memtable past its limit on its worker, asked by every write
//! past the limit (`try_send` into the worker's queue of 1,000). A burst of writes while the
//! worker is busy fills that queue, and the worker, rotating, then sends the flush into its
//! own full queue with a blocking send (`Keyspace::inner_rotate_memtable`): with one worker
//! thread it waits on itself for good, flushes stop, and the memtable and the journal grow
//! without bound (fjall issue #257 reports the same stall). A heap profile of a coordinator
//! replica restarted after 300K KV writes found 104 MB of KV values held that way in its
//! value store's memtable. [`rotate_when_full`], called after every write, rotates on the
//! writing thread: the write that passes the limit is the only one asking the worker, and the
//! worker finds that request stale (the memtable it names is no longer active) and skips it.
//!
//! **Version GC.** fjall deletes the memtables and table files that flushes and compactions
//! replaced only at a version GC, which runs when a memtable is rotated, under the watermark
//! taken then; when writes stop, no rotation comes and they stay (a value store holding 54 MB
//! of live tables used 112 MB of disk idle; a flushed log memtable stayed on the heap).
//! [`run_version_gc`] makes one small write and rotates, which runs that GC for every
//! keyspace of the database.

use std::time::{Duration, Instant};

use fjall::{AbstractTree, Database, Keyspace};

/// Rotates `keyspace`'s memtable on the calling thread once it holds more than `limit` bytes
/// by fjall's own measure. Pass the limit the keyspace was created with
/// (`KeyspaceCreateOptions::max_memtable_size`), so that this rotation comes first.
pub fn rotate_when_full(keyspace: &Keyspace, limit: u64) -> fjall::Result<()> {
    // `tree` and `rotate_memtable` are fjall's hidden API: the memtable's size as fjall counts
    // it, and the rotation its worker would do.
    if keyspace.tree.active_memtable().size() > limit {
        keyspace.rotate_memtable()?;
    }
    Ok(())
}

/// Writes an empty value under `key` in `keyspace` and rotates its memtable, which runs
/// fjall's version GC for every keyspace of the database. `key` must be one the owner never
/// reads as data.
pub fn run_version_gc(keyspace: &Keyspace, key: &[u8]) -> fjall::Result<()> {
    keyspace.insert(key, [])?;
    keyspace.rotate_memtable().map(|_| ())
}

/// Waits until `db`'s memtables (active and sealed, every keyspace) hold at most `bytes`, or
/// until `within` has passed, and returns what they hold then: for tests of the flush path.
pub fn wait_for_write_buffer(db: &Database, bytes: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let held = db.write_buffer_size();
        if held <= bytes || Instant::now() >= deadline {
            return held;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjall::KeyspaceCreateOptions;

    const LIMIT: u64 = 1024 * 1024;

    /// A burst of small writes on a database with one worker thread, as Ballast opens them:
    /// without the writer's rotation, fjall's worker stalls on its own queue and the
    /// memtable keeps everything (the test fails with ~68 MB held).
    #[test]
    fn a_burst_of_writes_is_flushed_out_of_memory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::builder(dir.path())
            .worker_threads(1)
            .open()
            .expect("open");
        let keyspace = db
            .keyspace("burst", || {
                KeyspaceCreateOptions::default().max_memtable_size(LIMIT)
            })
            .expect("keyspace");
        let value = [7u8; 256];
        for id in 0..200_000u64 {
            keyspace.insert(id.to_be_bytes(), value).expect("insert");
            rotate_when_full(&keyspace, LIMIT).expect("rotate");
        }
        for id in 0..100_000u64 {
            keyspace.remove(id.to_be_bytes()).expect("remove");
            rotate_when_full(&keyspace, LIMIT).expect("rotate");
        }
        let held = wait_for_write_buffer(&db, 4 * LIMIT, Duration::from_secs(60));
        assert!(
            held <= 4 * LIMIT,
            "{held} bytes still in memtables 60 s after the burst: flushes stopped"
        );
        assert_eq!(
            keyspace
                .get(150_000u64.to_be_bytes())
                .expect("get")
                .as_deref(),
            Some(&value[..])
        );
    }

    /// The version GC's write lands under its key and leaves the memtable empty.
    #[test]
    fn a_version_gc_rotates_the_memtable_it_wrote_to() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::builder(dir.path()).open().expect("open");
        let keyspace = db
            .keyspace("gc", KeyspaceCreateOptions::default)
            .expect("keyspace");
        keyspace.insert("data", "kept").expect("insert");
        run_version_gc(&keyspace, b"version_gc").expect("gc");
        assert_eq!(keyspace.tree.active_memtable().size(), 0);
        assert_eq!(
            keyspace.get("version_gc").expect("get").as_deref(),
            Some(&b""[..])
        );
        assert_eq!(
            keyspace.get("data").expect("get").as_deref(),
            Some(&b"kept"[..])
        );
    }
}
