//! Shared helpers for the coordinator's process-level tests.
#![allow(dead_code)]

use std::path::Path;

use ballast_protocol::client::BallastClient;
use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;

/// Path of the `ballast-coord` binary cargo built for these tests.
pub fn coord_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ballast-coord"))
}

/// Wraps a wire command.
pub fn cmd(inner: Wire) -> pb::Command {
    pb::Command {
        command: Some(inner),
    }
}

/// Registers a shard.
pub fn register(id: &str, az: &str) -> pb::Command {
    cmd(Wire::RegisterShard(pb::RegisterShard {
        id: id.into(),
        address: format!("127.0.0.1:9{}", id.len()),
        az: az.into(),
        lease_ttl_ms: 60_000,
    }))
}

/// Assigns one domain.
pub fn assign(domain: &str, shard: &str) -> pb::Command {
    cmd(Wire::AssignDomains(pb::AssignDomains {
        assignments: vec![pb::DomainAssignment {
            domain: domain.into(),
            shard: shard.into(),
        }],
        allow_move: false,
    }))
}

/// Every domain assignment as the replica behind `client` sees it (stale = local).
pub async fn domains(client: &BallastClient, stale: bool) -> Vec<(String, String)> {
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let request = pb::ListDomainsRequest {
            options: Some(pb::ReadOptions { stale }),
            shard: String::new(),
            after: after.clone(),
            limit: 10_000,
        };
        let page = client
            .fleet(|mut c, req| {
                let request = request.clone();
                async move { c.list_domains(req.wrap(request)).await }
            })
            .await
            .expect("listing domains");
        all.extend(page.domains.into_iter().map(|d| (d.domain, d.shard)));
        if page.next_after.is_empty() {
            return all;
        }
        after = page.next_after;
    }
}
