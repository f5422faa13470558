//! One running replica: the Raft handle, the state it applies, and what every service needs to
//! answer (headers, leader lookup, forwarding, linearizable reads, proposing).

use crate::dr::DrExporter;
use crate::error::ReplicaError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::faults::{FaultRules, Verdict};
use ballast_protocol::pb;
use ballast_protocol::pb::raft_client::RaftClient;
use ballast_protocol::{CLUSTER_ID_HEADER, FORWARDED_HEADER, LEADER_ADDRESS_HEADER};
use ballast_tls::ClientTls;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response};

use crate::fleet::FleetRequest;
use crate::fleet::{Applied, FleetCommand};
use crate::leases::ShardLeases;
use crate::log::applied::SharedState;
use crate::log::member::{NodeId, ReplicaNode};
use crate::log::raft::data_dir::DataDir;
use crate::log::raft::network::{PeerContacts, PeerDialer};
use crate::log::raft::read_lease::ReadPolicy;
use crate::log::raft::types::Raft;
use crate::log::{Consensus, View};

/// Timing knobs the services need at run time.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Upper bound of the election timeout (= the leader lease openraft grants).
    pub election_timeout_max: Duration,
    /// Default shard lease length when a registration names none.
    pub default_shard_lease: Duration,
}

/// A running replica, shared by all services.
pub struct Replica {
    /// This replica's node id.
    pub id: NodeId,
    /// Its AZ label.
    pub az: String,
    /// Address it serves on (client API and Raft).
    pub address: String,
    /// The cluster it belongs to.
    pub cluster_id: String,
    /// The log behind this replica: Ballast's Raft group or etcd.
    pub consensus: Consensus,
    /// Applied fleet state.
    pub state: Arc<SharedState>,
    /// On-disk store (for status figures).
    pub store: DataDir,
    /// Timing knobs.
    pub timing: Timing,
    /// Shard lease renewals seen while leading.
    pub leases: ShardLeases,
    /// The leader's last judgement of lapsed leases (`None` on a replica not leading).
    pub evacuation: parking_lot::Mutex<Option<ballast_protocol::pb::Evacuation>>,
    /// Shards seen registered (id → address, AZ) by heartbeats: what a heartbeat trusts while
    /// a bulk apply holds the fleet state, so renewals do not queue behind it.
    pub registered: parking_lot::Mutex<std::collections::HashMap<String, (String, String)>>,
    /// Archive exports.
    pub dr: DrExporter,
    /// Deadlines of KV leases while leading.
    pub lease_clock: crate::leases::KvLeaseClock,
    /// When each Raft peer last answered (for metrics and the status page).
    pub peer_contacts: PeerContacts,
    /// Health thresholds and automatic removal of dead voters.
    pub autopilot: crate::autopilot::AutopilotConfig,
    /// How this replica makes linearizable reads while it leads.
    pub read_policy: ReadPolicy,
    /// When this replica was assembled: it grants no vote for one election timeout after
    /// (see [`crate::log::raft::read_lease::votes_allowed`]).
    pub started: Instant,
    /// Groups concurrent proposals into shared log entries (Raft backend).
    proposer: Option<crate::log::raft::proposer::Proposer>,
    /// Sends the writes this replica's clients make while it follows to the leader, in
    /// batches.
    forwarder: crate::log::forward::Forwarder,
    /// Leadership confirmations shared by the requests that need one.
    confirmations: crate::leadership::Confirmations,
    /// Linearizable-read confirmations (a quorum round here, or a read index from the leader
    /// and the wait to apply it), shared by the reads that arrive together.
    reads: crate::leadership::Confirmations,
    /// Read indexes handed to followers, shared the same way.
    read_indexes: crate::leadership::Confirmations<u64>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Mutual TLS of calls to other replicas (`None`: plain text).
    pub client_tls: Option<Arc<ClientTls>>,
    /// Test-only network faults toward peers.
    faults: Option<Arc<FaultRules>>,
}

/// How long one shared read round may take: past it the reads waiting on it fail with "retry"
/// rather than queue behind a round that will not end (a follower's read index call and its
/// wait to apply had this limit each before reads shared rounds).
const READ_ROUND_LIMIT: Duration = Duration::from_secs(5);

/// Where a write or linearizable read must go.
pub enum Route {
    /// This replica leads: serve here.
    Local,
    /// Another replica leads: forward to this address.
    Forward(String),
}

/// The replica's duties and connections beyond its state (see [`Replica::new`]).
pub struct ReplicaParts {
    /// Timing settings.
    pub timing: Timing,
    /// Archive exports.
    pub dr: DrExporter,
    /// When each peer last answered.
    pub peer_contacts: PeerContacts,
    /// Member health thresholds.
    pub autopilot: crate::autopilot::AutopilotConfig,
    /// How linearizable reads are made while leading.
    pub read_policy: ReadPolicy,
    /// Mutual TLS toward peers.
    pub client_tls: Option<Arc<ClientTls>>,
    /// Test-only network faults toward peers.
    pub faults: Option<Arc<FaultRules>>,
}

impl Replica {
    /// Assembles a replica from its parts.
    pub fn new(
        id: NodeId,
        node: ReplicaNode,
        cluster_id: String,
        consensus: Consensus,
        state: Arc<SharedState>,
        store: DataDir,
        parts: ReplicaParts,
    ) -> Self {
        let ReplicaParts {
            timing,
            dr,
            peer_contacts,
            autopilot,
            read_policy,
            client_tls,
            faults,
        } = parts;
        let proposer = match &consensus {
            Consensus::Raft(raft) => {
                Some(crate::log::raft::proposer::Proposer::start(raft.clone()))
            }
            Consensus::Etcd(_) => None,
        };
        let forwarder = crate::log::forward::Forwarder::start(cluster_id.clone());
        Self {
            id,
            az: node.az,
            address: node.address,
            cluster_id,
            consensus,
            state,
            store,
            timing,
            leases: ShardLeases::default(),
            evacuation: parking_lot::Mutex::new(None),
            registered: parking_lot::Mutex::new(std::collections::HashMap::new()),
            dr,
            lease_clock: Default::default(),
            peer_contacts,
            autopilot,
            read_policy,
            started: Instant::now(),
            proposer,
            forwarder,
            confirmations: Default::default(),
            reads: Default::default(),
            read_indexes: Default::default(),
            channels: Mutex::new(HashMap::new()),
            client_tls,
            faults,
        }
    }

    /// The openraft handle, for Raft-only administration (membership, leadership transfer,
    /// snapshots, peer messages). An etcd-backed replica refuses those: etcd runs consensus.
    pub fn raft(&self) -> Result<&Raft, ReplicaError> {
        match &self.consensus {
            Consensus::Raft(raft) => Ok(raft),
            Consensus::Etcd(_) => Err(ReplicaError::precondition(format!(
                "replica {} keeps its log in etcd (--backend etcd): membership, leadership \
                 transfer, Raft snapshots and peer traffic are etcd's business there; start or \
                 stop ballast-coord processes against the same --etcd-prefix instead",
                self.id
            ))),
        }
    }

    /// The group as this replica sees it (members, leader, log positions).
    pub fn view(&self) -> View {
        self.consensus.view(self.id)
    }

    /// The current leader and its node record, if one is known. A replica that leads but has
    /// not heard from a majority within the election timeout says it knows no leader
    /// (check-quorum, see [`crate::leadership`]): it serves nothing as leader until it does.
    pub fn leader(&self) -> Option<(NodeId, ReplicaNode)> {
        let leader = self.consensus.leader()?;
        if leader.0 == self.id && !self.heard_from_majority() {
            return None;
        }
        Some(leader)
    }

    /// Check-quorum: whether a majority of voters (this replica included) answered within the
    /// election timeout. Always true on the etcd backend, whose leadership is etcd's lease.
    fn heard_from_majority(&self) -> bool {
        let Consensus::Raft(raft) = &self.consensus else {
            return true;
        };
        let voters: Vec<NodeId> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        crate::leadership::heard_from_majority(
            self.id,
            voters,
            self.timing.election_timeout_max,
            |peer| self.peer_contacts.age(peer),
        )
    }

    /// Confirms with a majority, in a round that began at or after `asked`, that this replica
    /// still leads; returns the term it leads in. Concurrent callers share rounds.
    pub async fn confirm_leadership(&self, asked: std::time::Instant) -> Result<u64, ReplicaError> {
        let term = self.consensus.term();
        if !self.is_leader() {
            return Err(ReplicaError::retry(format!(
                "replica {} is not the leader (or has not heard from a majority within the \
                 election timeout); retry",
                self.id
            )));
        }
        // A round that does not answer within a few election timeouts has failed.
        let limit = self.timing.election_timeout_max * 4;
        self.confirmations
            .confirm(asked, ("leadership by a majority", limit), || async move {
                match &self.consensus {
                    Consensus::Raft(raft) => {
                        raft.get_read_log_id().await.map(|_| ()).map_err(|e| {
                            ReplicaError::retry(format!("leadership not confirmed: {e}"))
                        })
                    }
                    Consensus::Etcd(log) => log.confirm_leading().await,
                }
            })
            .await?;
        // Leadership confirmed in the term read before the round: a later term means another
        // election happened in between, and the renewal belongs to no term this replica knows.
        if self.consensus.term() != term {
            return Err(ReplicaError::retry(
                "the term changed during a leadership confirmation; retry",
            ));
        }
        Ok(term)
    }

    /// Shard lease renewals seen while leading in the current term.
    pub fn shard_leases(&self) -> (&ShardLeases, u64) {
        (&self.leases, self.consensus.term())
    }

    /// The header every answer carries.
    pub fn header(&self) -> pb::ResponseHeader {
        let (raft_term, leader) = self.consensus.term_and_leader();
        let (revision, restore_epoch) = self.state.published();
        pb::ResponseHeader {
            cluster_id: self.cluster_id.clone(),
            member_id: self.id,
            revision,
            raft_term,
            leader_id: leader.unwrap_or(0),
            restore_epoch,
        }
    }

    /// Wraps an answer, stamping the cluster id and the leader's address into its metadata so
    /// clients can pin the cluster and find the leader.
    pub fn respond<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        stamp(response.metadata_mut(), CLUSTER_ID_HEADER, &self.cluster_id);
        if let Some((_, leader)) = self.leader() {
            stamp(
                response.metadata_mut(),
                LEADER_ADDRESS_HEADER,
                &leader.address,
            );
        }
        response
    }

    /// Refuses requests addressed to another cluster.
    pub fn check_cluster(&self, metadata: &MetadataMap) -> Result<(), ReplicaError> {
        match metadata.get(CLUSTER_ID_HEADER).map(|v| v.to_str()) {
            None => Ok(()),
            Some(Ok(id)) if id == self.cluster_id => Ok(()),
            Some(Ok(id)) => Err(ReplicaError::precondition(format!(
                "cluster id mismatch: replica {} at {} belongs to cluster {}, the request was for cluster {id}",
                self.id, self.address, self.cluster_id
            ))),
            Some(Err(_)) => Err(ReplicaError::invalid(format!(
                "metadata {CLUSTER_ID_HEADER} is not valid ASCII"
            ))),
        }
    }

    /// Refuses peer messages from another cluster.
    pub fn check_peer_cluster(&self, cluster_id: &str) -> Result<(), ReplicaError> {
        if cluster_id == self.cluster_id {
            Ok(())
        } else {
            Err(ReplicaError::precondition(format!(
                "cluster id mismatch: replica {} belongs to cluster {}, the peer message came from cluster {cluster_id:?}",
                self.id, self.cluster_id
            )))
        }
    }

    /// Decides where a leader-only operation runs. A request that was already forwarded once
    /// is never forwarded again (leadership moved in between): the client retries instead.
    pub fn route(&self, metadata: &MetadataMap) -> Result<Route, ReplicaError> {
        match self.leader() {
            Some((leader, _)) if leader == self.id => Ok(Route::Local),
            Some((_, node)) if metadata.get(FORWARDED_HEADER).is_none() => {
                Ok(Route::Forward(node.address))
            }
            Some((leader, _)) => Err(ReplicaError::retry(format!(
                "replica {} is not the leader (replica {leader} is) and the request was already forwarded once; retry",
                self.id
            ))),
            None => Err(ReplicaError::retry(format!(
                "replica {} knows no leader (election in progress or no quorum); retry",
                self.id
            ))),
        }
    }

    /// A cached channel to another replica's address.
    pub fn channel_to(&self, address: &str) -> Result<Channel, ReplicaError> {
        if let Some(faults) = &self.faults
            && faults.verdict(address) == Verdict::Drop
        {
            return Err(ReplicaError::retry(format!(
                "fault injection: call to {address} dropped"
            )));
        }
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = self
            .dialer()
            .channel(address)
            .map_err(ReplicaError::internal)?;
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// How this replica dials its peers.
    pub fn dialer(&self) -> PeerDialer {
        PeerDialer {
            tls: self.client_tls.clone(),
            faults: self.faults.clone(),
        }
    }

    /// Builds the forwarded copy of a request: same message, cluster id, forwarded mark.
    pub fn forwarded<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        stamp(request.metadata_mut(), CLUSTER_ID_HEADER, &self.cluster_id);
        stamp(
            request.metadata_mut(),
            FORWARDED_HEADER,
            &self.id.to_string(),
        );
        request.set_timeout(Duration::from_secs(10));
        request
    }

    /// Proposes a fleet command on this replica (which must lead) and waits until it is
    /// committed and applied.
    pub async fn propose(&self, request: FleetRequest) -> Result<Applied, ReplicaError> {
        let started = std::time::Instant::now();
        // A request with an id carries this leader's clock, which times how long the state
        // machine remembers ids (the exactly-once window).
        let request = if request.request_id.is_empty() {
            request
        } else {
            FleetRequest {
                request_id: String::new(),
                command: FleetCommand::Timed {
                    now_ms: ballast_protocol::clock::unix_ms(),
                    request: Box::new(request),
                },
            }
        };
        let outcome = match (&self.consensus, &self.proposer) {
            (Consensus::Raft(_), Some(proposer)) => proposer.propose(request).await,
            (Consensus::Etcd(log), _) => log.propose(request).await,
            (Consensus::Raft(_), None) => {
                Err(ReplicaError::internal("the Raft proposer is not running"))
            }
        };
        crate::metrics::proposal_done(started, outcome.is_ok());
        outcome
    }

    /// Proposes `request` on the leader at `address` (this replica follows), batched with the
    /// other writes this replica forwards meanwhile; waits for its own outcome.
    pub async fn propose_on_leader(
        &self,
        address: &str,
        request: FleetRequest,
    ) -> Result<Applied, ReplicaError> {
        let channel = self.channel_to(address)?;
        self.forwarder
            .propose((address.to_string(), channel), request)
            .await
    }

    /// Makes a following read linearizable: on the leader by confirming leadership with a
    /// quorum; on a follower by asking the leader for its read index and waiting to apply it.
    /// Reads that arrive together share one round (the first round that began after each
    /// arrived), so 32 reads in flight cost one heartbeat to each voter, not 32.
    pub async fn linearize(&self) -> Result<(), ReplicaError> {
        let raft = match &self.consensus {
            Consensus::Raft(raft) => raft,
            // Any replica can read the log head from etcd itself.
            Consensus::Etcd(log) => return log.linearize().await,
        };
        if self.read_policy == ReadPolicy::Lease
            && self.is_leader()
            && self.lease_read(raft).await?.is_some()
        {
            crate::metrics::linearizable_read("lease");
            return Ok(());
        }
        crate::metrics::linearizable_read("round");
        let asked = std::time::Instant::now();
        let limit = READ_ROUND_LIMIT;
        self.reads
            .confirm(asked, ("linearizable read", limit), || async move {
                match self.route(&MetadataMap::new())? {
                    Route::Local => {
                        raft.ensure_linearizable().await.map_err(|e| {
                            ReplicaError::retry(format!(
                                "could not confirm leadership for a linearizable read: {e}"
                            ))
                        })?;
                        Ok(())
                    }
                    Route::Forward(address) => {
                        let mut client = RaftClient::new(self.channel_to(&address)?);
                        let mut request = Request::new(pb::ReadIndexRequest {
                            cluster_id: self.cluster_id.clone(),
                        });
                        request.set_timeout(limit);
                        let index = client.read_index(request).await?.into_inner().index;
                        self.wait_applied(raft, index).await
                    }
                }
            })
            .await
    }

    /// The read index a follower asks the leader for: the commit index, once a quorum confirmed
    /// this replica still leads. Followers' requests that arrive together share one round.
    pub async fn read_index(&self) -> Result<u64, ReplicaError> {
        let raft = self.raft()?;
        if self.read_policy == ReadPolicy::Lease
            && let Some(index) = self.lease_read(raft).await?
        {
            crate::metrics::linearizable_read("lease_read_index");
            return Ok(index);
        }
        crate::metrics::linearizable_read("round_read_index");
        let asked = std::time::Instant::now();
        let limit = READ_ROUND_LIMIT;
        self.read_indexes
            .confirm(asked, ("read index", limit), || async move {
                let (read_log_id, _) = raft.get_read_log_id().await.map_err(|e| {
                    ReplicaError::retry(format!(
                        "replica {} cannot serve a read index: {e}",
                        self.id
                    ))
                })?;
                Ok(read_log_id.map(|l| l.index).unwrap_or(0))
            })
            .await
    }

    /// A linearizable read without a quorum round, while this leader's read lease holds
    /// (`--read-policy lease`, ADR 0020): returns the read index once this replica applied
    /// it, or `None` when the lease does not hold (not leading, no entry of its own term
    /// committed yet, or no majority accepted an append within the lease) and a round is
    /// needed.
    ///
    /// openraft's core answers whether it leads and what is committed. It processes one
    /// event at a time, so a core that still leads has granted no vote since; the lease is
    /// then checked at a time after that answer.
    async fn lease_read(&self, raft: &Raft) -> Result<Option<u64>, ReplicaError> {
        let core = raft
            .with_raft_state(|st| {
                if st.server_state != openraft::ServerState::Leader {
                    return None;
                }
                let term = st.vote_ref().leader_id().term;
                // Until an entry of its own term is committed a new leader does not know the
                // commit index: the read index rule waits for it, and so does the lease.
                let committed = st.committed.filter(|c| c.leader_id.term == term)?;
                let configs = st
                    .membership_state
                    .effective()
                    .membership()
                    .get_joint_config()
                    .iter()
                    .map(|voters| voters.iter().copied().collect::<Vec<_>>())
                    .collect::<Vec<_>>();
                Some((term, committed.index, configs))
            })
            .await
            .map_err(|e| ReplicaError::retry(format!("raft stopped: {e}")))?;
        let Some((term, index, configs)) = core else {
            return Ok(None);
        };
        let now = Instant::now();
        let length = crate::log::raft::read_lease::lease_length(self.timing.election_timeout_max);
        let end = crate::log::raft::read_lease::lease_end(self.id, &configs, now, length, |peer| {
            self.peer_contacts.accepted_in(peer, term)
        });
        if end.is_none_or(|end| end <= now) {
            return Ok(None);
        }
        self.wait_applied(raft, index).await?;
        Ok(Some(index))
    }

    /// Waits (at most a read round's limit) until this replica has applied `index`.
    async fn wait_applied(&self, raft: &Raft, index: u64) -> Result<(), ReplicaError> {
        let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        if applied >= index {
            return Ok(());
        }
        raft.wait(Some(READ_ROUND_LIMIT))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|e| {
                ReplicaError::retry(format!(
                    "replica {} did not catch up to read index {index}: {e}",
                    self.id
                ))
            })
    }

    /// Whether this replica currently leads, with a majority heard from within the election
    /// timeout (check-quorum).
    pub fn is_leader(&self) -> bool {
        self.consensus.is_leader() && self.heard_from_majority()
    }
}

fn stamp(metadata: &mut MetadataMap, key: &'static str, value: &str) {
    if let Ok(value) = MetadataValue::try_from(value) {
        metadata.insert(key, value);
    }
}
