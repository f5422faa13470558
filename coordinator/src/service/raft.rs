//! The peer-facing Raft service: decodes openraft messages and hands them to the local node.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use ballast_protocol::pb;
use ballast_protocol::pb::raft_server::Raft as RaftApi;
use openraft::raft::InstallSnapshotRequest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::fleet::{FleetCommand, FleetRequest};
use crate::log::forward::{Outcome, Refusal};
use crate::log::raft::presence::{PresenceStream, PresenceWatch};
use crate::log::raft::read_lease::votes_allowed;
use crate::log::raft::types::TypeConfig;
use crate::replica::{Replica, Route};
use crate::service::etcd_api::check_caller;

/// Serves Raft traffic for one replica.
pub struct RaftService {
    replica: Arc<Replica>,
    appends: Appends,
    /// Campaigns early when a crashed leader's presence call ends.
    presence: PresenceWatch,
}

/// Takes the leader's appends, from single calls and from streams alike.
#[derive(Clone)]
struct Appends {
    replica: Arc<Replica>,
    /// The last large append and its (coming) answer, for the leader's retries of it.
    recent: Arc<Mutex<Option<RecentAppend>>>,
    presence: PresenceWatch,
}

/// The encoded answer to an append message, awaitable by every copy of it.
type AppendAnswer = Shared<BoxFuture<'static, Result<Vec<u8>, Status>>>;

/// An append message being stored, or stored a moment ago, and its answer.
struct RecentAppend {
    payload: Arc<Vec<u8>>,
    /// When the answer was ready (`None` while the message is being stored).
    finished: Arc<Mutex<Option<Instant>>>,
    reply: AppendAnswer,
}

impl RecentAppend {
    /// Whether a copy of the message arriving now gets this answer: while it is being stored,
    /// and for a while after (openraft retries a timed-out append after a pause of its own,
    /// 500 ms once the follower has been unreachable).
    fn serves_retries(&self) -> bool {
        lock(&self.finished).is_none_or(|at| at.elapsed() < SHARED_APPEND_WINDOW)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    mutex.lock()
}

use crate::log::raft::network::SHARED_APPEND_BYTES;

/// How long a stored append's answer serves identical retries after it is ready.
const SHARED_APPEND_WINDOW: Duration = Duration::from_secs(2);

/// Answers an append stream buffers before it waits for the leader to read them.
const APPEND_STREAM_DEPTH: usize = 4;

impl RaftService {
    /// Wraps a replica; `presence` watches for its leader's departure.
    pub fn new(replica: Arc<Replica>, presence: PresenceWatch) -> Self {
        Self {
            appends: Appends {
                replica: replica.clone(),
                recent: Arc::default(),
                presence: presence.clone(),
            },
            replica,
            presence,
        }
    }

    fn open<T: DeserializeOwned>(&self, message: &pb::RaftMessage) -> Result<T, Status> {
        self.replica.check_peer_cluster(&message.cluster_id)?;
        decode_message(&message.payload)
    }

    fn reply<T: Serialize>(&self, value: &T) -> Result<Response<pb::RaftMessage>, Status> {
        let payload = crate::log::wire::encode(value)
            .map_err(|e| Status::internal(format!("encoding raft reply: {e}")))?;
        Ok(Response::new(pb::RaftMessage {
            cluster_id: self.replica.cluster_id.clone(),
            payload,
            id: 0,
        }))
    }
}

impl Appends {
    /// The encoded answer to one append message from the leader.
    async fn answer(&self, message: pb::RaftMessage) -> Result<Vec<u8>, Status> {
        self.replica.check_peer_cluster(&message.cluster_id)?;
        self.presence.heard_from_leader();
        // openraft waits one heartbeat interval for an append and then sends the same message
        // again. A message that takes longer than that to decode and store (megabytes of
        // entries on a busy host) would otherwise be decoded anew for every retry, each
        // answer would come too late, and the follower would never be seen to catch up.
        // Retries of it share the first one's answer instead; Raft tolerates a duplicated
        // answer as it tolerates a duplicated message.
        if message.payload.len() >= SHARED_APPEND_BYTES {
            return self.shared_answer(message.payload)?.await;
        }
        let rpc = decode_message(&message.payload)?;
        let answer = self.replica.raft()?.append_entries(rpc).await;
        crate::log::wire::encode(&answer)
            .map_err(|e| Status::internal(format!("encoding raft reply: {e}")))
    }

    /// The answer to a large append message: a fresh task that decodes and stores it, or, for
    /// a message identical to one already being stored (the leader's retry after its wait ran
    /// out), that task's answer.
    fn shared_answer(&self, payload: Vec<u8>) -> Result<AppendAnswer, Status> {
        let mut recent = lock(&self.recent);
        if let Some(r) = recent.as_ref()
            && *r.payload == payload
            && r.serves_retries()
        {
            return Ok(r.reply.clone());
        }
        let raft = self.replica.raft()?.clone();
        let payload = Arc::new(payload);
        let message = payload.clone();
        let finished = Arc::new(Mutex::new(None));
        let done = finished.clone();
        // Spawned, so it finishes even if the leader stops waiting.
        let task = tokio::spawn(async move {
            let answer = match decode_message(&message) {
                Ok(rpc) => crate::log::wire::encode(&raft.append_entries(rpc).await)
                    .map_err(|e| Status::internal(format!("encoding raft reply: {e}"))),
                Err(status) => Err(status),
            };
            *lock(&done) = Some(Instant::now());
            answer
        });
        let reply = async move {
            task.await
                .map_err(|e| Status::internal(format!("append task failed: {e}")))?
        }
        .boxed()
        .shared();
        *recent = Some(RecentAppend {
            payload,
            finished,
            reply: reply.clone(),
        });
        Ok(reply)
    }
}

fn decode_message<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    crate::log::wire::decode(payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

#[tonic::async_trait]
impl RaftApi for RaftService {
    type LeaderPresenceStream = PresenceStream;
    type AppendStreamStream = ReceiverStream<Result<pb::RaftMessage, Status>>;

    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let payload = self.appends.answer(request.into_inner()).await?;
        Ok(Response::new(pb::RaftMessage {
            cluster_id: self.replica.cluster_id.clone(),
            payload,
            id: 0,
        }))
    }

    async fn append_stream(
        &self,
        request: Request<Streaming<pb::RaftMessage>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let appends = self.appends.clone();
        let (answers, outbound) = mpsc::channel(APPEND_STREAM_DEPTH);
        // One message at a time, in order, as openraft's follower takes them anyway; the task
        // ends with the leader's side of the stream or at the first failed message.
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let id = message.id;
                let answer = appends
                    .answer(message)
                    .await
                    .map(|payload| pb::RaftMessage {
                        cluster_id: String::new(),
                        payload,
                        id,
                    });
                let failed = answer.is_err();
                if answers.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(outbound)))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc = self.open(request.get_ref())?;
        let replica = &self.replica;
        let election_max = replica.timing.election_timeout_max;
        if !votes_allowed(replica.started, Instant::now(), election_max) {
            return Err(Status::unavailable(format!(
                "replica {} started under {} ms ago and votes only after that long: before it \
                 stopped it may have accepted a leader's append, which that leader counts on \
                 for its read lease",
                replica.id,
                election_max.as_millis()
            )));
        }
        let result = replica.raft()?.vote(rpc).await;
        self.reply(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::SnapshotChunk>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let chunk = request.into_inner();
        self.replica.check_peer_cluster(&chunk.cluster_id)?;
        let decode_err = |what: &str, e: postcard::Error| {
            Status::invalid_argument(format!("undecodable snapshot {what}: {e}"))
        };
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: crate::log::wire::decode(&chunk.vote).map_err(|e| decode_err("vote", e))?,
            meta: crate::log::wire::decode(&chunk.meta).map_err(|e| decode_err("meta", e))?,
            offset: chunk.offset,
            data: chunk.data,
            done: chunk.done,
        };
        let result = self.replica.raft()?.install_snapshot(rpc).await;
        self.reply(&result)
    }

    async fn pause_election(
        &self,
        request: Request<pb::ElectionControl>,
    ) -> Result<Response<pb::Empty>, Status> {
        let control = request.into_inner();
        self.replica.check_peer_cluster(&control.cluster_id)?;
        let pause = Duration::from_millis(control.millis.min(10_000));
        let raft = self.replica.raft()?.clone();
        raft.runtime_config().elect(false);
        self.presence.pause_campaigns(pause);
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            raft.runtime_config().elect(true);
        });
        Ok(Response::new(pb::Empty {}))
    }

    async fn campaign(
        &self,
        request: Request<pb::ElectionControl>,
    ) -> Result<Response<pb::Empty>, Status> {
        let control = request.into_inner();
        self.replica.check_peer_cluster(&control.cluster_id)?;
        let wait = Duration::from_millis(control.millis.min(10_000));
        let raft = self.replica.raft()?.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "campaign for leadership transfer failed");
            }
        });
        Ok(Response::new(pb::Empty {}))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexReply>, Status> {
        self.replica
            .check_peer_cluster(&request.get_ref().cluster_id)?;
        let index = self.replica.read_index().await?;
        Ok(Response::new(pb::ReadIndexReply { index }))
    }

    async fn propose(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let requests: Vec<FleetRequest> = self.open(request.get_ref())?;
        if requests.is_empty() {
            return Err(Status::invalid_argument(
                "an empty batch of forwarded writes",
            ));
        }
        // Peers forward only their clients' etcd-API writes this way.
        if requests
            .iter()
            .any(|r| !r.request_id.is_empty() || !matches!(r.command, FleetCommand::KvAs { .. }))
        {
            return Err(Status::invalid_argument(
                "only etcd-API writes without a request id are forwarded in batches",
            ));
        }
        // Not leading (any more): nothing is proposed, and the follower sends them again to
        // whoever leads now.
        if let Route::Forward(_) = self.replica.route(&tonic::metadata::MetadataMap::new())? {
            return Err(Status::unavailable(format!(
                "replica {} is not the leader; forwarded writes were not proposed",
                self.replica.id
            )));
        }
        let outcomes: Vec<Outcome> =
            futures::future::join_all(requests.into_iter().map(|request| async {
                // The follower checked the input only.
                check_caller(&self.replica, &request)
                    .map_err(|s| Refusal::from(crate::error::ReplicaError::from(s)))?;
                self.replica.propose(request).await.map_err(Refusal::from)
            }))
            .await;
        self.reply(&outcomes)
    }

    async fn leader_presence(
        &self,
        request: Request<pb::LeaderHello>,
    ) -> Result<Response<Self::LeaderPresenceStream>, Status> {
        let hello = request.into_inner();
        self.replica.check_peer_cluster(&hello.cluster_id)?;
        let raft = self.replica.raft()?.clone();
        Ok(Response::new(self.presence.accept(
            raft,
            self.replica.id,
            hello,
        )))
    }
}
