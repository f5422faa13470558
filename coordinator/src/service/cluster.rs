//! The `Cluster` service: status, placement, membership changes, leadership transfer and
//! on-demand snapshots.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::pb::cluster_client::ClusterClient;
use ballast_protocol::pb::cluster_server::Cluster;
use ballast_protocol::validate::{validate_address, validate_id};
use openraft::ChangeMembers;
use tonic::{Request, Response, Status};

use crate::error::invalid;
use crate::error::raft_write_error;
use crate::fleet::FleetCommand;
use crate::fleet::FleetRequest;
use crate::leader::members::MemberChangeError;
use crate::log::member::ReplicaNode;
use crate::log::raft::membership;
use crate::replica::{Replica, Route};
use crate::status::status_report;

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
        .propose(FleetRequest {
            request_id: String::new(),
            command: FleetCommand::UseJoinToken {
                id: id.to_string(),
                secret_sha256: sha256_hex(secret),
                replica: join.id,
                now_ms: ballast_protocol::clock::unix_ms(),
            },
        })
        .await
        .map(|_| ())
        .map_err(Status::from)
}

/// A refused membership change in Ballast's words.
fn member_change_status(error: MemberChangeError) -> Status {
    match error {
        MemberChangeError::NotMember(_) => Status::not_found(error.to_string()),
        MemberChangeError::Replica(e) => Status::from(e),
        other => Status::failed_precondition(other.to_string()),
    }
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
        let membership = membership::current(raft);
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
        // A member at its own address was admitted once; its restart needs no new token.
        let voter = membership.voter_ids().any(|v| v == join.id);
        let rejoining = membership
            .get_node(&join.id)
            .is_some_and(|n| n.address == node.address);
        if !rejoining {
            spend_join_token(replica, &join).await?;
        }
        if join.learner && !voter {
            if !rejoining {
                tracing::info!(id = join.id, address = %node.address, az = %node.az, "adding learner to stay one");
                raft.add_learner(join.id, node, false)
                    .await
                    .map_err(|e| Status::from(raft_write_error(e)))?;
            }
            return Ok(replica.respond(pb::JoinResponse {
                header: Some(replica.header()),
                role: "learner".to_string(),
            }));
        }
        if !voter {
            tracing::info!(id = join.id, address = %node.address, az = %node.az, "adding learner");
            // Blocks until the learner has caught up, so promotion never stalls the quorum.
            raft.add_learner(join.id, node, true)
                .await
                .map_err(|e| Status::from(raft_write_error(e)))?;
            tracing::info!(id = join.id, "promoting caught-up learner to voter");
            membership::change_membership(
                raft,
                ChangeMembers::AddVoterIds(BTreeSet::from([join.id])),
            )
            .await
            .map_err(|e| Status::from(raft_write_error(e)))?;
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
        let now_ms = ballast_protocol::clock::unix_ms();
        let expires_at_ms = now_ms + ttl * 1000;
        replica
            .propose(FleetRequest {
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
        crate::leader::members::remove(replica, id)
            .await
            .map_err(member_change_status)?;
        Ok(replica.respond(pb::RemoveMemberResponse {
            header: Some(replica.header()),
        }))
    }

    async fn promote_member(
        &self,
        request: Request<pb::PromoteMemberRequest>,
    ) -> Result<Response<pb::PromoteMemberResponse>, Status> {
        let replica = &self.replica;
        let id = on_leader!(self, request, promote_member).id;
        crate::leader::members::promote(replica, id)
            .await
            .map_err(member_change_status)?;
        Ok(replica.respond(pb::PromoteMemberResponse {
            header: Some(replica.header()),
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let replica = &self.replica;
        let target = on_leader!(self, request, transfer_leader).target;
        crate::leader::transfer::transfer_leadership(replica, target).await?;
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
        let answer = crate::leader::dr::export_now(replica, Some(&to)).await?;
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
