//! Mutual TLS of a shard worker: its certificate (role `shard/<id>`) for calls to the
//! coordinators and for its own ports, and who may call its status and demand API.

use std::sync::Arc;

use ballast_tls::identity::Policy;
use ballast_tls::{ClientTls, Identity, Role, ServerTls, TlsFiles};

use crate::worker::WorkerError;

/// A worker's TLS material.
pub struct Security {
    /// The worker's gRPC port (client certificate required).
    pub grpc: Arc<ServerTls>,
    /// The HTTP port (client certificate verified when given).
    pub http: Arc<ServerTls>,
    /// Calls to the coordinators.
    pub client: Arc<ClientTls>,
}

impl Security {
    /// Loads the files; the certificate must grant `shard/<shard_id>`, or every coordinator
    /// would refuse this worker's heartbeats.
    pub fn load(files: &TlsFiles, shard_id: &str) -> Result<Self, WorkerError> {
        let config = |e: ballast_tls::TlsError| WorkerError::Config(e.to_string());
        files
            .require_role(&Role::Shard(shard_id.to_string()))
            .map_err(config)?;
        Ok(Self {
            grpc: ServerTls::grpc(files).map_err(config)?,
            http: ServerTls::http(files).map_err(config)?,
            client: ClientTls::from_files(files).map_err(config)?,
        })
    }
}

/// Who may call a worker's gRPC port: anyone with a Ballast role reads its status and
/// allocations; only an admin submits demand.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardApiPolicy;

impl Policy for ShardApiPolicy {
    fn check(&self, identity: &Identity, path: &str) -> Result<(), String> {
        if identity.roles.is_empty() {
            return Err("the certificate carries no Ballast role".into());
        }
        match path {
            "/ballast.v1.ShardWorker/Status" | "/ballast.v1.ShardWorker/Allocations" => Ok(()),
            _ if identity.has(&Role::Admin) => Ok(()),
            _ => Err("this call needs role admin".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_for_every_role_demand_for_admins() {
        let with = |roles| Identity {
            subject: "CN=t".into(),
            common_name: Some("t".into()),
            roles,
        };
        let policy = ShardApiPolicy;
        let demand = "/ballast.v1.ShardWorker/SubmitDemand";
        let status = "/ballast.v1.ShardWorker/Status";
        assert!(policy.check(&with(vec![Role::Admin]), demand).is_ok());
        for roles in [
            vec![Role::Readonly],
            vec![Role::Shard("s1".into())],
            vec![Role::Peer],
        ] {
            assert!(policy.check(&with(roles.clone()), status).is_ok());
            assert!(policy.check(&with(roles), demand).is_err());
        }
        assert!(policy.check(&with(vec![]), status).is_err());
    }
}
