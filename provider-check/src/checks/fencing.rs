//! Fencing by domain grant, slice table, slice and restart epoch.

use ballast_protocol::provider::{Reason, describe};
use ballast_protocol::providerpb::{Grant, MachineState};

use crate::ensure;
use crate::harness::{Harness, Verdict, live, refusal, success};

/// Which grant a `stale-grant` refusal is about: `domain` names the domain, `quota` names
/// `provider/region`; a shard needs to know which of its grants to stop acting under.
enum Stale<'a> {
    Domain(&'a str),
    Quota(String),
}

fn names_both(
    what: &str,
    metadata: &std::collections::BTreeMap<String, String>,
    stale: Stale<'_>,
    presented: &Grant,
    accepted: &Grant,
) -> Verdict {
    let (p, a) = (describe(Some(presented)), describe(Some(accepted)));
    ensure!(
        metadata.get("presented") == Some(&p) && metadata.get("accepted") == Some(&a),
        "{what}: a stale-grant refusal names both grants in its metadata (presented={p}, accepted={a}); got {metadata:?}"
    );
    let (key, value) = match stale {
        Stale::Domain(domain) => ("domain", domain.to_string()),
        Stale::Quota(quota) => ("quota", quota),
    };
    ensure!(
        metadata.get(key) == Some(&value),
        "{what}: a stale-grant refusal says which grant is stale ({key}={value}); got {metadata:?}"
    );
    Ok(())
}

pub async fn domain(h: &Harness) -> Verdict {
    let old = h.actor("fence-old", 10);
    let m1 = success("CreateMachine by the owner", h.create(&old).await)?;
    let m2 = success("CreateMachine by the owner", h.create(&old).await)?;
    h.settle(&m1.id).await?;
    h.settle(&m2.id).await?;
    success(
        "ConfigureMachine by the owner",
        h.configure(&old, &m1.id, "cluster-a").await,
    )?;
    let before = h.settle(&m1.id).await?;

    // Another shard presenting the same grant is not the owner.
    let impostor = crate::harness::Actor {
        shard: h.unique("fence-impostor"),
        ..old.clone()
    };
    let (_, metadata) = refusal(
        "AdoptDomain by another shard under the owner's (equal) grant",
        h.adopt(&impostor).await,
        Reason::StaleGrant,
    )?;
    names_both(
        "AdoptDomain under an equal grant",
        &metadata,
        Stale::Domain(&old.domain),
        &old.grant,
        &old.grant,
    )?;
    // The owner's own grant, presented again, still acts (equal is accepted).
    success(
        "ReleaseMachine by the owner under its grant",
        h.release(&old, &m1.id).await,
    )?;
    success(
        "ConfigureMachine by the owner under its grant",
        h.configure(&old, &m1.id, "cluster-a").await,
    )?;
    let before = h
        .settle(&m1.id)
        .await
        .map(|m| m.version.max(before.version))?;

    let new = h.successor(&old, "fence-new");
    let adopted = success("AdoptDomain under a newer grant", h.adopt(&new).await)?;
    let mut ids: Vec<&str> = adopted.iter().map(|m| m.id.as_str()).collect();
    ids.sort();
    let mut expected = vec![m1.id.as_str(), m2.id.as_str()];
    expected.sort();
    ensure!(
        ids == expected,
        "AdoptDomain answered machines {ids:?}; the domain holds {expected:?}"
    );
    for machine in &adopted {
        ensure!(
            machine.owner_shard == new.shard && machine.owner_grant == Some(new.grant),
            "after AdoptDomain machine {} is owned by {:?} under {:?}; expected {} under {:?}",
            machine.id,
            machine.owner_shard,
            machine.owner_grant,
            new.shard,
            new.grant
        );
    }
    let kept = h.settle(&m1.id).await?;
    ensure!(
        kept.state == MachineState::Configured as i32 && kept.cluster == "cluster-a",
        "AdoptDomain changed the machine's service: it was CONFIGURED for cluster-a, now {:?} for {:?} (a handover must not release or reconfigure)",
        MachineState::try_from(kept.state).unwrap_or_default(),
        kept.cluster
    );
    ensure!(
        kept.version > before,
        "AdoptDomain did not raise the version of machine {} (a lister could not tell it moved)",
        m1.id
    );
    h.consistent("after AdoptDomain", &kept).await?;

    // From now on every call of the old owner is refused, naming both grants.
    let (_, metadata) = refusal(
        "ReleaseMachine by the old owner after the handover",
        h.release(&old, &m1.id).await,
        Reason::StaleGrant,
    )?;
    names_both(
        "the old owner's ReleaseMachine",
        &metadata,
        Stale::Domain(&old.domain),
        &old.grant,
        &new.grant,
    )?;
    refusal(
        "ConfigureMachine by the old owner after the handover",
        h.configure(&old, &m2.id, "cluster-b").await,
        Reason::StaleGrant,
    )?;
    refusal(
        "DeleteMachine by the old owner after the handover",
        h.delete(&old, &m2.id).await,
        Reason::StaleGrant,
    )?;
    refusal(
        "CreateMachine by the old owner after the handover",
        h.create(&old).await,
        Reason::StaleGrant,
    )?;
    refusal(
        "AdoptDomain by the old owner after the handover",
        h.adopt(&old).await,
        Reason::StaleGrant,
    )?;
    let after = h.settle(&m1.id).await?;
    ensure!(
        after.owner_shard == new.shard && after.cluster == "cluster-a",
        "refused calls of the old owner changed machine {}: owner {:?}, cluster {:?}",
        m1.id,
        after.owner_shard,
        after.cluster
    );
    // The new owner acts on the machines as its own.
    success(
        "ReleaseMachine by the new owner",
        h.release(&new, &m1.id).await,
    )?;
    h.clean_up(&new).await
}

pub async fn implicit_adoption(h: &Harness) -> Verdict {
    let old = h.actor("implicit-old", 10);
    let kept = success("CreateMachine by the owner", h.create(&old).await)?;
    h.settle(&kept.id).await?;
    let new = h.successor(&old, "implicit-new");
    let made = success(
        "CreateMachine under a newer grant (no AdoptDomain first)",
        h.create(&new).await,
    )?;
    ensure!(
        made.owner_shard == new.shard,
        "the new owner's machine is owned by {:?}",
        made.owner_shard
    );
    let moved = h.settle(&kept.id).await?;
    ensure!(
        moved.owner_shard == new.shard && moved.owner_grant == Some(new.grant),
        "a call under a newer domain grant did not hand the domain's machine {} over: owner {:?} under {:?}",
        kept.id,
        moved.owner_shard,
        moved.owner_grant
    );
    refusal(
        "ReleaseMachine by the old owner after an implicit handover",
        h.release(&old, &kept.id).await,
        Reason::StaleGrant,
    )?;
    h.clean_up(&new).await
}

pub async fn quota(h: &Harness) -> Verdict {
    h.bump_quota();
    let actor = h.actor("quota", 10);
    let stale_table = actor.quota.grant.unwrap_or_default();
    success(
        "CreateMachine under the current slice table",
        h.create(&actor).await,
    )?;
    let revision = h.bump_quota();
    let current = crate::harness::Actor {
        quota: h.quota(10),
        ..actor.clone()
    };
    success(
        "CreateMachine under a newer slice table",
        h.create(&current).await,
    )?;
    success(
        "CreateMachine under the same (equal) slice table",
        h.create(&current).await,
    )?;
    let (_, metadata) = refusal(
        "CreateMachine under an older slice table",
        h.create(&actor).await,
        Reason::StaleGrant,
    )?;
    names_both(
        "CreateMachine under an older slice table",
        &metadata,
        Stale::Quota(format!(
            "{}/{}",
            actor.quota.quota_provider, actor.quota.region
        )),
        &stale_table,
        &Grant {
            restore_epoch: h.run(),
            revision,
        },
    )?;
    // Another shard with its own domain is fenced by the same table: slices are one table.
    let neighbour = crate::harness::Actor {
        quota: actor.quota.clone(),
        ..h.actor("quota-other", 10)
    };
    refusal(
        "another shard's CreateMachine under the older slice table",
        h.create(&neighbour).await,
        Reason::StaleGrant,
    )?;
    h.clean_up(&current).await
}

pub async fn slice(h: &Harness) -> Verdict {
    let actor = h.actor("slice", 2);
    let first = success("CreateMachine 1 of a slice of 2", h.create(&actor).await)?;
    success("CreateMachine 2 of a slice of 2", h.create(&actor).await)?;
    let (_, metadata) = refusal(
        "CreateMachine 3 of a slice of 2",
        h.create(&actor).await,
        Reason::OverSlice,
    )?;
    ensure!(
        metadata.get("slice").map(String::as_str) == Some("2"),
        "an over-slice refusal names the slice in metadata `slice`; got {metadata:?}"
    );
    let held = h.live_in(&actor.domain).await?;
    ensure!(
        held.len() == 2,
        "after a refused create the shard holds {} live machines, expected 2",
        held.len()
    );
    success("DeleteMachine", h.delete(&actor, &first.id).await)?;
    let deleted = h.settle(&first.id).await;
    ensure!(
        deleted.as_ref().map_or(true, |m| !live(m)),
        "a deleted machine is still live: {deleted:?}"
    );
    success(
        "CreateMachine after a delete freed a place in the slice",
        h.create(&actor).await,
    )?;
    // A newer table with a bigger slice lets more through.
    h.bump_quota();
    let bigger = crate::harness::Actor {
        quota: h.quota(3),
        ..actor.clone()
    };
    success(
        "CreateMachine under a bigger slice",
        h.create(&bigger).await,
    )?;
    h.clean_up(&bigger).await
}

pub async fn epoch(h: &Harness) -> Verdict {
    let mut actor = h.actor("epoch", 10);
    actor.epoch = 5;
    let machine = success("CreateMachine at epoch 5", h.create(&actor).await)?;
    let mut earlier = actor.clone();
    earlier.epoch = 4;
    refusal(
        "ReleaseMachine from the shard's older epoch 4",
        h.release(&earlier, &machine.id).await,
        Reason::StaleEpoch,
    )?;
    refusal(
        "CreateMachine from the shard's older epoch 4",
        h.create(&earlier).await,
        Reason::StaleEpoch,
    )?;
    let mut later = actor.clone();
    later.epoch = 6;
    success("CreateMachine at epoch 6", h.create(&later).await)?;
    refusal(
        "CreateMachine from epoch 5 once 6 acted",
        h.create(&actor).await,
        Reason::StaleEpoch,
    )?;
    h.clean_up(&later).await
}
