//! Bad input is refused with the contract's code and reason, and changes nothing.

use ballast_protocol::provider::Reason;
use ballast_protocol::providerpb::{ClusterGrant, CreateMachineRequest};

use crate::ensure;
use crate::harness::{Harness, Verdict, refusal, success};

pub async fn invalid_argument(h: &Harness) -> Verdict {
    let mut actor = h.actor("invalid", 10);
    let cluster = h.serve(&mut actor);
    let other = h.serve(&mut actor);
    // The domain is the actor's from the start, so its machine list is a fair witness.
    let anchor = success("CreateMachine", h.create(&actor).await)?;
    let serving = success("CreateMachine", h.create(&actor).await)?;
    h.settle(&anchor.id).await?;
    h.settle(&serving.id).await?;
    success(
        "ConfigureMachine",
        h.configure(&actor, &serving.id, &cluster).await,
    )?;
    h.settle(&serving.id).await?;
    let before = h.list_all(&actor.domain, "", 0).await?;

    let base = || h.create_request(&actor);
    let mut cases: Vec<(&str, CreateMachineRequest)> = Vec::new();
    let mut r = base();
    r.idempotency_key.clear();
    cases.push(("CreateMachine without an idempotency key", r));
    let mut r = base();
    r.token = None;
    cases.push(("CreateMachine without a fencing token", r));
    let mut r = base();
    r.token.as_mut().expect("a token").domain = None;
    cases.push(("CreateMachine whose token has no domain grant", r));
    let mut r = base();
    r.token.as_mut().expect("a token").quota = None;
    cases.push(("CreateMachine whose token has no quota grant", r));
    let mut r = base();
    r.token.as_mut().expect("a token").shard_id.clear();
    cases.push(("CreateMachine whose token has no shard id", r));
    let mut r = base();
    r.shape = h.unique("no-such-shape");
    cases.push(("CreateMachine of an unknown shape", r));
    let mut r = base();
    r.capacity_type = h.unique("no-such-capacity-type");
    cases.push(("CreateMachine of an unknown capacity type", r));
    let mut r = base();
    r.machine_id.clear();
    cases.push(("CreateMachine without a machine id", r));
    let mut r = base();
    r.domain = h.unique("other-domain");
    cases.push(("CreateMachine in a domain other than its token's grant", r));
    let mut r = base();
    r.token
        .as_mut()
        .expect("a token")
        .quota
        .as_mut()
        .expect("a quota")
        .quota_provider = h.unique("other-quota");
    cases.push((
        "CreateMachine against a quota the provider does not count",
        r,
    ));
    if !h.describe.domains.is_empty() {
        let stranger = h.unique("unserved");
        let mut r = base();
        r.domain = stranger.clone();
        r.token
            .as_mut()
            .expect("a token")
            .domain
            .as_mut()
            .expect("a grant")
            .domain = stranger;
        cases.push(("CreateMachine in a domain the provider does not serve", r));
    }
    for (what, request) in cases {
        let id = request.machine_id.clone();
        refusal(what, h.send_create(request).await, Reason::InvalidArgument)?;
        if !id.is_empty() {
            ensure!(
                h.get(&id).await.is_err(),
                "{what}: refused, yet machine {id} exists"
            );
        }
    }
    let mut configure = h.configure_request(&actor, &anchor.id, "");
    refusal(
        "ConfigureMachine without a cluster",
        h.send_configure(configure.clone()).await,
        Reason::InvalidArgument,
    )?;
    configure.cluster = cluster.clone();
    configure.idempotency_key = "k".repeat(201);
    refusal(
        "ConfigureMachine with a 201-character idempotency key",
        h.send_configure(configure).await,
        Reason::InvalidArgument,
    )?;
    let mut configure = h.configure_request(&actor, &anchor.id, &cluster);
    configure.token.as_mut().expect("a token").cluster = None;
    refusal(
        "ConfigureMachine whose token has no cluster grant",
        h.send_configure(configure).await,
        Reason::InvalidArgument,
    )?;
    let mut configure = h.configure_request(&actor, &anchor.id, &cluster);
    configure.token = Some(h.cluster_token(&actor, &other));
    refusal(
        "ConfigureMachine whose token's cluster grant is for another cluster",
        h.send_configure(configure).await,
        Reason::InvalidArgument,
    )?;
    // A configured machine is released or deleted only under its cluster's grant.
    let (status, _) = refusal(
        "ReleaseMachine of a configured machine whose token has no cluster grant",
        h.release(&actor, &serving.id, "").await,
        Reason::InvalidArgument,
    )?;
    ensure!(
        status.message().contains(&cluster),
        "ReleaseMachine of a configured machine without its cluster's grant: the refusal should name the cluster it serves ({cluster}); got {:?}",
        status.message()
    );
    refusal(
        "ReleaseMachine of a configured machine under the grant of another cluster",
        h.release(&actor, &serving.id, &other).await,
        Reason::InvalidArgument,
    )?;
    refusal(
        "DeleteMachine of a configured machine whose token has no cluster grant",
        h.delete(&actor, &serving.id, "").await,
        Reason::InvalidArgument,
    )?;
    refusal(
        "DeleteMachine of a configured machine under the grant of another cluster",
        h.delete(&actor, &serving.id, &other).await,
        Reason::InvalidArgument,
    )?;

    let mut claim = h.claim_request(&actor);
    claim.token.as_mut().expect("a token").domain = None;
    refusal(
        "ClaimDomain whose token has no domain grant",
        h.send_claim(claim).await,
        Reason::InvalidArgument,
    )?;
    // A refused claim accepts nothing: the holder keeps creating in the domain.
    let successor = h.successor(&actor, "invalid-successor");
    let mut claim = h.claim_request(&successor);
    claim
        .token
        .as_mut()
        .expect("a token")
        .quota
        .as_mut()
        .expect("a quota")
        .quota_provider = h.unique("other-quota");
    refusal(
        "ClaimDomain under a newer grant against a quota the provider does not count",
        h.send_claim(claim).await,
        Reason::InvalidArgument,
    )?;
    let made = success(
        "the holder's CreateMachine after another shard's refused ClaimDomain",
        h.create(&actor).await,
    )?;
    success(
        "DeleteMachine of that machine",
        h.delete(&actor, &made.id, "").await,
    )?;

    let mut adopt = h.adopt_request(&actor, &cluster);
    adopt.token.as_mut().expect("a token").cluster = None;
    refusal(
        "AdoptCluster whose token has no cluster grant",
        h.send_adopt(adopt).await,
        Reason::InvalidArgument,
    )?;
    let mut adopt = h.adopt_request(&actor, &cluster);
    adopt.token.as_mut().expect("a token").cluster = Some(ClusterGrant {
        cluster: String::new(),
        grant: Some(h.grant()),
    });
    refusal(
        "AdoptCluster whose token's cluster grant names no cluster",
        h.send_adopt(adopt).await,
        Reason::InvalidArgument,
    )?;

    // The one machine made and deleted in between aside, nothing changed.
    let after: Vec<_> = h
        .list_all(&actor.domain, "", 0)
        .await?
        .into_iter()
        .filter(|m| m.id != made.id)
        .collect();
    ensure!(
        after == before,
        "refused calls changed the domain's machines:\n  before {before:?}\n  after  {after:?}"
    );

    h.clean_up(&actor).await
}

pub async fn not_found(h: &Harness) -> Verdict {
    let mut actor = h.actor("missing", 10);
    let cluster = h.serve(&mut actor);
    let missing = h.unique("never-created");
    refusal(
        "GetMachine of an unknown id",
        h.get(&missing).await,
        Reason::NotFound,
    )?;
    refusal(
        "ConfigureMachine of an unknown id (under a cluster grant)",
        h.configure(&actor, &missing, &cluster).await,
        Reason::NotFound,
    )?;
    refusal(
        "ReleaseMachine of an unknown id",
        h.release(&actor, &missing, "").await,
        Reason::NotFound,
    )?;
    refusal(
        "DeleteMachine of an unknown id",
        h.delete(&actor, &missing, "").await,
        Reason::NotFound,
    )?;
    let machine = success("CreateMachine", h.create(&actor).await)?;
    let mut again = h.create_request(&actor);
    again.machine_id = machine.id.clone();
    refusal(
        "CreateMachine of a taken id under a new key",
        h.send_create(again).await,
        Reason::AlreadyExists,
    )?;
    h.clean_up(&actor).await
}
