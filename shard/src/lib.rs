//! Ballast's shard worker (data plane).
//!
//! Static stability is the point of this crate: a shard keeps serving from its own durable
//! cache while every coordinator replica is down, and restarts from that cache alone. It
//! therefore depends on `ballast-protocol` only — never on the coordinator or DR crates — and
//! `tests/dependency_closure.rs` fails the build if that ever changes.
//!
//! Built so far: the durable assignment cache ([`cache`]), the resumable assignment watch and
//! lease heartbeats ([`worker`]), the status API and the `ballast-shard` binary ([`config`]),
//! the pure provisioning engine ([`engine`]) and the fenced, idempotent provider trait with a
//! simulated provider ([`provider`]). The engine's run loop (ledger, in-flight actions) and the
//! cluster demand API are still to come.

pub mod cache;
pub mod config;
pub mod engine;
pub mod provider;
pub mod worker;
