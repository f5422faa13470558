//! Wire commands to state-machine commands. Only shape is checked here (required fields,
//! duplicate slices); the fleet module validates content.

use std::collections::BTreeMap;
use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use tonic::Status;

use crate::error::invalid;
use crate::fleet::FleetCommand;

fn slices(field: &str, list: Vec<pb::QuotaSlice>) -> Result<BTreeMap<String, u64>, Status> {
    let mut map = BTreeMap::new();
    for slice in list {
        if map.insert(slice.shard.clone(), slice.amount).is_some() {
            return Err(invalid(
                field,
                format!("shard {:?} appears twice", slice.shard),
            ));
        }
    }
    Ok(map)
}

/// Converts a wire command. `default_lease` fills in registrations that name no lease.
pub fn to_fleet(
    command: Option<pb::Command>,
    default_lease: Duration,
) -> Result<FleetCommand, Status> {
    let Some(pb::Command {
        command: Some(command),
    }) = command
    else {
        return Err(invalid("command", "no command given"));
    };
    if let Wire::RegisterShard(c) = &command {
        ballast_protocol::validate::validate_lease_ms(c.lease_ttl_ms)
            .map_err(|e| invalid(e.field, e.reason))?;
    }
    Ok(match command {
        Wire::RegisterShard(c) => FleetCommand::RegisterShard {
            id: c.id,
            address: c.address,
            az: c.az,
            now_ms: ballast_protocol::clock::unix_ms(),
            lease_ttl_ms: if c.lease_ttl_ms == 0 {
                default_lease.as_millis() as u64
            } else {
                c.lease_ttl_ms
            },
        },
        Wire::DrainShard(c) => FleetCommand::DrainShard { id: c.id },
        Wire::ActivateShard(c) => FleetCommand::ActivateShard { id: c.id },
        Wire::RemoveShard(c) => FleetCommand::RemoveShard { id: c.id },
        Wire::AssignDomains(c) => FleetCommand::AssignDomains {
            assignments: c
                .assignments
                .into_iter()
                .map(|a| (a.domain, a.shard))
                .collect(),
            allow_move: c.allow_move,
        },
        Wire::UnassignDomains(c) => FleetCommand::UnassignDomains { domains: c.domains },
        Wire::BindCluster(c) => FleetCommand::BindCluster {
            cluster: c.cluster,
            shard: c.shard,
        },
        Wire::MoveCluster(c) => FleetCommand::MoveCluster {
            cluster: c.cluster,
            shard: c.shard,
        },
        Wire::UnbindCluster(c) => FleetCommand::UnbindCluster { cluster: c.cluster },
        Wire::SetQuota(c) => FleetCommand::SetQuota {
            provider: c.provider,
            region: c.region,
            total: c.total,
            slices: slices("slices", c.slices)?,
        },
        Wire::SetQuotaSlices(c) => FleetCommand::SetQuotaSlices {
            provider: c.provider,
            region: c.region,
            slices: slices("slices", c.slices)?,
        },
        Wire::DeleteQuota(c) => FleetCommand::DeleteQuota {
            provider: c.provider,
            region: c.region,
        },
        Wire::SetProvider(c) => FleetCommand::SetProvider {
            name: c.name,
            endpoint: c.endpoint,
            region: c.region,
            capacity_types: c.capacity_types,
        },
        Wire::RemoveProvider(c) => FleetCommand::RemoveProvider { name: c.name },
        Wire::Batch(b) => FleetCommand::Batch {
            commands: b
                .commands
                .into_iter()
                .map(|c| to_fleet(Some(c), default_lease))
                .collect::<Result<_, _>>()?,
        },
    })
}
