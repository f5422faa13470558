//! What a replica does on its own while it leads (each loop checks, every round, that it
//! still leads with a majority heard from): rebalancing away from draining and expired shards,
//! expiring KV leases, removing dead voters (autopilot) and scheduled DR exports; and the
//! operations only a leader performs when asked: an archive export, a leadership transfer, a
//! membership change.

pub mod autopilot;
pub mod dr;
pub mod leases;
pub mod members;
pub mod rebalance;
pub mod transfer;
