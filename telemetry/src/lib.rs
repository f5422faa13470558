//! The HTTP port plumbing every Ballast binary shares: one Prometheus recorder per process and
//! a small axum server for `/metrics`, probes and pages; logging; and the heap ([`memory`]).
//! What each binary reports and how it judges readiness stays in that binary.

pub mod memory;

use std::net::SocketAddr;
use std::sync::OnceLock;

use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use ballast_tls::server::TlsIncoming;
use ballast_tls::{Identity, ServerTls, ServerTlsStream};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::net::TcpStream;
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

/// TLS of an HTTP port.
pub struct HttpTls {
    /// Server configuration (client certificates verified when presented).
    pub server: Arc<ServerTls>,
    /// Let `/healthz` and `/readyz` answer callers without a client certificate.
    pub open_probes: bool,
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stopped` turns true.
/// With TLS every path needs a client certificate carrying a Ballast role, any role: the
/// port only reads.
pub fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<HttpTls>,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    prometheus();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let served = match tls {
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Some(tls) => {
                let local = listener.local_addr();
                let listener = TlsListener {
                    incoming: tls.server.incoming(listener),
                    local,
                };
                let app = app.layer(axum::middleware::from_fn_with_state(
                    tls.open_probes,
                    require_certificate,
                ));
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<Caller>(),
                )
                .with_graceful_shutdown(shutdown)
                .await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP port stopped");
        }
    })
}

/// Finished TLS handshakes as an axum listener.
struct TlsListener {
    incoming: TlsIncoming,
    local: std::io::Result<SocketAddr>,
}

impl axum::serve::Listener for TlsListener {
    type Io = ServerTlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.next_connection().await {
            Some(connection) => connection,
            // The accept loop ended (the listener failed for good): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// The verified client certificate of an HTTP connection, if one was presented.
#[derive(Clone)]
struct Caller(Option<Identity>);

impl Connected<IncomingStream<'_, TlsListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, session) = stream.io().get_ref();
        Caller(
            session
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|cert| Identity::from_der(cert.as_ref())),
        )
    }
}

async fn require_certificate(
    State(open_probes): State<bool>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let probe = path == "/healthz" || path == "/readyz";
    match caller.0 {
        Some(identity) if !identity.roles.is_empty() => next.run(request).await,
        Some(identity) => (
            StatusCode::FORBIDDEN,
            format!("{} may not read this port\n", identity.describe()),
        )
            .into_response(),
        None if open_probes && probe => next.run(request).await,
        None => (
            StatusCode::UNAUTHORIZED,
            "this port needs a client certificate signed by the cluster's CA\n",
        )
            .into_response(),
    }
}

/// Installs the log subscriber of a Ballast process: stderr, filtered by `RUST_LOG` (else
/// `default_filter`), as text or — with `BALLAST_LOG_FORMAT=json` — one JSON object per line
/// with the event's fields, for log pipelines.
pub fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let json = std::env::var("BALLAST_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
