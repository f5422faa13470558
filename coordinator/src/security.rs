//! Mutual TLS of a replica and who may call what.
//!
//! One port carries client calls and Raft traffic (like Consul's server RPC port), so the
//! separation etcd gets from a second port comes from roles instead: Raft and the other
//! replica-to-replica calls need a `peer` certificate, and a client certificate — even an
//! admin's — is refused there. A follower checks a client's call before forwarding it to the
//! leader under its own peer certificate, so the leader lets forwarded calls through.

use std::sync::Arc;

use ballast_tls::identity::{AuthLayer, Policy};
use ballast_tls::{ClientTls, Identity, Role, ServerTls, TlsError, TlsFiles};

/// A replica's TLS material: the gRPC port, the HTTP port and its outgoing connections.
pub struct Security {
    /// gRPC port (client certificate required).
    pub grpc: Arc<ServerTls>,
    /// HTTP port (client certificate verified when given).
    pub http: Arc<ServerTls>,
    /// Calls to other replicas.
    pub client: Arc<ClientTls>,
}

impl Security {
    /// Loads every configuration from `files` (re-read later when they change).
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            grpc: ServerTls::grpc(files)?,
            http: ServerTls::http(files)?,
            client: ClientTls::from_files(files)?,
        })
    }

    /// The layer enforcing [`CoordinatorPolicy`].
    pub fn auth_layer() -> AuthLayer<CoordinatorPolicy> {
        AuthLayer::new(CoordinatorPolicy)
    }
}

/// Calls a `readonly` certificate may make: reads, watches and status.
const READS: &[&str] = &[
    "/ballast.v1.Fleet/ListShards",
    "/ballast.v1.Fleet/GetShard",
    "/ballast.v1.Fleet/ListDomains",
    "/ballast.v1.Fleet/ListBindings",
    "/ballast.v1.Fleet/ListQuotas",
    "/ballast.v1.Fleet/ListProviders",
    "/ballast.v1.Cluster/Status",
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Auth/AuthStatus",
    // A login is no read, but harmless: what its token allows is etcd auth's to decide, and
    // the certificate still gates every call made with it.
    "/etcdserverpb.Auth/Authenticate",
];

/// Calls a `shard/<id>` certificate may make; the handlers check the shard id in the body.
const SHARD_CALLS: &[&str] = &[
    "/ballast.v1.Assignments/Heartbeat",
    "/ballast.v1.Assignments/Watch",
    // Shards started with `--provider registry` follow the provider registry.
    "/ballast.v1.Fleet/ListProviders",
];

/// Who may call what on a replica's gRPC port.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoordinatorPolicy;

impl Policy for CoordinatorPolicy {
    fn check(&self, identity: &Identity, path: &str) -> Result<(), String> {
        // etcd's HTTP gateway paths are judged as the gRPC methods they stand for; its version
        // and health probes as a status read.
        let path = match ballast_protocol::etcd_gateway::grpc_method(path) {
            Some(method) => method,
            None if ballast_protocol::etcd_gateway::PROBES.contains(&path) => {
                "/etcdserverpb.Maintenance/Status"
            }
            None => path,
        };
        if identity.has(&Role::Peer) {
            return Ok(());
        }
        if path.starts_with("/ballast.v1.Raft/") {
            return Err("Raft traffic is accepted only from replicas (role peer)".into());
        }
        if identity.has(&Role::Admin) {
            return Ok(());
        }
        if identity.has(&Role::Readonly) && READS.contains(&path) {
            return Ok(());
        }
        let is_shard = identity.roles.iter().any(|r| matches!(r, Role::Shard(_)));
        if is_shard && SHARD_CALLS.contains(&path) {
            return Ok(());
        }
        Err(if identity.roles.is_empty() {
            "the certificate carries no Ballast role".into()
        } else if READS.contains(&path) {
            "reads need role readonly or admin".into()
        } else {
            "this call needs role admin".into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(roles: Vec<Role>) -> Identity {
        Identity {
            subject: "CN=test".into(),
            common_name: Some("test".into()),
            roles,
        }
    }

    #[test]
    fn each_role_reaches_exactly_its_calls() {
        let admin = holder(vec![Role::Admin]);
        let readonly = holder(vec![Role::Readonly]);
        let shard = holder(vec![Role::Shard("s1".into())]);
        let peer = holder(vec![Role::Peer]);
        let nobody = holder(vec![]);
        let policy = CoordinatorPolicy;
        let write = "/ballast.v1.Fleet/Write";
        let vote = "/ballast.v1.Raft/Vote";
        let put = "/etcdserverpb.KV/Put";
        for path in [write, put, "/ballast.v1.Cluster/RemoveMember", READS[0]] {
            assert!(policy.check(&admin, path).is_ok(), "{path}");
        }
        assert!(policy.check(&admin, vote).unwrap_err().contains("peer"));
        for path in READS {
            assert!(policy.check(&readonly, path).is_ok(), "{path}");
            // The provider registry is the one read a shard makes (`--provider registry`).
            let shard_reads = SHARD_CALLS.contains(path);
            assert_eq!(policy.check(&shard, path).is_ok(), shard_reads, "{path}");
        }
        for path in [
            write,
            put,
            vote,
            SHARD_CALLS[0],
            "/v3/kv/put",
            "/v3beta/kv/txn",
        ] {
            assert!(policy.check(&readonly, path).is_err(), "{path}");
        }
        // The gateway's paths are their gRPC methods: reads for readonly, all for admin.
        for path in ["/v3/kv/range", "/v3/watch", "/version", "/health"] {
            assert!(policy.check(&readonly, path).is_ok(), "{path}");
            assert!(policy.check(&shard, path).is_err(), "{path}");
        }
        assert!(policy.check(&admin, "/v3/kv/put").is_ok());
        for path in SHARD_CALLS {
            assert!(policy.check(&shard, path).is_ok(), "{path}");
        }
        assert!(policy.check(&shard, write).is_err());
        for path in [write, vote, put, READS[0]] {
            assert!(policy.check(&peer, path).is_ok(), "{path}");
            assert!(policy.check(&nobody, path).is_err(), "{path}");
        }
    }
}
