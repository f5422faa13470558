//! `ballastctl shard ...`

use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use ballast_protocol::pb::shard_worker_client::ShardWorkerClient;
use clap::Subcommand;
use serde_json::json;

use super::command;
use crate::Context;
use crate::output::{Rendered, revision, table, write_result};

/// Shard commands.
#[derive(Subcommand, Debug)]
pub enum ShardCmd {
    /// All registered shards.
    List,
    /// One shard with its domains, clusters and quota slices.
    Show {
        /// Shard id.
        id: String,
    },
    /// Stop giving the shard new domains, bindings or quota.
    Drain {
        /// Shard id.
        id: String,
    },
    /// Undo a drain.
    Activate {
        /// Shard id.
        id: String,
    },
    /// Register a shard by hand (shard workers register themselves).
    Register {
        /// Shard id.
        id: String,
        /// Address the shard serves on.
        #[arg(long)]
        address: String,
        /// AZ of the shard.
        #[arg(long)]
        az: String,
        /// Lease length in milliseconds (0 = coordinator default).
        #[arg(long, default_value_t = 0)]
        lease_ms: u64,
    },
    /// Ask a shard worker itself what it holds (its cache), e.g. during a coordinator outage.
    WorkerStatus {
        /// The worker's address (`host:port`).
        address: String,
    },
    /// Remove a shard: its domains, bindings and quota slices go back to the pool.
    Remove {
        /// Shard id.
        id: String,
    },
}

fn slices_json(slices: &[pb::QuotaSliceOf]) -> Vec<serde_json::Value> {
    slices
        .iter()
        .map(|q| {
            json!({ "provider": q.provider, "region": q.region, "amount": q.amount, "granted": q.granted })
        })
        .collect()
}

/// The two lines listing what a shard holds.
fn holdings_text(domains: &[String], clusters: &[String]) -> String {
    format!(
        "domains ({}): {}\nclusters ({}): {}",
        domains.len(),
        domains.join(" "),
        clusters.len(),
        clusters.join(" ")
    )
}

/// Shards as a table, with lease time left (by this machine's clock against the leader's).
pub(crate) fn shards_table(shards: &[pb::Shard]) -> String {
    let now = ballast_protocol::clock::unix_ms();
    let lease = |expires: u64| {
        if expires >= now {
            format!("{}s left", (expires - now) / 1000)
        } else {
            format!("expired {}s ago", (now - expires) / 1000)
        }
    };
    table(
        &[
            "id", "az", "status", "lease", "address", "domains", "bindings",
        ],
        shards
            .iter()
            .map(|s| {
                vec![
                    s.id.clone(),
                    s.az.clone(),
                    s.status.clone(),
                    lease(s.lease_expires_at_ms),
                    s.address.clone(),
                    s.domain_count.to_string(),
                    s.binding_count.to_string(),
                ]
            })
            .collect(),
    )
}

pub(crate) fn shard_json(s: &pb::Shard) -> serde_json::Value {
    json!({
        "id": s.id, "address": s.address, "az": s.az, "status": s.status,
        "registered_at_ms": s.registered_at_ms, "lease_expires_at_ms": s.lease_expires_at_ms,
        "domains": s.domain_count, "bindings": s.binding_count,
    })
}

/// All registered shards (`ballastctl shard list`, and the shard table of `cluster status`).
pub(crate) async fn list(ctx: &Context) -> anyhow::Result<pb::ListShardsResponse> {
    let options = ctx.read_options();
    Ok(ctx
        .client
        .fleet(|mut c, req| async move {
            c.list_shards(req.wrap(pb::ListShardsRequest { options }))
                .await
        })
        .await?)
}

/// Runs a shard command.
pub async fn run(ctx: &Context, cmd: ShardCmd) -> anyhow::Result<Rendered> {
    let (what, wire) = match cmd {
        ShardCmd::List => {
            let r = list(ctx).await?;
            return Ok(Rendered {
                json: json!({
                    "revision": revision(&r.header),
                    "shards": r.shards.iter().map(shard_json).collect::<Vec<_>>(),
                }),
                human: shards_table(&r.shards),
            });
        }
        ShardCmd::Show { id } => {
            let options = ctx.read_options();
            let r = ctx
                .client
                .fleet(|mut c, req| {
                    let id = id.clone();
                    async move {
                        c.get_shard(req.wrap(pb::GetShardRequest { options, id }))
                            .await
                    }
                })
                .await?;
            let shard = r.shard.clone().unwrap_or_default();
            let slices = slices_json(&r.slices);
            let mut json = shard_json(&shard);
            json["revision"] = json!(revision(&r.header));
            json["domain_list"] = json!(r.domains);
            json["clusters"] = json!(r.clusters);
            json["slices"] = json!(slices);
            let human = format!(
                "shard {} ({}) in {} at {}\n{}\nquota slices: {}",
                shard.id,
                shard.status,
                shard.az,
                shard.address,
                holdings_text(&r.domains, &r.clusters),
                r.slices
                    .iter()
                    .map(|s| format!("{}/{}={}", s.provider, s.region, s.amount))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            return Ok(Rendered { json, human });
        }
        ShardCmd::WorkerStatus { address } => {
            let uri = ballast_protocol::client::endpoint_uri(&address);
            let endpoint = tonic::transport::Endpoint::from_shared(uri)
                .map_err(|e| anyhow::anyhow!("shard worker address {address:?}: {e}"))?
                .connect_timeout(std::time::Duration::from_secs(3));
            let mut client = ShardWorkerClient::new(ballast_tls::client::lazy_channel(
                endpoint,
                ctx.tls.as_ref(),
            ));
            let s = client
                .status(pb::ShardStatusRequest {})
                .await
                .map_err(|e| anyhow::anyhow!("shard worker at {address}: {}", e.message()))?
                .into_inner();
            let slices = slices_json(&s.slices);
            let mut fenced: Vec<(&String, &String)> = s.fenced.iter().collect();
            fenced.sort();
            let mut human = format!(
                "shard {} ({}) epoch {} status {:?} revision {} term {} restore epoch {}\ncoordinator reachable: {} (last contact {} ms ago)\n{}",
                s.shard_id,
                s.az,
                s.epoch,
                s.status,
                s.revision,
                s.term,
                s.restore_epoch,
                s.coordinator_reachable,
                s.cache_age_ms,
                holdings_text(&s.domains, &s.clusters),
            );
            for (grant, why) in &fenced {
                human.push_str(&format!("\nfenced {grant}: {why}"));
            }
            return Ok(Rendered {
                json: json!({
                    "id": s.shard_id, "az": s.az, "epoch": s.epoch, "status": s.status,
                    "revision": s.revision, "term": s.term, "domains": s.domains,
                    "clusters": s.clusters, "slices": slices,
                    "coordinator_reachable": s.coordinator_reachable, "cache_age_ms": s.cache_age_ms,
                    "restore_epoch": s.restore_epoch, "domain_grants": s.domain_grants,
                    "cluster_grants": s.cluster_grants,
                    "fenced": s.fenced,
                }),
                human,
            });
        }
        ShardCmd::Drain { id } => (
            format!("shard {id} draining"),
            Wire::DrainShard(pb::DrainShard { id }),
        ),
        ShardCmd::Activate { id } => (
            format!("shard {id} active"),
            Wire::ActivateShard(pb::ActivateShard { id }),
        ),
        ShardCmd::Register {
            id,
            address,
            az,
            lease_ms,
        } => (
            format!("shard {id} registered"),
            Wire::RegisterShard(pb::RegisterShard {
                id,
                address,
                az,
                lease_ttl_ms: lease_ms,
            }),
        ),
        ShardCmd::Remove { id } => (
            format!("shard {id} removed"),
            Wire::RemoveShard(pb::RemoveShard { id }),
        ),
    };
    let response = ctx.client.write(command(wire)).await?;
    Ok(write_result(what, &response))
}
