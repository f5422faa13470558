//! Leader election and locks over Ballast's etcd-compatible KV, for services that use Ballast
//! as their coordinator (worker membership, shard leases, a single active leader).
//!
//! Both follow etcd's recipes: a participant holds a [`Session`] (a lease kept alive in the
//! background) and creates a key under a prefix bound to that lease; participants are ordered
//! by the key's create revision, and each waits only for the one just before it to go away.
//! The create revision of a holder's key is a **fencing token**: it grows with every new
//! holder, so a resource can refuse a deposed holder's late writes.

use std::time::Duration;

use std::sync::{Arc, RwLock, Weak};
use tokio::sync::watch;

use ballast_tls::ClientTls;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::etcdserverpb as epb;
use crate::etcdserverpb::auth_client::AuthClient;
use crate::etcdserverpb::kv_client::KvClient;
use crate::etcdserverpb::lease_client::LeaseClient;
use crate::etcdserverpb::watch_client::WatchClient;
use crate::mvccpb;

/// Why a coordination call failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    /// Bad endpoint.
    #[error("endpoint {0}: {1}")]
    Endpoint(String, String),
    /// The cluster refused or could not be reached.
    #[error("coordinator: {0}")]
    Status(#[from] tonic::Status),
    /// The session's lease is gone (expired or revoked).
    #[error("session lease {0:x} is gone")]
    SessionLost(i64),
}

/// How often a logged-in [`Coordinator`] fetches a fresh token: well inside the 300 s a
/// token lives (etcd's default, and Ballast's), so a long watch or keep-alive never presents
/// an expired one.
const TOKEN_REFRESH: Duration = Duration::from_secs(120);

/// The etcd auth token sent with every call once [`Coordinator::login`] ran (none before).
#[derive(Clone, Default)]
pub struct Credentials {
    token: Arc<RwLock<Option<AsciiMetadataValue>>>,
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let token = self.token.read().map(|t| t.clone()).unwrap_or_default();
        if let Some(token) = token {
            request.metadata_mut().insert("token", token);
        }
        Ok(request)
    }
}

/// A channel that carries [`Credentials`].
pub type CredentialedChannel = InterceptedService<Channel, Credentials>;

/// A connection to the coordinator's KV, balanced over every replica (writes are forwarded to
/// the leader by the replica reached; reads and watches are served by any).
#[derive(Clone)]
pub struct Coordinator {
    channel: Channel,
    credentials: Credentials,
}

impl Coordinator {
    /// Connects (lazily) to `endpoints` (`host:port`).
    pub fn new(endpoints: &[String]) -> Result<Coordinator, CoordinationError> {
        Self::with_tls(endpoints, None)
    }

    /// Connects (lazily) to `endpoints`, over mutual TLS when `tls` is given (then one
    /// connection at a time, moving to the next endpoint when it fails).
    pub fn with_tls(
        endpoints: &[String],
        tls: Option<Arc<ClientTls>>,
    ) -> Result<Coordinator, CoordinationError> {
        let mut list = Vec::new();
        for raw in endpoints {
            let uri = if raw.contains("://") {
                raw.clone()
            } else {
                format!("http://{raw}")
            };
            let endpoint = Endpoint::from_shared(uri)
                .map_err(|e| CoordinationError::Endpoint(raw.clone(), e.to_string()))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true);
            list.push(endpoint);
        }
        if list.is_empty() {
            return Err(CoordinationError::Endpoint(
                String::new(),
                "no endpoints".into(),
            ));
        }
        let channel = match tls {
            Some(tls) => tls
                .failover_channel(list)
                .ok_or_else(|| CoordinationError::Endpoint(String::new(), "no endpoints".into()))?,
            None => Channel::balance_list(list.into_iter()),
        };
        Ok(Coordinator {
            channel,
            credentials: Credentials::default(),
        })
    }

    /// Logs in as etcd user `user` (etcd's `Authenticate`, as `etcdctl --user` does): every
    /// call after this one carries the token, refreshed in the background while any clone of
    /// this coordinator lives. Needed once `etcdctl auth enable` is on.
    pub async fn login(&self, user: &str, password: &str) -> Result<(), CoordinationError> {
        let token = authenticate(&self.channel, user, password).await?;
        *self.credentials.token.write().expect("token lock") = Some(token);
        let held = Arc::downgrade(&self.credentials.token);
        let (channel, user, password) =
            (self.channel.clone(), user.to_string(), password.to_string());
        tokio::spawn(refresh_token(held, channel, user, password));
        Ok(())
    }

    /// The etcd KV client.
    pub fn kv(&self) -> KvClient<CredentialedChannel> {
        KvClient::with_interceptor(self.channel.clone(), self.credentials.clone())
    }

    /// The etcd Lease client.
    pub fn lease(&self) -> LeaseClient<CredentialedChannel> {
        LeaseClient::with_interceptor(self.channel.clone(), self.credentials.clone())
    }

    /// Opens a watch stream with one watcher. The request side stays open as long as the
    /// returned stream lives (closing it would end the watch).
    pub async fn watch_one(
        &self,
        create: epb::WatchCreateRequest,
    ) -> Result<tonic::Streaming<epb::WatchResponse>, CoordinationError> {
        let request = epb::WatchRequest {
            request_union: Some(epb::watch_request::RequestUnion::CreateRequest(create)),
        };
        // A stream that yields the create request and then stays pending, so the server keeps
        // the watch open.
        let requests =
            tokio_stream::StreamExt::chain(tokio_stream::once(request), tokio_stream::pending());
        Ok(self.watch().watch(requests).await?.into_inner())
    }

    /// The etcd Watch client.
    pub fn watch(&self) -> WatchClient<CredentialedChannel> {
        WatchClient::with_interceptor(self.channel.clone(), self.credentials.clone())
    }
}

/// One `Authenticate` call: the token it gives, as a header value.
async fn authenticate(
    channel: &Channel,
    user: &str,
    password: &str,
) -> Result<AsciiMetadataValue, CoordinationError> {
    let answer = AuthClient::new(channel.clone())
        .authenticate(epb::AuthenticateRequest {
            name: user.to_string(),
            password: password.to_string(),
        })
        .await?
        .into_inner();
    AsciiMetadataValue::try_from(answer.token.as_str()).map_err(|_| {
        CoordinationError::Status(tonic::Status::internal(
            "the coordinator answered a token that is not a header value",
        ))
    })
}

/// Replaces the token every [`TOKEN_REFRESH`] until no coordinator holds it any more. A failed
/// refresh keeps the old token (it may still be valid) and tries again sooner.
async fn refresh_token(
    held: Weak<RwLock<Option<AsciiMetadataValue>>>,
    channel: Channel,
    user: String,
    password: String,
) {
    let mut wait = TOKEN_REFRESH;
    loop {
        tokio::time::sleep(wait).await;
        if held.strong_count() == 0 {
            return;
        }
        wait = match authenticate(&channel, &user, &password).await {
            Ok(token) => {
                let Some(slot) = held.upgrade() else { return };
                *slot.write().expect("token lock") = Some(token);
                TOKEN_REFRESH
            }
            Err(_) => Duration::from_secs(5),
        };
    }
}

/// A lease kept alive in the background until the session is closed or dropped.
pub struct Session {
    coordinator: Coordinator,
    lease: i64,
    lost: watch::Receiver<bool>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Grants a lease of `ttl` seconds and keeps it alive (every third of the TTL).
    pub async fn new(coordinator: &Coordinator, ttl: i64) -> Result<Session, CoordinationError> {
        let granted = coordinator
            .lease()
            .lease_grant(epb::LeaseGrantRequest { ttl, id: 0 })
            .await?
            .into_inner();
        let lease = granted.id;
        let (lost_tx, lost) = watch::channel(false);
        let client = coordinator.clone();
        let every = Duration::from_millis((granted.ttl.max(1) as u64 * 1000) / 3);
        let keepalive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let answer = client
                    .lease()
                    .lease_keep_alive(tokio_stream::once(epb::LeaseKeepAliveRequest { id: lease }))
                    .await;
                let ttl = match answer {
                    Ok(stream) => stream
                        .into_inner()
                        .message()
                        .await
                        .ok()
                        .flatten()
                        .map(|r| r.ttl),
                    Err(_) => None,
                };
                if ttl == Some(0) {
                    let _ = lost_tx.send(true);
                    return;
                }
            }
        });
        Ok(Session {
            coordinator: coordinator.clone(),
            lease,
            lost,
            keepalive,
        })
    }

    /// The lease id.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Whether the lease is known to be gone.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Stops keeping the lease alive without revoking it (it expires after its TTL), as a
    /// crashed process would.
    pub fn abandon(self) {
        self.keepalive.abort();
    }

    /// Revokes the lease: every key of this session goes at once.
    pub async fn close(self) -> Result<(), CoordinationError> {
        self.keepalive.abort();
        self.coordinator
            .lease()
            .lease_revoke(epb::LeaseRevokeRequest { id: self.lease })
            .await?;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// The end of the key range holding every key that starts with `prefix` (etcd's convention:
/// the prefix with its last byte below 0xff incremented; `\0` — every key — if there is none).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Holding a position: the key, and its create revision (the fencing token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The participant's key.
    pub key: Vec<u8>,
    /// Create revision of the key: grows with every new holder.
    pub fencing_token: i64,
}

/// Creates this session's key under `prefix` (or finds it) and waits until every key created
/// before it under `prefix` is gone.
async fn acquire(session: &Session, prefix: &str, value: &[u8]) -> Result<Held, CoordinationError> {
    let coordinator = &session.coordinator;
    let key = format!("{prefix}/{:016x}", session.lease).into_bytes();
    let put = epb::RequestOp {
        request: Some(epb::request_op::Request::RequestPut(epb::PutRequest {
            key: key.clone(),
            value: value.to_vec(),
            lease: session.lease,
            ..Default::default()
        })),
    };
    let get = epb::RequestOp {
        request: Some(epb::request_op::Request::RequestRange(epb::RangeRequest {
            key: key.clone(),
            ..Default::default()
        })),
    };
    let created = coordinator
        .kv()
        .txn(epb::TxnRequest {
            compare: vec![epb::Compare {
                result: epb::compare::CompareResult::Equal as i32,
                target: epb::compare::CompareTarget::Create as i32,
                key: key.clone(),
                target_union: Some(epb::compare::TargetUnion::CreateRevision(0)),
                range_end: Vec::new(),
            }],
            success: vec![put, get.clone()],
            failure: vec![get],
        })
        .await?
        .into_inner();
    let mine = created
        .responses
        .last()
        .and_then(|r| match &r.response {
            Some(epb::response_op::Response::ResponseRange(range)) => range.kvs.first(),
            _ => None,
        })
        .map(|kv| kv.create_revision)
        .ok_or(CoordinationError::SessionLost(session.lease))?;
    let prefix_bytes = format!("{prefix}/").into_bytes();
    loop {
        if session.is_lost() {
            return Err(CoordinationError::SessionLost(session.lease));
        }
        // The participant just before this one, if any (a bound of 0 would mean "no bound":
        // nothing can come before revision 1).
        if mine <= 1 {
            return Ok(Held {
                key,
                fencing_token: mine,
            });
        }
        let before = coordinator
            .kv()
            .range(epb::RangeRequest {
                key: prefix_bytes.clone(),
                range_end: prefix_end(&prefix_bytes),
                limit: 1,
                sort_order: epb::range_request::SortOrder::Descend as i32,
                sort_target: epb::range_request::SortTarget::Create as i32,
                max_create_revision: mine - 1,
                ..Default::default()
            })
            .await?
            .into_inner();
        let Some(ahead) = before.kvs.first() else {
            return Ok(Held {
                key,
                fencing_token: mine,
            });
        };
        let revision = before.header.map(|h| h.revision).unwrap_or(0);
        wait_deleted(coordinator, &ahead.key, revision + 1).await?;
    }
}

/// Waits until `key` is deleted at or after `from`.
async fn wait_deleted(
    coordinator: &Coordinator,
    key: &[u8],
    from: i64,
) -> Result<(), CoordinationError> {
    let mut stream = coordinator
        .watch_one(epb::WatchCreateRequest {
            key: key.to_vec(),
            start_revision: from,
            ..Default::default()
        })
        .await?;
    while let Some(response) = stream.message().await? {
        if response.canceled {
            // Compacted past `from`: the key may be gone already; the caller checks again.
            return Ok(());
        }
        if response
            .events
            .iter()
            .any(|e| e.r#type == mvccpb::event::EventType::Delete as i32)
        {
            return Ok(());
        }
    }
    Ok(())
}

/// A named election: at most one session leads at a time.
pub struct Election {
    prefix: String,
}

impl Election {
    /// The election called `name` (keys live under `election/<name>/`).
    pub fn new(name: &str) -> Election {
        Election {
            prefix: format!("election/{name}"),
        }
    }

    /// Waits until `session` leads, announcing `value`; returns the leadership.
    pub async fn campaign(
        &self,
        session: &Session,
        value: &[u8],
    ) -> Result<Held, CoordinationError> {
        acquire(session, &self.prefix, value).await
    }

    /// The current leader's value and fencing token, if any.
    pub async fn leader(
        &self,
        coordinator: &Coordinator,
    ) -> Result<Option<(Vec<u8>, i64)>, CoordinationError> {
        let prefix = format!("{}/", self.prefix).into_bytes();
        let first = coordinator
            .kv()
            .range(epb::RangeRequest {
                range_end: prefix_end(&prefix),
                key: prefix,
                limit: 1,
                sort_order: epb::range_request::SortOrder::Ascend as i32,
                sort_target: epb::range_request::SortTarget::Create as i32,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(first
            .kvs
            .first()
            .map(|kv| (kv.value.clone(), kv.create_revision)))
    }

    /// Follows leadership: calls `on_change` with the leader's value and fencing token (or
    /// `None` when nobody leads) now and after every change, until it returns `false`.
    pub async fn observe(
        &self,
        coordinator: &Coordinator,
        mut on_change: impl FnMut(Option<(Vec<u8>, i64)>) -> bool,
    ) -> Result<(), CoordinationError> {
        let prefix = format!("{}/", self.prefix).into_bytes();
        let mut stream = coordinator
            .watch_one(epb::WatchCreateRequest {
                range_end: prefix_end(&prefix),
                key: prefix,
                ..Default::default()
            })
            .await?;
        let mut last = self.leader(coordinator).await?;
        if !on_change(last.clone()) {
            return Ok(());
        }
        while stream.message().await?.is_some() {
            let now = self.leader(coordinator).await?;
            if now != last {
                last = now;
                if !on_change(last.clone()) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Gives leadership up.
    pub async fn resign(&self, session: &Session, held: Held) -> Result<(), CoordinationError> {
        release(session, held).await
    }
}

/// A named mutex with fencing tokens.
pub struct Lock {
    prefix: String,
}

impl Lock {
    /// The lock called `name` (keys live under `lock/<name>/`).
    pub fn new(name: &str) -> Lock {
        Lock {
            prefix: format!("lock/{name}"),
        }
    }

    /// Waits until `session` holds the lock.
    pub async fn lock(&self, session: &Session) -> Result<Held, CoordinationError> {
        acquire(session, &self.prefix, b"").await
    }

    /// Releases it.
    pub async fn unlock(&self, session: &Session, held: Held) -> Result<(), CoordinationError> {
        release(session, held).await
    }
}

async fn release(session: &Session, held: Held) -> Result<(), CoordinationError> {
    session
        .coordinator
        .kv()
        .delete_range(epb::DeleteRangeRequest {
            key: held.key,
            ..Default::default()
        })
        .await?;
    Ok(())
}
