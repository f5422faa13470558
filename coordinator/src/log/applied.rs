//! The applied state both log backends feed: the fleet state machine in memory, the log
//! position it reflects, the change history watches resume from, and the one apply path every
//! backend takes, so both produce the same state from the same log.

use parking_lot::{RwLock, RwLockReadGuard};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::member::{LogId, Membership, StoredMembership};
use crate::fleet::{Applied, FleetCommand, FleetError, FleetRequest, FleetState};
use crate::history::History;

/// The state machine's answer to one [`FleetRequest`]: applied revision or a precise refusal.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EntryOutcome {
    /// Outcome of the command; membership entries and blanks answer `Ok` with the current
    /// revision.
    pub outcome: Result<Applied, FleetError>,
    /// For a request group: each member's outcome, in order.
    pub group: Vec<Result<Applied, FleetError>>,
}

impl Default for EntryOutcome {
    fn default() -> Self {
        Self {
            outcome: Ok(Applied {
                revision: 0,
                changed: false,
                kv: None,
            }),
            group: Vec::new(),
        }
    }
}

/// State shared between the state machine (writer) and the gRPC services (readers).
pub struct SharedState {
    fleet: RwLock<FleetState>,
    applied: RwLock<(Option<LogId>, StoredMembership)>,
    /// Recent changes by revision, for resumable assignment watches.
    history: RwLock<History>,
    /// Ticks with the fleet revision after every apply, so readers can wait for a revision.
    revision_tx: watch::Sender<u64>,
    /// The restore epoch as of the last apply, published with the revision: response headers
    /// read both without waiting for the apply path's lock.
    restore_epoch: AtomicU64,
}

impl SharedState {
    pub(crate) fn new(
        fleet: FleetState,
        applied: Option<LogId>,
        membership: StoredMembership,
    ) -> Self {
        let (revision_tx, _) = watch::channel(fleet.revision());
        Self {
            history: RwLock::new(History::starting_at(fleet.revision())),
            restore_epoch: AtomicU64::new(fleet.restore_epoch()),
            fleet: RwLock::new(fleet),
            applied: RwLock::new((applied, membership)),
            revision_tx,
        }
    }

    /// Read access to the fleet state. Hold it briefly: the apply path waits for it.
    pub fn fleet(&self) -> RwLockReadGuard<'_, FleetState> {
        self.fleet.read()
    }

    /// A copy of the fleet state with the applied log id and membership it belongs to, for
    /// snapshots and archives. Taken under the read lock, which is released before the caller
    /// encodes it: the copy shares every KV value, so the apply path waits milliseconds for
    /// the copy instead of the whole encoding (which with ~100 MB of values took 150–300 ms
    /// here and was the slowest write of `etcdctl check perf`).
    pub fn copy_applied(&self) -> (FleetState, Option<LogId>, StoredMembership) {
        let fleet = self.fleet.read();
        let locked = std::time::Instant::now();
        let (log_id, membership) = self.applied_state();
        let copy = fleet.clone();
        drop(fleet);
        crate::metrics::state_copied(locked);
        (copy, log_id, membership)
    }

    /// Read access to the fleet state if the apply path does not hold it (or wait for it).
    pub fn try_fleet(&self) -> Option<RwLockReadGuard<'_, FleetState>> {
        self.fleet.try_read()
    }

    /// Current fleet revision.
    pub fn revision(&self) -> u64 {
        self.fleet().revision()
    }

    /// The fleet revision and restore epoch as of the last apply, without the state's lock
    /// (an apply under way is not in them yet): for response headers, which a bulk apply
    /// holding the lock for tens of milliseconds must not delay.
    pub fn published(&self) -> (u64, u64) {
        (
            *self.revision_tx.borrow(),
            self.restore_epoch.load(Ordering::Acquire),
        )
    }

    /// Last applied log id.
    pub fn applied_log_id(&self) -> Option<LogId> {
        self.applied.read().0
    }

    /// The last applied log id and the membership it carries.
    pub fn applied_state(&self) -> (Option<LogId>, StoredMembership) {
        self.applied.read().clone()
    }

    /// Read access to the change history.
    pub fn history(&self) -> RwLockReadGuard<'_, History> {
        self.history.read()
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
    ) -> Vec<EntryOutcome> {
        let started = std::time::Instant::now();
        let mut outcomes = Vec::new();
        let revision;
        {
            let mut fleet = self.fleet.write();
            let mut applied = self.applied.write();
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
                                    .push(done.revision, std::mem::take(changes));
                            }
                        }
                        let mut results = applied.into_iter().map(|(outcome, _)| outcome);
                        if matches!(request.command, FleetCommand::Group(_)) {
                            let group: Vec<_> = results.collect();
                            outcomes.push(EntryOutcome {
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
                outcomes.push(EntryOutcome {
                    outcome,
                    group: Vec::new(),
                });
            }
            revision = fleet.revision();
            self.restore_epoch
                .store(fleet.restore_epoch(), Ordering::Release);
        }
        self.revision_tx.send_replace(revision);
        crate::metrics::applied(started);
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
        self.restore_epoch
            .store(fleet.restore_epoch(), Ordering::Release);
        {
            let mut current = self.fleet.write();
            *current = fleet;
            *self.applied.write() = (applied, membership);
            *self.history.write() = History::starting_at(revision);
        }
        self.revision_tx.send_replace(revision);
    }
}

/// One committed log entry as the state machine sees it.
pub(crate) enum Step {
    /// A leader's no-op.
    Blank,
    /// A client command.
    Request(FleetRequest),
    /// A Raft membership change.
    Membership(Membership),
}

#[cfg(test)]
mod tests {
    use super::{SharedState, Step};
    use crate::fleet::FleetRequest;
    use crate::fleet::{FleetCommand, FleetState};
    use crate::log::member::LogId;

    fn register(request_id: &str, id: &str) -> FleetRequest {
        FleetRequest {
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
        let group = FleetRequest {
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

    fn timed(now_ms: u64, request: FleetRequest) -> FleetRequest {
        FleetRequest {
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
            FleetRequest {
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
