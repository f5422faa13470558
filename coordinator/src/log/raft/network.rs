//! Raft RPCs to peers over tonic. Every message names the cluster it belongs to; a replica of
//! another cluster refuses it, so two Ballast groups sharing hosts can never mix.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ballast_protocol::client::endpoint_uri;
use ballast_protocol::pb::raft_client::RaftClient;
use ballast_protocol::pb::{RaftMessage, SnapshotChunk};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

use crate::faults::FaultRules;
use ballast_tls::ClientTls;
use ballast_tls::client::{lazy_channel, observed_channel};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use super::durability::LocalLog;
use super::types::{LogId, NodeId, ReplicaNode, TypeConfig};

/// Creates peer clients for openraft.
#[derive(Clone)]
pub struct PeerNetwork {
    cluster_id: String,
    contacts: PeerContacts,
    dialer: PeerDialer,
    leader_disk: LeaderDisk,
}

impl PeerNetwork {
    /// A network that stamps `cluster_id` on every message, notes every peer answer in
    /// `contacts`, dials through `dialer` and tells followers of no commit beyond what
    /// `leader_disk` holds.
    pub fn new(
        cluster_id: String,
        contacts: PeerContacts,
        dialer: PeerDialer,
        leader_disk: LeaderDisk,
    ) -> Self {
        Self {
            cluster_id,
            contacts,
            dialer,
            leader_disk,
        }
    }
}

/// The leader's own log as its appends to followers see it ([`super::durability`]).
#[derive(Clone)]
pub struct LeaderDisk {
    /// How far the leader's log is on disk.
    pub log: LocalLog,
    /// How long a message that only carries a new commit index waits for the leader's fsync
    /// before it goes with the commit lowered (half a heartbeat interval, inside the time
    /// openraft gives the message).
    pub patience: Duration,
    /// An fsync waited on for longer than this (the longest election timeout) makes the
    /// leader stop sending, so that its followers elect another.
    pub stall_limit: Duration,
}

impl LeaderDisk {
    /// `rpc`'s commit index lowered to what the leader holds on disk; an error when the
    /// leader's disk has stalled.
    async fn clamp(&self, rpc: &mut AppendEntriesRequest<TypeConfig>) -> Result<(), NetworkError> {
        if let Some(waited) = self.log.unsynced_for()
            && waited > self.stall_limit
        {
            return Err(NetworkError::new(&std::io::Error::other(format!(
                "this leader's log fsync has not finished for {} ms; not sending, so that \
                 the followers elect another leader",
                waited.as_millis()
            ))));
        }
        let patience = if rpc.entries.is_empty() {
            self.patience
        } else {
            Duration::ZERO
        };
        rpc.leader_commit = self.log.clamp(rpc.leader_commit, patience).await;
        Ok(())
    }
}

/// When each peer last answered a Raft message (openraft 0.9 reports no per-peer contact), and
/// when the last append it accepted was sent (the leader's read lease, [`super::read_lease`]).
#[derive(Clone, Default)]
pub struct PeerContacts {
    seen: std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<NodeId, std::time::Instant>>>,
    /// Peer -> (the term of the leader whose append it accepted, when that append was sent).
    accepted: std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<NodeId, (u64, Instant)>>>,
}

impl PeerContacts {
    fn record(&self, peer: NodeId) {
        self.seen.lock().insert(peer, std::time::Instant::now());
    }

    /// Time since `peer` last answered, if it ever did.
    pub fn age(&self, peer: NodeId) -> Option<Duration> {
        self.seen.lock().get(&peer).map(|t| t.elapsed())
    }

    /// Notes that `peer` accepted an append this replica sent at `sent` while leading in
    /// `term`. Appends answered out of order keep the latest send time.
    fn accepted(&self, peer: NodeId, term: u64, sent: Instant) {
        let mut accepted = self.accepted.lock();
        let entry = accepted.entry(peer).or_insert((term, sent));
        if (term, sent) > *entry {
            *entry = (term, sent);
        }
    }

    /// When the last append `peer` accepted from the leader of `term` was sent.
    pub fn accepted_in(&self, peer: NodeId, term: u64) -> Option<Instant> {
        match self.accepted.lock().get(&peer) {
            Some(&(t, sent)) if t == term => Some(sent),
            _ => None,
        }
    }
}

/// Connection to one peer (one per replication stream: openraft makes a new one per term).
pub struct PeerClient {
    /// The open `AppendStream` to the peer, if any.
    stream: Option<AppendStream>,
    /// An append was sent on `stream` and its caller stopped waiting before the answer:
    /// openraft's timeout ran out. The next append opens a fresh stream rather than queue
    /// behind whatever held that one up.
    abandoned: bool,
    /// Most entry bytes in one append to this peer, between [`MIN_APPEND_BYTES`] and
    /// [`MAX_APPEND_BYTES`]. openraft gives an append one heartbeat interval and, to a peer
    /// that was unreachable, sends nothing for 500 ms after each one that ran out of time,
    /// until one succeeds. A follower catching up on megabytes, on a busy host, then went
    /// without a message for longer than its election timeout and campaigned, deposing the
    /// leader. So an append that ran out of time shrinks the next one to a quarter, and one
    /// that got through grows it back, doubling.
    slice_bytes: usize,
    /// Append messages sent by this client.
    sent: u64,
    /// The last log id the peer confirmed holding, as far as this client has seen.
    confirmed: Option<LogId>,
    target: NodeId,
    target_node: ReplicaNode,
    client: RaftClient<Channel>,
    cluster_id: String,
    contacts: PeerContacts,
    faults: Option<Arc<FaultRules>>,
    leader_disk: LeaderDisk,
}

/// How a replica dials its peers: over mutual TLS when `tls` is set, through the test-only
/// fault rules when `faults` is.
#[derive(Clone, Default)]
pub struct PeerDialer {
    /// Client TLS toward peers.
    pub tls: Option<Arc<ClientTls>>,
    /// Test-only network faults (a `reset` rule cuts the connections these channels open).
    pub faults: Option<Arc<FaultRules>>,
}

impl PeerDialer {
    /// A lazily connected channel to a peer's address.
    pub fn channel(&self, address: &str) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(endpoint_uri(address))
            .map_err(|e| format!("peer address {address:?}: {e}"))?
            .connect_timeout(Duration::from_millis(300))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5));
        Ok(match &self.faults {
            Some(faults) => observed_channel(endpoint, self.tls.as_ref(), faults.observer(address)),
            None => lazy_channel(endpoint, self.tls.as_ref()),
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &ReplicaNode) -> Self::Network {
        let channel = self.dialer.channel(&node.address).unwrap_or_else(|e| {
            tracing::error!(target, error = %e, "invalid peer address; using a dead channel");
            Endpoint::from_static("http://0.0.0.0:1").connect_lazy()
        });
        PeerClient {
            stream: None,
            abandoned: false,
            slice_bytes: MAX_APPEND_BYTES,
            sent: 0,
            confirmed: None,
            target,
            target_node: node.clone(),
            client: RaftClient::new(channel),
            cluster_id: self.cluster_id.clone(),
            contacts: self.contacts.clone(),
            faults: self.dialer.faults.clone(),
            leader_disk: self.leader_disk.clone(),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, ReplicaNode, RaftError<NodeId, E>>>;

/// Appends at least this big are answered once for all identical retries (see
/// `service::raft`). Small ones, heartbeats among them, always reach the node, which is what
/// keeps its election timer from firing, and what the read lease counts on: a shared answer
/// may come from a copy that reached the node before the one the leader just sent.
pub const SHARED_APPEND_BYTES: usize = 64 * 1024;

/// Most encoded entry bytes sent in one AppendEntries (a single larger entry still goes alone).
/// openraft waits one heartbeat interval for an append and otherwise sends up to
/// `max_payload_entries` at once: a follower catching up on several multi-megabyte batches (an
/// AZ evacuation is ~2 MB) would get them all in one message of tens of megabytes. The follower
/// answers the leader's retries of a slow message with the first answer (`service::raft`), so
/// any size gets through eventually, but each slice is one round trip: a new leader must bring
/// a lagging follower up to date before it commits, and after six 2 MB batches a leader kill
/// took 0.70–0.83 s to the next write with 4 MiB slices, 0.97–1.08 s with 2 MiB and 1.1–1.5 s
/// with 1 MiB (`ballast-bench coord`, same box, same hour); unsliced it failed outright before
/// retries shared answers.
const MAX_APPEND_BYTES: usize = 4 * 1024 * 1024;

/// The smallest slice an append to a slow follower is cut down to (see
/// [`PeerClient::slice_bytes`]).
const MIN_APPEND_BYTES: usize = 64 * 1024;

/// How many of `entries`, from the first, fit in `budget` bytes (at least one).
fn entries_that_fit<T: Serialize>(entries: &[T], budget: usize) -> usize {
    let mut bytes = 0;
    for (i, entry) in entries.iter().enumerate() {
        bytes += crate::log::wire::encoded_size(entry).unwrap_or(budget);
        if i > 0 && bytes > budget {
            return i;
        }
    }
    entries.len()
}

impl PeerClient {
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, NetworkError> {
        crate::log::wire::encode(value).map_err(|e| NetworkError::new(&e))
    }

    /// Maps a failed call onto openraft's retry classes. Unreachable makes openraft back off
    /// for 500 ms, sending nothing — not even heartbeats — which costs a live leader its lease
    /// (default timers: lease 250 ms + election 150–250 ms). So only a refused connection
    /// (nothing listens: the process is down) is unreachable; a reset, a broken pipe, a
    /// connection that failed during a flap or a slow answer is a network error, retried on
    /// the next heartbeat.
    fn status_error<E: std::error::Error>(
        &self,
        status: Status,
    ) -> RPCError<NodeId, ReplicaNode, RaftError<NodeId, E>> {
        if refused(&status) {
            RPCError::Unreachable(Unreachable::new(&status))
        } else {
            RPCError::Network(NetworkError::new(&status))
        }
    }

    fn decode<T, E>(&self, reply: RaftMessage) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.contacts.record(self.target);
        let result: Result<T, RaftError<NodeId, E>> =
            crate::log::wire::decode(&reply.payload).map_err(|e| NetworkError::new(&e))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.target_node.clone(),
                e,
            ))
        })
    }

    /// Applies test-only network faults to a message about to go to the peer.
    async fn faults<E: std::error::Error>(
        &self,
    ) -> Result<(), RPCError<NodeId, ReplicaNode, RaftError<NodeId, E>>> {
        match &self.faults {
            Some(faults) => faults
                .before_send(&self.target_node.address)
                .await
                .map_err(|s| self.status_error(s)),
            None => Ok(()),
        }
    }

    fn message(&self, payload: Vec<u8>, option: &RPCOption) -> tonic::Request<RaftMessage> {
        let mut request = tonic::Request::new(RaftMessage {
            cluster_id: self.cluster_id.clone(),
            payload,
            id: 0,
        });
        request.set_timeout(option.hard_ttl());
        request
    }
}

/// Whether the call failed because nothing accepts connections at the peer's address.
fn refused(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether the call failed in this replica's transport (the connection broke or could not be
/// made) rather than being answered by the peer or running out of time: worth one more try on
/// a fresh connection.
fn transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
        && !refused(status)
        && !matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        )
}

impl PeerClient {
    /// Runs `call` once more at once when the connection under it broke: the channel opens a
    /// fresh one, and Raft messages are idempotent, so a message that did arrive is harmless.
    async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(RaftClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match call(self.client.clone()).await {
            Err(status) if transport_failure(&status) => {
                tracing::debug!(peer = self.target, %status, "connection broke; sending again on a new one");
                call(self.client.clone()).await
            }
            other => other,
        }
        .map(tonic::Response::into_inner)
    }

    /// Sends one append message on the append stream and decodes the answer. A stream that
    /// broke under the message is replaced and the message sent once more: Raft messages are
    /// idempotent, so a message that did arrive is harmless.
    async fn send_append(
        &mut self,
        payload: Vec<u8>,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        // No deadline of its own: openraft already bounds the wait, and a deadline would make
        // the follower abandon an append the leader's retry then has to redo from scratch.
        self.sent += 1;
        if self.sent == 1 {
            // openraft 0.9 makes a client for every leadership confirmation (a round of
            // linearizable reads) and sends one heartbeat on it: opening a stream for that
            // costs more than the call. Clients that keep sending (replication) switch to the
            // stream from their second message on.
            let message = RaftMessage {
                cluster_id: self.cluster_id.clone(),
                payload,
                id: 0,
            };
            let reply = self
                .retrying(|mut client| {
                    let message = message.clone();
                    async move { client.append_entries(message).await }
                })
                .await
                .map_err(|s| self.status_error(s))?;
            return self.decode(reply);
        }
        // As `retrying` does for single calls: once more at once on a fresh stream when the
        // one under the message broke. Should openraft stop waiting, `abandoned` stays set
        // (`send_on_stream`).
        let reply = match self.send_on_stream(payload.clone()).await {
            Err(status) if transport_failure(&status) => {
                tracing::debug!(peer = self.target, %status, "append stream broke; sending again on a new one");
                self.send_on_stream(payload).await
            }
            other => other,
        }
        .map_err(|s| self.status_error(s))?;
        self.decode(reply)
    }

    /// Sends `payload` on the append stream, opening one if there is none, and waits for its
    /// answer; a stream that failed the message is dropped, so the next send opens another.
    async fn send_on_stream(&mut self, payload: Vec<u8>) -> Result<RaftMessage, Status> {
        if self.stream.as_ref().is_none_or(AppendStream::is_closed) {
            self.stream = Some(AppendStream::open(self.client.clone()).await?);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(Status::unavailable("no append stream"));
        };
        // Stays set if openraft stops waiting (drops this future) before the answer.
        self.abandoned = true;
        let answer = stream.send(&self.cluster_id, payload).await;
        self.abandoned = false;
        if answer.is_err() {
            self.stream = None;
        }
        answer
    }

    /// Whether the follower holds `entry` (and, by Raft's log matching, every entry before
    /// it), asked with an append message that carries no entries; or the answer that ends
    /// the exchange (a higher vote).
    async fn holds(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        entry: LogId,
    ) -> RpcResult<Result<bool, AppendEntriesResponse<NodeId>>, openraft::error::Infallible> {
        let probe = AppendEntriesRequest::<TypeConfig> {
            vote: rpc.vote,
            prev_log_id: Some(entry),
            entries: Vec::new(),
            leader_commit: rpc.leader_commit,
        };
        let payload = self.encode(&probe)?;
        Ok(match self.send_append(payload).await? {
            AppendEntriesResponse::Success => Ok(true),
            higher @ AppendEntriesResponse::HigherVote(_) => Err(higher),
            // It lacks that entry or holds another one there.
            _ => Ok(false),
        })
    }
}

/// The leader's side of one `AppendStream` to a follower: messages go out in order, and a
/// reader task hands each answer to the caller waiting for that message's id.
struct AppendStream {
    requests: mpsc::Sender<RaftMessage>,
    /// Callers waiting for answers by message id; `None` once the stream has ended.
    waiting: Arc<parking_lot::Mutex<Option<HashMap<u64, Answer>>>>,
    next_id: u64,
}

type Answer = oneshot::Sender<Result<RaftMessage, Status>>;

/// Messages the leader's side queues before a send waits for the connection.
const APPEND_STREAM_DEPTH: usize = 4;

impl AppendStream {
    async fn open(mut client: RaftClient<Channel>) -> Result<Self, Status> {
        let (requests, outbound) = mpsc::channel(APPEND_STREAM_DEPTH);
        let mut answers = client
            .append_stream(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await?
            .into_inner();
        let waiting = Arc::new(parking_lot::Mutex::new(Some(HashMap::<u64, Answer>::new())));
        let readers = waiting.clone();
        tokio::spawn(async move {
            let ended = loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let caller = readers.lock().as_mut().and_then(|w| w.remove(&answer.id));
                        if let Some(caller) = caller {
                            let _ = caller.send(Ok(answer));
                        }
                    }
                    Ok(None) => break Status::unavailable("the follower ended the append stream"),
                    Err(status) => break status,
                }
            };
            // Everyone still waiting learns why; later sends find the stream closed.
            for (_, caller) in readers.lock().take().into_iter().flatten() {
                let _ = caller.send(Err(ended.clone()));
            }
        });
        Ok(Self {
            requests,
            waiting,
            next_id: 0,
        })
    }

    fn is_closed(&self) -> bool {
        self.waiting.lock().is_none() || self.requests.is_closed()
    }

    /// Sends `payload` and returns the answer to it.
    async fn send(&mut self, cluster_id: &str, payload: Vec<u8>) -> Result<RaftMessage, Status> {
        self.next_id += 1;
        let id = self.next_id;
        let (caller, answer) = oneshot::channel();
        match self.waiting.lock().as_mut() {
            Some(waiting) => {
                // Answers to callers that stopped waiting are left behind by the reader only
                // until their stream ends; drop any such leftovers here too.
                waiting.retain(|_, caller| !caller.is_closed());
                waiting.insert(id, caller);
            }
            None => return Err(Status::unavailable("the append stream has ended")),
        }
        let message = RaftMessage {
            cluster_id: cluster_id.to_string(),
            payload,
            id,
        };
        if self.requests.send(message).await.is_err() {
            return Err(Status::unavailable("the append stream has ended"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the append stream has ended")))
    }
}

/// A binary search, one probe at a time, for how many of `n` entries (a prefix, by Raft's
/// log matching) a follower already holds. The last entry is asked first, since a follower
/// that is up to date holds them all.
#[derive(Debug)]
struct HeldPrefix {
    /// Entries before this one are held.
    held: usize,
    /// This entry is known not to be held (`n`: nothing known yet).
    missing: usize,
    n: usize,
}

impl HeldPrefix {
    fn new(n: usize) -> Self {
        Self {
            held: 0,
            missing: n,
            n,
        }
    }

    /// The entry to ask about next; `None` once the answer is known.
    fn next(&self) -> Option<usize> {
        if self.held >= self.missing {
            None
        } else if self.missing == self.n {
            Some(self.n - 1)
        } else {
            Some((self.held + self.missing) / 2)
        }
    }

    fn record(&mut self, entry: usize, held: bool) {
        if held {
            self.held = entry + 1;
        } else {
            self.missing = entry;
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.faults().await?;
        self.leader_disk.clamp(&mut rpc).await?;
        if std::mem::take(&mut self.abandoned) {
            // The last append ran out of time: a fresh stream, and smaller slices.
            self.stream = None;
            self.slice_bytes = (self.slice_bytes / 4).max(MIN_APPEND_BYTES);
        }
        // Taken before anything is sent: the follower's lease counts from when a message
        // arrives, which is after this (see `read_lease`).
        let sent = Instant::now();
        // A message that does not continue from where this follower is known to match is
        // part of a new leader's search for the match point: openraft sends up to
        // `max_payload_entries` entries from the middle of its log, which a follower that is
        // up to date already holds. Sending them anyway cost ~100 ms per leader change once
        // the log held the fleet's multi-megabyte batches (`ballast-bench coord`, 100K
        // domains loaded). Ask first, with empty messages, how many it holds; send the rest.
        let mut held = 0;
        if !rpc.entries.is_empty() && rpc.prev_log_id != self.confirmed {
            let mut search = HeldPrefix::new(rpc.entries.len());
            while let Some(i) = search.next() {
                match self.holds(&rpc, rpc.entries[i].log_id).await? {
                    Ok(yes) => search.record(i, yes),
                    Err(answer) => {
                        self.confirmed = None;
                        return Ok(answer);
                    }
                }
            }
            held = search.held;
        }
        let mut fresh_answer = true;
        let response = if held > 0 && held == rpc.entries.len() {
            AppendEntriesResponse::Success
        } else {
            if held > 0 {
                rpc.prev_log_id = Some(rpc.entries[held - 1].log_id);
                rpc.entries.drain(..held);
            }
            let mut payload = self.encode(&rpc)?;
            let mut sliced = None;
            // Sizing entry by entry costs another pass, so only for a message already too big.
            if payload.len() > self.slice_bytes {
                let fit = entries_that_fit(&rpc.entries, self.slice_bytes);
                if fit < rpc.entries.len() {
                    rpc.entries.truncate(fit);
                    sliced = rpc.entries.last().map(|entry| entry.log_id);
                    payload = self.encode(&rpc)?;
                }
            }
            // A retry of a large message may be answered from an earlier copy (see
            // SHARED_APPEND_BYTES): it proves nothing about when the follower took the vote.
            fresh_answer = payload.len() < SHARED_APPEND_BYTES;
            // openraft's contract for a partial send: report how far the follower now matches.
            let response = self.send_append(payload).await?;
            if !rpc.entries.is_empty() {
                self.slice_bytes = (self.slice_bytes * 2).min(MAX_APPEND_BYTES);
            }
            match (response, sliced) {
                (AppendEntriesResponse::Success, Some(last)) => {
                    AppendEntriesResponse::PartialSuccess(Some(last))
                }
                (response, _) => response,
            }
        };
        self.confirmed = match &response {
            AppendEntriesResponse::Success => rpc
                .entries
                .last()
                .map(|entry| entry.log_id)
                .or(rpc.prev_log_id),
            AppendEntriesResponse::PartialSuccess(matching) => *matching,
            _ => None,
        };
        // Any answer but a higher vote means the follower took this leader's vote, and with it
        // refuses to vote for anyone else for the lease openraft gives (a conflict is answered
        // after the vote is taken).
        if fresh_answer
            && !matches!(response, AppendEntriesResponse::HigherVote(_))
            && rpc.vote.is_committed()
        {
            self.contacts
                .accepted(self.target, rpc.vote.leader_id().term, sent);
        }
        Ok(response)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.faults().await?;
        let chunk = SnapshotChunk {
            cluster_id: self.cluster_id.clone(),
            vote: self.encode(&rpc.vote)?,
            meta: self.encode(&rpc.meta)?,
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let ttl = option.hard_ttl();
        let reply = self
            .retrying(|mut client| {
                let mut request = tonic::Request::new(chunk.clone());
                request.set_timeout(ttl);
                async move { client.install_snapshot(request).await }
            })
            .await
            .map_err(|s| self.status_error(s))?;
        self.decode(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.faults().await?;
        let payload = self.encode(&rpc)?;
        let reply = self
            .retrying(|mut client| {
                let request = self.message(payload.clone(), &option);
                async move { client.vote(request).await }
            })
            .await
            .map_err(|s| self.status_error(s))?;
        self.decode(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes.iter().map(|n| vec![7u8; *n]).collect()
    }

    /// Drives a search against a follower holding the first `holds` of `n` entries.
    fn search(n: usize, holds: usize) -> (usize, usize) {
        let mut search = HeldPrefix::new(n);
        let mut probes = 0;
        while let Some(i) = search.next() {
            assert!(i < n, "probe {i} out of {n}");
            probes += 1;
            search.record(i, i < holds);
        }
        (search.held, probes)
    }

    #[test]
    fn the_held_prefix_is_found_in_logarithmic_probes() {
        for n in [1usize, 2, 3, 7, 168, 256] {
            let bound = 1 + (usize::BITS - n.leading_zeros()) as usize;
            for holds in 0..=n {
                let (held, probes) = search(n, holds);
                assert_eq!(held, holds, "n={n}");
                assert!(probes <= bound, "n={n} holds={holds}: {probes} probes");
            }
            // An up-to-date follower costs one probe.
            assert_eq!(search(n, n).1, 1);
        }
    }

    #[test]
    fn appends_are_sliced_by_encoded_bytes() {
        let small = MAX_APPEND_BYTES / 4;
        // Everything fits.
        assert_eq!(
            entries_that_fit(&entries(&[small, small, small]), MAX_APPEND_BYTES),
            3
        );
        // The fourth entry, with its length prefix, would go over the budget.
        assert_eq!(entries_that_fit(&entries(&[small; 6]), MAX_APPEND_BYTES), 3);
        // An entry above the budget goes alone, and stops a slice before it.
        let huge = 3 * MAX_APPEND_BYTES;
        assert_eq!(
            entries_that_fit(&entries(&[huge, small]), MAX_APPEND_BYTES),
            1
        );
        assert_eq!(
            entries_that_fit(&entries(&[small, huge]), MAX_APPEND_BYTES),
            1
        );
        assert_eq!(entries_that_fit::<Vec<u8>>(&[], MAX_APPEND_BYTES), 0);
    }
}
