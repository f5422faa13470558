//! Prometheus metrics: the process-wide recorder, gauges refreshed from the replica at scrape
//! time, and a tower layer timing every gRPC call by method.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};

use crate::replica::Replica;
use crate::service::cluster::status_report;
use crate::service::convert::now_ms;

/// Updates the gauges that describe current state, just before a scrape renders them.
pub fn refresh(replica: &Replica) {
    let status = status_report(replica);
    let header = status.header.clone().unwrap_or_default();
    for state in ["leader", "follower", "candidate", "learner", "shutdown"] {
        gauge!("ballast_raft_state", "state" => state)
            .set(f64::from(u8::from(status.state == state)));
    }
    gauge!("ballast_raft_term").set(header.raft_term as f64);
    gauge!("ballast_raft_applied_index").set(status.applied_index as f64);
    gauge!("ballast_raft_last_log_index").set(status.last_log_index as f64);
    gauge!("ballast_raft_snapshot_index").set(status.snapshot_index as f64);
    gauge!("ballast_raft_log_entries")
        .set(status.last_log_index.saturating_sub(status.purged_index) as f64);
    gauge!("ballast_raft_members").set(status.members.len() as f64);
    if header.leader_id == replica.id {
        // The leader's own view, which tells a peer at index 0 from one it knows nothing of.
        let view = replica.view();
        for member in view.members.iter().filter(|m| m.id != replica.id) {
            let peer = member.id.to_string();
            if let Some(matched) = member.matched_index {
                gauge!("ballast_raft_peer_lag_entries", "peer" => peer.clone())
                    .set(view.last_log_index.saturating_sub(matched) as f64);
            }
            if let Some(age) = replica.peer_contacts.age(member.id) {
                gauge!("ballast_raft_peer_last_contact_seconds", "peer" => peer)
                    .set(age.as_secs_f64());
            }
        }
    }
    gauge!("ballast_fleet_revision").set(header.revision as f64);
    gauge!("ballast_restore_epoch").set(header.restore_epoch as f64);
    gauge!("ballast_placement_healthy").set(f64::from(u8::from(
        status.placement.as_ref().is_some_and(|p| p.healthy),
    )));
    gauge!("ballast_membership_changing").set(f64::from(u8::from(status.membership_changing)));
    gauge!("ballast_domains").set(status.domain_count as f64);
    gauge!("ballast_bindings").set(status.binding_count as f64);
    gauge!("ballast_quotas").set(status.quota_count as f64);
    gauge!("ballast_providers").set(status.provider_count as f64);
    let shards = {
        let fleet = replica.state.fleet();
        crate::service::fleet::shard_messages(&fleet, replica.shard_leases())
    };
    for wanted in ["active", "draining"] {
        let count = shards.iter().filter(|s| s.status == wanted).count();
        gauge!("ballast_shards", "status" => wanted).set(count as f64);
    }
    let now = now_ms();
    let expired = shards
        .iter()
        .filter(|s| s.lease_expires_at_ms < now)
        .count();
    gauge!("ballast_shards_lease_expired").set(expired as f64);
    for shard in &shards {
        gauge!("ballast_shard_domains", "shard" => shard.id.clone()).set(shard.domain_count as f64);
    }
    if let Some(dr) = &status.dr {
        gauge!("ballast_dr_exports").set(dr.exports_total as f64);
        gauge!("ballast_dr_export_failures").set(dr.failures_total as f64);
        gauge!("ballast_dr_last_export_duration_seconds").set(dr.last_duration_ms as f64 / 1000.0);
        gauge!("ballast_dr_last_export_bytes").set(dr.last_size_bytes as f64);
        if dr.last_success_unix_ms > 0 {
            gauge!("ballast_dr_last_export_age_seconds")
                .set(now.saturating_sub(dr.last_success_unix_ms) as f64 / 1000.0);
        }
    }
}

/// Counts leadership changes as this replica sees them.
pub async fn leader_changes(
    replica: std::sync::Arc<Replica>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut last = replica.leader().map(|(id, _)| id);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let now = replica.leader().map(|(id, _)| id);
        if now != last {
            if now.is_some() {
                counter!("ballast_raft_leader_changes_total").increment(1);
            }
            last = now;
        }
    }
}

/// Records how long a proposal took from submission to applied (commit latency).
pub fn proposal_done(started: Instant, ok: bool) {
    histogram!("ballast_propose_duration_seconds").record(started.elapsed().as_secs_f64());
    if !ok {
        counter!("ballast_propose_failures_total").increment(1);
    }
}

/// Notes the commit index openraft reports to the log store.
pub fn committed(index: u64) {
    gauge!("ballast_raft_commit_index").set(index as f64);
}

/// Records one state-machine apply call (a run of committed entries).
pub fn applied(started: Instant) {
    histogram!("ballast_apply_duration_seconds").record(started.elapsed().as_secs_f64());
}

/// Records how long building (and persisting) a snapshot took.
pub fn snapshot_built(started: Instant) {
    histogram!("ballast_snapshot_duration_seconds").record(started.elapsed().as_secs_f64());
}

/// Counts one rebalancing round: the leader judged every shard's lease.
pub fn rebalance_round() {
    counter!("ballast_rebalance_rounds_total").increment(1);
}

/// Counts what one applied rebalancing round moved.
pub fn rebalanced(domains: usize, clusters: usize, quotas: usize) {
    for (kind, count) in [
        ("domain", domains),
        ("cluster", clusters),
        ("quota", quotas),
    ] {
        counter!("ballast_rebalance_moves_total", "kind" => kind).increment(count as u64);
    }
}

/// Counts an open watch stream in `ballast_watch_streams{kind}` for as long as it lives.
pub struct WatchStream(&'static str);

impl WatchStream {
    /// A stream of `kind` (`assignments` or `etcd`) opened.
    pub fn open(kind: &'static str) -> Self {
        gauge!("ballast_watch_streams", "kind" => kind).increment(1.0);
        Self(kind)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        gauge!("ballast_watch_streams", "kind" => self.0).decrement(1.0);
    }
}

/// Tower layer recording `ballast_rpc_duration_seconds{method}` and
/// `ballast_rpc_errors_total{method,code}` for every gRPC call.
#[derive(Clone, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/').to_string();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            // Streams are timed to their first answer; errors of unary calls arrive as a
            // trailers-only response whose grpc-status is a header.
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_string(),
                Err(_) => "transport".to_string(),
            };
            histogram!("ballast_rpc_duration_seconds", "method" => method.clone())
                .record(started.elapsed().as_secs_f64());
            if code != "0" {
                counter!("ballast_rpc_errors_total", "method" => method, "code" => code)
                    .increment(1);
            }
            response
        })
    }
}
