//! Ballast's shard worker (data plane).
//!
//! Static stability is the point of this crate: a shard keeps provisioning from its own durable
//! cache while every coordinator replica is down. It therefore depends on `ballast-protocol`
//! only — never on the coordinator or DR crates — and `tests/dependency_closure.rs` fails the
//! build if that ever changes. The worker itself (assignment watch, fjall cache, provisioning
//! engine, provider trait) is tracked as its own issue and is not part of this crate yet.

pub use ballast_protocol as protocol;
