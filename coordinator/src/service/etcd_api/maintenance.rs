//! `etcdserverpb.Maintenance`: what etcdctl's `endpoint status`, `endpoint hashkv`, `alarm`,
//! `defrag`, `move-leader` and `snapshot save` use. Ballast has no space quota (so no alarm is
//! ever raised) and nothing to defragment (its storage compacts itself). A snapshot is the
//! archive `ballastctl dr export` would write, in a file of etcd's format
//! (`ballast_dr::snapshot_file`).
//!
//! While etcd auth is on, what reads or moves the whole store (defragment, hash, hash-kv,
//! snapshot, move-leader, raising or clearing an alarm) needs the root role; status and the
//! alarm list stay open to monitoring, as in etcd.

use std::pin::Pin;

use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::alarm_request::AlarmAction;
use ballast_protocol::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_protocol::etcdserverpb::maintenance_server::Maintenance;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert::kv;
use super::{EtcdApi, on_leader_call};
use crate::error::{ReplicaError, kv_status};

/// etcd protocol version Ballast answers as (the API generation it implements).
pub(super) const ETCD_API_VERSION: &str = "3.4.0";

/// Bytes of snapshot per message, as etcd sends them.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// What raising an alarm by hand answers.
const NO_ALARMS: &str = "etcdserver: Ballast has no space quota and checks its own state, so \
     it raises no alarms and none can be raised by hand";

#[tonic::async_trait]
impl Maintenance for EtcdApi {
    async fn status(
        &self,
        request: Request<epb::StatusRequest>,
    ) -> Result<Response<epb::StatusResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        let view = self.replica.view();
        // Every file of the data dir (log, snapshot, metadata, journals): what the replica
        // holds on disk, measured the same way on every replica.
        let size = self.replica.store.bytes_on_disk() as i64;
        let errors = if view.leader.is_none() {
            vec!["etcdserver: no leader".to_string()]
        } else {
            Vec::new()
        };
        Ok(Response::new(epb::StatusResponse {
            header: Some(self.header_at(self.replica.state.revision())),
            version: ETCD_API_VERSION.into(),
            db_size: size,
            leader: view.leader.unwrap_or(0),
            raft_index: view.last_log_index,
            raft_term: view.term,
            raft_applied_index: view.applied_index,
            errors,
            db_size_in_use: size,
            is_learner: !view.voters().contains(&self.replica.id),
        }))
    }

    async fn alarm(
        &self,
        request: Request<epb::AlarmRequest>,
    ) -> Result<Response<epb::AlarmResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        let caller = self.request_auth(&request)?.caller;
        let request = request.into_inner();
        let action = AlarmAction::try_from(request.action)
            .map_err(|_| Status::invalid_argument("etcdserver: unknown alarm action"))?;
        if action != AlarmAction::Get {
            self.check_admin(caller.as_ref())?;
        }
        let alarm = epb::AlarmType::try_from(request.alarm)
            .map_err(|_| Status::invalid_argument("etcdserver: unknown alarm type"))?;
        if action == AlarmAction::Activate && alarm != epb::AlarmType::None {
            return Err(Status::failed_precondition(NO_ALARMS));
        }
        // Listing and disarming: none is raised, none to disarm.
        Ok(Response::new(epb::AlarmResponse {
            header: Some(self.header_at(self.replica.state.revision())),
            alarms: Vec::new(),
        }))
    }

    async fn defragment(
        &self,
        request: Request<epb::DefragmentRequest>,
    ) -> Result<Response<epb::DefragmentResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        self.require_admin(&request)?;
        Ok(Response::new(epb::DefragmentResponse {
            header: Some(self.header_at(self.replica.state.revision())),
        }))
    }

    async fn hash(
        &self,
        request: Request<epb::HashRequest>,
    ) -> Result<Response<epb::HashResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        self.require_admin(&request)?;
        let fleet = self.replica.state.fleet();
        let current = fleet.revision();
        let hash = fleet.kv().hash(current);
        drop(fleet);
        Ok(Response::new(epb::HashResponse {
            header: Some(self.header_at(current)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<epb::HashKvRequest>,
    ) -> Result<Response<epb::HashKvResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        self.require_admin(&request)?;
        let revision = request.into_inner().revision;
        if revision < 0 {
            return Err(Status::out_of_range(
                "etcdserver: mvcc: required revision has been compacted",
            ));
        }
        let fleet = self.replica.state.fleet();
        let current = fleet.revision();
        let at = if revision == 0 {
            current
        } else {
            revision as u64
        };
        let kv = fleet.kv();
        let hash = kv.hash_at(at, current).map_err(|e| kv_status(&e))?;
        let compacted = kv.compacted();
        drop(fleet);
        Ok(Response::new(epb::HashKvResponse {
            header: Some(self.header_at(current)),
            hash,
            compact_revision: compacted as i64,
            hash_revision: at as i64,
        }))
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<epb::SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        request: Request<epb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.replica.check_cluster(request.metadata())?;
        self.require_admin(&request)?;
        // Every write acknowledged before the call is in it, as in an archive.
        self.replica.linearize().await?;
        let (fleet, applied, _) = self.replica.state.copy_applied();
        let header = self.header_at(fleet.revision());
        let replica = self.replica.clone();
        let created_at_ms = ballast_protocol::clock::unix_ms();
        let file = tokio::task::spawn_blocking(move || {
            let input = crate::leader::dr::archive_input(&replica, &fleet, applied);
            let kvs: Vec<(u64, Vec<u8>)> = fleet
                .kv()
                .current()
                .map(|k| (k.mod_revision, prost::Message::encode_to_vec(&kv(k))))
                .collect();
            ballast_dr::snapshot_file::write(&input, created_at_ms, kvs)
        })
        .await
        .map_err(|e| Status::internal(format!("building the snapshot stopped: {e}")))?
        .map_err(|e| Status::internal(e.to_string()))?;
        // etcd's stream: the file in chunks counting down what remains, then its SHA-256.
        let total = file.len();
        let mut messages: Vec<Result<epb::SnapshotResponse, Status>> = file
            .chunks(SNAPSHOT_CHUNK)
            .scan(0usize, |sent, chunk| {
                *sent += chunk.len();
                Some(Ok(epb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: (total - *sent) as u64,
                    blob: chunk.to_vec(),
                    version: String::new(),
                }))
            })
            .collect();
        messages.push(Ok(epb::SnapshotResponse {
            header: Some(header),
            remaining_bytes: 0,
            blob: ballast_dr::snapshot_file::trailer(&file),
            version: String::new(),
        }));
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn move_leader(
        &self,
        request: Request<epb::MoveLeaderRequest>,
    ) -> Result<Response<epb::MoveLeaderResponse>, Status> {
        on_leader_call!(
            self,
            request,
            MaintenanceClient::move_leader,
            |body, caller| async move {
                self.check_admin(caller)?;
                crate::leader::transfer::transfer_leadership(&self.replica, body.target_id)
                    .await
                    .map_err(|e| match e {
                        ReplicaError::NotFound(_) | ReplicaError::Precondition(_) => {
                            Status::failed_precondition("etcdserver: bad leader transferee")
                        }
                        other => Status::from(other),
                    })?;
                Ok(epb::MoveLeaderResponse {
                    header: Some(self.header_at(self.replica.state.revision())),
                })
            }
        )
    }
}
