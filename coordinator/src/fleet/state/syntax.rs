//! The checks a command must pass before it reaches the log, needing no state: ids,
//! addresses, domain keys, batch sizes, slice lists.

use std::collections::{BTreeMap, BTreeSet};

use ballast_protocol::validate::{DomainKey, MAX_BATCH, validate_address, validate_id};

use crate::fleet::{FleetCommand, FleetError};

/// Most capacity types one provider may list.
const MAX_CAPACITY_TYPES: usize = 64;

pub(super) fn check_batch_size(what: &str, count: usize) -> Result<(), FleetError> {
    if count == 0 {
        return Err(FleetError::invalid(what, "must not be empty"));
    }
    if count > MAX_BATCH {
        return Err(FleetError::TooLarge {
            what: what.to_string(),
            count,
            limit: MAX_BATCH,
        });
    }
    Ok(())
}

fn check_quota_key(provider: &str, region: &str) -> Result<(), FleetError> {
    validate_id("provider", provider)?;
    validate_id("region", region)?;
    Ok(())
}

fn check_slices(slices: &BTreeMap<String, u64>) -> Result<(), FleetError> {
    if slices.len() > MAX_BATCH {
        return Err(FleetError::TooLarge {
            what: "slices".into(),
            count: slices.len(),
            limit: MAX_BATCH,
        });
    }
    for shard in slices.keys() {
        validate_id("slice shard", shard)?;
    }
    Ok(())
}

/// Every domain parses and appears once.
fn check_domains<'a>(
    field: &str,
    domains: impl Iterator<Item = &'a str>,
) -> Result<(), FleetError> {
    let mut seen = BTreeSet::new();
    for domain in domains {
        DomainKey::parse(domain)?;
        if !seen.insert(domain) {
            return Err(FleetError::invalid(
                field,
                format!("domain {domain:?} appears more than once"),
            ));
        }
    }
    Ok(())
}

/// Syntax checks that need no state; `depth` refuses nested batches.
pub(super) fn check_syntax(cmd: &FleetCommand, nested: bool) -> Result<(), FleetError> {
    match cmd {
        FleetCommand::Kv(_) | FleetCommand::KvAs { .. } | FleetCommand::Auth { .. } if nested => {
            return Err(FleetError::invalid(
                "command",
                "KV commands cannot be batched with fleet commands (use a KV transaction)",
            ));
        }
        FleetCommand::Kv(op) | FleetCommand::KvAs { command: op, .. } => {
            crate::kv::check_command(op)?
        }
        FleetCommand::Auth { .. } => {}
        FleetCommand::CreateJoinToken { .. } | FleetCommand::UseJoinToken { .. } if nested => {
            return Err(FleetError::invalid(
                "command",
                "join-token commands cannot be batched",
            ));
        }
        FleetCommand::CreateJoinToken { .. } | FleetCommand::UseJoinToken { .. } => {}
        FleetCommand::Nudge if nested => {
            return Err(FleetError::invalid(
                "command",
                "a nudge is internal to the replication log",
            ));
        }
        FleetCommand::Nudge => {}
        // Groups and timed requests are unpacked by the state machine before they reach here.
        FleetCommand::Group(_) => {
            return Err(FleetError::invalid(
                "command",
                "a request group is internal to the replication log",
            ));
        }
        FleetCommand::Timed { .. } => {
            return Err(FleetError::invalid(
                "command",
                "a timed request is internal to the replication log",
            ));
        }
        FleetCommand::RegisterShard {
            id,
            address,
            az,
            lease_ttl_ms,
            ..
        } => {
            validate_id("shard id", id)?;
            validate_address("shard address", address)?;
            validate_id("az", az)?;
            if *lease_ttl_ms == 0 {
                return Err(FleetError::invalid("lease_ttl_ms", "must be above 0"));
            }
        }
        FleetCommand::DrainShard { id }
        | FleetCommand::ActivateShard { id }
        | FleetCommand::RemoveShard { id } => validate_id("shard id", id)?,
        FleetCommand::AssignDomains { assignments, .. } => {
            check_batch_size("assignments", assignments.len())?;
            for (_, shard) in assignments {
                validate_id("shard id", shard)?;
            }
            check_domains("assignments", assignments.iter().map(|(d, _)| d.as_str()))?;
        }
        FleetCommand::UnassignDomains { domains } => {
            check_batch_size("domains", domains.len())?;
            check_domains("domains", domains.iter().map(String::as_str))?;
        }
        FleetCommand::BindCluster { cluster, shard }
        | FleetCommand::MoveCluster { cluster, shard } => {
            validate_id("cluster id", cluster)?;
            validate_id("shard id", shard)?;
        }
        FleetCommand::UnbindCluster { cluster } => validate_id("cluster id", cluster)?,
        FleetCommand::SetQuota {
            provider,
            region,
            slices,
            ..
        }
        | FleetCommand::SetQuotaSlices {
            provider,
            region,
            slices,
        } => {
            check_quota_key(provider, region)?;
            check_slices(slices)?;
        }
        FleetCommand::DeleteQuota { provider, region } => check_quota_key(provider, region)?,
        FleetCommand::SetProvider {
            name,
            endpoint,
            region,
            capacity_types,
        } => {
            validate_id("provider", name)?;
            validate_address("provider endpoint", endpoint)?;
            validate_id("region", region)?;
            if capacity_types.len() > MAX_CAPACITY_TYPES {
                return Err(FleetError::TooLarge {
                    what: "capacity_types".into(),
                    count: capacity_types.len(),
                    limit: MAX_CAPACITY_TYPES,
                });
            }
            for t in capacity_types {
                validate_id("capacity type", t)?;
            }
        }
        FleetCommand::RemoveProvider { name } => validate_id("provider", name)?,
        FleetCommand::Batch { commands } => {
            if nested {
                return Err(FleetError::invalid("batch", "batches cannot be nested"));
            }
            check_batch_size("batch", commands.len())?;
            for (index, inner) in commands.iter().enumerate() {
                check_syntax(inner, true).map_err(|e| FleetError::InBatch {
                    index,
                    source: Box::new(e),
                })?;
            }
        }
    }
    Ok(())
}
