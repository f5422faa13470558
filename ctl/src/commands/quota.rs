//! `ballastctl quota ...`

use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use clap::Subcommand;
use serde_json::json;

use super::command;
use crate::Context;
use crate::output::{Rendered, revision, table, write_result};

/// Quota commands.
#[derive(Subcommand, Debug)]
pub enum QuotaCmd {
    /// Set a (provider, region) quota and its slices (replaces all slices).
    Set {
        /// Provider name.
        provider: String,
        /// Region.
        region: String,
        /// Total capacity.
        #[arg(long)]
        total: u64,
        /// Per-shard slice `shard=N`; repeat for several. The sum may not exceed --total.
        #[arg(long = "slice", value_parser = parse_slice)]
        slices: Vec<(String, u64)>,
    },
    /// Delete a quota.
    Delete {
        /// Provider name.
        provider: String,
        /// Region.
        region: String,
    },
    /// All quotas with their slices.
    List,
}

fn parse_slice(raw: &str) -> Result<(String, u64), String> {
    let (shard, amount) = raw
        .split_once('=')
        .ok_or_else(|| format!("slice {raw:?} must look like shard=N"))?;
    let amount = amount
        .parse::<u64>()
        .map_err(|e| format!("slice {raw:?}: amount {amount:?} is not a whole number: {e}"))?;
    Ok((shard.to_string(), amount))
}

/// Runs a quota command.
pub async fn run(ctx: &Context, cmd: QuotaCmd) -> anyhow::Result<Rendered> {
    let (what, wire) = match cmd {
        QuotaCmd::Set {
            provider,
            region,
            total,
            slices,
        } => (
            format!("quota {provider}/{region} set to {total}"),
            Wire::SetQuota(pb::SetQuota {
                provider,
                region,
                total,
                slices: slices
                    .into_iter()
                    .map(|(shard, amount)| pb::QuotaSlice { shard, amount })
                    .collect(),
            }),
        ),
        QuotaCmd::Delete { provider, region } => (
            format!("quota {provider}/{region} deleted"),
            Wire::DeleteQuota(pb::DeleteQuota { provider, region }),
        ),
        QuotaCmd::List => {
            let options = ctx.read_options();
            let r = ctx
                .client
                .fleet(|mut c, req| async move {
                    c.list_quotas(req.wrap(pb::ListQuotasRequest { options }))
                        .await
                })
                .await?;
            let slices_text = |q: &pb::Quota| {
                q.slices
                    .iter()
                    .map(|s| format!("{}={}", s.shard, s.amount))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            return Ok(Rendered {
                json: json!({
                    "revision": revision(&r.header),
                    "quotas": r.quotas.iter().map(|q| json!({
                        "provider": q.provider, "region": q.region, "total": q.total,
                        "unallocated": q.unallocated,
                        "slices": q.slices.iter().map(|s| json!({ "shard": s.shard, "amount": s.amount })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                }),
                human: table(
                    &["provider", "region", "total", "unallocated", "slices"],
                    r.quotas
                        .iter()
                        .map(|q| {
                            vec![
                                q.provider.clone(),
                                q.region.clone(),
                                q.total.to_string(),
                                q.unallocated.to_string(),
                                slices_text(q),
                            ]
                        })
                        .collect(),
                ),
            });
        }
    };
    Ok(write_result(what, &ctx.client.write(command(wire)).await?))
}
