//! Ballast's coordinator: a Raft replica (openraft, fjall storage, tonic transport) holding the
//! fleet state machine and serving the client and cluster-administration APIs.

pub mod autopilot;
pub mod config;
pub mod consensus;
pub mod dr;
pub mod error;
pub mod etcd_log;
pub mod faults;
pub mod fleet;
pub mod history;
pub mod kv;
pub mod leadership;
pub mod leases;
pub mod memory;
pub mod node;
pub mod observe;
pub mod raft;
pub mod rebalance;
pub mod replica;
pub mod restore;
pub mod security;
pub mod service;
