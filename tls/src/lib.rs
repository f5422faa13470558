//! TLS for every Ballast port. One set of flags (`--tls-ca`, `--tls-cert`, `--tls-key`) turns
//! on mutual TLS everywhere a binary listens or connects: all three or none. Certificates and
//! the CA bundle are re-read when their files change, so a rotation needs no restart: every
//! new connection uses the newest valid files, and a broken rotation keeps the last good ones.
//!
//! What a caller may do is decided by its client certificate's roles (SAN URIs, see
//! [`identity`]); each server states its own method policy through [`identity::AuthLayer`].

pub mod client;
pub mod identity;
mod reload;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use client::ClientTls;
pub use identity::{Identity, Role};
pub use server::ServerTls;
/// A server-side TLS connection (what [`ServerTls::incoming`] yields).
pub use tokio_rustls::server::TlsStream as ServerTlsStream;

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only some of the three TLS flags were given.
    #[error("TLS needs --tls-ca, --tls-cert and --tls-key together (all or none); missing: {0}")]
    Incomplete(String),
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the material (key does not match the certificate, bad CA, ...).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The TLS flags every Ballast binary shares (flattened into its one configuration struct).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM bundle of the CA(s) that sign every Ballast certificate. With --tls-cert and
    /// --tls-key it turns on mutual TLS on every port this process listens on or connects to.
    #[arg(long, global = true, env = "BALLAST_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate chain of this process (its roles are SAN URIs, e.g. ballast://role/peer).
    #[arg(long, global = true, env = "BALLAST_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "BALLAST_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The files, when TLS is on; an error naming the missing flags when only some are set.
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsError> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    (ca.is_none(), "--tls-ca"),
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                ]
                .into_iter()
                .filter_map(|(absent, flag)| absent.then_some(flag))
                .collect();
                Err(TlsError::Incomplete(missing.join(", ")))
            }
        }
    }
}

/// Where a process's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle trusted for peers and clients.
    pub ca: PathBuf,
    /// This process's certificate chain.
    pub cert: PathBuf,
    /// This process's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The identity (roles) this process's own certificate grants.
    pub fn identity(&self) -> Result<Identity, TlsError> {
        let certs = read_certs(&self.cert)?;
        Ok(Identity::from_der(certs[0].as_ref()))
    }

    /// Fails unless this process's certificate grants `role`: a process whose calls every
    /// server would refuse should say so at start-up, not in a stream of PermissionDenied.
    pub fn require_role(&self, role: &Role) -> Result<(), TlsError> {
        let identity = self.identity()?;
        if identity.has(role) {
            return Ok(());
        }
        Err(TlsError::File {
            path: self.cert.display().to_string(),
            reason: format!(
                "{} lacks the SAN URI {} this process needs",
                identity.describe(),
                role.uri()
            ),
        })
    }

    fn paths(&self) -> [&Path; 3] {
        [&self.ca, &self.cert, &self.key]
    }
}

/// The crypto provider of every Ballast TLS session (aws-lc-rs, already linked by the S3 client).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate of a PEM file (at least one).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// Reads a CA bundle into a root store.
fn read_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// PEM material held in memory (tests and tools that build certificates themselves).
#[derive(Clone)]
pub struct PemMaterial {
    /// CA bundle.
    pub ca: Vec<u8>,
    /// Certificate chain and key; `None` builds a client that presents no certificate.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl PemMaterial {
    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca) {
            let cert = cert.map_err(|e| TlsError::Config(format!("CA bundle: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Config(format!("CA bundle: {e}")))?;
        }
        Ok(roots)
    }
}
