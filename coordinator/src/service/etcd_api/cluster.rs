//! `etcdserverpb.Cluster.MemberList` and `etcdserverpb.Maintenance.Status`: what etcdctl's
//! `member list` and `endpoint status` show. Membership changes go through Ballast's own
//! admin API (`ballastctl cluster ...`), so the etcd membership calls are not served.

use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::cluster_server::Cluster;
use ballast_protocol::etcdserverpb::maintenance_server::Maintenance;
use tonic::{Request, Response, Status};

use super::EtcdApi;

/// etcd protocol version Ballast answers as (the API generation it implements).
const ETCD_API_VERSION: &str = "3.4.0";

#[tonic::async_trait]
impl Cluster for EtcdApi {
    async fn member_list(
        &self,
        request: Request<epb::MemberListRequest>,
    ) -> Result<Response<epb::MemberListResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        let view = self.replica.view();
        let members = view
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
            .collect();
        Ok(Response::new(epb::MemberListResponse {
            header: Some(self.header_at(self.replica.state.revision())),
            members,
        }))
    }
}

#[tonic::async_trait]
impl Maintenance for EtcdApi {
    async fn status(
        &self,
        request: Request<epb::StatusRequest>,
    ) -> Result<Response<epb::StatusResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        let view = self.replica.view();
        let size = self.replica.store.disk_space() as i64;
        Ok(Response::new(epb::StatusResponse {
            header: Some(self.header_at(self.replica.state.revision())),
            version: ETCD_API_VERSION.into(),
            db_size: size,
            leader: view.leader.unwrap_or(0),
            raft_index: view.last_log_index,
            raft_term: view.term,
            raft_applied_index: view.applied_index,
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner: !view.voters().contains(&self.replica.id),
        }))
    }
}
