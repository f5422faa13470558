//! The replica's HTTP port (`--http-listen`): Prometheus metrics on `/metrics`, the liveness
//! and readiness probes Kubernetes and etcd operators expect on `/healthz` and `/readyz`, and
//! a status page on `/` that needs nothing from the internet.

pub mod metrics;
mod page;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::replica::Replica;

/// Serves the HTTP port until `stopped` turns true.
pub fn serve(
    replica: Arc<Replica>,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    metrics::handle();
    tokio::spawn(metrics::leader_changes(replica.clone(), stopped.clone()));
    let app = Router::new()
        .route("/", get(status_page))
        .route("/status", get(status_page))
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(replica);
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "the HTTP port stopped");
        }
    })
}

/// Binds the HTTP port.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

async fn prometheus(State(replica): State<Arc<Replica>>) -> Response {
    metrics::refresh(&replica);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::handle().render(),
    )
        .into_response()
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
