//! The checks, by the part of the contract they hold a provider to. Each runs on its own
//! shards and domains (fresh names per run), cleans up the machines it made, and fails with a
//! message naming the call, what the contract expects, and what came back.

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
            "configuring a machine serving another cluster, or a deleted one, is refused invalid-state",
            basics::invalid_state
        ),
        check!(
            "paging",
            "ListMachines pages with a resumable cursor: every machine exactly once, at most `limit` per page, filters by domain and owner",
            basics::paging
        ),
        check!(
            "idempotency/create",
            "the same key twice (a new sequence, a renewed grant) creates one machine and answers the same",
            idempotency::create
        ),
        check!(
            "idempotency/mutations",
            "configure, release, delete and adopt repeated under their key change nothing more and answer the same",
            idempotency::mutations
        ),
        check!(
            "idempotency/conflict",
            "a key reused for another request is refused idempotency-conflict; keys are scoped per shard",
            idempotency::conflict
        ),
        check!(
            "fencing/domain",
            "an older domain grant (or an equal one held by another shard) is refused stale-grant naming both grants; a newer one adopts the domain's machines in place",
            fencing::domain
        ),
        check!(
            "fencing/implicit-adoption",
            "any call under a newer domain grant hands the domain over, and the old owner is refused from then on",
            fencing::implicit_adoption
        ),
        check!(
            "fencing/quota",
            "an older slice table is refused stale-grant; an equal or newer one acts",
            fencing::quota
        ),
        check!(
            "fencing/slice",
            "a create past the shard's slice is refused over-slice; deleted machines free their place",
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
            "while two shards race in one domain, no call of the old owner that starts after the new owner's grant was accepted succeeds",
            concurrency::handover
        ),
        Check {
            name: "restart",
            about: "machines, fences and idempotency answers survive the provider's restart (run when it says it is durable and --restart-command is given)",
            body: |cx| Box::pin(restart::restart(cx)),
        },
    ]
}
