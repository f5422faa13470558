//! The shard worker's gRPC API — its status, the cluster demand API and allocations — and the
//! one place where the worker's errors become gRPC statuses.

use std::sync::Arc;

use ballast_protocol::pb;
use ballast_protocol::pb::shard_worker_server::ShardWorker;
use tonic::{Request, Response, Status};

use crate::cache::{Assignments, CacheError};
use crate::demand::{self, DemandError};
use crate::worker::Worker;

/// A refused demand: malformed (`INVALID_ARGUMENT`), or for a cluster not bound here or
/// impossible to place (`FAILED_PRECONDITION`).
fn demand_status(error: DemandError) -> Status {
    match error {
        DemandError::Invalid(_) => Status::invalid_argument(error.to_string()),
        DemandError::NotBound { .. } | DemandError::Impossible { .. } => {
            Status::failed_precondition(error.to_string())
        }
    }
}

/// The cache could not make a change durable: the worker's fault, not the caller's.
fn cache_status(error: CacheError) -> Status {
    Status::internal(error.to_string())
}

/// The part of the status that the held assignments make: the revision and restore epoch they
/// reflect, what is held and the grant of each domain and slice (ADR 0016).
/// The refused grants, as the status shows them.
fn fenced_status(fences: &crate::worker::Fences) -> std::collections::HashMap<String, String> {
    let domains = fences
        .domains
        .iter()
        .map(|(domain, fence)| (format!("domain/{domain}"), fence.why.clone()));
    let clusters = fences
        .clusters
        .iter()
        .map(|(cluster, fence)| (format!("cluster/{cluster}"), fence.why.clone()));
    let quotas = fences.quotas.iter().map(|((provider, region), fence)| {
        (format!("quota/{provider}/{region}"), fence.why.clone())
    });
    domains.chain(clusters).chain(quotas).collect()
}

fn held_status(a: Assignments) -> pb::ShardStatusResponse {
    let domain_grants = a
        .domains
        .iter()
        .map(|d| (d.clone(), a.domain_grants.get(d).copied().unwrap_or(0)))
        .collect();
    let cluster_grants = a
        .clusters
        .iter()
        .map(|c| (c.clone(), a.cluster_grants.get(c).copied().unwrap_or(0)))
        .collect();
    let slices = a
        .slices
        .iter()
        .map(|(slice, &amount)| pb::QuotaSliceOf {
            provider: slice.0.clone(),
            region: slice.1.clone(),
            amount,
            granted: a.slice_grants.get(slice).copied().unwrap_or(0),
        })
        .collect();
    pb::ShardStatusResponse {
        revision: a.revision,
        term: a.term,
        restore_epoch: a.restore_epoch,
        domains: a.domains.into_iter().collect(),
        domain_grants,
        clusters: a.clusters.into_iter().collect(),
        cluster_grants,
        slices,
        status: a.status,
        ..Default::default()
    }
}

/// The shard worker's API: status, the cluster demand API and allocations.
pub(crate) struct StatusService {
    pub(crate) worker: Arc<Worker>,
}

#[tonic::async_trait]
impl ShardWorker for StatusService {
    async fn status(
        &self,
        _request: Request<pb::ShardStatusRequest>,
    ) -> Result<Response<pb::ShardStatusResponse>, Status> {
        let w = &self.worker;
        let a = w.assignments();
        let cache_age_ms = w.since_contact().map_or(u64::MAX, |t| t.as_millis() as u64);
        // Its own statement: a lock guard made inside the literal below would live until the
        // literal ends, across calls that take the engine's lock (the opposite order).
        let placements_pending = w.placements().pending() as u64;
        let (contact_lapses, contact_lapsing) = w.contact_lapses();
        let quota_use = {
            let state = w.state();
            a.slices
                .keys()
                .map(|key| {
                    let (held, in_flight, slice) = state.engine.quota_use(key);
                    pb::QuotaUse {
                        provider: key.0.clone(),
                        region: key.1.clone(),
                        slice,
                        held,
                        in_flight,
                    }
                })
                .collect()
        };
        Ok(Response::new(pb::ShardStatusResponse {
            shard_id: w.id().to_string(),
            az: w.az().to_string(),
            epoch: w.epoch(),
            coordinator_reachable: w.reachable(),
            cache_age_ms,
            fenced: fenced_status(&w.fences()),
            placements_pending,
            quota_use,
            takeovers: w.takeovers(),
            provider_backoff_ms: w.provider_backoff().remaining().as_millis() as u64,
            provider_failures: w.provider_failures(),
            contact_lapses,
            contact_lapsing,
            machines_by_state: w.machines_by_state().into_iter().collect(),
            shortfall: w.shortfall(),
            cycles: w.cycles(),
            ..held_status(a)
        }))
    }

    async fn submit_demand(
        &self,
        request: Request<pb::SubmitDemandRequest>,
    ) -> Result<Response<pb::SubmitDemandResponse>, Status> {
        let w = &self.worker;
        let request = request.into_inner();
        let needs = demand::validate(w.id(), &request, &w.assignments()).map_err(demand_status)?;
        // Journaled under the demand lock; the fsync is shared with the submissions around it
        // and waited for outside every lock, so neither the engine (500 clusters' demand a
        // step held it ~140 ms at 500K machines when each took its own fsync) nor a runtime
        // thread waits on the disk. The engine takes a cluster's demand once it is durable
        // and newer than what it took ([`crate::worker::DemandOrder`]), so the last stored is
        // the last set.
        let batch = {
            let mut order = w.demand_lock();
            let batch = w
                .cache()
                .write_demand(&request.cluster, &needs)
                .map_err(cache_status)?;
            order.journaled(&request.cluster);
            batch
        };
        let rows = needs.len() as u32;
        // On its own task: a caller that gives up (drops this call) must not leave the engine
        // without the demand it journaled.
        let worker = self.worker.clone();
        tokio::spawn(async move {
            let durable = worker.cache().demand_durable_through(batch).await;
            let mut order = worker.demand_lock();
            if order.resolved(&request.cluster, batch, durable.is_ok()) {
                worker.state().engine.set_demand(&request.cluster, needs);
            }
            durable
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(cache_status)?;
        Ok(Response::new(pb::SubmitDemandResponse { rows }))
    }

    async fn allocations(
        &self,
        request: Request<pb::AllocationsRequest>,
    ) -> Result<Response<pb::AllocationsResponse>, Status> {
        let w = &self.worker;
        let cluster = request.into_inner().cluster;
        let prefix = format!("{cluster}/");
        let wanted = |need: &str| cluster.is_empty() || need.starts_with(&prefix);
        let state = w.state();
        let machines = state
            .engine
            .allocations(&cluster)
            .into_iter()
            .map(|m| pb::MachineInfo {
                id: m.id,
                domain: m.domain,
                need: m.assigned_to.unwrap_or_default(),
                resources: Some(pb::ResourceSpec {
                    cpu_millis: m.resources.cpu_millis as i64,
                    memory_mib: m.resources.memory_mib as i64,
                    gpus: m.resources.gpus as i64,
                }),
            })
            .collect();
        let shortfalls = w
            .shortfalls()
            .iter()
            .filter(|s| wanted(&s.need))
            .map(|s| pb::ShortfallInfo {
                need: s.need.clone(),
                missing: s.missing,
            })
            .collect();
        Ok(Response::new(pb::AllocationsResponse {
            machines,
            shortfalls,
            in_flight: state.in_flight.len() as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_shows_every_grant() {
        let mut a = Assignments::default();
        assert!(a.apply(&pb::AssignmentUpdate {
            revision: 9,
            term: 2,
            full: true,
            restore_epoch: 3,
            domains_added: vec!["z=1".into(), "z=2".into()],
            domain_grants: [("z=1".to_string(), 7)].into(),
            clusters_added: vec!["c1".into(), "c2".into()],
            cluster_grants: [("c2".to_string(), 6)].into(),
            slices: vec![pb::QuotaSliceOf {
                provider: "aws".into(),
                region: "r1".into(),
                amount: 4,
                granted: 8,
            }],
            status: "active".into(),
            ..Default::default()
        }));
        let status = held_status(a);
        assert_eq!(
            (status.revision, status.term, status.restore_epoch),
            (9, 2, 3)
        );
        assert_eq!(status.domains, ["z=1", "z=2"]);
        // z=2 came without a grant (an older coordinator): it shows as 0, not missing.
        assert_eq!(
            status.domain_grants,
            [("z=1".to_string(), 7), ("z=2".to_string(), 0)].into()
        );
        assert_eq!(status.clusters, ["c1", "c2"]);
        assert_eq!(
            status.cluster_grants,
            [("c1".to_string(), 0), ("c2".to_string(), 6)].into()
        );
        assert_eq!(
            status.slices,
            [pb::QuotaSliceOf {
                provider: "aws".into(),
                region: "r1".into(),
                amount: 4,
                granted: 8,
            }]
        );
        assert_eq!(status.status, "active");
    }
}
