//! The etcd backend (`ballast-coord --backend etcd`): the fleet state machine's log lives in an
//! existing etcd cluster instead of Ballast's own Raft group, for teams that already run etcd
//! and want no second consensus system. Every replica applies the same log with the same
//! apply path as the Raft backend, so the fleet tables, the KV, watches and every API behave
//! the same. See ADR 0009 for what differs.
//!
//! Layout under the prefix (default `/ballast`):
//! - `cluster-id` — created by the first replica that starts against the prefix;
//! - `leader` — the leading replica's record, attached to its session lease; the key's
//!   create revision is the leadership's term and fences every append;
//! - `members/<id>` — each running replica, attached to its session lease;
//! - `log/<index>` — committed entries (postcard), appended only by the leader in one etcd
//!   transaction per batch, guarded by the term and by the first index being unused;
//! - `snapshot` and `snapshot-data/<index>/<chunk>` — the latest snapshot, in chunks that fit
//!   etcd's request limit; the log before it (minus a tail) is deleted.

mod tasks;

use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ReplicaError;
use crate::fleet::FleetRequest;
use crate::fleet::{Applied, FleetState};
use crate::log::applied::{SharedState, Step};
use crate::log::member::{LogId, NodeId, ReplicaNode};
use crate::log::{MemberView, View};

/// Settings of the etcd backend; built from `ballast-coord`'s `--etcd-*` flags.
#[derive(Clone, Debug)]
pub struct EtcdBackendConfig {
    /// etcd client endpoints (`host:port` or URLs).
    pub endpoints: Vec<String>,
    /// Key prefix holding this Ballast group (several groups can share one etcd).
    pub prefix: String,
    /// TTL of each replica's session lease: how long a dead leader holds leadership.
    pub session_ttl: Duration,
    /// Snapshot after this many entries since the last one.
    pub snapshot_entries: u64,
    /// Snapshot at least this often when anything was applied.
    pub snapshot_interval: Duration,
    /// Entries kept in etcd behind a snapshot, so a replica that lags slightly catches up from
    /// the log rather than reloading the snapshot.
    pub logs_to_keep: u64,
}

/// Why the etcd backend could not do something.
#[derive(Debug, thiserror::Error)]
pub enum EtcdLogError {
    /// etcd refused or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// Something stored under the prefix is not what Ballast wrote.
    #[error("etcd key {key}: {reason}")]
    Corrupt {
        /// Key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The log moved under this replica (compacted past it, or a gap): reload.
    #[error("resynchronising: {0}")]
    Resync(String),
}

/// Largest etcd request the backend builds: etcd refuses requests over 1.5 MiB by default.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Most entries appended in one transaction (etcd's default `--max-txn-ops` is 128).
const MAX_BATCH: usize = 64;

/// Key names under the prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    root: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            root: prefix.trim_end_matches('/').to_string(),
        }
    }
    fn cluster_id(&self) -> String {
        format!("{}/cluster-id", self.root)
    }
    fn leader(&self) -> String {
        format!("{}/leader", self.root)
    }
    fn members(&self) -> String {
        format!("{}/members/", self.root)
    }
    fn member(&self, id: NodeId) -> String {
        format!("{}/members/{id:020}", self.root)
    }
    fn log(&self) -> String {
        format!("{}/log/", self.root)
    }
    fn entry(&self, index: u64) -> String {
        format!("{}/log/{index:020}", self.root)
    }
    fn snapshot(&self) -> String {
        format!("{}/snapshot", self.root)
    }
    fn snapshot_data(&self) -> String {
        format!("{}/snapshot-data/", self.root)
    }
    fn snapshot_generation(&self, index: u64) -> String {
        format!("{}/snapshot-data/{index:020}/", self.root)
    }
    fn chunk(&self, index: u64, chunk: u32) -> String {
        format!("{}/snapshot-data/{index:020}/{chunk:06}", self.root)
    }
    fn index_of(&self, key: &[u8]) -> Result<u64, EtcdLogError> {
        let key = String::from_utf8_lossy(key);
        key.strip_prefix(&self.log())
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| EtcdLogError::Corrupt {
                key: key.to_string(),
                reason: "not a log entry key".into(),
            })
    }
}

/// One log entry as stored in etcd.
#[derive(Serialize, Deserialize, Debug)]
struct LogRecord {
    /// Term of the leadership that appended it.
    term: u64,
    /// Replica that appended it.
    leader: NodeId,
    /// The command.
    request: FleetRequest,
}

/// A replica's id, address and AZ: the value of its member key and of the leader key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct ReplicaRecord {
    id: NodeId,
    address: String,
    az: String,
}

/// The snapshot key's value.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct SnapshotRecord {
    index: u64,
    term: u64,
    leader: NodeId,
    chunks: u32,
    size: u64,
}

/// Who leads, and since which etcd revision (the term).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Leadership {
    term: u64,
    id: NodeId,
    node: ReplicaNode,
}

/// A write waiting for the appender.
struct Proposal {
    request: FleetRequest,
    done: oneshot::Sender<Result<Applied, ReplicaError>>,
}

/// A write appended at a log index and waiting to be applied there: answered with its
/// outcome only if the entry applied at that index is this very write — appended by this
/// replica, in this term, with this request. A leader that paused past its session may find
/// another leader's entry at the index it reserved; its own write was then never stored.
struct Waiter {
    term: u64,
    request: FleetRequest,
    done: oneshot::Sender<Result<Applied, ReplicaError>>,
}

impl Waiter {
    /// Whether the entry `(log_id, request)` is this waiter's own write.
    fn owns(&self, me: NodeId, log_id: &LogId, request: &FleetRequest) -> bool {
        log_id.leader_id.term == self.term
            && log_id.leader_id.node_id == me
            && *request == self.request
    }
}

type Waiters = HashMap<u64, Waiter>;

/// A replica's handle on the log in etcd.
pub struct EtcdLog {
    client: Client,
    keys: Keys,
    id: NodeId,
    node: ReplicaNode,
    config: EtcdBackendConfig,
    shared: Arc<SharedState>,
    /// The leader key as last seen.
    leader: watch::Sender<Option<Leadership>>,
    /// `Some(term)` while this replica holds the leader key and has applied the whole log.
    leading: watch::Sender<Option<u64>>,
    /// This replica's session lease, while it is known to be alive.
    session: watch::Sender<Option<i64>>,
    members: RwLock<BTreeMap<NodeId, ReplicaNode>>,
    waiters: Mutex<Waiters>,
    proposals: mpsc::Sender<Proposal>,
    snapshot_index: AtomicU64,
    purged_index: AtomicU64,
}

/// First and longest pause between two attempts of [`connect_when_reachable`].
const CONNECT_RETRY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// [`connect`], retried while etcd cannot be reached: a replica started alongside its etcd
/// (a reboot, a fresh deployment) waits for it, logging each failed attempt, instead of
/// exiting. Anything else etcd answers (a refusal, a corrupt cluster id) ends it at once, and
/// so does `stopped`.
pub async fn connect_when_reachable(
    config: &EtcdBackendConfig,
    mut stopped: watch::Receiver<bool>,
) -> Result<(Client, String), EtcdLogError> {
    let (mut pause, longest) = CONNECT_RETRY;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let error = match connect(config).await {
            Err(EtcdLogError::Etcd(error)) if unreachable(&error) => error,
            settled => return settled,
        };
        tracing::warn!(
            attempt,
            endpoints = %config.endpoints.join(","),
            %error,
            "waiting for etcd: it cannot be reached yet; retrying in {pause:?}"
        );
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stopped.wait_for(|stop| *stop) => return Err(EtcdLogError::Etcd(error)),
        }
        pause = (pause * 2).min(longest);
    }
}

/// Whether `error` says etcd could not be reached (as opposed to etcd answering with a
/// refusal, which retrying would not change).
fn unreachable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // etcd answers Unavailable while it has no leader (a cluster still forming).
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        _ => false,
    }
}

/// Connects to etcd and settles the group's cluster id (creating it on first use).
pub async fn connect(config: &EtcdBackendConfig) -> Result<(Client, String), EtcdLogError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(10))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_require_leader(true);
    let mut client = Client::connect(&config.endpoints, Some(options)).await?;
    let keys = Keys::new(&config.prefix);
    let fresh = uuid::Uuid::new_v4().to_string();
    let answer = client
        .txn(
            Txn::new()
                .when([Compare::create_revision(
                    keys.cluster_id(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(keys.cluster_id(), fresh.clone(), None)])
                .or_else([TxnOp::get(keys.cluster_id(), None)]),
        )
        .await?;
    if answer.succeeded() {
        tracing::info!(cluster_id = %fresh, prefix = %config.prefix, "created a new Ballast group in etcd");
        return Ok((client, fresh));
    }
    let existing = answer
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).to_string()),
            _ => None,
        })
        .ok_or_else(|| EtcdLogError::Corrupt {
            key: keys.cluster_id(),
            reason: "exists but could not be read".into(),
        })?;
    Ok((client, existing))
}

impl EtcdLog {
    /// Loads the latest snapshot and the log after it into `shared`, then starts following
    /// the log, keeping a session, campaigning for leadership and (while leading) appending
    /// and snapshotting. Returns once the state is loaded.
    pub async fn start(
        client: Client,
        config: EtcdBackendConfig,
        (id, node): (NodeId, ReplicaNode),
        stopped: watch::Receiver<bool>,
    ) -> Result<(Arc<Self>, Arc<SharedState>), EtcdLogError> {
        let shared = SharedState::from_snapshot(FleetState::new(), None);
        let (proposals, proposals_rx) = mpsc::channel(4096);
        let log = Arc::new(Self {
            client,
            keys: Keys::new(&config.prefix),
            id,
            node,
            config,
            shared: shared.clone(),
            leader: watch::channel(None).0,
            leading: watch::channel(None).0,
            session: watch::channel(None).0,
            members: RwLock::new(BTreeMap::new()),
            waiters: Mutex::new(HashMap::new()),
            proposals,
            snapshot_index: AtomicU64::new(0),
            purged_index: AtomicU64::new(0),
        });
        let revision = log.catch_up().await?;
        tracing::info!(
            applied = log.applied_index(),
            revision = shared.revision(),
            "loaded the fleet state from etcd"
        );
        tasks::spawn(log.clone(), revision, proposals_rx, stopped);
        Ok((log, shared))
    }

    fn applied_index(&self) -> u64 {
        self.shared.applied_log_id().map_or(0, |l| l.index)
    }

    /// The current leader, if one holds the leader key.
    pub fn leader(&self) -> Option<(NodeId, ReplicaNode)> {
        self.leader
            .borrow()
            .as_ref()
            .map(|l| (l.id, l.node.clone()))
    }

    /// The etcd revision at which the current leadership began.
    pub fn term(&self) -> u64 {
        self.leader.borrow().as_ref().map_or(0, |l| l.term)
    }

    /// Whether this replica leads and has applied the whole log.
    pub fn is_leading(&self) -> bool {
        self.leading.borrow().is_some()
    }

    /// Status figures.
    pub fn view(&self) -> View {
        let leader = self.leader.borrow().clone();
        let applied = self.applied_index();
        let members = self
            .members
            .read()
            .iter()
            .map(|(id, node)| MemberView {
                id: *id,
                node: node.clone(),
                voter: true,
                matched_index: (*id == self.id).then_some(applied),
            })
            .collect();
        View {
            state: if self.is_leading() {
                "leader"
            } else if leader.is_some() {
                "follower"
            } else {
                "candidate"
            },
            term: leader.as_ref().map_or(0, |l| l.term),
            leader: leader.map(|l| l.id),
            applied_index: applied,
            last_log_index: applied,
            snapshot_index: self.snapshot_index.load(Ordering::Relaxed),
            purged_index: self.purged_index.load(Ordering::Relaxed),
            members,
            // etcd changes its own membership; Ballast never asks it to.
            membership_changing: false,
        }
    }

    /// Appends a command (this replica must lead) and waits until it is applied here.
    pub async fn propose(&self, request: FleetRequest) -> Result<Applied, ReplicaError> {
        if !self.is_leading() {
            return Err(ReplicaError::retry(format!(
                "replica {} does not lead the etcd-backed group; retry",
                self.id
            )));
        }
        let (done, answer) = oneshot::channel();
        self.proposals
            .send(Proposal { request, done })
            .await
            .map_err(|_| ReplicaError::retry("the replica is shutting down"))?;
        answer
            .await
            .map_err(|_| ReplicaError::retry("the replica is shutting down"))?
    }

    /// Confirms with etcd (a linearizable read of the leader key) that this replica still
    /// holds the leadership it serves under.
    pub async fn confirm_leading(&self) -> Result<(), ReplicaError> {
        let Some(term) = *self.leading.borrow() else {
            return Err(ReplicaError::retry(format!(
                "replica {} does not lead the etcd-backed group; retry",
                self.id
            )));
        };
        let answer = self
            .client
            .clone()
            .get(self.keys.leader(), None)
            .await
            .map_err(|e| ReplicaError::retry(format!("could not read the leader key: {e}")))?;
        let holder = answer.kvs().first().and_then(|kv| {
            serde_json::from_slice::<ReplicaRecord>(kv.value())
                .ok()
                .map(|r| (kv.create_revision() as u64, r.id))
        });
        if holder == Some((term, self.id)) {
            Ok(())
        } else {
            Err(ReplicaError::retry(format!(
                "replica {} no longer leads the etcd-backed group (term {term}); retry",
                self.id
            )))
        }
    }

    /// Makes a following read linearizable: learns the last index etcd holds (a linearizable
    /// etcd read) and waits until this replica has applied it.
    pub async fn linearize(&self) -> Result<(), ReplicaError> {
        let last = self.last_index_in_etcd().await.map_err(|e| {
            ReplicaError::retry(format!(
                "could not read the log head from etcd for a linearizable read: {e}"
            ))
        })?;
        self.wait_applied(last, Duration::from_secs(5)).await
    }

    async fn wait_applied(&self, index: u64, limit: Duration) -> Result<(), ReplicaError> {
        let mut ticks = self.shared.watch_revision();
        let deadline = tokio::time::Instant::now() + limit;
        while self.applied_index() < index {
            if tokio::time::timeout_at(deadline, ticks.changed())
                .await
                .is_err()
            {
                return Err(ReplicaError::retry(format!(
                    "replica {} did not apply log index {index} within {limit:?} (applied {})",
                    self.id,
                    self.applied_index()
                )));
            }
        }
        Ok(())
    }

    /// The highest index etcd holds: the last log entry, or the snapshot's when the log
    /// behind it is gone.
    async fn last_index_in_etcd(&self) -> Result<u64, EtcdLogError> {
        let answer = self
            .client
            .clone()
            .txn(
                Txn::new().and_then([
                    TxnOp::get(
                        self.keys.log(),
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_sort(SortTarget::Key, SortOrder::Descend)
                                .with_limit(1)
                                .with_keys_only(),
                        ),
                    ),
                    TxnOp::get(self.keys.snapshot(), None),
                ]),
            )
            .await?;
        let mut last = 0;
        for (n, op) in answer.op_responses().into_iter().enumerate() {
            if let TxnOpResponse::Get(get) = op
                && let Some(kv) = get.kvs().first()
            {
                let index = if n == 0 {
                    self.keys.index_of(kv.key())?
                } else {
                    self.decode_snapshot_record(kv.value())?.index
                };
                last = last.max(index);
            }
        }
        Ok(last)
    }

    fn decode_snapshot_record(&self, bytes: &[u8]) -> Result<SnapshotRecord, EtcdLogError> {
        serde_json::from_slice(bytes).map_err(|e| EtcdLogError::Corrupt {
            key: self.keys.snapshot(),
            reason: e.to_string(),
        })
    }

    /// Brings the state up to what etcd holds now: the snapshot if it is ahead of this
    /// replica, then the log after it. Returns the etcd revision it read at, from which the
    /// log watch continues.
    async fn catch_up(&self) -> Result<i64, EtcdLogError> {
        let mut client = self.client.clone();
        let meta = client.get(self.keys.snapshot(), None).await?;
        let revision = meta.header().map_or(0, |h| h.revision());
        if let Some(kv) = meta.kvs().first() {
            let record = self.decode_snapshot_record(kv.value())?;
            self.snapshot_index.store(record.index, Ordering::Relaxed);
            if record.index > self.applied_index() {
                let fleet = self.load_snapshot(&record, revision).await?;
                self.shared.replace(
                    fleet,
                    Some(log_id(record.term, record.leader, record.index)),
                    Default::default(),
                );
                tracing::info!(
                    index = record.index,
                    size = record.size,
                    "installed the snapshot from etcd"
                );
            }
        }
        // The log after what is applied, read at the same revision, page by page.
        loop {
            let from = self.applied_index() + 1;
            let page = client
                .get(
                    self.keys.entry(from),
                    Some(
                        GetOptions::new()
                            .with_range(prefix_end(&self.keys.log()))
                            .with_revision(revision)
                            .with_limit(512),
                    ),
                )
                .await?;
            let mut entries = Vec::new();
            for kv in page.kvs() {
                entries.push((self.keys.index_of(kv.key())?, kv.value().to_vec()));
            }
            let count = entries.len();
            self.apply(entries)?;
            if !page.more() || count == 0 {
                break;
            }
        }
        Ok(revision)
    }

    async fn load_snapshot(
        &self,
        record: &SnapshotRecord,
        revision: i64,
    ) -> Result<FleetState, EtcdLogError> {
        let generation = self.keys.snapshot_generation(record.index);
        let chunks = self
            .client
            .clone()
            .get(
                generation.clone(),
                Some(GetOptions::new().with_prefix().with_revision(revision)),
            )
            .await?;
        let mut data = Vec::with_capacity(record.size as usize);
        for kv in chunks.kvs() {
            data.extend_from_slice(kv.value());
        }
        if chunks.kvs().len() != record.chunks as usize || data.len() as u64 != record.size {
            return Err(EtcdLogError::Corrupt {
                key: generation,
                reason: format!(
                    "snapshot at index {} should be {} chunks / {} bytes, found {} / {}",
                    record.index,
                    record.chunks,
                    record.size,
                    chunks.kvs().len(),
                    data.len()
                ),
            });
        }
        FleetState::decode(&data).map_err(|e| EtcdLogError::Corrupt {
            key: generation,
            reason: format!("snapshot does not decode: {e}"),
        })
    }

    /// Applies entries that must directly follow what is applied, answering waiting writers.
    fn apply(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), EtcdLogError> {
        let mut next = self.applied_index() + 1;
        let mut steps = Vec::with_capacity(entries.len());
        for (index, bytes) in entries {
            if index < next {
                continue;
            }
            if index > next {
                // Apply what is contiguous, then reload from the snapshot.
                self.apply_steps(steps);
                return Err(EtcdLogError::Resync(format!(
                    "log entry {index} follows {}; entries in between are gone",
                    next - 1
                )));
            }
            let record: LogRecord =
                crate::log::wire::decode(&bytes).map_err(|e| EtcdLogError::Corrupt {
                    key: self.keys.entry(index),
                    reason: format!("log entry does not decode: {e}"),
                })?;
            steps.push((
                log_id(record.term, record.leader, index),
                Step::Request(record.request),
            ));
            next += 1;
        }
        self.apply_steps(steps);
        Ok(())
    }

    fn apply_steps(&self, steps: Vec<(LogId, Step)>) {
        if steps.is_empty() {
            return;
        }
        // Whose write each entry is, decided before applying consumes the steps.
        let claimed: Vec<(u64, Option<Waiter>)> = {
            let mut waiters = self.waiters.lock();
            steps
                .iter()
                .map(|(log_id, step)| {
                    let waiter = waiters.remove(&log_id.index);
                    let owned = match (&waiter, step) {
                        (Some(w), Step::Request(request)) => w.owns(self.id, log_id, request),
                        _ => false,
                    };
                    match waiter {
                        Some(w) if !owned => {
                            let _ = w.done.send(Err(ReplicaError::retry(format!(
                                "log index {} holds an entry of leader {} (term {}), not this \
                                 write: replica {} lost its leadership (term {}) before storing \
                                 it; retry (with the same request id, it applies once)",
                                log_id.index,
                                log_id.leader_id.node_id,
                                log_id.leader_id.term,
                                self.id,
                                w.term
                            ))));
                            (log_id.index, None)
                        }
                        waiter => (log_id.index, waiter),
                    }
                })
                .collect()
        };
        let outcomes = self.shared.apply_entries(steps);
        for ((_, waiter), outcome) in claimed.into_iter().zip(outcomes) {
            if let Some(waiter) = waiter {
                let _ = waiter
                    .done
                    .send(outcome.outcome.map_err(ReplicaError::Fleet));
            }
        }
    }

    /// Announces this replica's departure so another takes over at once.
    pub async fn shutdown(&self) {
        let lease = *self.session.borrow();
        self.leading.send_replace(None);
        if let Some(lease) = lease {
            let _ = self.client.clone().lease_revoke(lease).await;
        }
    }
}

fn log_id(term: u64, leader: NodeId, index: u64) -> LogId {
    LogId::new(openraft::CommittedLeaderId::new(term, leader), index)
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    ballast_protocol::coordination::prefix_end(prefix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::{Keys, prefix_end};

    #[test]
    fn keys_sort_by_index_and_parse_back() {
        let keys = Keys::new("/ballast/");
        assert_eq!(keys.entry(7), "/ballast/log/00000000000000000007");
        assert!(keys.entry(9) < keys.entry(10));
        assert_eq!(keys.index_of(keys.entry(42).as_bytes()).unwrap(), 42);
        assert!(keys.index_of(b"/ballast/leader").is_err());
        assert_eq!(prefix_end("/b/log/"), b"/b/log0".to_vec());
        assert!(keys.chunk(5, 1) > keys.chunk(5, 0));
        assert!(keys.chunk(5, 0).starts_with(&keys.snapshot_generation(5)));
    }
}
