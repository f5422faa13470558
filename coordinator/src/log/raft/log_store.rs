//! The Raft log on fjall. Appends go into the journal at once and are made durable by one
//! flusher thread that fsyncs once for every group of appends waiting on it (group commit), so
//! many writes in flight share an fsync while each is acknowledged only after it is on disk.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};

use super::data_dir::{DataDir, DataDirError, META_COMMITTED, META_PURGED, META_VOTE, log_key};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn read_err(e: DataDirError) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: DataDirError) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

/// Durable Raft log; clones share the database and the flusher thread.
#[derive(Clone)]
pub struct LogStore {
    store: DataDir,
    flush_jobs: mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    /// Wraps `store` and starts its flusher thread, which ends when every clone is dropped.
    pub fn new(store: DataDir) -> Self {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let db = store.clone();
        std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let result = db.sync();
                    for callback in waiting {
                        callback.log_io_completed(result.as_ref().map(|_| ()).map_err(io_err));
                    }
                }
            })
            .expect("spawning the log flusher thread");
        Self {
            store,
            flush_jobs: tx,
        }
    }

    fn decode(&self, index: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
        crate::log::wire::decode(bytes).map_err(|e| {
            StorageIOError::read_log_at_index(
                index,
                &io::Error::other(format!(
                    "log entry {index} in {} is corrupt: {e}",
                    self.store.path()
                )),
            )
            .into()
        })
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.store.read_meta(META_PURGED).map_err(read_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(*i),
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(i) => Some(i - 1),
            Bound::Unbounded => None,
        };
        let iter = match end {
            Some(end) if end < start => return Ok(Vec::new()),
            Some(end) => self.store.log.range(log_key(start)..=log_key(end)),
            None => self.store.log.range(log_key(start)..),
        };
        let mut entries = Vec::new();
        for item in iter {
            let (key, value) = item.into_inner().map_err(|e| read_err(self.store.err(e)))?;
            let index = u64::from_be_bytes(key.as_ref().try_into().unwrap_or([0; 8]));
            entries.push(self.decode(index, &value)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_log_id = match self.store.log.last_key_value() {
            Some(guard) => {
                let (key, value) = guard
                    .into_inner()
                    .map_err(|e| read_err(self.store.err(e)))?;
                let index = u64::from_be_bytes(key.as_ref().try_into().unwrap_or([0; 8]));
                Some(self.decode(index, &value)?.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // A vote must be on disk before it is answered: granting two votes in one term after a
        // crash would allow two leaders.
        let store = self.store.clone();
        let vote = *vote;
        tokio::task::spawn_blocking(move || store.write_meta(META_VOTE, &vote, true))
            .await
            .map_err(|e| StorageIOError::write_vote(&io_err(e)))?
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.store
            .read_meta(META_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        crate::metrics::committed(committed.map_or(0, |id| id.index));
        // Not fsynced: losing it only means a restart re-applies less and learns the rest from
        // the leader.
        self.store
            .write_meta(META_COMMITTED, &committed, false)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .store
            .read_meta::<Option<LogId>>(META_COMMITTED)
            .map_err(read_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = self.store.db.batch();
        let mut appended = 0;
        for entry in entries {
            let bytes = crate::log::wire::encode(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &io_err(e)))?;
            appended += bytes.len() as u64;
            batch.insert(&self.store.log, log_key(entry.log_id.index), bytes);
        }
        batch.commit().map_err(|e| write_err(self.store.err(e)))?;
        self.store.count_log_bytes(appended);
        self.store.rotate_full_memtables().map_err(write_err)?;
        self.flush_jobs
            .send(callback)
            .map_err(|e| write_err_msg(format!("log flusher stopped: {e}")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = self.store.db.batch();
        for item in self.store.log.range(log_key(log_id.index)..) {
            let key = item.key().map_err(|e| write_err(self.store.err(e)))?;
            batch.remove(&self.store.log, key);
        }
        batch.commit().map_err(|e| write_err(self.store.err(e)))?;
        self.store.rotate_full_memtables().map_err(write_err)?;
        // Durable at once: truncated entries of a deposed leader must not come back after a
        // crash and make this replica look more up to date than it is.
        self.store.sync().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(|e| write_err_msg(e.to_string()))?;
        let mut batch = self.store.db.batch();
        batch.insert(&self.store.meta, META_PURGED, bytes);
        for item in self.store.log.range(..=log_key(log_id.index)) {
            let key = item.key().map_err(|e| write_err(self.store.err(e)))?;
            batch.remove(&self.store.log, key);
        }
        batch.commit().map_err(|e| write_err(self.store.err(e)))?;
        self.store.rotate_full_memtables().map_err(write_err)?;
        ballast_failpoints::hit("log-purge");
        Ok(())
    }
}

fn write_err_msg(message: String) -> StorageError {
    StorageIOError::write_logs(&io::Error::other(message)).into()
}
