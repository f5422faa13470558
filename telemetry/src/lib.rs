//! The HTTP port plumbing every Ballast binary shares: one Prometheus recorder per process and
//! a small axum server for `/metrics`, probes and pages. What each binary reports and how it
//! judges readiness stays in that binary.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Latency buckets (seconds) for every `*_seconds` histogram: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's Prometheus recorder, installed on first use. Tests embedding several
/// replicas or workers in one process share it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Fails only if something else installed a recorder first; then these metrics are
        // not recorded, which must not stop the process.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The `/metrics` answer: everything recorded, in Prometheus text format.
pub fn metrics_response() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

/// Binds the HTTP port.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves `app` on `listener` until `stopped` turns true.
pub fn serve(
    listener: TcpListener,
    app: Router,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    prometheus();
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
