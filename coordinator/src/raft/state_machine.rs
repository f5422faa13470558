//! The replicated state machine: the fleet state in memory (a few MB even for a 100M-machine
//! fleet), made durable by the fsync'd Raft log plus periodic snapshots stored in fjall. After a
//! crash the replica loads the latest snapshot and openraft re-applies the committed entries
//! after it.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotId, StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::store::Store;
use super::types::{
    Entry, LogId, Membership, RaftRequest, RaftResponse, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use crate::fleet::{Applied, FleetCommand, FleetState};
use crate::history::History;

/// State shared between the state machine (writer) and the gRPC services (readers).
pub struct SharedState {
    fleet: RwLock<FleetState>,
    applied: RwLock<(Option<LogId>, StoredMembership)>,
    /// Recent changes by revision, for resumable assignment watches.
    history: RwLock<History>,
    /// Ticks with the fleet revision after every apply, so readers can wait for a revision.
    revision_tx: watch::Sender<u64>,
}

impl SharedState {
    fn new(fleet: FleetState, applied: Option<LogId>, membership: StoredMembership) -> Self {
        let (revision_tx, _) = watch::channel(fleet.revision());
        Self {
            history: RwLock::new(History::starting_at(fleet.revision())),
            fleet: RwLock::new(fleet),
            applied: RwLock::new((applied, membership)),
            revision_tx,
        }
    }

    /// Read access to the fleet state. Hold it briefly: the apply path waits for it.
    pub fn fleet(&self) -> RwLockReadGuard<'_, FleetState> {
        self.fleet.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Current fleet revision.
    pub fn revision(&self) -> u64 {
        self.fleet().revision()
    }

    /// Last applied log id.
    pub fn applied_log_id(&self) -> Option<LogId> {
        self.applied.read().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Read access to the change history.
    pub fn history(&self) -> RwLockReadGuard<'_, History> {
        self.history.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to revision changes.
    pub fn watch_revision(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }

    /// A fresh state (empty, or decoded from a snapshot) as of `applied`.
    pub(crate) fn from_snapshot(fleet: FleetState, applied: Option<LogId>) -> Arc<Self> {
        Arc::new(Self::new(fleet, applied, StoredMembership::default()))
    }

    /// Applies committed log entries in order and returns each one's outcome. The one apply
    /// path for every consensus backend, so both produce the same state from the same log.
    pub(crate) fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = (LogId, Step)>,
    ) -> Vec<RaftResponse> {
        let started = std::time::Instant::now();
        let mut outcomes = Vec::new();
        let revision;
        {
            let mut fleet = self.fleet.write().unwrap_or_else(|p| p.into_inner());
            let mut applied = self.applied.write().unwrap_or_else(|p| p.into_inner());
            for (log_id, step) in entries {
                applied.0 = Some(log_id);
                let unchanged = Applied {
                    revision: fleet.revision(),
                    changed: false,
                    kv: None,
                };
                let outcome = match step {
                    Step::Blank => Ok(unchanged),
                    Step::Request(request) => {
                        let mut applied = fleet.apply_logged(&request);
                        for (outcome, changes) in &mut applied {
                            if let Ok(done) = outcome
                                && done.changed
                            {
                                self.history
                                    .write()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(done.revision, std::mem::take(changes));
                            }
                        }
                        let mut results = applied.into_iter().map(|(outcome, _)| outcome);
                        if matches!(request.command, FleetCommand::Group(_)) {
                            let group: Vec<_> = results.collect();
                            outcomes.push(RaftResponse {
                                outcome: Ok(Applied {
                                    revision: fleet.revision(),
                                    changed: group.iter().any(|o| matches!(o, Ok(a) if a.changed)),
                                    kv: None,
                                }),
                                group,
                            });
                            continue;
                        }
                        results.next().unwrap_or(Ok(unchanged))
                    }
                    Step::Membership(membership) => {
                        applied.1 = StoredMembership::new(Some(log_id), membership);
                        Ok(unchanged)
                    }
                };
                outcomes.push(RaftResponse {
                    outcome,
                    group: Vec::new(),
                });
            }
            revision = fleet.revision();
        }
        self.revision_tx.send_replace(revision);
        crate::observe::metrics::applied(started);
        outcomes
    }

    /// Replaces the whole state with a snapshot's. Changes before the snapshot are unknown
    /// here, so watches resuming from earlier revisions get a full listing.
    pub(crate) fn replace(
        &self,
        fleet: FleetState,
        applied: Option<LogId>,
        membership: StoredMembership,
    ) {
        let revision = fleet.revision();
        {
            let mut current = self.fleet.write().unwrap_or_else(|p| p.into_inner());
            *current = fleet;
            *self.applied.write().unwrap_or_else(|p| p.into_inner()) = (applied, membership);
            *self.history.write().unwrap_or_else(|p| p.into_inner()) =
                History::starting_at(revision);
        }
        self.revision_tx.send_replace(revision);
    }
}

/// One committed log entry as the state machine sees it.
pub(crate) enum Step {
    /// A leader's no-op.
    Blank,
    /// A client command.
    Request(RaftRequest),
    /// A Raft membership change.
    Membership(Membership),
}

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
    store: Store,
}

fn sm_read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn snapshot_write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

impl StateMachineStore {
    /// Loads the latest snapshot from `store` (if any) into memory.
    pub fn open(store: Store) -> Result<Self, StorageError> {
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
        // Encode under the read lock so the data and the applied log id belong together.
        let fleet = self.shared.fleet();
        let (last_log_id, membership) = self
            .shared
            .applied
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
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
    store: &Store,
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
    store: &Store,
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
        crate::observe::metrics::snapshot_built(started);
        snapshot
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self
            .shared
            .applied
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<RaftResponse>, StorageError>
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

#[cfg(test)]
mod tests {
    use super::{SharedState, Step};
    use crate::fleet::{FleetCommand, FleetState};
    use crate::raft::types::{LogId, RaftRequest};

    fn register(request_id: &str, id: &str) -> RaftRequest {
        RaftRequest {
            request_id: request_id.into(),
            command: FleetCommand::RegisterShard {
                id: id.into(),
                address: "127.0.0.1:7801".into(),
                az: "az-a".into(),
                now_ms: 1,
                lease_ttl_ms: 1_000,
            },
        }
    }

    #[test]
    fn a_group_answers_each_member_on_its_own() {
        let shared = SharedState::from_snapshot(FleetState::new(), None);
        let group = RaftRequest {
            request_id: String::new(),
            command: FleetCommand::Group(vec![
                register("r1", "s1"),
                register("", "BAD ID"),
                register("r1", "s1"),
                register("r2", "s2"),
            ]),
        };
        let log_id = LogId::new(openraft::CommittedLeaderId::new(1, 1), 1);
        let responses = shared.apply_entries([(log_id, Step::Request(group))]);
        assert_eq!(responses.len(), 1);
        let group = &responses[0].group;
        assert_eq!(group.len(), 4);
        assert_eq!(group[0].as_ref().map(|a| a.revision), Ok(1));
        assert!(
            group[1].is_err(),
            "a refused member does not stop the others"
        );
        assert_eq!(
            group[2], group[0],
            "a repeated request id answers its first outcome"
        );
        assert_eq!(group[3].as_ref().map(|a| a.revision), Ok(2));
        assert_eq!(shared.revision(), 2);
        assert_eq!(shared.fleet().counts().shards, 2);
        // Clients cannot send a group themselves.
        let mut state = FleetState::new();
        assert!(state.apply(&FleetCommand::Group(Vec::new())).is_err());
    }

    fn timed(now_ms: u64, request: RaftRequest) -> RaftRequest {
        RaftRequest {
            request_id: String::new(),
            command: FleetCommand::Timed {
                now_ms,
                request: Box::new(request),
            },
        }
    }

    /// The replicas and `--force-new-cluster` replay the same log the same way: groups of
    /// timed requests, plain requests, replays of an id.
    #[test]
    fn every_apply_path_gives_the_same_state_from_the_same_log() {
        let log = [
            timed(1_000, register("r1", "s1")),
            RaftRequest {
                request_id: String::new(),
                command: FleetCommand::Group(vec![
                    timed(1_001, register("r2", "s2")),
                    register("", "s3"),
                    timed(1_002, register("r1", "s9")),
                ]),
            },
        ];
        let shared = SharedState::from_snapshot(FleetState::new(), None);
        let entries = log.iter().enumerate().map(|(i, request)| {
            let log_id = LogId::new(openraft::CommittedLeaderId::new(1, 1), i as u64 + 1);
            (log_id, Step::Request(request.clone()))
        });
        let responses = shared.apply_entries(entries);
        assert_eq!(responses[1].group.len(), 3);
        assert_eq!(
            responses[1].group[2], responses[0].outcome,
            "a replayed id inside a group answers its first outcome"
        );
        let mut replayed = FleetState::new();
        for request in &log {
            replayed.apply_logged(request);
        }
        assert_eq!(replayed.counts().shards, 3, "s1, s2 and s3; no s9");
        assert_eq!(replayed.encode(), shared.fleet().encode());
    }
}
