//! The connecting half: a reloading rustls client configuration and a connector that tonic
//! channels dial through. Channels keep plain `http://` URIs; the connector does the TLS, so
//! every reconnect picks up rotated files.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::reload::Reloading;
use crate::{PemMaterial, TlsError, TlsFiles, provider, read_certs, read_key, read_roots};

/// Where a client's configuration comes from.
enum Source {
    Files(Reloading<ClientConfig>),
    Fixed(Arc<ClientConfig>),
}

/// A client's TLS configuration: trusted CAs and the certificate it presents.
pub struct ClientTls {
    source: Source,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// From files, re-read when they change.
    pub fn from_files(files: &TlsFiles) -> Result<Arc<Self>, TlsError> {
        let config = Reloading::new(files.clone(), |files| {
            let roots = read_roots(&files.ca)?;
            finish(
                roots,
                Some((read_certs(&files.cert)?, read_key(&files.key)?)),
            )
        })?;
        Ok(Arc::new(Self {
            source: Source::Files(config),
        }))
    }

    /// From PEM bytes in memory (fixed; tests and tools).
    pub fn from_pem(material: &PemMaterial) -> Result<Arc<Self>, TlsError> {
        let identity = match &material.identity {
            None => None,
            Some((cert, key)) => Some((
                CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| TlsError::Config(format!("certificate: {e}")))?,
                PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| TlsError::Config(format!("key: {e}")))?,
            )),
        };
        Ok(Arc::new(Self {
            source: Source::Fixed(Arc::new(finish(material.roots()?, identity)?)),
        }))
    }

    fn config(&self) -> Arc<ClientConfig> {
        match &self.source {
            Source::Files(r) => r.get(),
            Source::Fixed(c) => c.clone(),
        }
    }

    /// Connects to `host:port` and finishes a handshake, verifying the server's certificate
    /// against the CA and `host`.
    pub async fn connect(&self, host: &str, port: u16) -> std::io::Result<TlsStream<TcpStream>> {
        self.connect_observed(host, port, None).await
    }

    /// [`ClientTls::connect`], showing the TCP connection to `observer` first.
    async fn connect_observed(
        &self,
        host: &str,
        port: u16,
        observer: Option<&ConnectObserver>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        if let Some(observe) = observer {
            observe(&tcp)?;
        }
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
            .to_owned();
        TlsConnector::from(self.config()).connect(name, tcp).await
    }

    /// A lazily connected channel to `endpoint` over TLS.
    pub fn channel(self: &Arc<Self>, endpoint: Endpoint) -> Channel {
        self.observed_channel(endpoint, None)
    }

    fn observed_channel(
        self: &Arc<Self>,
        endpoint: Endpoint,
        observer: Option<ConnectObserver>,
    ) -> Channel {
        let targets = vec![endpoint.uri().clone()];
        endpoint.connect_with_connector_lazy(Connector {
            tls: self.clone(),
            targets: Arc::new(targets),
            next: Arc::new(AtomicUsize::new(0)),
            observer,
        })
    }

    /// One lazily connected channel over several equivalent endpoints: each (re)connect tries
    /// them in turn from the one after the last used, so the channel moves to a live replica
    /// when its current one dies.
    pub fn failover_channel(self: &Arc<Self>, endpoints: Vec<Endpoint>) -> Option<Channel> {
        let first = endpoints.first()?.clone();
        let targets = endpoints.iter().map(|e| e.uri().clone()).collect();
        Some(first.connect_with_connector_lazy(Connector {
            tls: self.clone(),
            targets: Arc::new(targets),
            next: Arc::new(AtomicUsize::new(0)),
            observer: None,
        }))
    }
}

fn finish(
    roots: rustls::RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// tonic connector doing TCP + TLS to one of `targets` (the URI tonic passes is ignored: it
/// is always the first target).
#[derive(Clone)]
struct Connector {
    tls: Arc<ClientTls>,
    targets: Arc<Vec<Uri>>,
    next: Arc<AtomicUsize>,
    observer: Option<ConnectObserver>,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let count = this.targets.len();
            let start = this.next.load(Ordering::Relaxed);
            let mut last = None;
            for step in 0..count {
                let index = (start + step) % count;
                let uri = &this.targets[index];
                let host = uri.host().unwrap_or("localhost");
                let port = uri.port_u16().unwrap_or(80);
                match this
                    .tls
                    .connect_observed(host, port, this.observer.as_ref())
                    .await
                {
                    Ok(stream) => {
                        this.next.store(index, Ordering::Relaxed);
                        return Ok(TokioIo::new(stream));
                    }
                    Err(e) => {
                        this.next.store(index + 1, Ordering::Relaxed);
                        last = Some(e);
                    }
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("no endpoints")))
        })
    }
}

/// A lazily connected channel: over TLS when `tls` is given, plain otherwise.
pub fn lazy_channel(endpoint: Endpoint, tls: Option<&Arc<ClientTls>>) -> Channel {
    match tls {
        Some(tls) => tls.channel(endpoint),
        None => endpoint.connect_lazy(),
    }
}

/// Sees every TCP connection a channel opens, before anything is sent on it (test-only fault
/// injection keeps a handle to cut the connection later).
/// An error fails the connection attempt.
pub type ConnectObserver = Arc<dyn Fn(&TcpStream) -> std::io::Result<()> + Send + Sync>;

/// [`lazy_channel`] whose every new TCP connection is shown to `observer` first.
pub fn observed_channel(
    endpoint: Endpoint,
    tls: Option<&Arc<ClientTls>>,
    observer: ConnectObserver,
) -> Channel {
    if let Some(tls) = tls {
        return tls.observed_channel(endpoint, Some(observer));
    }
    let uri = endpoint.uri().clone();
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
        let observer = observer.clone();
        let host = uri.host().unwrap_or("localhost").to_string();
        let port = uri.port_u16().unwrap_or(80);
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            observer(&tcp)?;
            Ok::<_, std::io::Error>(TokioIo::new(tcp))
        }
    }))
}
