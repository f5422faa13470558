//! The bindings table: cluster → shard. The first binding wins; rebinding needs an explicit
//! move.

use crate::fleet::FleetError;
use crate::fleet::state::FleetState;
use crate::fleet::state::journal::Undo;

impl FleetState {
    /// Binds a cluster that is not bound yet (binding it to its shard again changes nothing).
    pub(super) fn bind_cluster(
        &mut self,
        cluster: &str,
        shard: &str,
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        match self.binding(cluster) {
            // Already so: a no-op success, even on a draining shard.
            Some(current) if current == shard => {}
            Some(current) => {
                return Err(FleetError::ClusterBound {
                    cluster: cluster.to_string(),
                    shard: current.to_string(),
                });
            }
            None => {
                self.require_active(shard)?;
                self.set_binding(cluster, Some(shard), journal);
            }
        }
        Ok(())
    }

    /// Moves a bound cluster to another shard.
    pub(super) fn move_cluster(
        &mut self,
        cluster: &str,
        shard: &str,
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        let current = self
            .binding(cluster)
            .ok_or_else(|| FleetError::UnknownCluster(cluster.to_string()))?;
        if current != shard {
            self.require_active(shard)?;
            self.set_binding(cluster, Some(shard), journal);
        }
        Ok(())
    }

    /// Removes a cluster's binding.
    pub(super) fn unbind_cluster(
        &mut self,
        cluster: &str,
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        if !self.bindings.contains(cluster) {
            return Err(FleetError::UnknownCluster(cluster.to_string()));
        }
        self.set_binding(cluster, None, journal);
        Ok(())
    }
}
