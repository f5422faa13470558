//! The peer-facing Raft service: decodes openraft messages and hands them to the local node.

use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::pb::raft_server::Raft as RaftApi;
use openraft::raft::InstallSnapshotRequest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use crate::raft::types::TypeConfig;
use crate::replica::Replica;

/// Serves Raft traffic for one replica.
pub struct RaftService {
    replica: Arc<Replica>,
}

impl RaftService {
    /// Wraps a replica.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    fn open<T: DeserializeOwned>(&self, message: &pb::RaftMessage) -> Result<T, Status> {
        self.replica.check_peer_cluster(&message.cluster_id)?;
        crate::raft::wire::decode(&message.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
    }

    fn reply<T: Serialize>(&self, value: &T) -> Result<Response<pb::RaftMessage>, Status> {
        let payload = crate::raft::wire::encode(value)
            .map_err(|e| Status::internal(format!("encoding raft reply: {e}")))?;
        Ok(Response::new(pb::RaftMessage {
            cluster_id: self.replica.cluster_id.clone(),
            payload,
        }))
    }
}

#[tonic::async_trait]
impl RaftApi for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc = self.open(request.get_ref())?;
        // Finish the append even if the leader stops waiting (openraft gives an append one
        // heartbeat interval): its retry then finds the entries stored and answers at once,
        // instead of redoing a slow write (a large value, a slow disk) that never fits.
        let raft = self.replica.raft()?.clone();
        let result = tokio::spawn(async move { raft.append_entries(rpc).await })
            .await
            .map_err(|e| Status::internal(format!("append task failed: {e}")))?;
        self.reply(&result)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc = self.open(request.get_ref())?;
        let result = self.replica.raft()?.vote(rpc).await;
        self.reply(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::SnapshotChunk>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let chunk = request.into_inner();
        self.replica.check_peer_cluster(&chunk.cluster_id)?;
        let decode_err = |what: &str, e: postcard::Error| {
            Status::invalid_argument(format!("undecodable snapshot {what}: {e}"))
        };
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: crate::raft::wire::decode(&chunk.vote).map_err(|e| decode_err("vote", e))?,
            meta: crate::raft::wire::decode(&chunk.meta).map_err(|e| decode_err("meta", e))?,
            offset: chunk.offset,
            data: chunk.data,
            done: chunk.done,
        };
        let result = self.replica.raft()?.install_snapshot(rpc).await;
        self.reply(&result)
    }

    async fn pause_election(
        &self,
        request: Request<pb::ElectionControl>,
    ) -> Result<Response<pb::Empty>, Status> {
        let control = request.into_inner();
        self.replica.check_peer_cluster(&control.cluster_id)?;
        let pause = Duration::from_millis(control.millis.min(10_000));
        let raft = self.replica.raft()?.clone();
        raft.runtime_config().elect(false);
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            raft.runtime_config().elect(true);
        });
        Ok(Response::new(pb::Empty {}))
    }

    async fn campaign(
        &self,
        request: Request<pb::ElectionControl>,
    ) -> Result<Response<pb::Empty>, Status> {
        let control = request.into_inner();
        self.replica.check_peer_cluster(&control.cluster_id)?;
        let wait = Duration::from_millis(control.millis.min(10_000));
        let raft = self.replica.raft()?.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "campaign for leadership transfer failed");
            }
        });
        Ok(Response::new(pb::Empty {}))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexReply>, Status> {
        self.replica
            .check_peer_cluster(&request.get_ref().cluster_id)?;
        let (read_log_id, _) = self.replica.raft()?.get_read_log_id().await.map_err(|e| {
            Status::unavailable(format!(
                "replica {} cannot serve a read index: {e}",
                self.replica.id
            ))
        })?;
        Ok(Response::new(pb::ReadIndexReply {
            index: read_log_id.map(|l| l.index).unwrap_or(0),
        }))
    }
}
