//! Ballast's coordinator: a Raft replica (openraft, fjall storage, tonic transport) holding the
//! fleet state machine and serving the client and cluster-administration APIs.

pub mod autopilot;
pub mod config;
pub mod dr;
pub mod error;
pub mod faults;
pub mod fleet;
pub mod history;
pub mod kv;
pub mod leader;
pub mod leadership;
pub mod leases;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod observe;
pub mod offline;
pub mod rebalance;
pub mod replica;
pub mod restore;
pub mod security;
pub mod service;
pub mod status;
