//! Idempotency keys: a repeat changes nothing and answers alike.

use ballast_protocol::provider::Reason;

use crate::ensure;
use crate::harness::{Harness, Verdict, refusal, same_or_newer, success};

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
    let actor = h.actor("idem-mut", 10);
    let machine = success("CreateMachine", h.create(&actor).await)?;
    h.settle(&machine.id).await?;

    let configure = h.configure_request(&actor, &machine.id, "cluster-a");
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

    let release = h.release_request(&actor, &machine.id);
    success("ReleaseMachine", h.send_release(release.clone()).await)?;
    let released = h.settle(&machine.id).await?;
    // Someone configures it again in between: replaying the old release must not undo that.
    success(
        "ConfigureMachine after the release",
        h.configure(&actor, &machine.id, "cluster-b").await,
    )?;
    let reconfigured = h.settle(&machine.id).await?;
    success(
        "ReleaseMachine repeated with the same key",
        h.send_release(release).await,
    )?;
    let after = h.settle(&machine.id).await?;
    ensure!(
        after.cluster == "cluster-b" && after.version == reconfigured.version,
        "replaying an earlier ReleaseMachine acted again: the machine went from cluster-b (version {}) to {:?} (version {}); it was released at version {}",
        reconfigured.version,
        after.cluster,
        after.version,
        released.version
    );

    let successor = h.successor(&actor, "idem-heir");
    let adopt = h.adopt_request(&successor);
    let adopted = success("AdoptDomain", h.send_adopt(adopt.clone()).await)?;
    let readopted = success(
        "AdoptDomain repeated with the same key",
        h.send_adopt(adopt).await,
    )?;
    let ids = |ms: &[ballast_protocol::providerpb::Machine]| {
        let mut ids: Vec<String> = ms.iter().map(|m| m.id.clone()).collect();
        ids.sort();
        ids
    };
    ensure!(
        ids(&adopted) == ids(&readopted),
        "AdoptDomain repeated answered machines {:?}, the first {:?}",
        ids(&readopted),
        ids(&adopted)
    );

    let delete = h.delete_request(&successor, &machine.id);
    success("DeleteMachine", h.send_delete(delete.clone()).await)?;
    success(
        "DeleteMachine repeated with the same key",
        h.send_delete(delete).await,
    )?;
    Ok(())
}

pub async fn conflict(h: &Harness) -> Verdict {
    let actor = h.actor("conflict", 10);
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
    let mut configure = h.configure_request(&actor, &machine.id, "cluster-a");
    configure.idempotency_key = request.idempotency_key.clone();
    refusal(
        "ConfigureMachine reusing a CreateMachine's key",
        h.send_configure(configure).await,
        Reason::IdempotencyConflict,
    )?;
    // A release and a delete of one machine can encode alike: the call is part of the intent.
    h.settle(&machine.id).await?;
    let release = h.release_request(&actor, &machine.id);
    success("ReleaseMachine", h.send_release(release.clone()).await)?;
    let mut delete = h.delete_request(&actor, &machine.id);
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
