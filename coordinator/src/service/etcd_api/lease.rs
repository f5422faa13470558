//! `etcdserverpb.Lease`, and the leader's expiry loop.

use std::pin::Pin;
use std::time::Instant;

use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::lease_client::LeaseClient;
use ballast_protocol::etcdserverpb::lease_server::Lease;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::on_leader_call;
use super::{CallAuth, EtcdApi};
use crate::auth::Caller;
use crate::error::kv_status;
use crate::kv::{KvCommand, KvError, KvReply, MAX_LEASE_TTL};

impl EtcdApi {
    /// Renews lease `id` on the leader; the TTL granted, or 0 when the lease does not exist.
    /// Only once a majority confirmed this replica's leadership after the renewal arrived: a
    /// deposed leader must not extend a lease the new leader is about to expire.
    async fn keep_alive_once(
        &self,
        id: i64,
        auth: &CallAuth,
    ) -> Result<epb::LeaseKeepAliveResponse, Status> {
        self.on_leader(
            &tonic::metadata::MetadataMap::new(),
            || async move {
                let asked = Instant::now();
                let term = self.replica.confirm_leadership(asked).await?;
                let ttl = {
                    let fleet = self.replica.state.fleet();
                    fleet.kv().lease(id).map(|l| l.ttl)
                };
                if let Some(ttl) = ttl {
                    self.replica.lease_clock.renew(term, id, ttl, asked);
                }
                Ok(epb::LeaseKeepAliveResponse {
                    header: Some(self.header_at(self.replica.state.revision())),
                    id,
                    ttl: ttl.unwrap_or(0),
                })
            },
            |address| async move {
                let channel = self.replica.channel_to(&address)?;
                // One keep-alive through the leader's stream.
                let outbound = tokio_stream::once(epb::LeaseKeepAliveRequest { id });
                let mut answers = LeaseClient::new(channel)
                    .lease_keep_alive(self.forwarded_as(outbound, auth))
                    .await?
                    .into_inner();
                answers
                    .message()
                    .await?
                    .ok_or_else(|| Status::unavailable("the leader closed the keep-alive stream"))
            },
        )
        .await
    }

    /// Grants on the leader, picking a random id when none was asked for.
    async fn grant_here(
        &self,
        request: &epb::LeaseGrantRequest,
        caller: Option<&Caller>,
    ) -> Result<epb::LeaseGrantResponse, Status> {
        if request.ttl < 0 {
            return Err(kv_status(&KvError::LeaseTtlNegative));
        }
        if request.ttl > MAX_LEASE_TTL {
            return Err(kv_status(&KvError::LeaseTtlTooLarge));
        }
        if request.id < 0 {
            return Err(kv_status(&KvError::BadLeaseId));
        }
        let mut attempts = 0;
        loop {
            let id = if request.id != 0 {
                request.id
            } else {
                (rand::random::<u64>() >> 1).max(1) as i64
            };
            match self
                .propose(
                    KvCommand::LeaseGrant {
                        id,
                        ttl: request.ttl,
                    },
                    caller,
                )
                .await
            {
                Ok((KvReply::LeaseGranted { id, ttl }, revision)) => {
                    // Granted through the log in this term: leadership is confirmed.
                    let term = self.replica.consensus.term();
                    self.replica
                        .lease_clock
                        .renew(term, id, ttl, Instant::now());
                    return Ok(epb::LeaseGrantResponse {
                        header: Some(self.header_at(revision)),
                        id,
                        ttl,
                        error: String::new(),
                    });
                }
                Ok(_) => return Err(Status::internal("lease grant answered with another reply")),
                Err(status)
                    if request.id == 0
                        && attempts < 3
                        && status.message() == KvError::LeaseExists.to_string() =>
                {
                    attempts += 1;
                }
                Err(status) => return Err(status),
            }
        }
    }

    /// Time to live as the leader sees it, once a majority confirmed its leadership.
    async fn time_to_live_here(
        &self,
        request: &epb::LeaseTimeToLiveRequest,
        caller: Option<&Caller>,
    ) -> Result<epb::LeaseTimeToLiveResponse, Status> {
        self.check_user(caller)?;
        let term = self.replica.confirm_leadership(Instant::now()).await?;
        let fleet = self.replica.state.fleet();
        let revision = fleet.revision();
        Ok(match fleet.kv().lease(request.id) {
            Some(lease) => epb::LeaseTimeToLiveResponse {
                header: Some(self.header_at(revision)),
                id: request.id,
                ttl: self
                    .replica
                    .lease_clock
                    .remaining(term, request.id)
                    .unwrap_or(lease.ttl),
                granted_ttl: lease.ttl,
                keys: if request.keys {
                    lease.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            },
            None => epb::LeaseTimeToLiveResponse {
                header: Some(self.header_at(revision)),
                id: request.id,
                ttl: -1,
                ..Default::default()
            },
        })
    }
}

impl EtcdApi {
    /// Answers each keep-alive of `inbound` (from the caller of `auth`) in turn, until
    /// `inbound` ends, an answer fails or its reader goes away.
    pub(crate) fn keep_alive_stream(
        &self,
        auth: CallAuth,
        mut inbound: impl Stream<Item = Result<epb::LeaseKeepAliveRequest, Status>>
        + Send
        + Unpin
        + 'static,
    ) -> KeepAliveStream {
        let (tx, rx) = mpsc::channel(16);
        let api = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = inbound.next().await {
                let answer = api.keep_alive_once(message.id, &auth).await;
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

pub(crate) type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<epb::LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for EtcdApi {
    async fn lease_grant(
        &self,
        request: Request<epb::LeaseGrantRequest>,
    ) -> Result<Response<epb::LeaseGrantResponse>, Status> {
        on_leader_call!(self, request, LeaseClient::lease_grant, |body, caller| self
            .grant_here(body, caller))
    }

    async fn lease_revoke(
        &self,
        request: Request<epb::LeaseRevokeRequest>,
    ) -> Result<Response<epb::LeaseRevokeResponse>, Status> {
        on_leader_call!(
            self,
            request,
            LeaseClient::lease_revoke,
            |body, caller| async move {
                let (_, revision) = self
                    .propose(KvCommand::LeaseRevoke { id: body.id }, caller)
                    .await?;
                Ok(epb::LeaseRevokeResponse {
                    header: Some(self.header_at(revision)),
                })
            }
        )
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<epb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.replica.check_cluster(request.metadata())?;
        let auth = self.request_auth(&request)?;
        self.check_user(auth.caller.as_ref())?;
        Ok(Response::new(
            self.keep_alive_stream(auth, request.into_inner()),
        ))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<epb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<epb::LeaseTimeToLiveResponse>, Status> {
        on_leader_call!(
            self,
            request,
            LeaseClient::lease_time_to_live,
            |body, caller| self.time_to_live_here(body, caller)
        )
    }

    async fn lease_leases(
        &self,
        request: Request<epb::LeaseLeasesRequest>,
    ) -> Result<Response<epb::LeaseLeasesResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        let auth = self.request_auth(&request)?;
        self.replica.linearize().await?;
        self.check_user(auth.caller.as_ref())?;
        let fleet = self.replica.state.fleet();
        Ok(Response::new(epb::LeaseLeasesResponse {
            header: Some(self.header_at(fleet.revision())),
            leases: fleet
                .kv()
                .lease_ids()
                .into_iter()
                .map(|id| epb::LeaseStatus { id })
                .collect(),
        }))
    }
}
