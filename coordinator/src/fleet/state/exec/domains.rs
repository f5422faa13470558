//! The domains table: topology domain → owning shard; a domain belongs to at most one shard.

use crate::fleet::FleetError;
use crate::fleet::state::FleetState;
use crate::fleet::state::journal::Undo;

impl FleetState {
    /// Gives domains to shards; a domain owned elsewhere moves only with `allow_move`.
    pub(super) fn assign_domains(
        &mut self,
        assignments: &[(String, String)],
        allow_move: bool,
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        for (domain, shard) in assignments {
            // Already so: a no-op success, even on a draining shard.
            if self.domain_owner(domain) == Some(shard.as_str()) {
                continue;
            }
            self.require_active(shard)?;
            match self.domain_owner(domain) {
                Some(owner) if !allow_move => {
                    return Err(FleetError::DomainOwned {
                        domain: domain.clone(),
                        owner: owner.to_string(),
                    });
                }
                _ => self.set_domain(domain, Some(shard), journal),
            }
        }
        Ok(())
    }

    /// Returns domains to the pool; each must be assigned.
    pub(super) fn unassign_domains(
        &mut self,
        domains: &[String],
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        for domain in domains {
            if !self.domains.contains(domain) {
                return Err(FleetError::UnknownDomain(domain.clone()));
            }
            self.set_domain(domain, None, journal);
        }
        Ok(())
    }
}
