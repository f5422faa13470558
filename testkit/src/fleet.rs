//! A synthetic fleet loaded through the public API (benchmarks, the DR drill, tests), and a
//! complete listing of the replicated fleet state to compare two clusters with.

use ballast_protocol::client::{BallastClient, ClientError};
use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;

/// AZ labels used by synthetic fleets.
pub const AZS: [&str; 3] = ["az-a", "az-b", "az-c"];

/// Commands per write when loading (well under the 50K batch limit).
const BATCH: usize = 10_000;

/// How big a synthetic fleet is.
#[derive(Clone, Copy, Debug)]
pub struct FleetShape {
    /// Shards.
    pub shards: usize,
    /// Topology domains, spread over the shards.
    pub domains: usize,
    /// Cluster → shard bindings.
    pub bindings: usize,
    /// (provider, region) quotas, each sliced over every shard.
    pub quotas: usize,
}

impl FleetShape {
    /// The coordinator state of a 100M-machine fleet (design brief): ~200 shards, ~100K
    /// topology domains, ~20K clusters, quotas for 30 (provider, region) pairs.
    pub const HUNDRED_MILLION: FleetShape = FleetShape {
        shards: 200,
        domains: 100_000,
        bindings: 20_000,
        quotas: 30,
    };
}

/// Id of synthetic shard `i`.
pub fn shard_id(i: usize) -> String {
    format!("shard-{i:03}")
}

/// Name of synthetic domain `n` (in AZ `AZS[n % 3]`); [`assign_domains`] gives it to shard
/// `n % shards`.
pub fn domain_name(n: usize) -> String {
    format!("topology.kubernetes.io/zone={}/rack=r{:06}", AZS[n % 3], n)
}

fn command(inner: Wire) -> pb::Command {
    pb::Command {
        command: Some(inner),
    }
}

async fn batch(client: &BallastClient, commands: Vec<pb::Command>) -> Result<(), ClientError> {
    client
        .write(command(Wire::Batch(pb::Batch { commands })))
        .await
        .map(|_| ())
}

/// Registers shards `0..count` (long leases, spread over the AZs) in one write.
pub async fn register_shards(client: &BallastClient, count: usize) -> Result<(), ClientError> {
    let commands = (0..count)
        .map(|i| {
            command(Wire::RegisterShard(pb::RegisterShard {
                id: shard_id(i),
                address: format!("10.0.{}.{}:7800", i / 250, i % 250),
                az: AZS[i % 3].into(),
                lease_ttl_ms: 3_600_000,
            }))
        })
        .collect();
    batch(client, commands).await
}

/// Assigns `count` domains round-robin over `shards` shards.
pub async fn assign_domains(
    client: &BallastClient,
    count: usize,
    shards: usize,
) -> Result<(), ClientError> {
    for start in (0..count).step_by(BATCH) {
        let assignments = (start..(start + BATCH).min(count))
            .map(|n| pb::DomainAssignment {
                domain: domain_name(n),
                shard: shard_id(n % shards),
            })
            .collect();
        client
            .write(command(Wire::AssignDomains(pb::AssignDomains {
                assignments,
                allow_move: false,
            })))
            .await?;
    }
    Ok(())
}

/// Binds `count` clusters round-robin over `shards` shards.
pub async fn bind_clusters(
    client: &BallastClient,
    count: usize,
    shards: usize,
) -> Result<(), ClientError> {
    for start in (0..count).step_by(BATCH) {
        let commands = (start..(start + BATCH).min(count))
            .map(|n| {
                command(Wire::BindCluster(pb::BindCluster {
                    cluster: format!("cluster-{n:06}"),
                    shard: shard_id(n % shards),
                }))
            })
            .collect();
        batch(client, commands).await?;
    }
    Ok(())
}

/// Registers providers and sets `count` quotas, each sliced evenly over `shards` shards.
pub async fn set_quotas(
    client: &BallastClient,
    count: usize,
    shards: usize,
) -> Result<(), ClientError> {
    let mut commands = Vec::new();
    for q in 0..count {
        let (provider, region) = (format!("provider-{}", q / 6), format!("region-{}", q % 6));
        if q % 6 == 0 {
            commands.push(command(Wire::SetProvider(pb::SetProvider {
                name: provider.clone(),
                endpoint: format!("https://{provider}.example"),
                region: region.clone(),
                capacity_types: vec!["on-demand".into(), "spot".into()],
            })));
        }
        let per_shard = 500_000u64;
        commands.push(command(Wire::SetQuota(pb::SetQuota {
            provider,
            region,
            total: per_shard * shards as u64,
            slices: (0..shards)
                .map(|s| pb::QuotaSlice {
                    shard: shard_id(s),
                    amount: per_shard,
                })
                .collect(),
        })));
    }
    batch(client, commands).await
}

/// Loads a whole synthetic fleet of `shape`.
pub async fn load_fleet(client: &BallastClient, shape: FleetShape) -> Result<(), ClientError> {
    register_shards(client, shape.shards).await?;
    assign_domains(client, shape.domains, shape.shards).await?;
    bind_clusters(client, shape.bindings, shape.shards).await?;
    set_quotas(client, shape.quotas, shape.shards).await
}

/// Every replicated fleet table, as listed through the API (linearizable reads). Shard lease
/// expiry is left out: leases are kept by the leader in memory, not replicated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetListing {
    /// Shards.
    pub shards: Vec<pb::Shard>,
    /// Domain assignments.
    pub domains: Vec<pb::DomainAssignment>,
    /// Cluster bindings.
    pub bindings: Vec<pb::Binding>,
    /// Quotas with slices.
    pub quotas: Vec<pb::Quota>,
    /// Providers.
    pub providers: Vec<pb::Provider>,
}

/// Lists every table of the fleet.
pub async fn list_fleet(client: &BallastClient) -> Result<FleetListing, ClientError> {
    let mut listing = FleetListing {
        shards: client
            .fleet(|mut c, req| async move {
                c.list_shards(req.wrap(pb::ListShardsRequest { options: None }))
                    .await
            })
            .await?
            .shards,
        ..FleetListing::default()
    };
    for shard in &mut listing.shards {
        shard.lease_expires_at_ms = 0;
    }
    listing.domains = pages(|after| async move {
        let page = client
            .fleet(|mut c, req| {
                let after = after.clone();
                async move {
                    c.list_domains(req.wrap(pb::ListDomainsRequest {
                        after,
                        limit: 10_000,
                        ..Default::default()
                    }))
                    .await
                }
            })
            .await?;
        Ok((page.domains, page.next_after))
    })
    .await?;
    listing.bindings = pages(|after| async move {
        let page = client
            .fleet(|mut c, req| {
                let after = after.clone();
                async move {
                    c.list_bindings(req.wrap(pb::ListBindingsRequest {
                        after,
                        limit: 10_000,
                        ..Default::default()
                    }))
                    .await
                }
            })
            .await?;
        Ok((page.bindings, page.next_after))
    })
    .await?;
    listing.quotas = client
        .fleet(|mut c, req| async move {
            c.list_quotas(req.wrap(pb::ListQuotasRequest { options: None }))
                .await
        })
        .await?
        .quotas;
    listing.providers = client
        .fleet(|mut c, req| async move {
            c.list_providers(req.wrap(pb::ListProvidersRequest { options: None }))
                .await
        })
        .await?
        .providers;
    Ok(listing)
}

/// Every page of a paged listing: `fetch(after)` returns a page and the cursor of the next one
/// ("" after the last).
async fn pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, ClientError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), ClientError>>,
{
    let mut items = Vec::new();
    let mut after = String::new();
    loop {
        let (page, next) = fetch(after).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        after = next;
    }
}
