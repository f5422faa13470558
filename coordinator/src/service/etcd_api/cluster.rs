//! `etcdserverpb.Cluster`: the members as etcd shows them (`etcdctl member list`), removal and
//! promotion mapped onto Ballast's membership. Adding a member takes a join token and moving
//! one to another address takes a new join, so `MemberAdd` and `MemberUpdate` answer with
//! what to run instead.

use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::cluster_client::ClusterClient;
use ballast_protocol::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use super::{EtcdApi, on_leader_call};
use crate::leader::members::{self, MemberChangeError};

/// What `MemberAdd` answers: Ballast admits replicas with join tokens, not peer URLs.
const ADD_INSTEAD: &str = "etcdserver: Ballast adds a replica with a join token, not by peer URL: \
     run `ballastctl cluster token create --ttl 1h`, then start the new replica with \
     `ballast-coord --id N --az AZ --listen ADDRESS --data-dir DIR --join MEMBER_ADDRESS \
     --join-token TOKEN`; it joins as a learner and is promoted once it holds the log";

/// What `MemberUpdate` answers: a replica's address is part of the membership it joined with.
const UPDATE_INSTEAD: &str = "etcdserver: a Ballast replica keeps the address it joined with: \
     remove it (`etcdctl member remove ID`) and start it again at the new address with \
     `--join` and a new join token (`ballastctl cluster token create`)";

/// etcd's answer to a membership change Ballast refused, worded as etcd words it.
fn member_change_status(error: MemberChangeError) -> Status {
    match error {
        MemberChangeError::NotMember(_) => Status::not_found("etcdserver: member not found"),
        MemberChangeError::LastVoter(_) => Status::failed_precondition(
            "etcdserver: re-configuration failed due to not enough started members",
        ),
        MemberChangeError::NotLearner(_) => {
            Status::failed_precondition("etcdserver: can only promote a learner member")
        }
        MemberChangeError::Behind(_) => Status::failed_precondition(
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        MemberChangeError::Replica(e) => Status::from(e),
    }
}

impl EtcdApi {
    /// The members as etcd describes them.
    fn members(&self) -> Vec<epb::Member> {
        self.replica
            .view()
            .members
            .iter()
            .map(|member| {
                let (id, url) = (&member.id, format!("http://{}", member.node.address));
                epb::Member {
                    id: *id,
                    name: format!("replica-{id}"),
                    peer_ur_ls: vec![url.clone()],
                    client_ur_ls: vec![url],
                    is_learner: !member.voter,
                }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for EtcdApi {
    async fn member_list(
        &self,
        request: Request<epb::MemberListRequest>,
    ) -> Result<Response<epb::MemberListResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        let members = self.members();
        Ok(Response::new(epb::MemberListResponse {
            header: Some(self.header_at(self.replica.state.revision())),
            members,
        }))
    }

    async fn member_add(
        &self,
        request: Request<epb::MemberAddRequest>,
    ) -> Result<Response<epb::MemberAddResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        self.require_admin(&request)?;
        Err(Status::failed_precondition(ADD_INSTEAD))
    }

    async fn member_update(
        &self,
        request: Request<epb::MemberUpdateRequest>,
    ) -> Result<Response<epb::MemberUpdateResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        self.require_admin(&request)?;
        Err(Status::failed_precondition(UPDATE_INSTEAD))
    }

    async fn member_remove(
        &self,
        request: Request<epb::MemberRemoveRequest>,
    ) -> Result<Response<epb::MemberRemoveResponse>, Status> {
        on_leader_call!(
            self,
            request,
            ClusterClient::member_remove,
            |body, caller| async move {
                self.check_admin(caller)?;
                members::remove(&self.replica, body.id)
                    .await
                    .map_err(member_change_status)?;
                Ok(epb::MemberRemoveResponse {
                    header: Some(self.header_at(self.replica.state.revision())),
                    members: self.members(),
                })
            }
        )
    }

    async fn member_promote(
        &self,
        request: Request<epb::MemberPromoteRequest>,
    ) -> Result<Response<epb::MemberPromoteResponse>, Status> {
        on_leader_call!(
            self,
            request,
            ClusterClient::member_promote,
            |body, caller| async move {
                self.check_admin(caller)?;
                members::promote(&self.replica, body.id)
                    .await
                    .map_err(member_change_status)?;
                Ok(epb::MemberPromoteResponse {
                    header: Some(self.header_at(self.replica.state.revision())),
                    members: self.members(),
                })
            }
        )
    }
}
