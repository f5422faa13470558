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
        let metrics = self.replica.metrics();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let url = format!("http://{}", node.address);
                epb::Member {
                    id: *id,
                    name: format!("replica-{id}"),
                    peer_ur_ls: vec![url.clone()],
                    client_ur_ls: vec![url],
                    is_learner: !voters.contains(id),
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
        let metrics = self.replica.metrics();
        let size = self.replica.store.disk_space() as i64;
        let voters: std::collections::BTreeSet<u64> =
            metrics.membership_config.membership().voter_ids().collect();
        Ok(Response::new(epb::StatusResponse {
            header: Some(self.header_at(self.replica.state.revision())),
            version: ETCD_API_VERSION.into(),
            db_size: size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner: !voters.contains(&self.replica.id),
        }))
    }
}
