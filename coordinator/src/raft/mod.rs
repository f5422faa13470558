//! Raft plumbing: type configuration, fjall-backed log and state machine, gRPC peer network.

pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod store;
pub mod types;
