//! etcd's v3 API on the client port: `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance` and `Auth`
//! (what each does on Ballast: docs/etcd-api.md). Writes go through Raft on the leader (followers
//! forward them once); reads are linearizable unless `serializable`; watches are served by any
//! replica from its applied history, so they survive leader changes. Lease expiry is decided by
//! the leader and replicated as a revoke; a new leader gives every lease a fresh TTL.

mod auth;
mod cluster;
mod convert;
mod kv;
mod lease;
mod maintenance;
mod watch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_protocol::etcdserverpb as epb;
use tonic::Status;

use crate::fleet::FleetRequest;
use crate::fleet::{Applied, FleetCommand};
use crate::kv::{KvCommand, KvReply};
use crate::replica::{Replica, Route};

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

    /// Proposes a KV command on the leader (this replica must lead).
    async fn propose(&self, command: KvCommand) -> Result<(KvReply, u64), Status> {
        // Bad input is refused here so it never reaches the log (the same checks run again
        // when the entry applies).
        crate::kv::check_command(&command).map_err(|e| crate::error::kv_status(&e))?;
        let applied: Applied = self
            .replica
            .propose(FleetRequest {
                request_id: String::new(),
                command: FleetCommand::Kv(command),
            })
            .await?;
        let reply = applied
            .kv
            .ok_or_else(|| Status::internal("a KV command applied without a KV reply"))?;
        Ok((reply, applied.revision))
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
/// request's message) here if this replica leads, else the same call (`Client::method`) on the
/// leader, with the forwarded copy of the message; the answer wrapped for the caller.
macro_rules! on_leader_call {
    ($api:expr, $request:expr, $client:ident :: $method:ident, |$body:ident| $local:expr) => {{
        let (metadata, _, body) = $request.into_parts();
        let $body = &body;
        let answer = $api
            .on_leader(
                &metadata,
                || $local,
                |channel| async move {
                    let request = $api.replica.forwarded(Clone::clone($body));
                    Ok($client::new(channel).$method(request).await?.into_inner())
                },
            )
            .await?;
        Ok(Response::new(answer))
    }};
}
pub(crate) use on_leader_call;

impl EtcdApi {
    /// Runs `local` if this replica leads, else `forward` on a channel to the leader; while no
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
        F: Fn(tonic::transport::Channel) -> FF,
        FF: std::future::Future<Output = Result<T, Status>>,
    {
        self.replica.check_cluster(metadata)?;
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let attempt = match self.replica.route(metadata) {
                Ok(Route::Local) => local().await,
                Ok(Route::Forward(address)) => match self.replica.channel_to(&address) {
                    Ok(channel) => forward(channel).await,
                    Err(e) => Err(e.into()),
                },
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
