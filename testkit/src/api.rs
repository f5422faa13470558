//! One-call helpers over the public API that tests and tools repeat: the current revision,
//! assigning a domain, and the machines a shard reports as assigned.

use ballast_protocol::client::BallastClient;
use ballast_protocol::pb;

/// The cluster's current revision, read linearizably through `client`.
pub async fn current_revision(client: &BallastClient) -> u64 {
    client
        .fleet(|mut c, req| async move {
            c.list_shards(req.wrap(pb::ListShardsRequest { options: None }))
                .await
        })
        .await
        .expect("listing shards")
        .header
        .expect("header")
        .revision
}

/// Assigns `domain` to `shard` (moving it from another shard only with `allow_move`) and
/// returns the revision of the write; panics if the cluster refuses.
pub async fn assign_domain(
    client: &BallastClient,
    domain: &str,
    shard: &str,
    allow_move: bool,
) -> u64 {
    client
        .write(pb::Command {
            command: Some(pb::command::Command::AssignDomains(pb::AssignDomains {
                assignments: vec![pb::DomainAssignment {
                    domain: domain.into(),
                    shard: shard.into(),
                }],
                allow_move,
            })),
        })
        .await
        .unwrap_or_else(|e| panic!("assigning {domain} to {shard}: {e}"))
        .header
        .expect("header")
        .revision
}

/// Machines a shard reports as assigned to demand.
pub fn assigned_machines(status: &pb::ShardStatusResponse) -> u64 {
    status
        .machines_by_state
        .get("assigned")
        .copied()
        .unwrap_or(0)
}
