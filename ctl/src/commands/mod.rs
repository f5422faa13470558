//! One module per command group: flags, validation, call, render.

pub mod binding;
pub mod cluster;
pub mod domain;
pub mod dr;
pub mod kv;
pub mod paging;
pub mod provider;
pub mod quota;
pub mod shard;

use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;

/// Wraps one wire command into the envelope `Write` expects.
pub fn command(inner: Wire) -> pb::Command {
    pb::Command {
        command: Some(inner),
    }
}
