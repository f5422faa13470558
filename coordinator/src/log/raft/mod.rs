//! Raft plumbing: type configuration, fjall-backed log, the state machine and its snapshot
//! file, gRPC peer network.

// openraft's storage and RPC error types are large by design and fixed by its traits; boxing
// them here would only add conversions at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod data_dir;
pub mod durability;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod presence;
pub mod proposer;
pub mod read_lease;
pub mod snapshot_file;
pub mod state_machine;
pub mod types;
pub mod values;
