//! The providers registry: name → endpoint, region, capacity types. A provider with quotas
//! cannot be removed.

use crate::fleet::FleetError;
use crate::fleet::state::FleetState;
use crate::fleet::state::journal::Undo;
use crate::fleet::state::records::ProviderRecord;

impl FleetState {
    /// Registers or replaces a provider.
    pub(super) fn put_provider(&mut self, record: ProviderRecord, journal: &mut Vec<Undo>) {
        let name = record.name.clone();
        self.set_provider(&name, Some(record), journal);
    }

    /// Removes a provider that no quota names.
    pub(super) fn remove_provider(
        &mut self,
        name: &str,
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        if !self.providers.contains_key(name) {
            return Err(FleetError::UnknownProvider(name.to_string()));
        }
        if let Some(regions) = self.quotas.get(name)
            && !regions.is_empty()
        {
            return Err(FleetError::ProviderInUse {
                provider: name.to_string(),
                regions: regions.keys().cloned().collect(),
            });
        }
        self.set_provider(name, None, journal);
        Ok(())
    }
}
