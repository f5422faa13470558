//! etcd's v3 API on the client port: `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance` and `Auth`
//! (what each does on Ballast: docs/etcd-api.md). Writes go through Raft on the leader (followers
//! forward them once); reads are linearizable unless `serializable`; watches are served by any
//! replica from its applied history, so they survive leader changes. Lease expiry is decided by
//! the leader and replicated as a revoke; a new leader gives every lease a fresh TTL.

mod auth;
mod cluster;
mod convert;
pub mod gateway;
mod kv;
mod lease;
mod maintenance;
mod watch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_protocol::etcdserverpb as epb;
use ballast_tls::{Identity, Role};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Status};

use crate::auth::{AuthError, Caller};
use crate::error::auth_status;
use crate::fleet::FleetRequest;
use crate::fleet::{Applied, FleetCommand};
use crate::kv::{KvCommand, KvReply};
use crate::replica::{Replica, Route};

/// Metadata keys etcd reads a token from: its gRPC clients' and its JSON gateway's
/// (`Authorization` header).
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// Metadata a follower adds when it forwards a call whose user is its client certificate's
/// common name; believed only from a peer certificate.
const CERTIFICATE_USER: &str = "x-ballast-etcd-user-bin";

/// Who an etcd call is from, as the replica that received it read it.
#[derive(Clone, Debug, Default)]
pub(crate) struct CallAuth {
    /// The user, if the call names one this replica can check: a valid token's (while auth
    /// is on) or the client certificate's common name.
    pub caller: Option<Caller>,
    /// The token the call carried, passed on when it is forwarded.
    token: Option<String>,
    /// The user a client certificate named, passed on when the call is forwarded.
    certificate_user: Option<String>,
}

/// Serves etcd's services for one replica.
#[derive(Clone)]
pub struct EtcdApi {
    replica: Arc<Replica>,
}

impl EtcdApi {
    /// Wraps a replica.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    /// The etcd response header at `revision`.
    fn header_at(&self, revision: u64) -> epb::ResponseHeader {
        header(&self.replica, revision)
    }

    /// Proposes a client's KV command on the leader (this replica must lead); it applies only
    /// if `caller` may run it then (while etcd auth is on).
    async fn propose(
        &self,
        command: KvCommand,
        caller: Option<&Caller>,
    ) -> Result<(KvReply, u64), Status> {
        crate::kv::check_command(&command).map_err(|e| crate::error::kv_status(&e))?;
        let request = kv_request(command, caller);
        check_caller(&self.replica, &request)?;
        kv_outcome(self.replica.propose(request).await?)
    }

    /// Runs a client's KV write wherever the leader is: here if this replica leads, else
    /// forwarded to the leader together with the other writes this replica's clients make
    /// meanwhile ([`crate::log::forward`]). The answer is built here either way.
    ///
    /// Bad input is refused here so it never reaches the log. The caller's permissions are
    /// checked only by the leader (here, or when the forwarded batch arrives): a follower's
    /// view of users, roles and the auth switch may be behind the leader's (a write right
    /// after auth went off would be refused). The entry is checked again when it applies.
    async fn write(
        &self,
        metadata: &MetadataMap,
        command: KvCommand,
        caller: Option<&Caller>,
    ) -> Result<(KvReply, u64), Status> {
        crate::kv::check_command(&command).map_err(|e| crate::error::kv_status(&e))?;
        let request = &kv_request(command, caller);
        let applied = self
            .on_leader(
                metadata,
                || async move {
                    check_caller(&self.replica, request)?;
                    Ok(self.replica.propose(request.clone()).await?)
                },
                |address| async move {
                    Ok(self
                        .replica
                        .propose_on_leader(&address, request.clone())
                        .await?)
                },
            )
            .await?;
        kv_outcome(applied)
    }
}

/// The log request for a client's KV command, run as `caller`.
fn kv_request(command: KvCommand, caller: Option<&Caller>) -> FleetRequest {
    FleetRequest {
        request_id: String::new(),
        command: FleetCommand::KvAs {
            caller: caller.cloned(),
            command,
        },
    }
}

/// Refuses a client's KV write now if its caller may not run it by this replica's view of
/// etcd's users, roles and auth switch; the leader runs it, so a refused write costs no log
/// entry (the entry is checked again when it applies). Other requests pass.
pub(crate) fn check_caller(replica: &Replica, request: &FleetRequest) -> Result<(), Status> {
    let FleetCommand::KvAs { caller, command } = &request.command else {
        return Ok(());
    };
    let fleet = replica.state.fleet();
    fleet
        .auth()
        .check_kv(caller.as_ref(), command, fleet.kv())
        .map_err(|e| auth_status(&e))
}

impl EtcdApi {
    /// Reads who a call is from: a token (checked against the auth secret while auth is on;
    /// ignored while it is off, as etcd does), else a client certificate's common name (or,
    /// from a peer forwarding a call, the name the peer read from its client's certificate).
    pub(crate) fn call_auth(
        &self,
        metadata: &MetadataMap,
        identity: Option<&Identity>,
    ) -> Result<CallAuth, Status> {
        let token = match TOKEN_KEYS.iter().find_map(|key| metadata.get(*key)) {
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| auth_status(&AuthError::InvalidToken))?
                    .to_string(),
            ),
            None => None,
        };
        let certificate_user = match identity {
            Some(peer) if peer.has(&Role::Peer) => metadata
                .get_bin(CERTIFICATE_USER)
                .and_then(|value| value.to_bytes().ok())
                .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok()),
            Some(client) => client.common_name.clone(),
            None => None,
        };
        if token.is_none() && certificate_user.is_none() {
            // Names no user: nothing to check against the auth state (most calls without
            // auth), so no lock on the state either.
            return Ok(CallAuth::default());
        }
        let fleet = self.replica.state.fleet();
        let auth = fleet.auth();
        let caller = match (&token, &certificate_user) {
            (Some(token), _) if auth.enabled() => {
                let claims = crate::auth::token::verify(
                    auth.secret(),
                    token,
                    ballast_protocol::clock::unix_ms() / 1000,
                )
                .map_err(|e| auth_status(&e))?;
                Some(Caller {
                    user: claims.username,
                    revision: claims.revision,
                })
            }
            (_, Some(user)) => Some(Caller {
                user: user.clone(),
                revision: auth.revision(),
            }),
            _ => None,
        };
        Ok(CallAuth {
            caller,
            token,
            certificate_user,
        })
    }

    /// [`EtcdApi::call_auth`] of a request.
    pub(crate) fn request_auth<T>(&self, request: &Request<T>) -> Result<CallAuth, Status> {
        self.call_auth(request.metadata(), ballast_tls::identity::identity(request))
    }

    /// `message` as this replica forwards it to the leader, carrying who sent it.
    pub(crate) fn forwarded_as<T>(&self, message: T, auth: &CallAuth) -> Request<T> {
        let mut request = self.replica.forwarded(message);
        if let Some(token) = &auth.token
            && let Ok(value) = MetadataValue::try_from(token.as_str())
        {
            request.metadata_mut().insert(TOKEN_KEYS[0], value);
        }
        if let Some(user) = &auth.certificate_user {
            request
                .metadata_mut()
                .insert_bin(CERTIFICATE_USER, MetadataValue::from_bytes(user.as_bytes()));
        }
        request
    }

    /// Passes when `caller` may administer (auth off, or the root role).
    pub(crate) fn check_admin(&self, caller: Option<&Caller>) -> Result<(), Status> {
        self.replica
            .state
            .fleet()
            .auth()
            .check_admin(caller)
            .map_err(|e| auth_status(&e))
    }

    /// Passes when the caller of `request` may administer (auth off, or the root role).
    pub(crate) fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.check_admin(self.request_auth(request)?.caller.as_ref())
    }

    /// Passes when `caller` is a current user (auth off, or any user).
    pub(crate) fn check_user(&self, caller: Option<&Caller>) -> Result<(), Status> {
        self.replica
            .state
            .fleet()
            .auth()
            .check_user(caller)
            .map_err(|e| auth_status(&e))
    }
}

/// How long a write waits for a leader (an election, an unreachable old leader) before it
/// fails: etcd's clients do not retry writes, so the server does, as etcd's own server waits
/// for a leader when it proposes.
const LEADER_WAIT: Duration = Duration::from_secs(7);

/// Whether a failed leader-side call certainly did not run (so retrying cannot apply it twice).
fn not_sent(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && [
            "connect",
            "no leader",
            "not the leader",
            "leadership changed",
        ]
        .iter()
        .any(|m| status.message().contains(m))
}

/// Answers a unary etcd call where the leader must: `local` (an async block using `body`, the
/// request's message, and `caller`, who sent it) here if this replica leads, else the same
/// call (`Client::method`) on the leader, with the forwarded copy of the message and its
/// credentials; the answer wrapped for the caller.
macro_rules! on_leader_call {
    ($api:expr, $request:expr, $client:ident :: $method:ident, |$body:ident, $caller:ident| $local:expr) => {{
        let auth = $api.request_auth(&$request)?;
        let (metadata, _, body) = $request.into_parts();
        let $body = &body;
        let $caller = auth.caller.as_ref();
        let auth = &auth;
        let answer = $api
            .on_leader(
                &metadata,
                || $local,
                |address| async move {
                    let channel = $api.replica.channel_to(&address)?;
                    let request = $api.forwarded_as(Clone::clone($body), auth);
                    Ok($client::new(channel).$method(request).await?.into_inner())
                },
            )
            .await?;
        Ok(Response::new(answer))
    }};
}
pub(crate) use on_leader_call;

impl EtcdApi {
    /// Runs `local` if this replica leads, else `forward` with the leader's address; while no
    /// leader is reachable, retries until [`LEADER_WAIT`] runs out.
    async fn on_leader<T, L, LF, F, FF>(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        local: L,
        forward: F,
    ) -> Result<T, Status>
    where
        L: Fn() -> LF,
        LF: std::future::Future<Output = Result<T, Status>>,
        F: Fn(String) -> FF,
        FF: std::future::Future<Output = Result<T, Status>>,
    {
        self.replica.check_cluster(metadata)?;
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let attempt = match self.replica.route(metadata) {
                Ok(Route::Local) => local().await,
                Ok(Route::Forward(address)) => forward(address).await,
                Err(e) => Err(e.into()),
            };
            match attempt {
                Err(status) if not_sent(&status) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }
}

/// A KV command's reply and the revision it applied at.
fn kv_outcome(applied: Applied) -> Result<(KvReply, u64), Status> {
    let reply = applied
        .kv
        .ok_or_else(|| Status::internal("a KV command applied without a KV reply"))?;
    Ok((reply, applied.revision))
}

/// Ballast's cluster id (a UUID) folded into etcd's 64-bit cluster id.
pub fn cluster_id_u64(cluster_id: &str) -> u64 {
    match uuid::Uuid::parse_str(cluster_id) {
        Ok(id) => id.as_u64_pair().0,
        Err(_) => cluster_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }),
    }
}

/// The etcd response header of `replica` at `revision`.
pub fn header(replica: &Replica, revision: u64) -> epb::ResponseHeader {
    epb::ResponseHeader {
        cluster_id: cluster_id_u64(&replica.cluster_id),
        member_id: replica.id,
        revision: revision as i64,
        raft_term: replica.consensus.term(),
    }
}
