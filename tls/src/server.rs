//! The accepting half: a reloading rustls server configuration and a stream of finished
//! handshakes for tonic's `serve_with_incoming` (or the HTTP port).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::reload::Reloading;
use crate::{TlsError, TlsFiles, provider, read_certs, read_key, read_roots};

/// How long a connection may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a listener demands a client certificate during the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate, no connection (gRPC ports).
    Required,
    /// A certificate is verified when presented; the application decides what an anonymous
    /// caller may see (the HTTP port's probes).
    Optional,
}

/// A listener's TLS configuration, re-read when its files change.
pub struct ServerTls {
    config: Reloading<ServerConfig>,
}

impl ServerTls {
    /// TLS for a gRPC port: client certificates required, HTTP/2 only.
    pub fn grpc(files: &TlsFiles) -> Result<Arc<Self>, TlsError> {
        Self::new(files, ClientAuth::Required, &[b"h2"])
    }

    /// TLS for an HTTP port: client certificates verified when given, HTTP/1.1.
    pub fn http(files: &TlsFiles) -> Result<Arc<Self>, TlsError> {
        Self::new(files, ClientAuth::Optional, &[])
    }

    fn new(
        files: &TlsFiles,
        client_auth: ClientAuth,
        alpn: &'static [&'static [u8]],
    ) -> Result<Arc<Self>, TlsError> {
        let config = Reloading::new(files.clone(), move |files| build(files, client_auth, alpn))?;
        Ok(Arc::new(Self { config }))
    }

    /// An acceptor with the newest valid configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.get())
    }

    /// Accepts connections on `listener` and yields those whose handshake succeeded.
    /// Handshakes run concurrently, so a slow or hostile client cannot hold up others.
    pub fn incoming(self: &Arc<Self>, listener: TcpListener) -> TlsIncoming {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(self.clone(), listener, tx));
        TlsIncoming { rx }
    }
}

fn build(
    files: &TlsFiles,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let roots = Arc::new(read_roots(&files.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let verifier = match client_auth {
        ClientAuth::Required => verifier,
        ClientAuth::Optional => verifier.allow_unauthenticated(),
    }
    .build()
    .map_err(|e| TlsError::Config(format!("{}: {e}", files.ca.display())))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| {
            TlsError::Config(format!(
                "{} with {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

async fn accept_loop(
    tls: Arc<ServerTls>,
    listener: TcpListener,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without TCP_NODELAY, answers larger than a segment wait out delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let acceptor = tls.acceptor();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Finished TLS handshakes of one listener, in arrival order.
pub struct TlsIncoming {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsIncoming {
    /// The next connection and its peer address; `None` once the accept loop ended.
    pub async fn next_connection(&mut self) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
        self.rx.recv().await
    }
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = std::io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|c| c.map(|(stream, _)| Ok(stream)))
    }
}
