//! The shard worker's HTTP port (`--http-listen`): Prometheus metrics, `/healthz`, and
//! `/readyz`, which turns ready once the cache is loaded into the engine — with or without a
//! reachable coordinator, since the worker serves from its cache (static stability).

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use metrics::{counter, gauge, histogram};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::worker::Worker;

/// The worker, once its cache is loaded.
pub type Loaded = Arc<OnceLock<Arc<Worker>>>;

/// Serves the HTTP port until `stopped` turns true. Bound before the cache opens, so probes
/// answer "loading" instead of refusing connections during a long start.
pub fn serve(
    listener: TcpListener,
    loaded: Loaded,
    tls: Option<ballast_telemetry::HttpTls>,
    stopped: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(prometheus))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(loaded);
    ballast_telemetry::serve(listener, app, tls, stopped);
}

async fn readyz(State(loaded): State<Loaded>) -> (StatusCode, String) {
    match loaded.get() {
        Some(worker) => (
            StatusCode::OK,
            format!(
                "ok: shard {} serves from its cache (revision {}, coordinator {})\n",
                worker.id(),
                worker.assignments().revision,
                if worker.reachable() {
                    "reachable"
                } else {
                    "unreachable"
                }
            ),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: loading the cache\n".into(),
        ),
    }
}

async fn prometheus(State(loaded): State<Loaded>) -> Response {
    if let Some(worker) = loaded.get() {
        refresh(worker);
    }
    ballast_telemetry::metrics_response()
}

fn refresh(worker: &Worker) {
    let assignments = worker.assignments();
    gauge!("ballast_shard_coordinator_reachable").set(f64::from(u8::from(worker.reachable())));
    gauge!("ballast_shard_contact_lapses").set(worker.contact_lapses().0 as f64);
    if let Some(age) = worker.since_contact() {
        gauge!("ballast_shard_cache_age_seconds").set(age.as_secs_f64());
    }
    gauge!("ballast_shard_assignment_revision").set(assignments.revision as f64);
    gauge!("ballast_shard_domains").set(assignments.domains.len() as f64);
    gauge!("ballast_shard_epoch").set(worker.epoch() as f64);
    gauge!("ballast_shard_cycles").set(worker.cycles() as f64);
    gauge!("ballast_shard_shortfall_machines").set(worker.shortfall() as f64);
    let machines = worker.machines_by_state();
    for state in ["idle", "assigned"] {
        let count = machines.get(state).copied().unwrap_or(0);
        gauge!("ballast_shard_machines", "state" => state).set(count as f64);
    }
    let (in_flight, above_slices) = {
        let state = worker.state();
        (state.in_flight.len(), state.engine.above_slices())
    };
    gauge!("ballast_shard_provisions_in_flight").set(in_flight as f64);
    gauge!("ballast_shard_machines_above_slice").set(above_slices as f64);
    let startup = worker.startup();
    gauge!("ballast_shard_startup_seconds", "phase" => "cache_open")
        .set(startup.cache_open.as_secs_f64());
    gauge!("ballast_shard_startup_seconds", "phase" => "engine_load")
        .set(startup.engine_load.as_secs_f64());
}

/// Whether decisions are held until the assignments catch up (`ballast_shard_holding`).
pub fn holding(held: bool) {
    gauge!("ballast_shard_holding").set(if held { 1.0 } else { 0.0 });
}

/// Records one engine cycle's duration.
pub fn cycle_done(elapsed: std::time::Duration) {
    histogram!("ballast_shard_cycle_duration_seconds").record(elapsed.as_secs_f64());
}

/// Records one provisioning outcome: `ok`, `failed` or `fenced`.
pub fn provision_done(outcome: &'static str) {
    counter!("ballast_shard_provisions_total", "outcome" => outcome).increment(1);
}

/// A provider call failed: by call and reason (`stale-grant`, `unreachable`, ...).
pub fn provider_error(call: &'static str, reason: &'static str) {
    counter!("ballast_shard_provider_errors_total", "call" => call, "reason" => reason)
        .increment(1);
}

/// Grants the provider refused as stale, which the shard does not act under now.
pub fn fenced(fences: &crate::worker::Fences) {
    gauge!("ballast_shard_fenced", "kind" => "domain").set(fences.domains.len() as f64);
    gauge!("ballast_shard_fenced", "kind" => "cluster").set(fences.clusters.len() as f64);
    gauge!("ballast_shard_fenced", "kind" => "quota").set(fences.quotas.len() as f64);
}

/// A reconciliation of the ledger with the provider: machines that joined and were forgotten.
pub fn reconciled(joined: usize, forgotten: usize) {
    counter!("ballast_shard_reconciled_machines_total", "change" => "joined")
        .increment(joined as u64);
    counter!("ballast_shard_reconciled_machines_total", "change" => "forgotten")
        .increment(forgotten as u64);
}

/// Machines that joined the ledger by adopting a domain in place.
pub fn adopted(machines: usize) {
    counter!("ballast_shard_adopted_machines_total").increment(machines as u64);
}
