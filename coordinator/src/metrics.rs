//! The metrics every layer records (commits, applies, snapshots, proposals, rebalancing, watch
//! streams, gRPC calls): plain recorder functions on the process-wide `metrics` registry, with
//! no knowledge of the replica, so the log and service layers can record without depending on
//! what the HTTP port serves (`observe`).

use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{counter, gauge, histogram};

/// Records how long a proposal took from submission to applied (commit latency).
pub fn proposal_done(started: Instant, ok: bool) {
    histogram!("ballast_propose_duration_seconds").record(started.elapsed().as_secs_f64());
    if !ok {
        counter!("ballast_propose_failures_total").increment(1);
    }
}

/// A linearizable read was made: `how` is `lease` or `round` (a leader's own read or a
/// follower's, which asks the leader), or `lease_read_index` / `round_read_index` (a read
/// index handed to a follower).
pub fn linearizable_read(how: &'static str) {
    counter!("ballast_linearizable_reads_total", "how" => how).increment(1);
}

/// Notes one batch of writes a follower forwarded to its leader.
pub fn forwarded_batch(writes: usize) {
    counter!("ballast_forwarded_writes_total").increment(writes as u64);
    counter!("ballast_forwarded_batches_total").increment(1);
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

/// Records how long copying the state for a snapshot or archive held its read lock: writes
/// wait that long to apply.
pub fn state_copied(locked: Instant) {
    histogram!("ballast_snapshot_lock_seconds").record(locked.elapsed().as_secs_f64());
}

/// Counts a rebalancing round that ended with work still on a shard it evacuated.
pub fn evacuation_carried_over() {
    counter!("ballast_evacuation_carried_over_total").increment(1);
}

/// Counts one rebalancing round: the leader judged every shard's lease.
pub fn rebalance_round() {
    counter!("ballast_rebalance_rounds_total").increment(1);
}

/// Records how late a tick of the leader's clock sampler came (its own scheduling lag).
pub fn leader_lag(lag_ms: u64) {
    histogram!("ballast_leader_tick_lag_seconds").record(lag_ms as f64 / 1000.0);
}

/// Records the evacuation mode (`normal`, `slowed`, `stopped`); `changed` counts a change.
pub fn evacuation_mode(mode: &str, changed: bool) {
    for each in ["normal", "slowed", "stopped"] {
        gauge!("ballast_evacuation_mode", "mode" => each).set(f64::from(u8::from(each == mode)));
    }
    if changed {
        counter!("ballast_evacuation_mode_changes_total", "mode" => mode.to_string()).increment(1);
    }
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

/// Counts a round that moved slice capacity to where demand found slices full:
/// `ballast_slice_placements_total` (quota tables changed) and
/// `ballast_slice_placed_machines_total` (machines' worth of slice moved).
pub fn slices_placed(quotas: usize, machines: u64) {
    counter!("ballast_slice_placements_total").increment(quotas as u64);
    counter!("ballast_slice_placed_machines_total").increment(machines);
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
