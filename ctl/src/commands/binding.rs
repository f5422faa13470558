//! `ballastctl binding ...`

use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use clap::Subcommand;

use super::command;
use super::paging::paged;
use crate::Context;
use crate::output::{Rendered, shard_holdings, write_result};

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
            let request = pb::ListBindingsRequest {
                options: ctx.read_options(),
                shard: shard.unwrap_or_default(),
                ..Default::default()
            };
            let (revision, all) = paged(ctx, request).await?;
            return Ok(shard_holdings(
                revision,
                "bindings",
                "cluster",
                all.into_iter().map(|b| (b.cluster, b.shard)).collect(),
            ));
        }
    };
    Ok(write_result(what, &ctx.client.write(command(wire)).await?))
}
