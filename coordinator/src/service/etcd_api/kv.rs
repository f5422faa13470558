//! `etcdserverpb.KV`.

use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::kv_client::KvClient;
use ballast_protocol::etcdserverpb::kv_server::Kv;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::EtcdApi;
use super::convert::{delete_op, kv, put_op, range_op, range_response, response_op, txn_op};
use super::on_leader_call;
use crate::auth::Caller;
use crate::error::kv_status;
use crate::kv::{KvCommand, KvReply};

impl EtcdApi {
    /// A write call's metadata, caller (its credentials checked here) and message.
    fn write_parts<T>(
        &self,
        request: Request<T>,
    ) -> Result<(MetadataMap, Option<Caller>, T), Status> {
        let auth = self.request_auth(&request)?;
        let (metadata, _, body) = request.into_parts();
        Ok((metadata, auth.caller, body))
    }
}

#[tonic::async_trait]
impl Kv for EtcdApi {
    async fn range(
        &self,
        request: Request<epb::RangeRequest>,
    ) -> Result<Response<epb::RangeResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        let caller = self.request_auth(&request)?.caller;
        let request = request.into_inner();
        let op = range_op(&request)?;
        if !request.serializable {
            self.replica.linearize().await?;
        }
        let fleet = self.replica.state.fleet();
        fleet
            .auth()
            .check_read(caller.as_ref(), &op.range.key, &op.range.end)
            .map_err(|e| crate::error::auth_status(&e))?;
        let current = fleet.revision();
        let reply = fleet.kv().range(&op, current).map_err(|e| kv_status(&e))?;
        drop(fleet);
        Ok(Response::new(range_response(
            &reply,
            self.header_at(current),
        )))
    }

    async fn put(
        &self,
        request: Request<epb::PutRequest>,
    ) -> Result<Response<epb::PutResponse>, Status> {
        let (metadata, caller, body) = self.write_parts(request)?;
        let (reply, revision) = self
            .write(&metadata, KvCommand::Put(put_op(&body)), caller.as_ref())
            .await?;
        let KvReply::Put { prev } = reply else {
            return Err(Status::internal("put answered with another reply"));
        };
        Ok(Response::new(epb::PutResponse {
            header: Some(self.header_at(revision)),
            prev_kv: prev.as_ref().map(kv),
        }))
    }

    async fn delete_range(
        &self,
        request: Request<epb::DeleteRangeRequest>,
    ) -> Result<Response<epb::DeleteRangeResponse>, Status> {
        let (metadata, caller, body) = self.write_parts(request)?;
        let (reply, revision) = self
            .write(
                &metadata,
                KvCommand::Delete(delete_op(&body)),
                caller.as_ref(),
            )
            .await?;
        let KvReply::Delete { deleted, prev } = reply else {
            return Err(Status::internal("delete answered with another reply"));
        };
        Ok(Response::new(epb::DeleteRangeResponse {
            header: Some(self.header_at(revision)),
            deleted: deleted as i64,
            prev_kvs: prev.iter().map(kv).collect(),
        }))
    }

    async fn txn(
        &self,
        request: Request<epb::TxnRequest>,
    ) -> Result<Response<epb::TxnResponse>, Status> {
        let txn = txn_op(request.get_ref())?;
        let (metadata, caller, _) = self.write_parts(request)?;
        let (reply, revision) = self
            .write(&metadata, KvCommand::Txn(txn), caller.as_ref())
            .await?;
        let header = self.header_at(revision);
        let KvReply::Txn {
            succeeded,
            responses,
        } = reply
        else {
            return Err(Status::internal("txn answered with another reply"));
        };
        Ok(Response::new(epb::TxnResponse {
            header: Some(header),
            succeeded,
            responses: responses.iter().map(|r| response_op(r, &header)).collect(),
        }))
    }

    async fn compact(
        &self,
        request: Request<epb::CompactionRequest>,
    ) -> Result<Response<epb::CompactionResponse>, Status> {
        if request.get_ref().revision <= 0 {
            return Err(Status::invalid_argument(
                "etcdserver: compaction revision must be positive",
            ));
        }
        on_leader_call!(
            self,
            request,
            KvClient::compact,
            |body, caller| async move {
                let (_, current) = self
                    .propose(
                        KvCommand::Compact {
                            revision: body.revision as u64,
                        },
                        caller,
                    )
                    .await?;
                Ok(epb::CompactionResponse {
                    header: Some(self.header_at(current)),
                })
            }
        )
    }
}
