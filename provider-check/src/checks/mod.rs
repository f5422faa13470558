//! The checks (21), by the part of the contract they hold a provider to. Each runs on its own
//! shards, domains and clusters (fresh names per run), cleans up the machines it made, and
//! fails with a message naming the call, what the contract expects, and what came back.
//!
//! Fencing follows the contract's "handover by cluster": a domain grant is the right to
//! create in the domain (a newer one, by `ClaimDomain` or a create, moves no machine); a
//! machine at work belongs to the shard holding its cluster's newest grant and moves with the
//! cluster, in place (by `AdoptCluster` or any call under a newer cluster grant); an idle
//! machine is its owner's alone (`not-owner` for anyone else).

mod basics;
mod concurrency;
mod errors;
mod fencing;
mod idempotency;
mod restart;

use std::future::Future;
use std::pin::Pin;

use crate::harness::{Harness, Verdict};

/// What a check may need beyond the provider's endpoint.
pub struct Context<'a> {
    /// The run's shared state.
    pub harness: &'a Harness,
    /// A shell command that restarts the provider (kept data, same address), if given.
    pub restart_command: Option<&'a str>,
    /// How long the provider may take to answer again after the restart command.
    pub restart_timeout: std::time::Duration,
}

/// A check's body.
pub type Body = for<'a> fn(&'a Context<'a>) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Held.
    Pass,
    /// Broken: why.
    Fail(String),
    /// Not run: why.
    Skip(String),
}

impl From<Verdict> for Outcome {
    fn from(verdict: Verdict) -> Outcome {
        match verdict {
            Ok(()) => Outcome::Pass,
            Err(failure) => Outcome::Fail(failure.0),
        }
    }
}

/// A named check.
pub struct Check {
    /// `group/name`, as `--only` matches it.
    pub name: &'static str,
    /// What it holds the provider to.
    pub about: &'static str,
    /// The check.
    pub body: Body,
}

macro_rules! check {
    ($name:literal, $about:literal, $body:path) => {
        Check {
            name: $name,
            about: $about,
            body: |cx| Box::pin(async move { Outcome::from($body(cx.harness).await) }),
        }
    };
}

/// Every check, in the order they run.
pub fn all() -> Vec<Check> {
    vec![
        check!(
            "describe",
            "Describe names the contract, a quota, regions, shapes with resources and capacity types",
            basics::describe
        ),
        check!(
            "lifecycle",
            "create, configure, release and delete move a machine through its states; every answer reads back the same through GetMachine and ListMachines",
            basics::lifecycle
        ),
        check!(
            "lifecycle/invalid-state",
            "configuring a machine serving another cluster, or configuring or releasing a deleted one, is refused invalid-state; a repeated configure is a no-op and a repeated delete answers the machine as it is",
            basics::invalid_state
        ),
        check!(
            "paging",
            "ListMachines pages with a resumable cursor: every machine exactly once, at most `limit` per page, filters by domain, owner and cluster (combined)",
            basics::paging
        ),
        check!(
            "idempotency/create",
            "the same key twice (a new sequence, a renewed grant) creates one machine and answers the same",
            idempotency::create
        ),
        check!(
            "idempotency/mutations",
            "configure, release, delete, ClaimDomain and AdoptCluster repeated under their key change nothing more and answer the same; a replay under a renewed grant accepts no grant",
            idempotency::mutations
        ),
        check!(
            "idempotency/conflict",
            "a key reused for another request (or another call) is refused idempotency-conflict; keys are scoped per shard",
            idempotency::conflict
        ),
        check!(
            "fencing/domain",
            "a create or ClaimDomain under an older domain grant (or an equal one held by another shard) is refused stale-grant naming the domain and both grants; a newer claim moves no machine: the old holder keeps configuring and releasing its machines under their cluster grants",
            fencing::domain
        ),
        check!(
            "fencing/cluster",
            "an older cluster grant (or an equal one held by another shard) is refused stale-grant naming the cluster and both grants; a newer one, by AdoptCluster, hands every machine serving the cluster over in place, and the old owner is refused on them from then on",
            fencing::cluster
        ),
        check!(
            "fencing/implicit-adoption",
            "a create under a newer domain grant claims the domain and moves nothing; a configure under a newer cluster grant adopts the cluster in place, and the old owner is refused from then on",
            fencing::implicit_adoption
        ),
        check!(
            "fencing/not-owner",
            "acting on another shard's idle machine is refused not-owner naming the machine and its owner, even for the shard that claimed its domain",
            fencing::not_owner_check
        ),
        check!(
            "fencing/quota",
            "an older slice table is refused stale-grant naming the quota and both grants; an equal or newer one acts",
            fencing::quota
        ),
        check!(
            "fencing/slice",
            "a create past the shard's slice is refused over-slice; only machines the shard owns count (created or adopted, not its domain's others); deleted machines free their place",
            fencing::slice
        ),
        check!(
            "fencing/epoch",
            "a call from an older restart epoch of a shard is refused stale-epoch",
            fencing::epoch
        ),
        check!(
            "errors/invalid-argument",
            "malformed requests are refused invalid-argument and change nothing",
            errors::invalid_argument
        ),
        check!(
            "errors/not-found",
            "unknown machines are refused not-found; a taken id already-exists",
            errors::not_found
        ),
        check!(
            "concurrency/same-key",
            "concurrent repeats of one create make one machine and answer alike",
            concurrency::same_key
        ),
        check!(
            "concurrency/slice",
            "concurrent creates never take a shard past its slice",
            concurrency::slice
        ),
        check!(
            "concurrency/handover",
            "while an old owner keeps acting, no call of it that starts after the newer grant of its domain (a create) or of its cluster (AdoptCluster) was accepted succeeds; nothing else moves",
            concurrency::handover
        ),
        check!(
            "concurrency/one-winner",
            "two shards claiming one domain, or adopting one cluster, at once under the same grant: exactly one wins, the other is refused stale-grant",
            concurrency::one_winner
        ),
        Check {
            name: "restart",
            about: "machines, owners, domain and cluster marks, epochs and idempotency answers survive the provider's restart (run when it says it is durable and --restart-command is given)",
            body: |cx| Box::pin(restart::restart(cx)),
        },
    ]
}
