//! Group commit at the proposal layer: while earlier proposals are being replicated, new ones
//! queue up and go into the log together as one entry (`FleetCommand::Group`), each still
//! applied, deduplicated and answered on its own. Under load this turns thousands of tiny log
//! entries — each an openraft round, a storage write and an apply — into a few large ones;
//! a lone proposal still goes out at once, alone.

use tokio::sync::{mpsc, oneshot};

use super::types::Raft;
use crate::error::ReplicaError;
use crate::error::raft_write_error;
use crate::fleet::FleetRequest;
use crate::fleet::{Applied, FleetCommand};
use crate::log::batches::{self, Items, Limits};

/// Groups in flight at once; more proposals wait and join the next group.
const IN_FLIGHT: usize = 2;
/// Most requests in one group.
const MAX_GROUP: usize = 512;
/// Most encoded bytes in one group (well under the peer message limit).
const MAX_GROUP_BYTES: usize = 4 * 1024 * 1024;

type Answer = oneshot::Sender<Result<Applied, ReplicaError>>;

/// Submits proposals to a Raft node in groups.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Queued>,
}

impl Proposer {
    /// Starts the grouping task for `raft`.
    pub fn start(raft: Raft) -> Self {
        let (queue, pending) = mpsc::channel(8192);
        tokio::spawn(group_loop(raft, pending));
        Self { queue }
    }

    /// Proposes one request and waits for its own outcome.
    pub async fn propose(&self, request: FleetRequest) -> Result<Applied, ReplicaError> {
        let size = crate::log::wire::encoded_size(&request).unwrap_or(MAX_GROUP_BYTES);
        let (answer, outcome) = oneshot::channel();
        batches::queue_and_wait(&self.queue, (request, size, answer), outcome).await
    }
}

/// Proposals that queue while earlier groups are being replicated go into the log together.
const LIMITS: Limits = Limits {
    in_flight: IN_FLIGHT,
    items: MAX_GROUP,
    bytes: MAX_GROUP_BYTES,
};

type Queued = (FleetRequest, usize, Answer);

async fn group_loop(raft: Raft, pending: mpsc::Receiver<Queued>) {
    let items = Items {
        size: |queued: &Queued| queued.1,
        together: |_, _| true,
    };
    batches::run(pending, LIMITS, items, move |group| {
        let raft = raft.clone();
        async move { submit(&raft, group).await }
    })
    .await;
}

async fn submit(raft: &Raft, mut group: Vec<(FleetRequest, usize, Answer)>) {
    if group.len() == 1 {
        let (request, _, answer) = group.remove(0);
        let outcome = match raft.client_write(request).await {
            Ok(response) => response.data.outcome.map_err(ReplicaError::Fleet),
            Err(error) => Err(raft_write_error(error)),
        };
        let _ = answer.send(outcome);
        return;
    }
    let (requests, answers): (Vec<FleetRequest>, Vec<Answer>) =
        group.into_iter().map(|(r, _, a)| (r, a)).unzip();
    let entry = FleetRequest {
        request_id: String::new(),
        command: FleetCommand::Group(requests),
    };
    match raft.client_write(entry).await {
        Ok(response) => {
            let mut outcomes = response.data.group.into_iter();
            for answer in answers {
                let outcome = outcomes.next().unwrap_or_else(|| {
                    Err(crate::fleet::FleetError::invalid(
                        "group",
                        "the state machine answered fewer requests than the group held",
                    ))
                });
                let _ = answer.send(outcome.map_err(ReplicaError::Fleet));
            }
        }
        Err(error) => {
            let status = raft_write_error(error);
            for answer in answers {
                let _ = answer.send(Err(status.clone()));
            }
        }
    }
}
