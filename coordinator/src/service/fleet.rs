//! The `Fleet` service: fleet writes (forwarded to the leader) and reads (linearizable by
//! default, local when `stale`).

use std::sync::Arc;

use ballast_protocol::pb;
use ballast_protocol::pb::fleet_client::FleetClient;
use ballast_protocol::pb::fleet_server::Fleet;
use tonic::{Request, Response, Status};

use super::convert::to_fleet;
use crate::error::{fleet_status, invalid};
use crate::fleet::FleetRequest;
use crate::fleet::FleetState;
use crate::replica::{Replica, Route};
use crate::status::{shard_message, shard_messages};

/// Longest client request id accepted (ids are remembered for deduplication).
pub const MAX_REQUEST_ID_LEN: usize = 128;
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;

/// Serves the `Fleet` API of one replica.
pub struct FleetService {
    replica: Arc<Replica>,
}

impl FleetService {
    /// Wraps a replica.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    /// Runs `read` on the fleet state under one lock and pairs its result with a header whose
    /// revision is the one of the state read.
    fn read<T>(
        &self,
        read: impl FnOnce(&FleetState) -> Result<T, Status>,
    ) -> Result<(pb::ResponseHeader, T), Status> {
        let mut header = self.replica.header();
        let fleet = self.replica.state.fleet();
        header.revision = fleet.revision();
        let value = read(&fleet)?;
        Ok((header, value))
    }

    /// Checks the cluster id and, unless `stale`, makes the read linearizable.
    async fn before_read<T>(
        &self,
        request: &Request<T>,
        options: Option<&pb::ReadOptions>,
    ) -> Result<(), Status> {
        self.replica.check_cluster(request.metadata())?;
        if !options.is_some_and(|o| o.stale) {
            self.replica.linearize().await?;
        }
        Ok(())
    }
}

fn page_size(limit: u32) -> Result<usize, Status> {
    match limit as usize {
        0 => Ok(DEFAULT_PAGE),
        n if n <= MAX_PAGE => Ok(n),
        n => Err(invalid(
            "limit",
            format!("{n} is above the maximum page size {MAX_PAGE}"),
        )),
    }
}

/// One page of `(key, value)` pairs from an ordered iterator, resuming after `after`.
fn page<'a, K: AsRef<str>>(
    items: impl Iterator<Item = (K, &'a str)>,
    after: &str,
    limit: usize,
) -> (Vec<(K, &'a str)>, String) {
    let mut out: Vec<_> = items
        .skip_while(|(k, _)| !after.is_empty() && k.as_ref() <= after)
        .take(limit + 1)
        .collect();
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last()
            .map(|(k, _)| k.as_ref().to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    (out, next)
}

#[tonic::async_trait]
impl Fleet for FleetService {
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let replica = &self.replica;
        replica.check_cluster(request.metadata())?;
        if let Route::Forward(address) = replica.route(request.metadata())? {
            let mut client = FleetClient::new(replica.channel_to(&address)?);
            let answer = client
                .write(replica.forwarded(request.into_inner()))
                .await?;
            return Ok(replica.respond(answer.into_inner()));
        }
        let message = request.into_inner();
        if message.request_id.len() > MAX_REQUEST_ID_LEN {
            return Err(invalid(
                "request_id",
                format!(
                    "{} bytes is longer than the limit of {MAX_REQUEST_ID_LEN}",
                    message.request_id.len()
                ),
            ));
        }
        let command = to_fleet(message.command, replica.timing.default_shard_lease)?;
        FleetState::validate_command(&command).map_err(|e| fleet_status(&e))?;
        let applied = replica
            .propose(FleetRequest {
                request_id: message.request_id,
                command,
            })
            .await?;
        let mut header = replica.header();
        header.revision = applied.revision;
        Ok(replica.respond(pb::WriteResponse {
            header: Some(header),
            changed: applied.changed,
        }))
    }

    async fn list_shards(
        &self,
        request: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsResponse>, Status> {
        self.before_read(&request, request.get_ref().options.as_ref())
            .await?;
        let (header, shards) =
            self.read(|fleet| Ok(shard_messages(fleet, self.replica.shard_leases())))?;
        Ok(self.replica.respond(pb::ListShardsResponse {
            header: Some(header),
            shards,
        }))
    }

    async fn get_shard(
        &self,
        request: Request<pb::GetShardRequest>,
    ) -> Result<Response<pb::GetShardResponse>, Status> {
        self.before_read(&request, request.get_ref().options.as_ref())
            .await?;
        let id = &request.get_ref().id;
        let (header, (shard, domains, clusters, slices)) = self.read(|fleet| {
            let Some(record) = fleet.shard(id) else {
                return Err(Status::not_found(format!("shard {id:?} is not registered")));
            };
            let domains: Vec<String> = fleet.domains_of(id).into_iter().map(String::from).collect();
            let clusters: Vec<String> = fleet
                .bindings()
                .filter(|(_, s)| s == id)
                .map(|(c, _)| c.to_string())
                .collect();
            let slices = fleet
                .quotas()
                .filter_map(|q| {
                    q.slices.get(id).map(|amount| pb::QuotaSliceOf {
                        provider: q.provider.clone(),
                        region: q.region.clone(),
                        amount: *amount,
                        granted: q.granted,
                    })
                })
                .collect();
            let shard = shard_message(
                record,
                self.replica.shard_leases(),
                domains.len(),
                clusters.len(),
            );
            Ok((shard, domains, clusters, slices))
        })?;
        Ok(self.replica.respond(pb::GetShardResponse {
            header: Some(header),
            shard: Some(shard),
            domains,
            clusters,
            slices,
        }))
    }

    async fn list_domains(
        &self,
        request: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsResponse>, Status> {
        self.before_read(&request, request.get_ref().options.as_ref())
            .await?;
        let message = request.get_ref();
        let limit = page_size(message.limit)?;
        let (header, (domains, next_after)) = self.read(|fleet| {
            let (items, next_after) = if message.shard.is_empty() {
                page(fleet.domains_after(&message.after), &message.after, limit)
            } else {
                if fleet.shard(&message.shard).is_none() {
                    return Err(Status::not_found(format!(
                        "shard {:?} is not registered",
                        message.shard
                    )));
                }
                let shard = message.shard.as_str();
                page(
                    fleet.domains_of(shard).into_iter().map(|d| (d, shard)),
                    &message.after,
                    limit,
                )
            };
            let domains = items
                .into_iter()
                .map(|(domain, shard)| pb::DomainAssignment {
                    domain: domain.into_owned(),
                    shard: shard.to_string(),
                })
                .collect();
            Ok((domains, next_after))
        })?;
        Ok(self.replica.respond(pb::ListDomainsResponse {
            header: Some(header),
            domains,
            next_after,
        }))
    }

    async fn list_bindings(
        &self,
        request: Request<pb::ListBindingsRequest>,
    ) -> Result<Response<pb::ListBindingsResponse>, Status> {
        self.before_read(&request, request.get_ref().options.as_ref())
            .await?;
        let message = request.get_ref();
        let limit = page_size(message.limit)?;
        let (header, (bindings, next_after)) = self.read(|fleet| {
            let shard = message.shard.as_str();
            let (items, next_after) = page(
                fleet
                    .bindings_after(&message.after)
                    .filter(|(_, s)| shard.is_empty() || *s == shard),
                &message.after,
                limit,
            );
            let bindings = items
                .into_iter()
                .map(|(cluster, shard)| pb::Binding {
                    cluster: cluster.into_owned(),
                    shard: shard.to_string(),
                })
                .collect();
            Ok((bindings, next_after))
        })?;
        Ok(self.replica.respond(pb::ListBindingsResponse {
            header: Some(header),
            bindings,
            next_after,
        }))
    }

    async fn list_quotas(
        &self,
        request: Request<pb::ListQuotasRequest>,
    ) -> Result<Response<pb::ListQuotasResponse>, Status> {
        self.before_read(&request, request.get_ref().options.as_ref())
            .await?;
        let (header, quotas) = self.read(|fleet| {
            Ok(fleet
                .quotas()
                .map(|q| {
                    let used: u64 = q.slices.values().sum();
                    pb::Quota {
                        provider: q.provider.clone(),
                        region: q.region.clone(),
                        total: q.total,
                        slices: q
                            .slices
                            .iter()
                            .map(|(shard, amount)| pb::QuotaSlice {
                                shard: shard.clone(),
                                amount: *amount,
                            })
                            .collect(),
                        unallocated: q.total.saturating_sub(used),
                    }
                })
                .collect())
        })?;
        Ok(self.replica.respond(pb::ListQuotasResponse {
            header: Some(header),
            quotas,
        }))
    }

    async fn list_providers(
        &self,
        request: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        self.before_read(&request, request.get_ref().options.as_ref())
            .await?;
        let (header, providers) = self.read(|fleet| {
            Ok(fleet
                .providers()
                .map(|p| pb::Provider {
                    name: p.name.clone(),
                    endpoint: p.endpoint.clone(),
                    region: p.region.clone(),
                    capacity_types: p.capacity_types.clone(),
                })
                .collect())
        })?;
        Ok(self.replica.respond(pb::ListProvidersResponse {
            header: Some(header),
            providers,
        }))
    }
}
