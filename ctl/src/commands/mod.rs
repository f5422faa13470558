//! One module per command group: flags, validation, call, render.

pub mod binding;
pub mod cluster;
pub mod domain;
pub mod dr;
pub mod kv;
pub mod provider;
pub mod quota;
pub mod shard;

use std::future::Future;

use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;

/// Page size for listings; large enough that a 100K-domain fleet lists in 20 round trips.
pub const PAGE: u32 = 5000;

/// One page of a listing: its header, its items and the cursor of the next page ("" = last).
pub type Page<T> = (Option<pb::ResponseHeader>, Vec<T>, String);

/// Reads every page of a listing, starting with `after = ""`; returns the revision of the last
/// page and all items.
pub async fn all_pages<T, F, Fut>(mut fetch: F) -> anyhow::Result<(u64, Vec<T>)>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<Page<T>>>,
{
    let mut items = Vec::new();
    let mut after = String::new();
    let mut revision = 0;
    loop {
        let (header, page, next) = fetch(after).await?;
        revision = header.map(|h| h.revision).unwrap_or(revision);
        items.extend(page);
        if next.is_empty() {
            return Ok((revision, items));
        }
        after = next;
    }
}

/// Wraps one wire command into the envelope `Write` expects.
pub fn command(inner: Wire) -> pb::Command {
    pb::Command {
        command: Some(inner),
    }
}
