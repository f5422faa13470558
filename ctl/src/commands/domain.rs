//! `ballastctl domain ...`

use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use clap::Subcommand;

use super::command;
use super::paging::paged;
use crate::Context;
use crate::output::{Rendered, shard_holdings, write_result};

/// Domain commands.
#[derive(Subcommand, Debug)]
pub enum DomainCmd {
    /// Give a topology domain (`label=value[/label=value...]`) to a shard.
    Assign {
        /// Domain, e.g. `topology.kubernetes.io/zone=az-a/rack=r17`.
        domain: String,
        /// Shard id.
        shard: String,
        /// Take the domain away from its current owner if another shard holds it.
        #[arg(long = "move")]
        allow_move: bool,
    },
    /// Return a domain to the pool.
    Unassign {
        /// Domain.
        domain: String,
    },
    /// Domains and their owners.
    List {
        /// Only this shard's domains.
        #[arg(long)]
        shard: Option<String>,
    },
}

/// Runs a domain command.
pub async fn run(ctx: &Context, cmd: DomainCmd) -> anyhow::Result<Rendered> {
    match cmd {
        DomainCmd::Assign {
            domain,
            shard,
            allow_move,
        } => {
            let what = format!("domain {domain} assigned to shard {shard}");
            let wire = Wire::AssignDomains(pb::AssignDomains {
                assignments: vec![pb::DomainAssignment { domain, shard }],
                allow_move,
            });
            Ok(write_result(what, &ctx.client.write(command(wire)).await?))
        }
        DomainCmd::Unassign { domain } => {
            let what = format!("domain {domain} unassigned");
            let wire = Wire::UnassignDomains(pb::UnassignDomains {
                domains: vec![domain],
            });
            Ok(write_result(what, &ctx.client.write(command(wire)).await?))
        }
        DomainCmd::List { shard } => {
            let request = pb::ListDomainsRequest {
                options: ctx.read_options(),
                shard: shard.unwrap_or_default(),
                ..Default::default()
            };
            let (revision, all) = paged(ctx, request).await?;
            Ok(shard_holdings(
                revision,
                "domains",
                "domain",
                all.into_iter().map(|d| (d.domain, d.shard)).collect(),
            ))
        }
    }
}
