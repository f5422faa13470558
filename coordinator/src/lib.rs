//! Ballast's coordinator: a replica of the group that holds the fleet state (shards, domain
//! assignments, cluster bindings, quota slices, providers) and the coordination KV (served
//! through etcd's v3 API).
//!
//! **Embedding**: [`Coordinator`] runs a replica inside another program — built from the same
//! settings as `ballast-coord`'s flags ([`CoordinatorBuilder`]), with a client of its own, a
//! readiness wait and a graceful shutdown (`examples/embedded.rs`). [`config`] holds the flags
//! of the `ballast-coord` binary, [`process`] what running it as a process takes.
//!
//! The other public modules are the replica's insides, public only so this workspace's
//! simulator, benchmarks and tests can drive them; they are hidden from the documentation and
//! carry no stability promise. The modules sit on layers (ADR 0001,
//! `coordinator/tests/layering.rs`).

mod embed;

pub use embed::{Coordinator, CoordinatorBuilder};
pub use node::NodeError;

pub mod config;
pub mod process;

#[doc(hidden)]
pub mod dr;
#[doc(hidden)]
pub mod fleet;
#[doc(hidden)]
pub mod history;
#[doc(hidden)]
pub mod log;
#[doc(hidden)]
pub mod node;
#[doc(hidden)]
pub mod offline;
#[doc(hidden)]
pub mod rebalance;
#[doc(hidden)]
pub mod restore;
#[doc(hidden)]
pub mod service;

mod auth;
mod autopilot;
mod disruption;
mod error;
mod faults;
mod kv;
mod leader;
mod leadership;
mod leases;
mod metrics;
mod observe;
mod replica;
mod security;
mod slice_placement;
mod status;
mod stopping;
