//! The replica's HTTP port (`--http-listen`): Prometheus metrics on `/metrics`, the liveness
//! and readiness probes Kubernetes and etcd operators expect on `/healthz` and `/readyz`, and
//! a status page on `/` that needs nothing from the internet.

pub mod metrics;
mod page;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::replica::Replica;

/// Serves the HTTP port until `stopped` turns true.
pub fn serve(
    replica: Arc<Replica>,
    listener: TcpListener,
    tls: Option<ballast_telemetry::HttpTls>,
    stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(metrics::leader_changes(replica.clone(), stopped.clone()));
    let app = Router::new()
        .route("/", get(status_page))
        .route("/status", get(status_page))
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(replica);
    ballast_telemetry::serve(listener, app, tls, stopped)
}

pub use ballast_telemetry::bind;

async fn prometheus(State(replica): State<Arc<Replica>>) -> Response {
    metrics::refresh(&replica);
    ballast_telemetry::metrics_response()
}

/// Liveness: the process serves requests.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness, as etcd and Kubernetes users read it: this replica is a member of a group that
/// has a leader, so it can answer linearizable reads and forward writes.
async fn readyz(State(replica): State<Arc<Replica>>) -> (StatusCode, String) {
    match readiness(&replica) {
        Ok(message) => (StatusCode::OK, message),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

fn readiness(replica: &Replica) -> Result<String, String> {
    let view = replica.view();
    if !view.members.iter().any(|m| m.id == replica.id) {
        return Err(format!(
            "not ready: replica {} is not a member of the group (joining, or removed)\n",
            replica.id
        ));
    }
    match view.leader {
        Some(leader) if view.members.iter().any(|m| m.id == leader) => Ok(format!(
            "ok: replica {} is a {} and replica {leader} leads (term {})\n",
            replica.id, view.state, view.term
        )),
        _ => Err(format!(
            "not ready: replica {} knows no leader (election in progress or no quorum)\n",
            replica.id
        )),
    }
}

async fn status_page(State(replica): State<Arc<Replica>>) -> Html<String> {
    Html(page::render(&replica))
}
