//! openraft's side of the state machine: the applied state ([`crate::log::applied`], the fleet
//! state in memory — a few MB even for a 100M-machine fleet) made durable by the fsync'd Raft
//! log plus periodic snapshots stored in fjall. After a crash the replica loads the latest
//! snapshot and openraft re-applies the committed entries after it.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotId, StorageIOError,
};
use serde::{Deserialize, Serialize};

use super::data_dir::DataDir;
use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::fleet::FleetState;
use crate::log::applied::{EntryOutcome, SharedState, Step};

/// Snapshot as stored in fjall and shipped to followers.
#[derive(Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta,
}

const SNAPSHOT_META_KEY: &str = "meta";
const SNAPSHOT_DATA_KEY: &str = "data";

/// openraft's view of the state machine.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<SharedState>,
    store: DataDir,
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
        let (fleet, applied, membership) = match load_snapshot(&store)? {
            Some((meta, data)) => {
                let fleet = FleetState::decode(&data).map_err(|e| {
                    sm_read_err(format!("snapshot in {} is corrupt: {e}", store.path()))
                })?;
                (fleet, meta.last_log_id, meta.last_membership)
            }
            None => (FleetState::new(), None, StoredMembership::default()),
        };
        Ok(Self {
            shared: Arc::new(SharedState::new(fleet, applied, membership)),
            store,
        })
    }

    /// The state the services read.
    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    fn build_snapshot_now(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // A copy taken under the read lock, so the data and the applied log id belong together.
        let (fleet, last_log_id, membership) = self.shared.copy_applied();
        let data = fleet.encode();
        drop(fleet);
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, data.len()),
            None => format!("0-0-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: membership,
            snapshot_id: SnapshotId::from(snapshot_id),
        };
        save_snapshot(&self.store, &meta, &data)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

pub(crate) fn load_snapshot(
    store: &DataDir,
) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let meta: Option<StoredSnapshotMeta> = store
        .read_json(&store.snapshot, "snapshot", SNAPSHOT_META_KEY)
        .map_err(sm_read_err)?;
    let Some(meta) = meta else { return Ok(None) };
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

pub(crate) fn save_snapshot(
    store: &DataDir,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(), StorageError> {
    let meta_bytes = serde_json::to_vec(&StoredSnapshotMeta { meta: meta.clone() })
        .map_err(snapshot_write_err)?;
    ballast_failpoints::hit("snapshot-before-save");
    let mut batch = store.db.batch();
    batch.insert(&store.snapshot, SNAPSHOT_DATA_KEY, data);
    batch.insert(&store.snapshot, SNAPSHOT_META_KEY, meta_bytes);
    batch
        .commit()
        .map_err(|e| snapshot_write_err(store.err(e)))?;
    // The log behind this snapshot is purged next; the snapshot must be on disk first.
    store.sync().map_err(snapshot_write_err)?;
    ballast_failpoints::hit("snapshot-after-save");
    Ok(())
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
        let fleet = FleetState::decode(&data).map_err(|e| {
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
