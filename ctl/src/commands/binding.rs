//! `ballastctl binding ...`

use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use clap::Subcommand;
use serde_json::json;

use super::{PAGE, all_pages, command};
use crate::Context;
use crate::output::{Rendered, table, write_result};

/// Binding commands.
#[derive(Subcommand, Debug)]
pub enum BindingCmd {
    /// Bind a cluster to a shard (the first binding wins).
    Bind {
        /// Cluster id.
        cluster: String,
        /// Shard id.
        shard: String,
    },
    /// Move a bound cluster to another shard.
    Move {
        /// Cluster id.
        cluster: String,
        /// New shard id.
        shard: String,
    },
    /// Remove a cluster's binding.
    Unbind {
        /// Cluster id.
        cluster: String,
    },
    /// Bindings, optionally of one shard.
    List {
        /// Only this shard's clusters.
        #[arg(long)]
        shard: Option<String>,
    },
}

/// Runs a binding command.
pub async fn run(ctx: &Context, cmd: BindingCmd) -> anyhow::Result<Rendered> {
    let (what, wire) = match cmd {
        BindingCmd::Bind { cluster, shard } => (
            format!("cluster {cluster} bound to shard {shard}"),
            Wire::BindCluster(pb::BindCluster { cluster, shard }),
        ),
        BindingCmd::Move { cluster, shard } => (
            format!("cluster {cluster} moved to shard {shard}"),
            Wire::MoveCluster(pb::MoveCluster { cluster, shard }),
        ),
        BindingCmd::Unbind { cluster } => (
            format!("cluster {cluster} unbound"),
            Wire::UnbindCluster(pb::UnbindCluster { cluster }),
        ),
        BindingCmd::List { shard } => {
            let shard = shard.unwrap_or_default();
            let (revision, all) = all_pages(|after| {
                let request = pb::ListBindingsRequest {
                    options: ctx.read_options(),
                    shard: shard.clone(),
                    after,
                    limit: PAGE,
                };
                async move {
                    let page = ctx
                        .client
                        .fleet(|mut c, req| {
                            let request = request.clone();
                            async move { c.list_bindings(req.wrap(request)).await }
                        })
                        .await?;
                    Ok((page.header, page.bindings, page.next_after))
                }
            })
            .await?;
            return Ok(Rendered {
                json: json!({
                    "revision": revision,
                    "bindings": all.iter().map(|b| json!({ "cluster": b.cluster, "shard": b.shard })).collect::<Vec<_>>(),
                }),
                human: table(
                    &["cluster", "shard"],
                    all.into_iter().map(|b| vec![b.cluster, b.shard]).collect(),
                ),
            });
        }
    };
    Ok(write_result(what, &ctx.client.write(command(wire)).await?))
}
