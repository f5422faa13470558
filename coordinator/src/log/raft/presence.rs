//! Leader presence: a crashed leader is replaced as soon as the lease it holds runs out.
//!
//! openraft's followers campaign only after the leader lease (`--election-max-ms`) plus a
//! random election timeout without a heartbeat. When the leader's process dies (a crash, an
//! OOM kill, SIGKILL), its kernel closes its connections at once, so the voters can know
//! earlier than any timer. The leader holds one call open to every other voter
//! ([`announce_while_leading`]); a voter that sees that call end and hears nothing more from
//! the leader campaigns when the lease it granted runs out ([`PresenceWatch`]), without the
//! random timeout on top. Voters take turns half a heartbeat apart, by id, so they do not
//! split the vote. A leader that goes quiet with its connections open (a frozen process, a
//! partition, a host that lost power) is found by the election timer alone, as before.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ballast_protocol::pb;
use ballast_protocol::pb::raft_client::RaftClient;
use futures::Stream;
use openraft::ServerState;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::network::PeerDialer;
use super::types::{NodeId, Raft};

/// Campaigning this long after the lease ran out here leaves room for the other voters'
/// leases, which started when the same last heartbeat reached them a moment later.
const LEASE_MARGIN: Duration = Duration::from_millis(5);

/// While this replica leads, holds a presence call open to every other voter; drops them all
/// when it stops leading, the term changes or the replica shuts down.
pub async fn announce_while_leading(
    raft: Raft,
    me: NodeId,
    cluster_id: String,
    dialer: PeerDialer,
    retry: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut metrics = raft.server_metrics();
    // Peer -> (address, term, the task holding the call).
    let mut calls: HashMap<NodeId, (String, u64, JoinHandle<()>)> = HashMap::new();
    loop {
        let wanted: Vec<(NodeId, String, u64)> = {
            let m = metrics.borrow_and_update();
            if m.state == ServerState::Leader {
                let term = m.vote.leader_id().term;
                let membership = m.membership_config.membership();
                membership
                    .voter_ids()
                    .filter(|id| *id != me)
                    .filter_map(|id| {
                        membership
                            .get_node(&id)
                            .map(|n| (id, n.address.clone(), term))
                    })
                    .collect()
            } else {
                Vec::new()
            }
        };
        calls.retain(|id, (address, term, task)| {
            let keep = wanted
                .iter()
                .any(|(w, a, t)| w == id && a == address && t == term);
            if !keep {
                task.abort();
            }
            keep
        });
        for (peer, address, term) in wanted {
            if calls.contains_key(&peer) {
                continue;
            }
            let hello = pb::LeaderHello {
                cluster_id: cluster_id.clone(),
                leader_id: me,
                term,
            };
            let task = tokio::spawn(hold(address.clone(), hello, dialer.clone(), retry));
            calls.insert(peer, (address, term, task));
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { break },
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    for (_, (_, _, task)) in calls {
        task.abort();
    }
}

/// Keeps one presence call open to `address`, calling again `retry` after it ends.
async fn hold(address: String, hello: pb::LeaderHello, dialer: PeerDialer, retry: Duration) {
    let channel = match dialer.channel(&address) {
        Ok(channel) => channel,
        Err(e) => {
            tracing::warn!(address, error = %e, "no presence call to an invalid peer address");
            return;
        }
    };
    let mut client = RaftClient::new(channel);
    loop {
        if let Ok(answer) = client.leader_presence(hello.clone()).await {
            let mut stream = answer.into_inner();
            while let Ok(Some(_)) = stream.message().await {}
        }
        tokio::time::sleep(retry).await;
    }
}

/// How long openraft 0.9's leader sends nothing to a peer after finding it unreachable (its
/// default `RaftNetwork::backoff`), and again after every failed send until one succeeds.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(500);

/// Keeps a replica that just started from campaigning until it has heard from a leader, or
/// until a leader would have reached it: `election_max` (the lease a leader may still hold)
/// plus openraft's backoff from a peer it found unreachable, plus a margin. A replica
/// restarted while the others carry on would otherwise often campaign before the leader's
/// backoff from it ended: its higher term then deposes the leader on the next append, and
/// the group is without one until the next election. (Campaigns started by hand, leader
/// presence and leadership transfer, are not held back; `Raft::initialize` elects at once.)
pub async fn hold_campaigns_after_start(raft: Raft, watch: PresenceWatch, election_max: Duration) {
    let started = Instant::now();
    let deadline = started + election_max + UNREACHABLE_BACKOFF + watch.heartbeat;
    raft.runtime_config().elect(false);
    let mut stopped = watch.stopped.clone();
    while Instant::now() < deadline && *lock(&watch.last_append) <= started {
        tokio::select! {
            _ = tokio::time::sleep(watch.heartbeat / 2) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
    raft.runtime_config().elect(true);
}

/// A voter's side: when the leader last sent an append, and what to do when its presence call
/// ends.
#[derive(Clone)]
pub struct PresenceWatch {
    last_append: Arc<Mutex<Instant>>,
    /// Until when a leadership transfer to another replica holds this one's campaigns back.
    paused_until: Arc<Mutex<Option<Instant>>>,
    heartbeat: Duration,
    lease: Duration,
    stopped: watch::Receiver<bool>,
}

impl PresenceWatch {
    /// A watch for a replica with these timers; it never campaigns once `stopped` is set.
    pub fn new(heartbeat: Duration, lease: Duration, stopped: watch::Receiver<bool>) -> Self {
        Self {
            last_append: Arc::new(Mutex::new(Instant::now())),
            paused_until: Arc::new(Mutex::new(None)),
            heartbeat,
            lease,
            stopped,
        }
    }

    /// Holds campaigns back for `pause`: a leadership transfer to another replica is under
    /// way, and the leader has stopped sending on purpose. (openraft's switch for elections
    /// does not stop a campaign started by hand, as this watch starts its own.)
    pub fn pause_campaigns(&self, pause: Duration) {
        *lock(&self.paused_until) = Some(Instant::now() + pause);
    }

    /// Notes an append (entries or a heartbeat) arriving now.
    pub fn heard_from_leader(&self) {
        *lock(&self.last_append) = Instant::now();
    }

    /// The answer to a presence call from `hello.leader_id`: a stream that yields nothing and
    /// ends when this replica shuts down. If it is dropped first, the leader's side went away.
    pub fn accept(&self, raft: Raft, me: NodeId, hello: pb::LeaderHello) -> PresenceStream {
        let mut stopped = self.stopped.clone();
        PresenceStream {
            shutdown: Box::pin(async move {
                let _ = stopped.wait_for(|s| *s).await;
            }),
            on_loss: Some(LostLeader {
                watch: self.clone(),
                raft,
                me,
                hello,
            }),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    mutex.lock()
}

/// The response stream of a presence call.
pub struct PresenceStream {
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    on_loss: Option<LostLeader>,
}

impl Stream for PresenceStream {
    type Item = Result<pb::Empty, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.shutdown.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // This replica is stopping: the call ends from this side, which says nothing
                // about the leader.
                self.on_loss = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for PresenceStream {
    fn drop(&mut self) {
        if let Some(lost) = self.on_loss.take() {
            lost.spawn();
        }
    }
}

/// A presence call that ended from the leader's side.
struct LostLeader {
    watch: PresenceWatch,
    raft: Raft,
    me: NodeId,
    hello: pb::LeaderHello,
}

impl LostLeader {
    fn spawn(self) {
        let lost_at = Instant::now();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.campaign_if_silent(lost_at));
        }
    }

    /// Campaigns when the lease granted with the last append runs out, unless the leader
    /// spoke since its call ended or the group moved on.
    async fn campaign_if_silent(self, lost_at: Instant) {
        let leader = self.hello.leader_id;
        let turn = {
            let metrics = self.raft.server_metrics();
            let m = metrics.borrow();
            let mut others: Vec<NodeId> = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|id| *id != leader)
                .collect();
            others.sort_unstable();
            others.iter().position(|id| *id == self.me)
        };
        let Some(turn) = turn else {
            return; // a learner does not vote
        };
        let last_append = *lock(&self.watch.last_append);
        let at =
            last_append + self.watch.lease + LEASE_MARGIN + self.watch.heartbeat / 2 * turn as u32;
        tokio::time::sleep_until(at.into()).await;
        if *self.watch.stopped.borrow() || *lock(&self.watch.last_append) > lost_at {
            return;
        }
        // A transfer to another replica: it campaigns, this one would split the vote (seen as
        // `move-leader` failing about one time in two in `etcd_api.rs`).
        if lock(&self.watch.paused_until).is_some_and(|until| Instant::now() < until) {
            return;
        }
        let still_following = {
            let metrics = self.raft.server_metrics();
            let m = metrics.borrow();
            m.state == ServerState::Follower
                && m.vote.leader_id().term == self.hello.term
                && m.vote.leader_id().voted_for() == Some(leader)
        };
        if !still_following {
            return;
        }
        tracing::info!(
            leader,
            term = self.hello.term,
            "the leader's connection closed and it has sent nothing since; campaigning as its lease runs out"
        );
        if let Err(e) = self.raft.trigger().elect().await {
            tracing::warn!(error = %e, "campaign after the leader's connection closed failed");
        }
    }
}
