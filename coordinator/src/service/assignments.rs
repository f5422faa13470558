//! The shard-facing `Assignments` service: heartbeats (registration and lease renewal) and
//! resumable assignment watches, served by every replica from its own applied state.

use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::pb::assignments_client::AssignmentsClient;
use ballast_protocol::pb::assignments_server::Assignments;
use ballast_protocol::validate::validate_id;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::fleet_status;
use crate::fleet::FleetRequest;
use crate::fleet::{FleetCommand, FleetState};
use crate::history::{ShardDelta, full_listing};
use crate::replica::{Replica, Route};

/// How often a watch with nothing to say for its shard still reports the revision it has
/// reached, so a shard resumes from a recent point after a disconnect.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Serves `Assignments` for one replica.
pub struct AssignmentsService {
    replica: Arc<Replica>,
}

impl AssignmentsService {
    /// Wraps a replica.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }
}

/// Builds the wire update for a delta.
fn update(
    delta: ShardDelta,
    (restore_epoch, revision): (u64, u64),
    term: u64,
    full: bool,
) -> pb::AssignmentUpdate {
    let mut u = pb::AssignmentUpdate {
        revision,
        restore_epoch,
        term,
        full,
        status: delta.status.unwrap_or("").to_string(),
        ..Default::default()
    };
    for (domain, granted) in delta.domains {
        match granted {
            Some(granted) => {
                u.domain_grants.insert(domain.clone(), granted);
                u.domains_added.push(domain);
            }
            None => u.domains_removed.push(domain),
        }
    }
    for (cluster, granted) in delta.clusters {
        match granted {
            Some(granted) => {
                u.cluster_grants.insert(cluster.clone(), granted);
                u.clusters_added.push(cluster);
            }
            None => u.clusters_removed.push(cluster),
        }
    }
    u.slices = delta
        .slices
        .into_iter()
        .map(|((provider, region), slice)| pb::QuotaSliceOf {
            provider,
            region,
            amount: slice.amount,
            granted: slice.granted,
        })
        .collect();
    u
}

/// Streams `shard`'s assignment updates after `from` (a revision of restore epoch
/// `from_epoch`) until the receiver goes away.
async fn stream_updates(
    replica: Arc<Replica>,
    shard: String,
    (mut from_epoch, mut from): (u64, u64),
    tx: mpsc::Sender<Result<pb::AssignmentUpdate, Status>>,
) {
    let _open = crate::metrics::WatchStream::open("assignments");
    let mut revisions = replica.state.watch_revision();
    let mut first = true;
    let mut last_sent_at = tokio::time::Instant::now();
    loop {
        let current = *revisions.borrow_and_update();
        let epoch = replica.state.fleet().restore_epoch();
        // A shard that is ahead of this replica (it was served by a more current one) waits
        // until this replica catches up: an older state would take back newer grants. That
        // holds for a later restore epoch (this replica rejoining after a restore, empty) as
        // for a later revision.
        let behind = epoch < from_epoch;
        // A revision from an earlier restore epoch says nothing about this state: start over
        // with a full listing.
        let relist = !behind && (from_epoch != epoch || (first && from == 0));
        if !behind && (relist || current >= from) {
            let term = replica.consensus.term();
            let message = {
                let history = replica.state.history();
                let delta = if relist {
                    None
                } else {
                    history.delta_since(&shard, from)
                };
                match delta {
                    Some(delta) if delta.is_empty() && current == from => None,
                    Some(delta)
                        if delta.is_empty()
                            && !first
                            && last_sent_at.elapsed() < PROGRESS_EVERY =>
                    {
                        None
                    }
                    // Label the delta with the newest revision it covers, which may be past
                    // the tick that woke us.
                    Some(delta) => Some(update(
                        delta,
                        (epoch, history.latest().max(current)),
                        term,
                        false,
                    )),
                    None => {
                        drop(history);
                        let fleet = replica.state.fleet();
                        let at = (fleet.restore_epoch(), fleet.revision());
                        Some(update(full_listing(&fleet, &shard), at, term, true))
                    }
                }
            };
            if let Some(message) = message {
                from_epoch = message.restore_epoch;
                from = message.revision;
                last_sent_at = tokio::time::Instant::now();
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            first = false;
        }
        tokio::select! {
            changed = revisions.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
            _ = tx.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl Assignments for AssignmentsService {
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let replica = &self.replica;
        replica.check_cluster(request.metadata())?;
        check_caller(&request, &request.get_ref().shard_id)?;
        if let Route::Forward(address) = replica.route(request.metadata())? {
            let mut client = AssignmentsClient::new(replica.channel_to(&address)?);
            let answer = client
                .heartbeat(replica.forwarded(request.into_inner()))
                .await?;
            return Ok(replica.respond(answer.into_inner()));
        }
        let beat = request.into_inner();
        ballast_protocol::validate::validate_lease_ms(beat.lease_ttl_ms)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(summary) = &beat.summary {
            ballast_protocol::validate::validate_summary(summary)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let ttl = if beat.lease_ttl_ms == 0 {
            replica.timing.default_shard_lease.as_millis() as u64
        } else {
            beat.lease_ttl_ms
        };
        let now = ballast_protocol::clock::unix_ms();
        let register = FleetCommand::RegisterShard {
            id: beat.shard_id.clone(),
            address: beat.address.clone(),
            az: beat.az.clone(),
            now_ms: now,
            lease_ttl_ms: ttl,
        };
        FleetState::validate_command(&register).map_err(|e| fleet_status(&e))?;
        // The registration goes through Raft only when something durable changes (first
        // contact, new address or AZ); renewals stay on the leader, as etcd keeps lease
        // refreshes off its log.
        // While an apply holds the fleet state (a bulk write can for tens of milliseconds),
        // the last registration this replica saw stands in for it: renewals must not queue
        // behind the writes. A shard removed meanwhile re-registers on its next heartbeat.
        let place = (beat.address.clone(), beat.az.clone());
        let known = match replica.state.try_fleet() {
            Some(fleet) => {
                let known = fleet
                    .shard(&beat.shard_id)
                    .is_some_and(|s| s.address == beat.address && s.az == beat.az);
                drop(fleet);
                let mut registered = replica.registered.lock();
                // Written only when it changes: every heartbeat passes here.
                if !known {
                    registered.remove(&beat.shard_id);
                } else if registered.get(&beat.shard_id) != Some(&place) {
                    registered.insert(beat.shard_id.clone(), place);
                }
                known
            }
            None => replica.registered.lock().get(&beat.shard_id) == Some(&place),
        };
        if !known {
            replica
                .propose(FleetRequest {
                    request_id: String::new(),
                    command: register,
                })
                .await?;
        }
        let expires = replica.leases.renew(
            replica.consensus.term(),
            &beat.shard_id,
            (now, ttl),
            beat.epoch,
            beat.summary,
        );
        Ok(replica.respond(pb::HeartbeatResponse {
            header: Some(replica.header()),
            lease_expires_at_ms: expires,
        }))
    }

    type WatchStream = ReceiverStream<Result<pb::AssignmentUpdate, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.replica.check_cluster(request.metadata())?;
        check_caller(&request, &request.get_ref().shard_id)?;
        let watch = request.into_inner();
        validate_id("shard id", &watch.shard_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(stream_updates(
            self.replica.clone(),
            watch.shard_id,
            (watch.restore_epoch, watch.from_revision),
            tx,
        ));
        Ok(self.replica.respond(ReceiverStream::new(rx)))
    }
}

/// With mutual TLS, a shard certificate acts only for its own shard id.
fn check_caller<T>(request: &Request<T>, shard_id: &str) -> Result<(), Status> {
    match ballast_tls::identity::identity(request) {
        Some(caller) => caller
            .check_shard(shard_id)
            .map_err(Status::permission_denied),
        None => Ok(()),
    }
}
