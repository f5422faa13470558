//! Ballast's wire contract and the one client library every binary uses to reach the coordinator.
//!
//! - [`pb`]: generated gRPC types and services (from `proto/ballast/v1/*.proto`).
//! - [`validate`]: input rules shared by the coordinator (before proposing) and shard workers.
//! - [`client`]: the leader-aware client: endpoint failover, idempotent retries, cluster id pinning.
//! - [`clock`]: wall-clock milliseconds, as the wire and the log state times.
//! - [`provider`]: the provider contract's grants and refusals, shared by shards, providers and
//!   the conformance suite.

pub mod client;
pub mod clock;
pub mod coordination;
pub mod etcd_gateway;
pub mod provider;
pub mod validate;

/// Generated protobuf and gRPC code for package `ballast.v1`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("ballast.v1");
}

/// The provider contract (package `ballast.provider.v1`): how a shard drives capacity outside
/// it, with ownership fenced at the provider. Helpers in [`provider`].
pub mod providerpb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("ballast.provider.v1");
}

/// etcd's storage messages (package `mvccpb`), as carried by its v3 API.
pub mod mvccpb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("mvccpb");
    #[cfg(feature = "etcd-json")]
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's auth messages (package `authpb`), as carried by its v3 Auth API.
pub mod authpb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("authpb");
    #[cfg(feature = "etcd-json")]
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's v3 client API (package `etcdserverpb`): the services Ballast serves so `etcdctl` and
/// etcd client libraries work against it. With feature `etcd-json`, every message also
/// (de)serializes as the proto3 JSON etcd's HTTP gateway speaks (original field names, 64-bit
/// integers as strings, bytes as base64, enums by name).
pub mod etcdserverpb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("etcdserverpb");
    #[cfg(feature = "etcd-json")]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// gRPC metadata key carrying the cluster id a request is meant for; a replica of another
/// cluster rejects the request with `FailedPrecondition`. Replicas also stamp it on answers.
pub const CLUSTER_ID_HEADER: &str = "ballast-cluster-id";
/// gRPC metadata key a replica sets on answers with the client address of the current leader.
pub const LEADER_ADDRESS_HEADER: &str = "ballast-leader-address";
/// gRPC metadata key marking a request a follower forwarded to the leader, so that a request is
/// forwarded at most once even while leadership moves.
pub const FORWARDED_HEADER: &str = "ballast-forwarded";
