//! Group commit over a fjall database. A writer puts its batch in the journal (no fsync) and
//! counts it with [`GroupCommit::wrote`], in whatever order its own lock gives the writes; it
//! answers its caller only after [`GroupCommit::durable_through`] its batch. One fsync runs
//! at a time, on a blocking thread, outside the writers' locks; the batches written while it
//! runs share the next one. Concurrent callers pay one fsync per round instead of one each,
//! and no runtime thread waits on the disk.

use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Database, PersistMode};

/// Sequence numbers of journaled batches and how far an fsync has covered them.
pub struct GroupCommit {
    db: Database,
    /// The last batch counted as written to the journal.
    written: AtomicU64,
    /// The last batch an fsync covered.
    durable: AtomicU64,
    /// Held while an fsync runs: callers queue here and the first in syncs for all of them.
    syncing: tokio::sync::Mutex<()>,
    /// A blocking hold point before each fsync (`ballast-failpoints`), for tests of a stalled
    /// disk.
    hold_point: Option<&'static str>,
}

impl GroupCommit {
    /// Group commit over `db`'s journal; nothing written yet.
    pub fn new(db: Database) -> GroupCommit {
        GroupCommit {
            db,
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            syncing: tokio::sync::Mutex::new(()),
            hold_point: None,
        }
    }

    /// Stops each fsync at blocking hold point `name` first (see `ballast_failpoints::block`;
    /// nothing happens unless a test arms it).
    pub fn with_hold_point(mut self, name: &'static str) -> GroupCommit {
        self.hold_point = Some(name);
        self
    }

    /// Counts a batch the caller has just committed to the journal; its sequence number, to
    /// wait for with [`GroupCommit::durable_through`]. Call after the commit returned, so an
    /// fsync that starts later covers it.
    pub fn wrote(&self) -> u64 {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Counts a batch the caller committed with its own fsync: durable already.
    pub fn wrote_durably(&self) -> u64 {
        let sequence = self.wrote();
        self.durable.fetch_max(sequence, Ordering::AcqRel);
        sequence
    }

    /// The last batch counted as written: what a read answered now may rest on.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// The last batch an fsync covered.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Resolves once batch `sequence` (and every batch before it) is fsynced. The first
    /// caller to find it not yet durable syncs everything written so far, on a blocking
    /// thread; the rest wait for that sync or the next. A failed fsync fails every caller
    /// waiting on it; the next caller tries again.
    pub async fn durable_through(&self, sequence: u64) -> Result<(), fjall::Error> {
        if self.durable() >= sequence {
            return Ok(());
        }
        let _turn = self.syncing.lock().await;
        if self.durable() >= sequence {
            return Ok(());
        }
        // Read before the fsync starts: every batch counted by now was committed before it.
        let covered = self.written();
        let (db, hold_point) = (self.db.clone(), self.hold_point);
        tokio::task::spawn_blocking(move || {
            if let Some(name) = hold_point {
                ballast_failpoints::block(name);
            }
            db.persist(PersistMode::SyncAll)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        self.durable.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fjall::KeyspaceCreateOptions;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_each_return_only_once_an_fsync_covers_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::builder(dir.path()).open().expect("open");
        let keyspace = db
            .keyspace("k", KeyspaceCreateOptions::default)
            .expect("keyspace");
        let commit = Arc::new(GroupCommit::new(db));
        let mut writers = Vec::new();
        for n in 0..64u32 {
            let (commit, keyspace) = (commit.clone(), keyspace.clone());
            writers.push(tokio::spawn(async move {
                keyspace
                    .insert(n.to_be_bytes(), b"v".as_slice())
                    .expect("insert");
                let sequence = commit.wrote();
                commit.durable_through(sequence).await.expect("fsync");
                assert!(
                    commit.durable() >= sequence,
                    "batch {sequence} answered before an fsync covered it"
                );
                sequence
            }));
        }
        let mut sequences = Vec::new();
        for writer in writers {
            sequences.push(writer.await.expect("writer"));
        }
        sequences.sort_unstable();
        assert_eq!(sequences, (1..=64).collect::<Vec<u64>>(), "one number each");
        assert_eq!(commit.durable(), 64);
    }

    #[tokio::test]
    async fn a_batch_written_durably_needs_no_fsync_and_nothing_is_durable_before_it_is_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::builder(dir.path()).open().expect("open");
        let commit = GroupCommit::new(db);
        assert_eq!(commit.durable(), 0);
        assert_eq!(commit.wrote_durably(), 1);
        assert_eq!(commit.durable(), 1);
        assert_eq!(commit.wrote(), 2);
        assert_eq!(commit.durable(), 1, "written, not yet synced");
        commit.durable_through(2).await.expect("fsync");
        assert_eq!(commit.durable(), 2);
    }
}
