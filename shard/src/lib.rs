//! Ballast's shard worker (data plane).
//!
//! Static stability is the point of this crate: a shard keeps serving from its own durable
//! cache while every coordinator replica is down, and restarts from that cache alone. It
//! therefore never depends on the coordinator or DR crates (`ballast-protocol` for the wire,
//! `ballast-provider-sim` for the provider rules built in), and `tests/dependency_closure.rs`
//! fails the build if that ever changes.
//!
//! Built so far: the durable assignment cache ([`cache`]), the resumable assignment watch and
//! lease heartbeats ([`worker`]), the status API and the `ballast-shard` binary ([`config`]),
//! the pure provisioning engine ([`engine`]) run every cycle over a durable machine ledger
//! ([`provisioning`]), the provider contract as a trait, spoken over gRPC or to the simulated
//! provider built in ([`provider`]), the provider's record of which cluster each machine serves
//! kept in step with the ledger ([`placement`]), the cluster demand API ([`demand`], served by [`worker`]), and the rule that
//! holds decisions after a gap in contact until the watch has caught up ([`freshness`]).

pub mod cache;
pub mod config;
pub mod demand;
pub mod engine;
pub mod freshness;
pub mod observe;
pub mod placement;
pub mod provider;
pub mod provisioning;
pub mod security;
pub mod service;
pub mod worker;
