//! `ballastctl domain ...`

use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use clap::Subcommand;
use serde_json::json;

use super::{PAGE, all_pages, command};
use crate::Context;
use crate::output::{Rendered, table, write_result};

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
            let shard = shard.unwrap_or_default();
            let (revision, all) = all_pages(|after| {
                let request = pb::ListDomainsRequest {
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
                            async move { c.list_domains(req.wrap(request)).await }
                        })
                        .await?;
                    Ok((page.header, page.domains, page.next_after))
                }
            })
            .await?;
            Ok(Rendered {
                json: json!({
                    "revision": revision,
                    "domains": all.iter().map(|d| json!({ "domain": d.domain, "shard": d.shard })).collect::<Vec<_>>(),
                }),
                human: table(
                    &["domain", "shard"],
                    all.into_iter().map(|d| vec![d.domain, d.shard]).collect(),
                ),
            })
        }
    }
}
