//! The etcd backend's background duties: the session lease, leadership, the member list,
//! following the log, appending batches while leading, and snapshots with log compaction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{mpsc, watch};

use super::{
    EtcdLog, EtcdLogError, Leadership, LogRecord, MAX_BATCH, MAX_REQUEST_BYTES, Proposal,
    ReplicaRecord, SnapshotRecord, Waiter,
};
use crate::error::ReplicaError;
use crate::log::member::{NodeId, ReplicaNode};
use crate::stopping::pause;

/// Pause before retrying after etcd could not be reached.
const RETRY: Duration = Duration::from_millis(300);

pub(super) fn spawn(
    log: Arc<EtcdLog>,
    revision: i64,
    proposals: mpsc::Receiver<Proposal>,
    stopped: watch::Receiver<bool>,
) {
    tokio::spawn(log.clone().session_loop(stopped.clone()));
    tokio::spawn(log.clone().leader_loop(stopped.clone()));
    tokio::spawn(log.clone().members_loop(stopped.clone()));
    tokio::spawn(log.clone().follow_loop(revision, stopped.clone()));
    tokio::spawn(log.clone().append_loop(proposals));
    tokio::spawn(log.snapshot_loop(stopped));
}

impl EtcdLog {
    /// The guard of a transaction that holds only while the leader key was created at etcd
    /// revision `term` (0: while there is no leader key): the fence of every write a leader
    /// makes, and of every campaign.
    fn leader_key_created_at(&self, term: i64) -> Compare {
        Compare::create_revision(self.keys.leader(), CompareOp::Equal, term)
    }

    /// Keeps a session lease alive and this replica's member key on it. Steps down when a
    /// renewal has not succeeded for two thirds of the TTL, before etcd expires the lease and
    /// another replica can take the leader key.
    async fn session_loop(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let ttl = self.config.session_ttl;
        loop {
            if *stopped.borrow() {
                return;
            }
            let (lease, mut keeper, mut renewals) = match self.open_session().await {
                Ok(session) => session,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start an etcd session; retrying");
                    if pause(RETRY, &mut stopped).await {
                        return;
                    }
                    continue;
                }
            };
            self.session.send_replace(Some(lease));
            let mut renewed_at = Instant::now();
            loop {
                if pause(ttl / 4, &mut stopped).await {
                    return;
                }
                let renewal = async {
                    keeper.keep_alive().await?;
                    renewals.message().await
                };
                match tokio::time::timeout(ttl / 4, renewal).await {
                    Ok(Ok(Some(answer))) if answer.ttl() > 0 => renewed_at = Instant::now(),
                    Ok(Ok(Some(_))) => {
                        tracing::warn!(lease, "etcd expired this replica's session lease");
                        break;
                    }
                    outcome => {
                        if renewed_at.elapsed() >= ttl * 2 / 3 {
                            tracing::warn!(?outcome, "etcd session lease not renewed in time");
                            break;
                        }
                    }
                }
            }
            self.session.send_replace(None);
            if self.leading.send_replace(None).is_some() {
                tracing::warn!(id = self.id, "stepped down: the etcd session was lost");
            }
        }
    }

    /// This replica as its member key and the leader key record it.
    fn record(&self) -> ReplicaRecord {
        ReplicaRecord {
            id: self.id,
            address: self.node.address.clone(),
            az: self.node.az.clone(),
        }
    }

    /// Grants a session lease, puts this replica's member key on it and starts keeping it
    /// alive.
    async fn open_session(
        &self,
    ) -> Result<(i64, LeaseKeeper, LeaseKeepAliveStream), etcd_client::Error> {
        let mut client = self.client.clone();
        let ttl = self.config.session_ttl.as_secs().max(1) as i64;
        let lease = client.lease_grant(ttl, None).await?.id();
        client
            .put(
                self.keys.member(self.id),
                serde_json::to_vec(&self.record()).unwrap_or_default(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        let (keeper, renewals) = client.lease_keep_alive(lease).await?;
        Ok((lease, keeper, renewals))
    }

    /// Campaigns for the leader key whenever it is free and follows who holds it.
    async fn leader_loop(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut sessions = self.session.subscribe();
        loop {
            if *stopped.borrow() {
                return;
            }
            let current = *sessions.borrow_and_update();
            let Some(lease) = current else {
                tokio::select! {
                    _ = sessions.changed() => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                continue;
            };
            match self.campaign(lease).await {
                Ok(revision) => {
                    // Wait for the leader key to change, the session to end, or a stop.
                    let mut client = self.client.clone();
                    let watched = client
                        .watch(
                            self.keys.leader(),
                            Some(WatchOptions::new().with_start_revision(revision + 1)),
                        )
                        .await;
                    let Ok(mut stream) = watched else {
                        let _ = pause(RETRY, &mut stopped).await;
                        continue;
                    };
                    loop {
                        tokio::select! {
                            message = stream.message() => match message {
                                Ok(Some(m)) if m.events().is_empty() && !m.canceled() => continue,
                                _ => break,
                            },
                            _ = sessions.changed() => break,
                            _ = stopped.wait_for(|s| *s) => return,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leadership check against etcd failed; retrying");
                    self.leading.send_replace(None);
                    if pause(RETRY, &mut stopped).await {
                        return;
                    }
                }
            }
        }
    }

    /// Takes the leader key if it is free, or learns who holds it. Returns the etcd revision
    /// the answer was read at.
    async fn campaign(&self, lease: i64) -> Result<i64, EtcdLogError> {
        let mut client = self.client.clone();
        let record = self.record();
        let answer = client
            .txn(
                Txn::new()
                    .when([self.leader_key_created_at(0)])
                    .and_then([TxnOp::put(
                        self.keys.leader(),
                        serde_json::to_vec(&record).unwrap_or_default(),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(self.keys.leader(), None)]),
            )
            .await?;
        let revision = answer.header().map_or(0, |h| h.revision());
        let current = if answer.succeeded() {
            Some((revision as u64, record, lease))
        } else {
            answer.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().and_then(|kv| {
                    serde_json::from_slice::<ReplicaRecord>(kv.value())
                        .ok()
                        .map(|r| (kv.create_revision() as u64, r, kv.lease()))
                }),
                _ => None,
            })
        };
        let Some((term, holder, holder_lease)) = current else {
            // Deleted between the compare and the read: campaign again at once.
            self.leader.send_replace(None);
            return Ok(revision);
        };
        self.leader.send_replace(Some(Leadership {
            term,
            id: holder.id,
            node: ReplicaNode {
                address: holder.address.clone(),
                az: holder.az.clone(),
            },
        }));
        if holder.id == self.id && holder_lease == lease {
            if self.leading.borrow().is_none() {
                // Serve as leader only with the whole log applied: appends continue from it.
                let last = self.last_index_in_etcd().await?;
                self.wait_applied(last, Duration::from_secs(30))
                    .await
                    .map_err(|e| EtcdLogError::Resync(e.to_string()))?;
                tracing::info!(id = self.id, term, "leading the etcd-backed group");
                self.leading.send_replace(Some(term));
            }
        } else {
            self.leading.send_replace(None);
            if holder.id == self.id {
                // This replica's previous life (before a restart) still holds the key: release
                // it instead of waiting out its lease.
                client
                    .txn(
                        Txn::new()
                            .when([self.leader_key_created_at(term as i64)])
                            .and_then([TxnOp::delete(self.keys.leader(), None)]),
                    )
                    .await?;
            }
        }
        Ok(revision)
    }

    /// Keeps the member list (replicas with a live session) current.
    async fn members_loop(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut client = self.client.clone();
        loop {
            let listed = client
                .get(self.keys.members(), Some(GetOptions::new().with_prefix()))
                .await;
            let revision = match listed {
                Ok(answer) => {
                    let members: BTreeMap<NodeId, ReplicaNode> = answer
                        .kvs()
                        .iter()
                        .filter_map(|kv| serde_json::from_slice::<ReplicaRecord>(kv.value()).ok())
                        .map(|r| {
                            (
                                r.id,
                                ReplicaNode {
                                    address: r.address,
                                    az: r.az,
                                },
                            )
                        })
                        .collect();
                    *self.members.write() = members;
                    answer.header().map_or(0, |h| h.revision())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list members in etcd; retrying");
                    if pause(RETRY, &mut stopped).await {
                        return;
                    }
                    continue;
                }
            };
            let watched = client
                .watch(
                    self.keys.members(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1),
                    ),
                )
                .await;
            if let Ok(mut stream) = watched {
                loop {
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(m)) if m.events().is_empty() && !m.canceled() => continue,
                            _ => break,
                        },
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                }
            } else if pause(RETRY, &mut stopped).await {
                return;
            }
        }
    }

    /// Applies the log as etcd delivers it; reloads from the snapshot when the log moved past
    /// this replica (compacted, or etcd's own history compacted under the watch).
    async fn follow_loop(self: Arc<Self>, mut revision: i64, mut stopped: watch::Receiver<bool>) {
        loop {
            match self.follow(revision, &mut stopped).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "following the log in etcd; catching up again");
                    if pause(RETRY, &mut stopped).await {
                        return;
                    }
                    match self.catch_up().await {
                        Ok(r) => revision = r,
                        Err(e) => tracing::warn!(error = %e, "catching up from etcd failed"),
                    }
                }
            }
        }
    }

    async fn follow(
        &self,
        revision: i64,
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<(), EtcdLogError> {
        let mut client = self.client.clone();
        let mut stream = client
            .watch(
                self.keys.log(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        loop {
            let message = tokio::select! {
                m = stream.message() => m?,
                _ = stopped.wait_for(|s| *s) => return Ok(()),
            };
            let Some(message) = message else {
                return Err(EtcdLogError::Resync("the log watch ended".into()));
            };
            if message.canceled() || message.compact_revision() > 0 {
                return Err(EtcdLogError::Resync(format!(
                    "the log watch was cancelled ({}; compacted at {})",
                    message.cancel_reason(),
                    message.compact_revision()
                )));
            }
            let mut entries = Vec::new();
            for event in message.events() {
                if event.event_type() == EventType::Put
                    && let Some(kv) = event.kv()
                {
                    entries.push((self.keys.index_of(kv.key())?, kv.value().to_vec()));
                }
            }
            self.apply(entries)?;
        }
    }

    /// While leading: appends queued writes in batches, one etcd transaction per batch,
    /// fenced by the term and by the batch's first index being unused.
    async fn append_loop(self: Arc<Self>, mut proposals: mpsc::Receiver<Proposal>) {
        // (term, next index) of the last successful append.
        let mut next: Option<(u64, u64)> = None;
        while let Some(first) = proposals.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match proposals.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let leading = *self.leading.borrow();
            let Some(term) = leading else {
                for p in batch {
                    let _ = p.done.send(Err(ReplicaError::retry(format!(
                        "replica {} lost leadership of the etcd-backed group; retry",
                        self.id
                    ))));
                }
                continue;
            };
            let start = match next {
                Some((t, n)) if t == term => n,
                _ => {
                    // After a failed or unknown append, or at a new term: continue after the
                    // whole log etcd holds.
                    let caught_up = match self.last_index_in_etcd().await {
                        Ok(last) => self.wait_applied(last, Duration::from_secs(10)).await,
                        Err(e) => Err(ReplicaError::retry(e.to_string())),
                    };
                    if let Err(status) = caught_up {
                        for p in batch {
                            let _ = p.done.send(Err(status.clone()));
                        }
                        continue;
                    }
                    self.applied_index() + 1
                }
            };
            next = self.append(term, start, batch).await.map(|n| (term, n));
        }
    }

    /// Appends one batch from index `start`; returns the next free index on success.
    async fn append(&self, term: u64, start: u64, batch: Vec<Proposal>) -> Option<u64> {
        let mut puts = Vec::with_capacity(batch.len());
        let mut bytes = 0;
        let mut accepted = Vec::with_capacity(batch.len());
        for proposal in batch {
            let record = LogRecord {
                term,
                leader: self.id,
                request: proposal.request,
            };
            let proposal = Waiter {
                term,
                request: record.request.clone(),
                done: proposal.done,
            };
            match crate::log::wire::encode(&record) {
                Ok(encoded) if bytes + encoded.len() <= MAX_REQUEST_BYTES || puts.is_empty() => {
                    bytes += encoded.len();
                    let index = start + puts.len() as u64;
                    puts.push(TxnOp::put(self.keys.entry(index), encoded, None));
                    accepted.push(proposal);
                }
                Ok(_) => {
                    // Does not fit this batch; the caller retries it in the next one.
                    let _ = proposal
                        .done
                        .send(Err(ReplicaError::retry("the append batch was full; retry")));
                }
                Err(e) => {
                    let _ = proposal.done.send(Err(ReplicaError::internal(format!(
                        "encoding a log entry: {e}"
                    ))));
                }
            }
        }
        let count = accepted.len() as u64;
        {
            let mut waiters = self.waiters.lock();
            for (n, waiter) in accepted.into_iter().enumerate() {
                waiters.insert(start + n as u64, waiter);
            }
        }
        // Test-only: pins the appender between registering its waiters and sending the
        // transaction, the window in which a pause past the session TTL lets another leader
        // append at these indexes.
        ballast_failpoints::hold("etcd-append-hold").await;
        let txn = Txn::new()
            .when([
                self.leader_key_created_at(term as i64),
                Compare::create_revision(self.keys.entry(start), CompareOp::Equal, 0),
            ])
            .and_then(puts);
        let mut client = self.client.clone();
        let outcome = tokio::time::timeout(Duration::from_secs(10), client.txn(txn)).await;
        let failure = match outcome {
            Ok(Ok(answer)) if answer.succeeded() => return Some(start + count),
            Ok(Ok(_)) => ReplicaError::retry(format!(
                "replica {} no longer leads (term {term}) or the log moved on; retry",
                self.id
            )),
            Ok(Err(etcd_client::Error::GRpcStatus(s)))
                if s.code() == tonic::Code::InvalidArgument =>
            {
                ReplicaError::invalid(format!("etcd refused the append: {}", s.message()))
            }
            Ok(Err(e)) => ReplicaError::retry(format!(
                "the append's outcome is unknown ({e}); retry with the same request id"
            )),
            Err(_) => ReplicaError::retry(
                "etcd did not answer the append within 10 s; its outcome is unknown, retry with the same request id",
            ),
        };
        let mut waiters = self.waiters.lock();
        for index in start..start + count {
            if let Some(waiter) = waiters.remove(&index) {
                let _ = waiter.done.send(Err(failure.clone()));
            }
        }
        None
    }

    /// While leading: snapshots after enough entries or time, then deletes the log behind
    /// the snapshot (keeping a tail) and older snapshot generations.
    async fn snapshot_loop(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut last = Instant::now();
        loop {
            if pause(Duration::from_millis(500), &mut stopped).await {
                return;
            }
            let leading = *self.leading.borrow();
            let Some(term) = leading else {
                continue;
            };
            let applied = self.applied_index();
            let taken = self.snapshot_index.load(Ordering::Relaxed);
            let due = applied.saturating_sub(taken) >= self.config.snapshot_entries
                || (applied > taken && last.elapsed() >= self.config.snapshot_interval);
            if !due {
                continue;
            }
            match self.write_snapshot(term).await {
                Ok(index) => {
                    last = Instant::now();
                    tracing::info!(index, "wrote a snapshot to etcd and compacted the log");
                }
                Err(e) => tracing::warn!(error = %e, "snapshot to etcd failed; retrying later"),
            }
        }
    }

    async fn write_snapshot(&self, term: u64) -> Result<u64, EtcdLogError> {
        // A copy taken under the state's read lock: the data and the applied index belong
        // together.
        let (fleet, log_id, _) = self.shared.copy_applied();
        let data = fleet.encode();
        drop(fleet);
        let Some(log_id) = log_id else { return Ok(0) };
        let index = log_id.index;
        let mut client = self.client.clone();
        let chunks: Vec<&[u8]> = data.chunks(MAX_REQUEST_BYTES).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            client
                .put(self.keys.chunk(index, n as u32), chunk.to_vec(), None)
                .await?;
        }
        let record = SnapshotRecord {
            index,
            term: log_id.leader_id.term,
            leader: log_id.leader_id.node_id,
            chunks: chunks.len() as u32,
            size: data.len() as u64,
        };
        let published = client
            .txn(
                Txn::new()
                    .when([self.leader_key_created_at(term as i64)])
                    .and_then([TxnOp::put(
                        self.keys.snapshot(),
                        serde_json::to_vec(&record).unwrap_or_default(),
                        None,
                    )]),
            )
            .await?;
        if !published.succeeded() {
            return Err(EtcdLogError::Resync(
                "lost leadership while writing the snapshot".into(),
            ));
        }
        self.snapshot_index.store(index, Ordering::Relaxed);
        // Older generations, then the log behind the snapshot minus the tail.
        client
            .delete(
                self.keys.snapshot_data(),
                Some(DeleteOptions::new().with_range(self.keys.snapshot_generation(index))),
            )
            .await?;
        let keep_from = index.saturating_sub(self.config.logs_to_keep) + 1;
        if keep_from > 1 {
            client
                .delete(
                    self.keys.log(),
                    Some(DeleteOptions::new().with_range(self.keys.entry(keep_from))),
                )
                .await?;
            self.purged_index.store(keep_from - 1, Ordering::Relaxed);
        }
        Ok(index)
    }
}
