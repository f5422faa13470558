//! Who is calling: roles read from the client certificate, and the tower layer that refuses
//! calls a server's policy does not allow.
//!
//! A certificate carries its roles as SAN URIs:
//! `ballast://role/admin` (every call), `ballast://role/readonly` (reads and watches),
//! `ballast://role/peer` (a coordinator replica: Raft traffic and forwarded calls) and
//! `ballast://role/shard/<id>` (one shard worker: its own registration, heartbeat and watch).
//! Several roles in one certificate add up; a certificate with none may connect but is refused
//! every call.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::extensions::GeneralName;

/// Prefix of every role URI.
pub const ROLE_URI_PREFIX: &str = "ballast://role/";

/// One role granted by a certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Every call except Raft traffic.
    Admin,
    /// Reads and watches.
    Readonly,
    /// A coordinator replica.
    Peer,
    /// The shard worker with this id.
    Shard(String),
}

impl Role {
    /// Parses a role URI; `None` for URIs that are not Ballast roles.
    pub fn from_uri(uri: &str) -> Option<Role> {
        match uri.strip_prefix(ROLE_URI_PREFIX)? {
            "admin" => Some(Role::Admin),
            "readonly" => Some(Role::Readonly),
            "peer" => Some(Role::Peer),
            other => {
                let id = other.strip_prefix("shard/")?;
                (!id.is_empty()).then(|| Role::Shard(id.to_string()))
            }
        }
    }

    /// The role's URI (what a certificate carries).
    pub fn uri(&self) -> String {
        match self {
            Role::Admin => format!("{ROLE_URI_PREFIX}admin"),
            Role::Readonly => format!("{ROLE_URI_PREFIX}readonly"),
            Role::Peer => format!("{ROLE_URI_PREFIX}peer"),
            Role::Shard(id) => format!("{ROLE_URI_PREFIX}shard/{id}"),
        }
    }
}

/// The verified caller of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The certificate's subject, for messages and logs.
    pub subject: String,
    /// The subject's common name, if it has one: the etcd user of a call that carries no
    /// token while etcd auth is on, as etcd takes it with `--client-cert-auth`.
    pub common_name: Option<String>,
    /// Roles granted by the certificate.
    pub roles: Vec<Role>,
}

impl Identity {
    /// Reads the identity of a DER certificate (already verified by the TLS handshake).
    pub fn from_der(der: &[u8]) -> Identity {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return Identity {
                subject: "<unparsable certificate>".into(),
                common_name: None,
                roles: Vec::new(),
            };
        };
        let roles = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::URI(uri) => Role::from_uri(uri),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Identity {
            subject: cert.subject().to_string(),
            common_name,
            roles,
        }
    }

    /// Whether the certificate grants `role`.
    pub fn has(&self, role: &Role) -> bool {
        self.roles.contains(role)
    }

    /// Whether the caller may do anything a client may (admin) or is a replica (peer).
    pub fn is_admin_or_peer(&self) -> bool {
        self.has(&Role::Admin) || self.has(&Role::Peer)
    }

    /// May this caller act for shard `id`? Admins and peers may act for any shard (a peer
    /// forwards calls it already checked); a shard certificate only for its own id.
    pub fn check_shard(&self, id: &str) -> Result<(), String> {
        if self.is_admin_or_peer() || self.has(&Role::Shard(id.to_string())) {
            return Ok(());
        }
        let own: Vec<&str> = self
            .roles
            .iter()
            .filter_map(|r| match r {
                Role::Shard(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        Err(if own.is_empty() {
            format!(
                "{} holds no shard role and cannot act as shard {id:?}",
                self.describe()
            )
        } else {
            format!(
                "{} may act only as shard {} and cannot act as shard {id:?}",
                self.describe(),
                own.join(", ")
            )
        })
    }

    /// "certificate <subject> (roles ...)" for messages.
    pub fn describe(&self) -> String {
        let roles: Vec<String> = self.roles.iter().map(Role::uri).collect();
        if roles.is_empty() {
            format!(
                "certificate {:?} (no {ROLE_URI_PREFIX}... role)",
                self.subject
            )
        } else {
            format!("certificate {:?} ({})", self.subject, roles.join(", "))
        }
    }
}

/// The identity checked by [`AuthLayer`] for a tonic request; `None` when TLS is off.
pub fn identity<T>(request: &tonic::Request<T>) -> Option<&Identity> {
    request.extensions().get::<Identity>()
}

/// A server's rules: may `identity` call the gRPC method at `path`
/// (`/package.Service/Method`)? The reason of a refusal goes to the caller.
pub trait Policy: Clone + Send + Sync + 'static {
    /// `Ok` to let the call through (handlers may still check its body), `Err(reason)` to
    /// refuse it with PermissionDenied.
    fn check(&self, identity: &Identity, path: &str) -> Result<(), String>;
}

/// Tower layer of a TLS gRPC server: reads the caller's identity from its certificate,
/// refuses calls `P` does not allow with PermissionDenied, and hands the identity to the
/// handlers (see [`identity`]).
#[derive(Clone)]
pub struct AuthLayer<P> {
    policy: P,
    /// Identities by certificate bytes: parsing X.509 on every call would cost more than
    /// the call itself for small reads.
    cache: Arc<Mutex<HashMap<Vec<u8>, Identity>>>,
}

impl<P: Policy> AuthLayer<P> {
    /// A layer enforcing `policy`.
    pub fn new(policy: P) -> Self {
        Self {
            policy,
            cache: Arc::default(),
        }
    }

    fn identity<B>(&self, request: &http::Request<B>) -> Option<Identity> {
        let info = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()?;
        let certs = info.peer_certs()?;
        let der = certs.first()?.as_ref();
        let mut cache = self.cache.lock();
        if let Some(identity) = cache.get(der) {
            return Some(identity.clone());
        }
        let identity = Identity::from_der(der);
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(der.to_vec(), identity.clone());
        Some(identity)
    }
}

impl<S, P: Clone> tower::Layer<S> for AuthLayer<P> {
    type Service = Auth<S, P>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            layer: AuthLayer {
                policy: self.policy.clone(),
                cache: self.cache.clone(),
            },
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S, P> {
    inner: S,
    layer: AuthLayer<P>,
}

impl<S, P, B, R> tower::Service<http::Request<B>> for Auth<S, P>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    P: Policy,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let verdict = match self.layer.identity(&request) {
            None => Err(format!(
                "{path} needs a client certificate signed by the cluster's CA"
            )),
            Some(identity) => match self.layer.policy.check(&identity, &path) {
                Ok(()) => {
                    request.extensions_mut().insert(identity);
                    Ok(())
                }
                Err(reason) => Err(format!(
                    "{path} refused to {}: {reason}",
                    identity.describe()
                )),
            },
        };
        match verdict {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(message) => {
                tracing::info!(%message, "call refused");
                let mut response = tonic::Status::permission_denied(message).into_http();
                if !grpc {
                    // An HTTP/JSON client (etcd's gateway paths) reads the status line; the
                    // reason stays in the grpc-message header.
                    *response.status_mut() = http::StatusCode::FORBIDDEN;
                }
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_uris_round_trip_and_strangers_are_ignored() {
        for role in [
            Role::Admin,
            Role::Readonly,
            Role::Peer,
            Role::Shard("s-1".into()),
        ] {
            assert_eq!(Role::from_uri(&role.uri()), Some(role));
        }
        for other in [
            "ballast://role/shard/",
            "ballast://role/root",
            "spiffe://x/admin",
            "ballast://role/ADMIN",
        ] {
            assert_eq!(Role::from_uri(other), None, "{other}");
        }
    }

    #[test]
    fn roles_come_from_san_uris() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("ballast://role/shard/s1").unwrap(),
        ));
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("ballast://role/readonly").unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let identity = Identity::from_der(cert.der());
        assert_eq!(
            identity.roles,
            vec![Role::Shard("s1".into()), Role::Readonly]
        );
        assert!(identity.check_shard("s1").is_ok());
        let refusal = identity.check_shard("s2").unwrap_err();
        assert!(refusal.contains("only as shard s1"), "{refusal}");
        assert!(!identity.is_admin_or_peer());
        assert_eq!(Identity::from_der(b"junk").roles, vec![]);
    }
}
