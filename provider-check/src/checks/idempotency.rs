//! Idempotency keys: a repeat changes nothing and answers alike.

use ballast_protocol::provider::Reason;

use crate::ensure;
use crate::harness::{Harness, Verdict, ids, refusal, same_or_newer, success};

pub async fn create(h: &Harness) -> Verdict {
    let actor = h.actor("idem", 10);
    let request = h.create_request(&actor);
    let first = success("CreateMachine", h.send_create(request.clone()).await)?;
    let mut retry = request.clone();
    retry.token = Some(h.token(&actor)); // a fresh sequence, as every attempt has
    let second = success(
        "CreateMachine repeated with the same key",
        h.send_create(retry).await,
    )?;
    ensure!(
        second.id == first.id && second.owner_shard == first.owner_shard,
        "CreateMachine repeated with the same key answered machine {} (owner {}), the first answered {} (owner {})",
        second.id,
        second.owner_shard,
        first.id,
        first.owner_shard
    );
    same_or_newer("the repeated CreateMachine", &first, &second)?;
    // The shard learned a newer grant for its domain and slice table between attempts: the
    // intent is the same, so is the answer.
    let renewed_actor = actor.with_grant(h.grant());
    let mut renewed = request.clone();
    renewed.token = Some(h.token(&renewed_actor));
    let third = success(
        "CreateMachine repeated under a renewed grant",
        h.send_create(renewed).await,
    )?;
    ensure!(
        third.id == first.id,
        "CreateMachine repeated under a renewed grant answered machine {}, the first {}",
        third.id,
        first.id
    );
    let listed = h.list_all(&actor.domain, &actor.shard, 0).await?;
    ensure!(
        listed.len() == 1,
        "after one CreateMachine sent three times with one key the shard holds {} machines: {:?}",
        listed.len(),
        listed.iter().map(|m| &m.id).collect::<Vec<_>>()
    );
    h.clean_up(&renewed_actor).await
}

pub async fn mutations(h: &Harness) -> Verdict {
    let mut actor = h.actor("idem-mut", 10);
    let first_cluster = h.serve(&mut actor);
    let second_cluster = h.serve(&mut actor);
    let machine = success("CreateMachine", h.create(&actor).await)?;
    h.settle(&machine.id).await?;

    let configure = h.configure_request(&actor, &machine.id, &first_cluster);
    let first = success(
        "ConfigureMachine",
        h.send_configure(configure.clone()).await,
    )?;
    let settled = h.settle(&machine.id).await?;
    let again = success(
        "ConfigureMachine repeated with the same key",
        h.send_configure(configure.clone()).await,
    )?;
    ensure!(
        again.id == first.id && again.cluster == first.cluster,
        "ConfigureMachine repeated answered {again:?}, the first {first:?}"
    );
    let after = h.settle(&machine.id).await?;
    ensure!(
        after.version == settled.version,
        "a repeated ConfigureMachine changed the machine again (version {} to {})",
        settled.version,
        after.version
    );

    let release = h.release_request(&actor, &machine.id, &first_cluster);
    success("ReleaseMachine", h.send_release(release.clone()).await)?;
    let released = h.settle(&machine.id).await?;
    // Someone configures it again in between: replaying the old release must not undo that.
    success(
        "ConfigureMachine for another cluster after the release",
        h.configure(&actor, &machine.id, &second_cluster).await,
    )?;
    let reconfigured = h.settle(&machine.id).await?;
    success(
        "ReleaseMachine repeated with the same key",
        h.send_release(release).await,
    )?;
    let after = h.settle(&machine.id).await?;
    ensure!(
        after.cluster == second_cluster && after.version == reconfigured.version,
        "replaying an earlier ReleaseMachine acted again: the machine went from cluster {second_cluster} (version {}) to {:?} (version {}); it was released at version {}",
        reconfigured.version,
        after.cluster,
        after.version,
        released.version
    );

    let claim = h.claim_request(&actor.with_grant(h.grant()));
    success("ClaimDomain", h.send_claim(claim.clone()).await)?;
    success(
        "ClaimDomain repeated with the same key",
        h.send_claim(claim).await,
    )?;

    let heir = h
        .actor("idem-heir", 10)
        .with_cluster(&second_cluster, h.grant());
    let adopt = h.adopt_request(&heir, &second_cluster);
    let adopted = success("AdoptCluster", h.send_adopt(adopt.clone()).await)?;
    ensure!(
        ids(&adopted) == vec![machine.id.clone()],
        "AdoptCluster answered machines {:?}; cluster {second_cluster} is served by {}",
        ids(&adopted),
        machine.id
    );
    let taken = h.settle(&machine.id).await?;
    // A replay answers what the call answered, even under a renewed grant, and accepts
    // nothing: a grant between the first and the renewed one still acts after it.
    let between = h.grant();
    let renewed = heir.with_cluster(&second_cluster, h.grant());
    let mut replay = adopt.clone();
    replay.token = Some(h.cluster_token(&renewed, &second_cluster));
    let readopted = success(
        "AdoptCluster repeated with the same key under a renewed grant",
        h.send_adopt(replay).await,
    )?;
    ensure!(
        ids(&adopted) == ids(&readopted),
        "AdoptCluster repeated answered machines {:?}, the first {:?}",
        ids(&readopted),
        ids(&adopted)
    );
    let after = h.settle(&machine.id).await?;
    ensure!(
        after.version == taken.version && after.owner_grant == taken.owner_grant,
        "a repeated AdoptCluster changed machine {} again (version {} under {:?} to version {} under {:?})",
        machine.id,
        taken.version,
        taken.owner_grant,
        after.version,
        after.owner_grant
    );
    let third = h
        .actor("idem-third", 10)
        .with_cluster(&second_cluster, between);
    success(
        "AdoptCluster by another shard under a grant newer than the first adoption's but older than the grant its replay carried (a replay changes nothing, so it accepts no grant)",
        h.adopt_cluster(&third, &second_cluster).await,
    )?;

    let delete = h.delete_request(&third, &machine.id, &second_cluster);
    success("DeleteMachine", h.send_delete(delete.clone()).await)?;
    success(
        "DeleteMachine repeated with the same key",
        h.send_delete(delete).await,
    )?;
    Ok(())
}

pub async fn conflict(h: &Harness) -> Verdict {
    let mut actor = h.actor("conflict", 10);
    let cluster = h.serve(&mut actor);
    let request = h.create_request(&actor);
    let machine = success("CreateMachine", h.send_create(request.clone()).await)?;
    let mut other = h.create_request(&actor);
    other.idempotency_key = request.idempotency_key.clone();
    refusal(
        "CreateMachine reusing a key for another machine id",
        h.send_create(other.clone()).await,
        Reason::IdempotencyConflict,
    )?;
    ensure!(
        h.get(&other.machine_id).await.is_err(),
        "a CreateMachine refused as a key conflict made machine {} anyway",
        other.machine_id
    );
    let mut configure = h.configure_request(&actor, &machine.id, &cluster);
    configure.idempotency_key = request.idempotency_key.clone();
    refusal(
        "ConfigureMachine reusing a CreateMachine's key",
        h.send_configure(configure).await,
        Reason::IdempotencyConflict,
    )?;
    // A release and a delete of one machine can encode alike: the call is part of the intent.
    h.settle(&machine.id).await?;
    let release = h.release_request(&actor, &machine.id, "");
    success("ReleaseMachine", h.send_release(release.clone()).await)?;
    let mut delete = h.delete_request(&actor, &machine.id, "");
    delete.idempotency_key = release.idempotency_key.clone();
    refusal(
        "DeleteMachine reusing a ReleaseMachine's key for the same machine",
        h.send_delete(delete).await,
        Reason::IdempotencyConflict,
    )?;
    let after = h.get(&machine.id).await.map_err(|status| {
        crate::harness::Failure(format!(
            "GetMachine {} after the refused delete: {}",
            machine.id,
            crate::harness::show_status(&status)
        ))
    })?;
    ensure!(
        crate::harness::live(&after),
        "a DeleteMachine refused as a key conflict deleted machine {} anyway",
        machine.id
    );
    // So can a domain claim and a cluster adoption: without their tokens both are a key.
    let claim = h.claim_request(&actor);
    success("ClaimDomain", h.send_claim(claim.clone()).await)?;
    let mut adopt = h.adopt_request(&actor, &cluster);
    adopt.idempotency_key = claim.idempotency_key.clone();
    refusal(
        "AdoptCluster reusing a ClaimDomain's key",
        h.send_adopt(adopt).await,
        Reason::IdempotencyConflict,
    )?;
    // Another shard may use the same key text for its own call.
    let neighbour = h.actor("conflict-other", 10);
    let mut theirs = h.create_request(&neighbour);
    theirs.idempotency_key = request.idempotency_key.clone();
    let made = success(
        "CreateMachine by another shard with the same key text",
        h.send_create(theirs.clone()).await,
    )?;
    ensure!(
        made.id == theirs.machine_id,
        "another shard's CreateMachine with the same key text answered machine {}, not its own {}",
        made.id,
        theirs.machine_id
    );
    h.clean_up(&actor).await?;
    h.clean_up(&neighbour).await
}
