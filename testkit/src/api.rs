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

/// What [`allocate`] sets up: a provider registered with a quota sliced among shards, one cluster
/// bound and one domain assigned.
pub struct Allocation<'a> {
    /// Provider (and quota provider) name.
    pub provider: &'a str,
    /// Its endpoint, as registered.
    pub endpoint: &'a str,
    /// Region of the quota.
    pub region: &'a str,
    /// Quota total.
    pub total: u64,
    /// Slices by shard.
    pub slices: &'a [(&'a str, u64)],
    /// (cluster, shard) to bind.
    pub cluster: (&'a str, &'a str),
    /// (domain, shard) to assign.
    pub domain: (&'a str, &'a str),
}

/// Registers the provider, sets the quota, binds the cluster and assigns the domain, in one
/// batch (one revision).
pub async fn allocate(client: &BallastClient, grant: Allocation<'_>) -> u64 {
    use ballast_protocol::pb::command::Command as Wire;
    let cmd = |inner| pb::Command {
        command: Some(inner),
    };
    client
        .write(cmd(Wire::Batch(pb::Batch {
            commands: vec![
                cmd(Wire::SetProvider(pb::SetProvider {
                    name: grant.provider.into(),
                    endpoint: grant.endpoint.into(),
                    region: grant.region.into(),
                    capacity_types: vec![],
                })),
                cmd(Wire::SetQuota(pb::SetQuota {
                    provider: grant.provider.into(),
                    region: grant.region.into(),
                    total: grant.total,
                    slices: grant
                        .slices
                        .iter()
                        .map(|(shard, amount)| pb::QuotaSlice {
                            shard: shard.to_string(),
                            amount: *amount,
                        })
                        .collect(),
                })),
                cmd(Wire::BindCluster(pb::BindCluster {
                    cluster: grant.cluster.0.into(),
                    shard: grant.cluster.1.into(),
                })),
                cmd(Wire::AssignDomains(pb::AssignDomains {
                    assignments: vec![pb::DomainAssignment {
                        domain: grant.domain.0.into(),
                        shard: grant.domain.1.into(),
                    }],
                    allow_move: false,
                })),
            ],
        })))
        .await
        .expect("provider, quota, binding and domain")
        .header
        .expect("a header")
        .revision
}

/// [`allocate`] for the one-shard layout of the provider tests: provider `sim` in region
/// `local` at `endpoint` with `total` machines, all sliced to shard `s1`, cluster `c1` bound to
/// it and `domain` assigned to it.
pub async fn allocate_to_s1(
    client: &BallastClient,
    endpoint: &str,
    domain: &str,
    total: u64,
) -> u64 {
    allocate(
        client,
        Allocation {
            provider: "sim",
            endpoint,
            region: "local",
            total,
            slices: &[("s1", total)],
            cluster: ("c1", "s1"),
            domain: (domain, "s1"),
        },
    )
    .await
}
