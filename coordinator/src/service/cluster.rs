//! The `Cluster` service: status, placement, membership changes, leadership transfer and
//! on-demand snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::pb::cluster_client::ClusterClient;
use ballast_protocol::pb::cluster_server::Cluster;
use ballast_protocol::pb::raft_client::RaftClient;
use ballast_protocol::validate::{validate_address, validate_id};
use openraft::ChangeMembers;
use tonic::{Request, Response, Status};

use crate::error::invalid;
use crate::fleet::FleetCommand;
use crate::raft::membership;
use crate::raft::types::{NodeId, RaftRequest, ReplicaNode};
use crate::replica::{Replica, Route, raft_write_status};

/// Serves the `Cluster` API of one replica.
pub struct ClusterService {
    replica: Arc<Replica>,
}

impl ClusterService {
    /// Wraps a replica.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    fn cluster_client(
        &self,
        address: &str,
    ) -> Result<ClusterClient<tonic::transport::Channel>, Status> {
        Ok(ClusterClient::new(self.replica.channel_to(address)?))
    }

    fn raft_client(&self, address: &str) -> Result<RaftClient<tonic::transport::Channel>, Status> {
        Ok(RaftClient::new(self.replica.channel_to(address)?))
    }
}

/// Judges whether the voters are spread so that losing one AZ keeps a quorum.
pub fn placement(voter_azs: &[String]) -> pb::Placement {
    let mut per_az: BTreeMap<&str, usize> = BTreeMap::new();
    for az in voter_azs {
        *per_az.entry(az.as_str()).or_insert(0) += 1;
    }
    let crowded: Vec<String> = per_az
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(az, n)| format!("{az} holds {n} voters"))
        .collect();
    let (healthy, message) = if voter_azs.len() < 3 {
        (
            false,
            format!(
                "{} voter(s): at least three voters in three AZs are needed to survive an AZ loss",
                voter_azs.len()
            ),
        )
    } else if !crowded.is_empty() {
        (
            false,
            format!("losing one AZ may lose quorum: {}", crowded.join(", ")),
        )
    } else {
        (
            true,
            format!(
                "{} voters in {} distinct AZs",
                voter_azs.len(),
                per_az.len()
            ),
        )
    };
    let mut azs = voter_azs.to_vec();
    azs.sort();
    pb::Placement {
        healthy,
        voter_azs: azs,
        message,
    }
}

/// What `Cluster.Status`, the status page and the metrics report: this replica's view of the
/// group, the placement verdict, table sizes and the DR exporter.
pub fn status_report(replica: &Replica) -> pb::StatusResponse {
    let view = replica.view();
    let mut members = Vec::new();
    let mut voter_azs = Vec::new();
    for member in &view.members {
        if member.voter {
            voter_azs.push(member.node.az.clone());
        }
        let matched_index = member.matched_index.unwrap_or(0);
        let (health, last_contact_ms) = crate::autopilot::member_health(replica, &view, member.id);
        members.push(pb::Member {
            id: member.id,
            address: member.node.address.clone(),
            az: member.node.az.clone(),
            role: if member.voter { "voter" } else { "learner" }.to_string(),
            leader: view.leader == Some(member.id),
            matched_index,
            lag: member
                .matched_index
                .map_or(0, |m| view.last_log_index.saturating_sub(m)),
            health,
            last_contact_ms,
        });
    }
    let counts = replica.state.fleet().counts();
    let leader_address = replica.leader().map(|(_, n)| n.address).unwrap_or_default();
    let placement = placement(&voter_azs);
    let warnings = crate::autopilot::warnings(&members, &placement);
    pb::StatusResponse {
        warnings,
        membership_changing: view.membership_changing,
        dr: Some(replica.dr.status()),
        header: Some(replica.header()),
        state: view.state.to_string(),
        applied_index: view.applied_index,
        last_log_index: view.last_log_index,
        snapshot_index: view.snapshot_index,
        purged_index: view.purged_index,
        members,
        placement: Some(placement),
        az: replica.az.clone(),
        address: replica.address.clone(),
        leader_address,
        shard_count: counts.shards as u64,
        domain_count: counts.domains as u64,
        binding_count: counts.bindings as u64,
        quota_count: counts.quotas as u64,
        provider_count: counts.providers as u64,
    }
}

/// The membership the Raft node works with now.
fn current_membership(raft: &crate::raft::types::Raft) -> crate::raft::types::Membership {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .clone()
}

/// Longest a join token may live.
const MAX_TOKEN_TTL_SECONDS: u64 = 7 * 24 * 3600;

fn sha256_hex(secret: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Spends the join token a new replica presented (on the leader, through the log, so two
/// replicas can never both spend one token).
async fn spend_join_token(replica: &Replica, join: &pb::JoinRequest) -> Result<(), Status> {
    if join.token.is_empty() {
        return Err(Status::permission_denied(format!(
            "replica {} needs a join token to join: create one with `ballastctl cluster token \
             create --ttl 1h` and start the replica with --join-token",
            join.id
        )));
    }
    let Some((id, secret)) = join.token.split_once('.') else {
        return Err(Status::permission_denied(
            "join token refused: not of the form <id>.<secret>",
        ));
    };
    replica
        .propose(RaftRequest {
            request_id: String::new(),
            command: FleetCommand::UseJoinToken {
                id: id.to_string(),
                secret_sha256: sha256_hex(secret),
                replica: join.id,
                now_ms: crate::service::convert::now_ms(),
            },
        })
        .await
        .map(|_| ())
}

/// Checks the cluster id, then either lets the rest of a leader-only call run here (giving
/// back the request's message) or forwards the request to the leader and returns its answer.
macro_rules! on_leader {
    ($service:expr, $request:ident, $method:ident) => {{
        let replica = &$service.replica;
        replica.check_cluster($request.metadata())?;
        if let Route::Forward(address) = replica.route($request.metadata())? {
            let answer = $service
                .cluster_client(&address)?
                .$method(replica.forwarded($request.into_inner()))
                .await?;
            return Ok(replica.respond(answer.into_inner()));
        }
        $request.into_inner()
    }};
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let replica = &self.replica;
        replica.check_cluster(request.metadata())?;
        Ok(replica.respond(status_report(replica)))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let replica = &self.replica;
        let join = on_leader!(self, request, join);
        let raft = replica.raft()?;
        if join.id == 0 {
            return Err(invalid("id", "replica ids start at 1"));
        }
        validate_address("address", &join.address)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        validate_id("az", &join.az).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let node = ReplicaNode {
            address: join.address.clone(),
            az: join.az.clone(),
        };
        let membership = current_membership(raft);
        if let Some(existing) = membership.get_node(&join.id) {
            if existing.address != node.address {
                return Err(Status::already_exists(format!(
                    "replica id {} is already a member at {}; remove it before joining it at {}",
                    join.id, existing.address, node.address
                )));
            }
        } else if let Some((other, _)) = membership.nodes().find(|(_, n)| n.address == node.address)
        {
            return Err(Status::already_exists(format!(
                "address {} already belongs to replica {other}",
                node.address
            )));
        }
        // Checked after the request itself, so a malformed or conflicting join spends no token.
        let rejoining = membership.voter_ids().any(|v| v == join.id)
            && membership
                .get_node(&join.id)
                .is_some_and(|n| n.address == node.address);
        if !rejoining {
            spend_join_token(replica, &join).await?;
        }
        if !membership.voter_ids().any(|v| v == join.id) {
            tracing::info!(id = join.id, address = %node.address, az = %node.az, "adding learner");
            // Blocks until the learner has caught up, so promotion never stalls the quorum.
            raft.add_learner(join.id, node, true)
                .await
                .map_err(raft_write_status)?;
            tracing::info!(id = join.id, "promoting caught-up learner to voter");
            membership::change_membership(
                raft,
                ChangeMembers::AddVoterIds(BTreeSet::from([join.id])),
            )
            .await
            .map_err(raft_write_status)?;
        }
        Ok(replica.respond(pb::JoinResponse {
            header: Some(replica.header()),
            role: "voter".to_string(),
        }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let replica = &self.replica;
        let ttl = on_leader!(self, request, create_join_token).ttl_seconds;
        if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&ttl) {
            return Err(invalid(
                "ttl_seconds",
                format!("must be between 1 and {MAX_TOKEN_TTL_SECONDS} (7 days)"),
            ));
        }
        let id = format!("{:016x}", rand::random::<u64>());
        let secret = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let now_ms = crate::service::convert::now_ms();
        let expires_at_ms = now_ms + ttl * 1000;
        replica
            .propose(RaftRequest {
                request_id: String::new(),
                command: FleetCommand::CreateJoinToken {
                    id: id.clone(),
                    secret_sha256: sha256_hex(&secret),
                    now_ms,
                    expires_at_ms,
                },
            })
            .await?;
        Ok(replica.respond(pb::CreateJoinTokenResponse {
            header: Some(replica.header()),
            token: format!("{id}.{secret}"),
            expires_at_unix_ms: expires_at_ms,
        }))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let replica = &self.replica;
        let id = on_leader!(self, request, remove_member).id;
        let raft = replica.raft()?;
        let membership = current_membership(raft);
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!("replica {id} is not a member")));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition(format!(
                    "replica {id} is the last voter; removing it would leave no cluster"
                )));
            }
            membership::remove_voters(raft, BTreeSet::from([id]))
                .await
                .map_err(raft_write_status)?;
        } else {
            membership::change_membership(raft, ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await
                .map_err(raft_write_status)?;
        }
        Ok(replica.respond(pb::RemoveMemberResponse {
            header: Some(replica.header()),
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let replica = &self.replica;
        let target = on_leader!(self, request, transfer_leader).target;
        let raft = replica.raft()?;
        if target == replica.id {
            return Ok(replica.respond(pb::TransferLeaderResponse {
                header: Some(replica.header()),
            }));
        }
        let membership = current_membership(raft);
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let Some(target_node) = membership.get_node(&target).cloned() else {
            return Err(Status::not_found(format!(
                "replica {target} is not a member"
            )));
        };
        if !voters.contains(&target) {
            return Err(Status::failed_precondition(format!(
                "replica {target} is a learner; only a voter can lead"
            )));
        }
        // The target must hold the whole log, or it cannot win the election.
        let caught_up = raft
            .wait(Some(Duration::from_secs(3)))
            .metrics(
                |m| {
                    let last = m.last_log_index;
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&target).cloned().flatten())
                        .map(|l| Some(l.index) == last)
                        .unwrap_or(false)
                },
                "transfer target caught up",
            )
            .await;
        if caught_up.is_err() {
            return Err(Status::unavailable(format!(
                "replica {target} has not caught up with the leader's log; retry later"
            )));
        }
        let lease = replica.timing.election_timeout_max;
        let pause_ms = (lease * 4).as_millis() as u64;
        for voter in voters.iter().filter(|v| **v != target && **v != replica.id) {
            if let Some(node) = membership.get_node(voter) {
                let control = pb::ElectionControl {
                    cluster_id: replica.cluster_id.clone(),
                    millis: pause_ms,
                };
                if let Err(e) = self
                    .raft_client(&node.address)?
                    .pause_election(control)
                    .await
                {
                    tracing::warn!(voter, error = %e, "could not pause a voter's election timer");
                }
            }
        }
        // Stop granting the lease: once it runs out on every follower, the target campaigns
        // and, holding the whole log, wins.
        raft.runtime_config().heartbeat(false);
        raft.runtime_config().elect(false);
        let campaign = pb::ElectionControl {
            cluster_id: replica.cluster_id.clone(),
            millis: (lease + Duration::from_millis(50)).as_millis() as u64,
        };
        let started = self
            .raft_client(&target_node.address)?
            .campaign(campaign)
            .await;
        let moved = match started {
            Ok(_) => raft
                .wait(Some(lease * 4))
                .metrics(|m| m.current_leader == Some(target), "leadership moved")
                .await
                .is_ok(),
            Err(e) => {
                tracing::warn!(target, error = %e, "transfer target refused to campaign");
                false
            }
        };
        raft.runtime_config().heartbeat(true);
        raft.runtime_config().elect(true);
        if !moved {
            return Err(Status::aborted(format!(
                "leadership did not move to replica {target} in time; the cluster keeps a leader, retry"
            )));
        }
        Ok(replica.respond(pb::TransferLeaderResponse {
            header: Some(replica.header()),
        }))
    }

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<pb::ExportResponse>, Status> {
        let replica = &self.replica;
        let to = on_leader!(self, request, export).destination;
        if !to.is_empty() {
            ballast_dr::Destination::check_remote(&to)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let answer = replica.dr.export(replica, Some(&to)).await?;
        Ok(replica.respond(answer))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let replica = &self.replica;
        replica.check_cluster(request.metadata())?;
        let raft = replica.raft()?;
        let applied = raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| Status::unavailable(format!("raft stopped: {e}")))?;
        let metrics = raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| m.snapshot.map(|l| l.index).unwrap_or(0) >= applied,
                "snapshot built",
            )
            .await
            .map_err(|e| Status::deadline_exceeded(format!("snapshot not built in time: {e}")))?;
        Ok(replica.respond(pb::SnapshotResponse {
            header: Some(replica.header()),
            snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::placement;

    fn azs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn three_voters_in_three_azs_is_healthy() {
        let p = placement(&azs(&["az-c", "az-a", "az-b"]));
        assert!(p.healthy, "{}", p.message);
        assert_eq!(p.voter_azs, azs(&["az-a", "az-b", "az-c"]));
    }

    #[test]
    fn shared_azs_and_small_clusters_are_at_risk() {
        let p = placement(&azs(&["az-a", "az-a", "az-b"]));
        assert!(!p.healthy);
        assert!(p.message.contains("az-a holds 2 voters"), "{}", p.message);
        assert!(!placement(&azs(&["az-a", "az-b"])).healthy);
        assert!(!placement(&[]).healthy);
    }
}
