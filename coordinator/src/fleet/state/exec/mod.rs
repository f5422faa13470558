//! Executing one fleet command against the tables: a dispatcher over one file per table. Every
//! write goes through the journaled mutations ([`super::journal`]) so that a refused command —
//! or any command of a refused batch — is undone exactly.

mod bindings;
mod domains;
mod providers;
mod quotas;
mod shards;

use crate::fleet::state::FleetState;
use crate::fleet::state::journal::Undo;
use crate::fleet::state::records::{ProviderRecord, ShardStatus};
use crate::fleet::{FleetCommand, FleetError};

impl FleetState {
    /// Applies `cmd` to the tables, journaling every write into `journal`.
    pub(super) fn exec(
        &mut self,
        cmd: &FleetCommand,
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        match cmd {
            // Applied before `exec` (KV commands journal themselves); only a batch gets here,
            // and `check_syntax` refuses KV commands in batches.
            FleetCommand::Kv(_)
            | FleetCommand::KvAs { .. }
            | FleetCommand::Auth { .. }
            | FleetCommand::Group(_)
            | FleetCommand::Timed { .. }
            | FleetCommand::CreateJoinToken { .. }
            | FleetCommand::UseJoinToken { .. }
            | FleetCommand::Nudge => {
                return Err(FleetError::invalid(
                    "command",
                    "KV and join-token commands cannot be batched with fleet commands",
                ));
            }
            FleetCommand::RegisterShard {
                id,
                address,
                az,
                now_ms,
                lease_ttl_ms,
            } => self.register_shard((id, address, az), (*now_ms, *lease_ttl_ms), journal),
            FleetCommand::DrainShard { id } => {
                self.set_status(id, ShardStatus::Draining, journal)?
            }
            FleetCommand::ActivateShard { id } => {
                self.set_status(id, ShardStatus::Active, journal)?
            }
            FleetCommand::RemoveShard { id } => self.remove_shard(id, journal)?,
            FleetCommand::AssignDomains {
                assignments,
                allow_move,
            } => self.assign_domains(assignments, *allow_move, journal)?,
            FleetCommand::UnassignDomains { domains } => self.unassign_domains(domains, journal)?,
            FleetCommand::BindCluster { cluster, shard } => {
                self.bind_cluster(cluster, shard, journal)?
            }
            FleetCommand::MoveCluster { cluster, shard } => {
                self.move_cluster(cluster, shard, journal)?
            }
            FleetCommand::UnbindCluster { cluster } => self.unbind_cluster(cluster, journal)?,
            FleetCommand::SetQuota {
                provider,
                region,
                total,
                slices,
            } => self.set_quota_total((provider, region), *total, slices, journal)?,
            FleetCommand::SetQuotaSlices {
                provider,
                region,
                slices,
            } => self.set_quota_slices((provider, region), slices, journal)?,
            FleetCommand::DeleteQuota { provider, region } => {
                self.delete_quota((provider, region), journal)?
            }
            FleetCommand::SetProvider {
                name,
                endpoint,
                region,
                capacity_types,
            } => self.put_provider(
                ProviderRecord {
                    name: name.clone(),
                    endpoint: endpoint.clone(),
                    region: region.clone(),
                    capacity_types: capacity_types.clone(),
                },
                journal,
            ),
            FleetCommand::RemoveProvider { name } => self.remove_provider(name, journal)?,
            FleetCommand::Batch { commands } => {
                for (index, inner) in commands.iter().enumerate() {
                    self.exec(inner, journal).map_err(|e| FleetError::InBatch {
                        index,
                        source: Box::new(e),
                    })?;
                }
            }
        }
        Ok(())
    }
}
