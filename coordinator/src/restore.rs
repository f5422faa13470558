//! Starting over from what survived: a data dir restored from an archive, or one replica's own
//! data turned into a new cluster after quorum loss (`--force-new-cluster`). Both end the same
//! way: a single-voter membership of this replica, the state as a snapshot with an empty log
//! behind it, a new restore epoch, and the revision moved past anything a client could have
//! seen. The other replicas then join with fresh data dirs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{CommittedLeaderId, EntryPayload, Membership, SnapshotId};

use crate::fleet::FleetState;
use crate::log::member::{LogId, NodeId, ReplicaNode, StoredMembership};
use crate::log::raft::data_dir::{
    DataDir, DataDirError, META_CLUSTER_ID, META_COMMITTED, META_NODE_ID, META_PURGED,
    META_UNFINISHED_REWRITE, META_VOTE,
};
use crate::log::raft::state_machine::{load_snapshot, save_snapshot_with};
use crate::log::raft::types::{Entry, SnapshotMeta, Vote};

/// Why a restore or forced new cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The data dir could not be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The archive holds a payload this build does not know.
    #[error(
        "holds {found:?}, which this build cannot restore (expects {:?})",
        crate::dr::PAYLOAD
    )]
    Payload {
        /// The manifest's payload.
        found: String,
    },
    /// The state to restore is unreadable.
    #[error("{what} is corrupt: {reason}")]
    Corrupt {
        /// What was being read.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

/// What a restore produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored {
    /// Revision the new cluster starts at.
    pub revision: u64,
    /// Its restore epoch.
    pub restore_epoch: u64,
    /// Log entries after the last snapshot replayed into the state (forced new cluster).
    pub replayed_entries: u64,
}

/// The archived snapshot to restore and where it stood in the old cluster's log.
pub struct Archived<'a> {
    /// Cluster id (kept).
    pub cluster_id: &'a str,
    /// The encoded fleet state.
    pub state: &'a [u8],
    /// Term of its last entry.
    pub term: u64,
    /// Index of its last entry.
    pub index: u64,
}

impl<'a> Archived<'a> {
    /// The snapshot of a verified archive with its `manifest`, if this build can restore its
    /// payload.
    pub fn of(manifest: &'a ballast_dr::Manifest, state: &'a [u8]) -> Result<Self, RestoreError> {
        if manifest.payload != crate::dr::PAYLOAD {
            return Err(RestoreError::Payload {
                found: manifest.payload.clone(),
            });
        }
        Ok(Archived {
            cluster_id: &manifest.cluster_id,
            state,
            term: manifest.term,
            index: manifest.log_index,
        })
    }
}

/// Writes a new data dir at `dir` (which must be empty or absent) holding `archived` as the
/// state of a single-voter cluster made of replica `id` at `node`.
pub fn restore_into(
    dir: &Path,
    id: NodeId,
    node: ReplicaNode,
    archived: &Archived<'_>,
    bump: u64,
) -> Result<Restored, RestoreError> {
    let mut fleet = FleetState::decode(archived.state).map_err(|e| RestoreError::Corrupt {
        what: "the archived fleet state".into(),
        reason: e.to_string(),
    })?;
    fleet.mark_restored(bump);
    let store = DataDir::open(dir)?;
    store.write_meta(
        META_UNFINISHED_REWRITE,
        &format!("restore from an archive of cluster {}", archived.cluster_id),
        true,
    )?;
    store.write_meta(META_NODE_ID, &id, false)?;
    store.write_meta(META_CLUSTER_ID, &archived.cluster_id.to_string(), false)?;
    let last = LogId::new(CommittedLeaderId::new(archived.term, id), archived.index);
    rewrite_single_voter(&store, id, node, &fleet, last)?;
    Ok(Restored {
        revision: fleet.revision(),
        restore_epoch: fleet.restore_epoch(),
        replayed_entries: 0,
    })
}

/// Turns this replica's own data into a new single-voter cluster: its latest snapshot plus
/// every entry in its log after it (committed or not, as etcd's `--force-new-cluster` does:
/// the survivor's log is the best record left).
pub fn force_new_cluster(
    store: &DataDir,
    id: NodeId,
    node: ReplicaNode,
    bump: u64,
) -> Result<Restored, RestoreError> {
    let corrupt = |what: String, reason: String| RestoreError::Corrupt { what, reason };
    let (mut fleet, mut last) = match load_snapshot(store)
        .map_err(|e| corrupt(format!("the snapshot in {}", store.path()), e.to_string()))?
    {
        Some((meta, data)) => (
            FleetState::decode(&data)
                .map_err(|e| corrupt(format!("the snapshot in {}", store.path()), e.to_string()))?,
            meta.last_log_id,
        ),
        None => (FleetState::new(), None),
    };
    let from = last.map(|l| l.index + 1).unwrap_or(0);
    let mut replayed = 0;
    for item in store.log.range(crate::log::raft::data_dir::log_key(from)..) {
        let (_, value) = item.into_inner().map_err(|e| store.err(e))?;
        let entry: Entry = crate::log::wire::decode(&value)
            .map_err(|e| corrupt(format!("a log entry in {}", store.path()), e.to_string()))?;
        if let EntryPayload::Normal(request) = &entry.payload {
            // The state machine's own path (groups, timed requests, request ids); a command
            // that failed when it was first applied fails the same way here.
            let _ = fleet.apply_logged(request);
        }
        last = Some(entry.log_id);
        replayed += 1;
    }
    fleet.mark_restored(bump);
    let last = last.unwrap_or_else(|| LogId::new(CommittedLeaderId::new(0, id), 0));
    let last = LogId::new(CommittedLeaderId::new(last.leader_id.term, id), last.index);
    rewrite_single_voter(store, id, node, &fleet, last)?;
    Ok(Restored {
        revision: fleet.revision(),
        restore_epoch: fleet.restore_epoch(),
        replayed_entries: replayed,
    })
}

/// Replaces the log and snapshot with `fleet` as a snapshot at `last` whose membership is
/// replica `id` alone, and records a vote for itself in that term so its first election
/// starts one term later.
fn rewrite_single_voter(
    store: &DataDir,
    id: NodeId,
    node: ReplicaNode,
    fleet: &FleetState,
    last: LogId,
) -> Result<(), RestoreError> {
    let membership = Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, node)]));
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), membership),
        snapshot_id: SnapshotId::from(format!(
            "restored-e{}-{}-{}",
            fleet.restore_epoch(),
            last.leader_id.term,
            last.index
        )),
    };
    // Marked before anything changes, cleared after everything is durable: a crash in
    // between leaves a data dir that says it is incomplete instead of one that starts with
    // half a state.
    if store
        .read_meta::<String>(META_UNFINISHED_REWRITE)?
        .is_none()
    {
        store.write_meta(META_UNFINISHED_REWRITE, &"--force-new-cluster", true)?;
    }
    let mut batch = store.db.batch();
    for item in store.log.iter() {
        let key = item.key().map_err(|e| store.err(e))?;
        batch.remove(&store.log, key);
    }
    batch.commit().map_err(|e| store.err(e))?;
    store.rotate_full_memtables()?;
    ballast_failpoints::hit("restore-rewrite");
    save_snapshot_with(store, &meta, |out| fleet.encode_to(out)).map_err(|e| {
        RestoreError::Corrupt {
            what: format!("writing the snapshot into {}", store.path()),
            reason: e.to_string(),
        }
    })?;
    store.write_meta(META_PURGED, &Some(last), false)?;
    store.write_meta(META_COMMITTED, &Some(last), false)?;
    store.write_meta(META_VOTE, &Vote::new(last.leader_id.term, id), true)?;
    store.remove_meta(META_UNFINISHED_REWRITE, true)?;
    Ok(())
}
