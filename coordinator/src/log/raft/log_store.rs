//! The Raft log on fjall. Appends go into the journal at once and are made durable by one
//! flusher thread that fsyncs once for every group of appends waiting on it (group commit), so
//! many writes in flight share an fsync while each is acknowledged only after it is on disk.
//! The one exception is a leader's own new entries: they are reported flushed at once, so
//! openraft sends them to followers while they are being synced here, and what must wait for
//! this replica's copy waits on [`LocalLog`] instead (see [`super::durability`]).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, LeaderId, OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::Mutex;

use super::data_dir::{DataDir, DataDirError, META_COMMITTED, META_PURGED, META_VOTE, log_key};
use super::durability::LocalLog;
use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

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
    flush_jobs: mpsc::Sender<FlushJob>,
    /// This replica's id, to tell its own entries as leader from replicated ones.
    id: NodeId,
    /// The vote last saved, read by `append` without a disk read.
    vote: Arc<Mutex<Option<Vote>>>,
    local_log: LocalLog,
}

/// An append waiting for the flusher's next fsync.
struct FlushJob {
    /// openraft's callback; `None` for a leader's own entries, already reported flushed.
    callback: Option<LogFlushed<TypeConfig>>,
    /// The append's last entry and the truncation count when it was queued.
    last: (LogId, u64),
}

impl LogStore {
    /// Wraps `store` for replica `id` and starts its flusher thread, which ends when every
    /// clone is dropped. Syncs once first, so what the log holds at start counts as on disk.
    pub fn new(store: DataDir, id: NodeId) -> Result<Self, StorageError> {
        store.sync().map_err(write_err)?;
        let vote = store.read_meta::<Vote>(META_VOTE).map_err(read_err)?;
        let local_log = LocalLog::new(last_log_id(&store)?);
        let (tx, rx) = mpsc::channel::<FlushJob>();
        let db = store.clone();
        let durable = local_log.clone();
        std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let started = Instant::now();
                    let early = waiting.iter().filter(|j| j.callback.is_none()).count() as u64;
                    if early > 0 {
                        // A leader's disk that stalls (tests).
                        ballast_failpoints::block("log-leader-fsync-hold");
                    }
                    let result = db.sync();
                    match &result {
                        Ok(()) => durable.synced(waiting.last().map(|j| j.last), early, started),
                        Err(e) => durable.failed(e.to_string()),
                    }
                    for job in waiting {
                        if let Some(callback) = job.callback {
                            callback.log_io_completed(result.as_ref().map(|_| ()).map_err(io_err));
                        }
                    }
                }
            })
            .map_err(|e| write_err_msg(format!("spawning the log flusher thread: {e}")))?;
        Ok(Self {
            store,
            flush_jobs: tx,
            id,
            vote: Arc::new(Mutex::new(vote)),
            local_log,
        })
    }

    /// How far this replica's log is on disk.
    pub fn local_log(&self) -> LocalLog {
        self.local_log.clone()
    }

    /// The leader id of this replica's own term while it leads (its vote is committed and for
    /// itself).
    fn leading(&self) -> Option<LeaderId<NodeId>> {
        let vote = (*self.vote.lock())?;
        (vote.is_committed() && vote.leader_id().node_id == self.id).then(|| *vote.leader_id())
    }
}

/// The last entry the log holds, or the last purged one when it holds none.
fn last_log_id(store: &DataDir) -> Result<Option<LogId>, StorageError> {
    match store.log.last_key_value() {
        Some(guard) => {
            let (key, value) = guard.into_inner().map_err(|e| read_err(store.err(e)))?;
            let index = u64::from_be_bytes(key.as_ref().try_into().unwrap_or([0; 8]));
            Ok(Some(decode_entry(store, index, &value)?.log_id))
        }
        None => last_purged(store),
    }
}

fn last_purged(store: &DataDir) -> Result<Option<LogId>, StorageError> {
    store.read_meta(META_PURGED).map_err(read_err)
}

fn decode_entry(store: &DataDir, index: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
    crate::log::wire::decode(bytes).map_err(|e| {
        StorageIOError::read_log_at_index(
            index,
            &io::Error::other(format!(
                "log entry {index} in {} is corrupt: {e}",
                store.path()
            )),
        )
        .into()
    })
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
            entries.push(decode_entry(&self.store, index, &value)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(LogState {
            last_purged_log_id: last_purged(&self.store)?,
            last_log_id: last_log_id(&self.store)?,
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
            .map_err(|e| StorageIOError::write_vote(&e))?;
        *self.vote.lock() = Some(vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.store
            .read_meta(META_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        crate::metrics::committed(committed.map_or(0, |id| id.index));
        // No further than this replica's copy is on disk, so a restart never starts from a
        // commit its log lacks. Not fsynced: losing it only means a restart re-applies less
        // and learns the rest from the leader.
        let committed = self.local_log.clamp_now(committed);
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
        // Only a leader's own client entries skip the wait: a follower answers an append once
        // it is on disk, and blank and membership entries keep openraft's order of things.
        if let Some(reason) = self.local_log.failure() {
            return Err(write_err_msg(format!(
                "an earlier log fsync failed: {reason}"
            )));
        }
        let leading = self.leading();
        let mut early = leading.is_some();
        let mut last = None;
        let mut batch = self.store.db.batch();
        let mut appended = 0;
        for entry in entries {
            early &= Some(entry.log_id.leader_id) == leading
                && matches!(entry.payload, EntryPayload::Normal(_));
            let bytes = crate::log::wire::encode(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &io_err(e)))?;
            appended += bytes.len() as u64;
            batch.insert(&self.store.log, log_key(entry.log_id.index), bytes);
            last = Some(entry.log_id);
        }
        let Some(last) = last else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        batch.commit().map_err(|e| write_err(self.store.err(e)))?;
        self.store.count_log_bytes(appended);
        self.store.rotate_full_memtables().map_err(write_err)?;
        let stopped = |e| write_err_msg(format!("log flusher stopped: {e}"));
        if early {
            let truncations = self.local_log.queued_early();
            self.flush_jobs
                .send(FlushJob {
                    callback: None,
                    last: (last, truncations),
                })
                .map_err(stopped)?;
            callback.log_io_completed(Ok(()));
        } else {
            self.flush_jobs
                .send(FlushJob {
                    callback: Some(callback),
                    last: (last, self.local_log.truncations()),
                })
                .map_err(stopped)?;
        }
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
        self.store.sync().map_err(write_err)?;
        self.local_log.truncated(last_log_id(&self.store)?);
        Ok(())
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
