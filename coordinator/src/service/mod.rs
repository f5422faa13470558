//! gRPC services of a replica: thin layers over [`crate::replica::Replica`].

pub mod assignments;
pub mod cluster;
pub mod convert;
pub mod etcd_api;
pub mod fleet;
pub mod raft;
