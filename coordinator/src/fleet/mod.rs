//! The fleet state machine: pure, deterministic logic with no I/O, no clock and no randomness.
//! The Raft layer applies [`FleetCommand`]s to a [`FleetState`]; every replica that applies the
//! same commands holds bit-identical state.

mod command;
mod error;
mod hash;
mod names;
mod state;
pub mod table;
pub mod tokens;

pub use command::{FleetCommand, FleetRequest};
pub use error::{ErrorKind, FleetError};
pub use names::Name;
pub use state::{
    Applied, Change, DEDUP_CAPACITY, DEDUP_WINDOW_MS, FleetCounts, FleetState, ProviderRecord,
    QuotaRecord, Revision, SNAPSHOT_MAGIC, ShardRecord, ShardStatus,
};

#[cfg(test)]
mod tests;
