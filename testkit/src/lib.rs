//! Harness for tests that run real `ballast-coord` processes on loopback: free ports, data
//! dirs, bootstrap/join, SIGKILL, restart and waiting for conditions. Every test that starts
//! processes uses this one harness instead of rolling its own; the demo and the benchmarks
//! launch their clusters with it too.
//!
//! Modules (everything a test uses is re-exported here, so it imports `ballast_testkit::X`):
//!
//! - `cluster`: [`TestCluster`], [`ClusterOptions`], [`Replica`], [`FAST_FLAGS`], [`az_of`];
//!   replica processes: start, join, kill, pause, restart. `cluster/queries`: a running
//!   cluster's clients, status, leader and the waits built on them.
//! - `shard`: [`ShardProcess`], started by [`TestCluster::spawn_shard`].
//! - `ports`: [`free_port`], [`free_port_block`], [`free_base_port`].
//! - `http`: [`http_get`], [`https_get`], [`metric`].
//! - `wait`: [`wait_for`].
//! - `api`: [`current_revision`], [`assign_domain`], [`assigned_machines`].
//! - `process`: [`rss_bytes`], signals and kill-and-reap.
//! - [`pki`] (a test CA), [`etcd`] (a real etcd), [`fleet`] (synthetic fleets), [`svg`] (report
//!   charts), [`deps`] (dependency-graph checks), `s3` ([`S3Server`]).

mod api;
mod cluster;
pub mod deps;
pub mod etcd;
pub mod fleet;
mod http;
pub mod pki;
mod ports;
mod process;
mod provider;
pub mod proxy;
mod s3;
mod shard;
pub mod svg;
mod wait;

pub use api::{
    Allocation, allocate, allocate_to_s1, assign_domain, assigned_machines, current_revision,
};
pub use cluster::{ClusterOptions, FAST_FLAGS, Replica, TestCluster, az_of};
pub use http::{http_get, https_get, metric};
pub use pki::TestPki;
pub use ports::{free_base_port, free_port, free_port_block};
pub use process::{cpu_time, interrupt, rss_bytes};
pub use provider::{ProviderProcess, live, provider_machines, run_bounded};
pub use proxy::Proxy;
pub use s3::S3Server;
pub use shard::{ShardProcess, submit_small_through};
pub use wait::wait_for;
