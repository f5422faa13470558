//! `ballastctl provider ...`

use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use clap::Subcommand;
use serde_json::json;

use super::command;
use crate::Context;
use crate::output::{Rendered, revision, table, write_result};

/// Provider commands.
#[derive(Subcommand, Debug)]
pub enum ProviderCmd {
    /// Register or update a provider.
    Set {
        /// Provider name.
        name: String,
        /// Provider API endpoint.
        #[arg(long)]
        endpoint: String,
        /// Region it serves.
        #[arg(long)]
        region: String,
        /// Capacity type it offers (repeatable), e.g. `--capacity-type gpu-a100`.
        #[arg(long = "capacity-type")]
        capacity_types: Vec<String>,
    },
    /// Remove a provider (refused while quotas reference it).
    Remove {
        /// Provider name.
        name: String,
    },
    /// All providers.
    List,
}

/// Runs a provider command.
pub async fn run(ctx: &Context, cmd: ProviderCmd) -> anyhow::Result<Rendered> {
    let (what, wire) = match cmd {
        ProviderCmd::Set {
            name,
            endpoint,
            region,
            capacity_types,
        } => (
            format!("provider {name} set"),
            Wire::SetProvider(pb::SetProvider {
                name,
                endpoint,
                region,
                capacity_types,
            }),
        ),
        ProviderCmd::Remove { name } => (
            format!("provider {name} removed"),
            Wire::RemoveProvider(pb::RemoveProvider { name }),
        ),
        ProviderCmd::List => {
            let options = ctx.read_options();
            let r = ctx
                .client
                .fleet(|mut c, req| async move {
                    c.list_providers(req.wrap(pb::ListProvidersRequest { options }))
                        .await
                })
                .await?;
            return Ok(Rendered {
                json: json!({
                    "revision": revision(&r.header),
                    "providers": r.providers.iter().map(|p| json!({
                        "name": p.name, "endpoint": p.endpoint, "region": p.region,
                        "capacity_types": p.capacity_types,
                    })).collect::<Vec<_>>(),
                }),
                human: table(
                    &["name", "region", "endpoint", "capacity types"],
                    r.providers
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                p.region.clone(),
                                p.endpoint.clone(),
                                p.capacity_types.join(","),
                            ]
                        })
                        .collect(),
                ),
            });
        }
    };
    Ok(write_result(what, &ctx.client.write(command(wire)).await?))
}
