//! openraft's side of the state machine: the applied state ([`crate::log::applied`], the fleet
//! state in memory — a few MB even for a 100M-machine fleet) made durable by the fsync'd Raft
//! log plus periodic snapshots, each in a file of its own ([`super::snapshot_file`]). After a
//! crash the replica loads the latest snapshot and openraft re-applies the committed entries
//! after it.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotId, StorageIOError,
};
use serde::{Deserialize, Serialize};

use super::data_dir::DataDir;
use super::durability::LocalLog;
use super::snapshot_file;
use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::fleet::FleetState;
use crate::log::applied::{EntryOutcome, SharedState, Step};

/// Snapshot metadata as stored (JSON).
#[derive(Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta,
}

/// Keys of the snapshot keyspace, where snapshots were kept before they had their own file.
const SNAPSHOT_META_KEY: &str = "meta";
const SNAPSHOT_DATA_KEY: &str = "data";

/// What the snapshot keyspace holds under `meta` once the snapshot has its own file. A build
/// from before the move reads it as snapshot metadata, fails to decode it with this text in
/// the message, and refuses to start; without it, that build would find no snapshot and start
/// from an empty state on a log purged behind the snapshot.
pub const MOVED_TO_FILE: &str = "this data dir keeps its snapshot in the file state.snapshot, \
     written by a newer Ballast (ADR 0017): run that version or newer, or restore a DR archive";

/// openraft's view of the state machine.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<SharedState>,
    store: DataDir,
    /// This replica's own log: an entry is applied only once its copy there is on disk
    /// ([`super::durability`]).
    local_log: Option<LocalLog>,
}

fn sm_read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn snapshot_write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

impl StateMachineStore {
    /// Loads the latest snapshot from `store` (if any) into memory.
    pub fn open(store: DataDir) -> Result<Self, StorageError> {
        let (mut fleet, applied, membership) = match load_snapshot(&store)? {
            Some((meta, data)) => {
                let fleet = FleetState::decode(&data).map_err(|e| {
                    sm_read_err(format!("snapshot in {} is corrupt: {e}", store.path()))
                })?;
                (fleet, meta.last_log_id, meta.last_membership)
            }
            None => (FleetState::new(), None, StoredMembership::default()),
        };
        fleet.store_kv_values_in(store.values());
        Ok(Self {
            shared: Arc::new(SharedState::new(fleet, applied, membership)),
            store,
            local_log: None,
        })
    }

    /// Applies entries only once `log` has them on disk.
    pub fn waiting_for(mut self, log: LocalLog) -> Self {
        self.local_log = Some(log);
        self
    }

    /// The state the services read.
    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    fn build_snapshot_now(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // A copy taken under the read lock, so the data and the applied log id belong together.
        let (fleet, last_log_id, membership) = self.shared.copy_applied();
        // Unique among this replica's snapshots without the data's length, which is known only
        // once the data is in the file (after the metadata naming the snapshot).
        let built_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_micros());
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{built_at}", id.leader_id.term, id.index),
            None => format!("0-0-{built_at}"),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: membership,
            snapshot_id: SnapshotId::from(snapshot_id),
        };
        save_snapshot_with(&self.store, &meta, |out| fleet.encode_to(out))?;
        // openraft keeps only the metadata of a snapshot it had built (0.9 `sm::worker`
        // `build_snapshot`), and reads the file through `get_current_snapshot` when a follower
        // needs it: the data stays on disk.
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

pub(crate) fn load_snapshot(
    store: &DataDir,
) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let corrupt_meta = |e: serde_json::Error| {
        sm_read_err(format!(
            "snapshot metadata in {} is corrupt: {e}",
            store.path()
        ))
    };
    if let Some(stored) = snapshot_file::read(store.dir()).map_err(sm_read_err)? {
        let meta: StoredSnapshotMeta =
            serde_json::from_slice(&stored.meta).map_err(corrupt_meta)?;
        return Ok(Some((meta.meta, stored.data)));
    }
    // No file: a data dir written before snapshots had their own file, or one without a
    // snapshot yet.
    let Some(meta) = store
        .snapshot
        .get(SNAPSHOT_META_KEY)
        .map_err(|e| sm_read_err(store.err(e)))?
    else {
        return Ok(None);
    };
    if serde_json::from_slice::<String>(&meta).is_ok_and(|m| m == MOVED_TO_FILE) {
        return Err(sm_read_err(format!(
            "{} is missing: this data dir's snapshot was moved there, and the log behind it \
             is purged; restore a DR archive or add this replica afresh",
            snapshot_file::path_in(store.dir()).display()
        )));
    }
    let meta: StoredSnapshotMeta = serde_json::from_slice(&meta).map_err(corrupt_meta)?;
    let data = store
        .snapshot
        .get(SNAPSHOT_DATA_KEY)
        .map_err(|e| sm_read_err(store.err(e)))?
        .ok_or_else(|| {
            sm_read_err(format!(
                "snapshot data missing in {} although its metadata exists",
                store.path()
            ))
        })?;
    Ok(Some((meta.meta, data.to_vec())))
}

/// Writes the snapshot durably, before the log behind it is purged.
pub(crate) fn save_snapshot(
    store: &DataDir,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(), StorageError> {
    save_snapshot_with(store, meta, |out| out.write_all(data))
}

/// As [`save_snapshot`], with the data written by `encode` straight into the snapshot file.
pub(crate) fn save_snapshot_with(
    store: &DataDir,
    meta: &SnapshotMeta,
    encode: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), StorageError> {
    let meta_bytes = serde_json::to_vec(&StoredSnapshotMeta { meta: meta.clone() })
        .map_err(snapshot_write_err)?;
    ballast_failpoints::hit("snapshot-before-save");
    snapshot_file::write_with(store.dir(), &meta_bytes, encode).map_err(snapshot_write_err)?;
    mark_snapshot_moved(store).map_err(snapshot_write_err)?;
    store.snapshot_saved();
    ballast_failpoints::hit("snapshot-after-save");
    // The log behind a snapshot is purged or kept only for followers that lag, which read it
    // rarely; its memtable held the newest of it in memory for good, since fjall flushes a
    // memtable only once it passes its size limit (about 4 MB a replica after loading the
    // 100M-machine fleet's state, by a heap profile). A snapshot is a good time to flush it.
    if let Err(e) = store.release_log_memory() {
        tracing::warn!(error = %e, "could not release the log's memtable");
    }
    if let Err(e) = store.values_store().release_replaced_files() {
        tracing::warn!(error = %e, "could not release the value store's replaced files");
    }
    Ok(())
}

/// Leaves only [`MOVED_TO_FILE`] in the snapshot keyspace: once per data dir (the first
/// snapshot after an upgrade, or a new data dir's first), which also drops the copies an
/// upgraded data dir kept there. Not fsynced on its own: the snapshot file is durable already
/// and is read first, and the next log append's fsync covers the marker.
fn mark_snapshot_moved(store: &DataDir) -> Result<(), crate::log::raft::data_dir::DataDirError> {
    let marker = serde_json::to_vec(MOVED_TO_FILE).expect("a string encodes as JSON");
    let current = store
        .snapshot
        .get(SNAPSHOT_META_KEY)
        .map_err(|e| store.err(e))?;
    if current.as_deref() == Some(marker.as_slice()) {
        return Ok(());
    }
    store.snapshot.clear().map_err(|e| store.err(e))?;
    store
        .snapshot
        .insert(SNAPSHOT_META_KEY, marker)
        .map_err(|e| store.err(e))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        let started = std::time::Instant::now();
        let snapshot = tokio::task::spawn_blocking(move || this.build_snapshot_now())
            .await
            .map_err(snapshot_write_err)?;
        crate::metrics::snapshot_built(started);
        snapshot
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.shared.applied_state())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<EntryOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(log), Some(last)) = (&self.local_log, entries.last()) {
            // A leader's own entries may be committed before its fsync of them ended.
            log.wait_for(last.log_id.index)
                .await
                .map_err(|e| StorageIOError::write_logs(&std::io::Error::other(e.to_string())))?;
        }
        let responses = self.shared.apply_entries(entries.into_iter().map(|entry| {
            let step = match entry.payload {
                EntryPayload::Blank => Step::Blank,
                EntryPayload::Normal(request) => Step::Request(request),
                EntryPayload::Membership(membership) => Step::Membership(membership),
            };
            (entry.log_id, step)
        }));
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let mut fleet = FleetState::decode(&data).map_err(|e| {
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::other(format!("received snapshot is corrupt: {e}")),
            )
        })?;
        let store = self.store.clone();
        let meta_owned = meta.clone();
        tokio::task::spawn_blocking(move || save_snapshot(&store, &meta_owned, &data))
            .await
            .map_err(snapshot_write_err)??;
        fleet.store_kv_values_in(self.store.values());
        self.shared
            .replace(fleet, meta.last_log_id, meta.last_membership.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || load_snapshot(&store))
            .await
            .map_err(sm_read_err)??;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: SnapshotId::from(format!("3-{index}")),
        }
    }

    /// How releases before the snapshot file stored a snapshot: both keys of the snapshot
    /// keyspace in one batch, fsynced.
    fn save_in_keyspace(store: &DataDir, meta: &SnapshotMeta, data: &[u8]) {
        let meta_bytes =
            serde_json::to_vec(&StoredSnapshotMeta { meta: meta.clone() }).expect("encodes");
        let mut batch = store.db.batch();
        batch.insert(&store.snapshot, SNAPSHOT_DATA_KEY, data);
        batch.insert(&store.snapshot, SNAPSHOT_META_KEY, meta_bytes);
        batch.commit().expect("commit");
        store.sync().expect("fsync");
    }

    /// An upgraded replica reads the snapshot its older release kept in fjall, writes the next
    /// one to the file, drops the keyspace's copy for a marker that an older release refuses
    /// to start on (naming why), and reads the file back after a restart.
    #[test]
    fn a_snapshot_kept_in_fjall_by_an_older_release_is_read_then_moved_to_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = DataDir::open(dir.path()).expect("open");
        save_in_keyspace(&store, &meta(10), b"state at 10");
        let (loaded, data) = load_snapshot(&store).expect("load").expect("present");
        assert_eq!(
            (loaded.last_log_id, data),
            (meta(10).last_log_id, b"state at 10".to_vec())
        );

        save_snapshot(&store, &meta(20), b"state at 20").expect("save");
        assert!(
            snapshot_file::path_in(dir.path()).exists(),
            "written to the file"
        );
        assert_eq!(
            store.snapshot.get(SNAPSHOT_DATA_KEY).expect("get"),
            None,
            "the keyspace's copy is dropped"
        );
        let marker = store
            .snapshot
            .get(SNAPSHOT_META_KEY)
            .expect("get")
            .expect("the marker");
        let older = serde_json::from_slice::<StoredSnapshotMeta>(&marker)
            .err()
            .expect("an older release cannot read the marker as a snapshot")
            .to_string();
        assert!(older.contains("newer Ballast"), "{older}");
        store.sync().expect("fsync");
        drop(store);

        let store = DataDir::open(dir.path()).expect("reopen");
        let (loaded, data) = load_snapshot(&store).expect("load").expect("present");
        assert_eq!(
            (loaded.last_log_id, data),
            (meta(20).last_log_id, b"state at 20".to_vec())
        );
        save_snapshot(&store, &meta(30), b"state at 30").expect("save again");
        assert_eq!(
            load_snapshot(&store).expect("load").expect("present").1,
            b"state at 30"
        );
    }

    /// A data dir whose snapshot file was lost refuses to start instead of starting empty.
    #[test]
    fn a_moved_snapshot_whose_file_is_gone_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = DataDir::open(dir.path()).expect("open");
        assert!(
            load_snapshot(&store).expect("load").is_none(),
            "a new data dir has none"
        );
        save_snapshot(&store, &meta(5), b"state at 5").expect("save");
        std::fs::remove_file(snapshot_file::path_in(dir.path())).expect("lose the file");
        let message = load_snapshot(&store).expect_err("missing file").to_string();
        assert!(message.contains("state.snapshot is missing"), "{message}");
    }
}
