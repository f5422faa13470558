//! Forwarded writes in batches. A follower that takes a client's write hands it to the
//! leader; sent one call each, the leader spent as much CPU serving the calls (HTTP/2 streams,
//! headers, a task each) as on the writes themselves, and a balanced etcd client sends two
//! writes in three through a follower. Writes that queue while earlier batches are on their
//! way go to the leader together in one `Raft.Propose` message, as etcd's followers pass
//! proposals to their leader in its Raft transport; the leader proposes each on its own and
//! answers them in order.

use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::pb::raft_client::RaftClient;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::error::ReplicaError;
use crate::fleet::{Applied, FleetRequest};
use crate::log::batches::{self, Items, Limits};

/// Batches on their way to the leader at once; more writes wait and join the next batch.
const IN_FLIGHT: usize = 4;
/// Most writes in one batch.
const MAX_BATCH: usize = 512;
/// Most encoded bytes of writes in one batch (well under the peer message limit).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How long one batch may take, as a forwarded call may.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How the leader refused one forwarded write: the gRPC status it would have answered.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status code (`tonic::Code` as a number).
    pub code: i32,
    /// The status message.
    pub message: String,
}

impl From<ReplicaError> for Refusal {
    fn from(error: ReplicaError) -> Self {
        let status = Status::from(error);
        Self {
            code: status.code() as i32,
            message: status.message().to_string(),
        }
    }
}

impl From<Refusal> for ReplicaError {
    fn from(refusal: Refusal) -> Self {
        ReplicaError::Peer(Status::new(Code::from_i32(refusal.code), refusal.message))
    }
}

/// One forwarded write's outcome, as the leader answers it.
pub type Outcome = Result<Applied, Refusal>;

type Answer = oneshot::Sender<Result<Applied, ReplicaError>>;

/// A write waiting to go to the leader at `leader`.
struct Pending {
    leader: String,
    channel: Channel,
    request: FleetRequest,
    size: usize,
    answer: Answer,
}

/// Sends a follower's forwarded writes to the leader in batches; clones share the queue.
#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<Pending>,
}

impl Forwarder {
    /// Starts the batching task for the group `cluster_id`.
    pub fn start(cluster_id: String) -> Self {
        let (queue, pending) = mpsc::channel(8192);
        tokio::spawn(batch_loop(cluster_id, pending));
        Self { queue }
    }

    /// Sends `request` to the leader at `leader` (over `channel`) with whatever else is
    /// waiting, and waits for its own outcome. A refusal comes back as
    /// [`ReplicaError::Peer`] with the leader's status; a batch that did not reach the leader,
    /// or whose answer was lost, fails every write in it with the transport's status.
    pub async fn propose(
        &self,
        (leader, channel): (String, Channel),
        request: FleetRequest,
    ) -> Result<Applied, ReplicaError> {
        let size = crate::log::wire::encoded_size(&request).unwrap_or(MAX_BATCH_BYTES);
        let (answer, outcome) = oneshot::channel();
        let pending = Pending {
            leader,
            channel,
            request,
            size,
            answer,
        };
        batches::queue_and_wait(&self.queue, pending, outcome).await
    }
}

const LIMITS: Limits = Limits {
    in_flight: IN_FLIGHT,
    items: MAX_BATCH,
    bytes: MAX_BATCH_BYTES,
};

async fn batch_loop(cluster_id: String, queue: mpsc::Receiver<Pending>) {
    let items = Items {
        size: |pending: &Pending| pending.size,
        // A batch goes to one leader; a write for another (leadership moved) starts the next.
        together: |first, next| first.leader == next.leader,
    };
    batches::run(queue, LIMITS, items, move |batch| {
        let cluster_id = cluster_id.clone();
        async move { send(&cluster_id, batch).await }
    })
    .await;
}

/// Sends one batch and hands each write its outcome.
async fn send(cluster_id: &str, batch: Vec<Pending>) {
    crate::metrics::forwarded_batch(batch.len());
    let channel = batch[0].channel.clone();
    let (requests, answers): (Vec<FleetRequest>, Vec<Answer>) =
        batch.into_iter().map(|p| (p.request, p.answer)).unzip();
    match exchange(cluster_id, channel, &requests).await {
        Ok(outcomes) if outcomes.len() == answers.len() => {
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(outcome.map_err(ReplicaError::from));
            }
        }
        Ok(outcomes) => {
            let error = ReplicaError::internal(format!(
                "the leader answered {} of {} forwarded writes",
                outcomes.len(),
                answers.len()
            ));
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
    }
}

async fn exchange(
    cluster_id: &str,
    channel: Channel,
    requests: &[FleetRequest],
) -> Result<Vec<Outcome>, ReplicaError> {
    let payload = crate::log::wire::encode(&requests)
        .map_err(|e| ReplicaError::internal(format!("encoding forwarded writes: {e}")))?;
    let mut request = Request::new(pb::RaftMessage {
        cluster_id: cluster_id.to_string(),
        payload,
        id: 0,
    });
    request.set_timeout(BATCH_TIMEOUT);
    let answer = RaftClient::new(channel)
        .propose(request)
        .await
        .map_err(ReplicaError::Peer)?
        .into_inner();
    crate::log::wire::decode(&answer.payload).map_err(|e| {
        ReplicaError::internal(format!("the leader's answer to forwarded writes: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_comes_back_as_the_status_the_leader_would_have_answered() {
        let refusal = Refusal::from(ReplicaError::invalid("etcdserver: key is not provided"));
        assert_eq!(refusal.code, Code::InvalidArgument as i32);
        let status = Status::from(ReplicaError::from(refusal));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "etcdserver: key is not provided");
    }
}
