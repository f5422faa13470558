//! The replicated log behind a replica, and the state applied from it. Which consensus orders
//! the log: Ballast's own Raft group ([`raft`], the default) or an existing etcd cluster
//! ([`etcd`], `--backend etcd`). Both share the member types ([`member`]), the entry encoding
//! ([`wire`]) and the apply path ([`applied`]); neither imports the other. Services ask the
//! replica, and the replica asks this; neither cares which backend it is except for Raft-only
//! administration.

pub mod applied;
pub mod batches;
pub mod etcd;
pub mod forward;
pub mod member;
pub mod raft;
pub mod wire;

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::ServerState;

use crate::log::member::{NodeId, ReplicaNode};
use crate::log::raft::types::Raft;
use etcd::EtcdLog;

/// The log behind a replica.
pub enum Consensus {
    /// Ballast's own Raft group (openraft over fjall).
    Raft(Raft),
    /// A log kept in an existing etcd cluster.
    Etcd(Arc<EtcdLog>),
}

/// One member as status pages show it.
#[derive(Clone, Debug)]
pub struct MemberView {
    /// Replica id.
    pub id: NodeId,
    /// Address and AZ.
    pub node: ReplicaNode,
    /// Whether it votes (Raft) or may lead (etcd backend).
    pub voter: bool,
    /// Highest log index known to be stored there (`None`: unknown to this replica).
    pub matched_index: Option<u64>,
}

/// What a replica knows about its log and group, for status answers.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: &'static str,
    /// Raft term, or the etcd revision at which the current leadership began.
    pub term: u64,
    /// Current leader, if known.
    pub leader: Option<NodeId>,
    /// Last applied log index.
    pub applied_index: u64,
    /// Last log index this replica holds.
    pub last_log_index: u64,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
    /// Log entries up to here are gone.
    pub purged_index: u64,
    /// Members of the group.
    pub members: Vec<MemberView>,
    /// A member is being added or removed: the group is in a joint (old + new) configuration
    /// or its newest configuration is not yet committed. Losing a voter of the old
    /// configuration now can stall the change until that voter returns.
    pub membership_changing: bool,
}

impl View {
    /// Ids of the voters.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect()
    }
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Consensus {
    /// The group as this replica sees it now.
    pub fn view(&self, me: NodeId) -> View {
        match self {
            Consensus::Raft(raft) => {
                let metrics = raft.metrics().borrow().clone();
                let membership = metrics.membership_config.membership();
                let membership_log = metrics.membership_config.log_id().map_or(0, |l| l.index);
                let applied_index = metrics.last_applied.map_or(0, |l| l.index);
                let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                let last_log_index = metrics.last_log_index.unwrap_or(0);
                let members = membership
                    .nodes()
                    .map(|(id, node)| MemberView {
                        id: *id,
                        node: node.clone(),
                        voter: voters.contains(id),
                        matched_index: if *id == me {
                            Some(last_log_index)
                        } else {
                            metrics
                                .replication
                                .as_ref()
                                .map(|r| r.get(id).cloned().flatten().map_or(0, |l| l.index))
                        },
                    })
                    .collect();
                View {
                    state: state_name(metrics.state),
                    term: metrics.current_term,
                    leader: metrics.current_leader,
                    applied_index,
                    last_log_index,
                    snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
                    purged_index: metrics.purged.map_or(0, |l| l.index),
                    members,
                    membership_changing: membership.get_joint_config().len() > 1
                        || membership_log > applied_index,
                }
            }
            Consensus::Etcd(log) => log.view(),
        }
    }

    /// The current leader and its node record, if one is known.
    pub fn leader(&self) -> Option<(NodeId, ReplicaNode)> {
        match self {
            Consensus::Raft(raft) => {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                let leader = metrics.current_leader?;
                let node = metrics
                    .membership_config
                    .membership()
                    .get_node(&leader)?
                    .clone();
                Some((leader, node))
            }
            Consensus::Etcd(log) => log.leader(),
        }
    }

    /// The current term (see [`View::term`]).
    pub fn term(&self) -> u64 {
        self.term_and_leader().0
    }

    /// The current term and leader id in one look (every response header carries both).
    pub fn term_and_leader(&self) -> (u64, Option<NodeId>) {
        match self {
            Consensus::Raft(raft) => {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                (metrics.current_term, metrics.current_leader)
            }
            Consensus::Etcd(log) => (log.term(), log.leader().map(|(id, _)| id)),
        }
    }

    /// Whether this replica leads and may propose.
    pub fn is_leader(&self) -> bool {
        match self {
            Consensus::Raft(raft) => raft.metrics().borrow().state == ServerState::Leader,
            Consensus::Etcd(log) => log.is_leading(),
        }
    }
}
