//! Fencing: by domain grant (the right to create in a domain), by cluster grant (machines at
//! work belong to the shard serving their cluster and move with it, in place), by ownership
//! (an idle machine is its owner's alone), by slice table, slice and restart epoch.

use ballast_protocol::provider::Reason;
use ballast_protocol::providerpb::{DomainGrant, Grant, Machine, MachineState};

use crate::ensure;
use crate::harness::{
    Actor, Harness, Stale, Verdict, ids, live, not_owner, refusal, stale_grant, state_of, success,
};

/// `now` is `was` handed to `shard` under the cluster grant `grant`, in place: the same
/// machine, still CONFIGURED for the same cluster, a newer version, and nothing else changed.
fn moved_in_place(what: &str, was: &Machine, now: &Machine, shard: &str, grant: &Grant) -> Verdict {
    ensure!(
        now.id == was.id,
        "{what}: expected machine {}, got {}",
        was.id,
        now.id
    );
    ensure!(
        state_of(now) == MachineState::Configured && now.cluster == was.cluster,
        "{what}: machine {} was CONFIGURED for cluster {:?}, now {:?} for {:?} (a handover moves a machine in place: nothing is released or reconfigured)",
        was.id,
        was.cluster,
        state_of(now),
        now.cluster
    );
    ensure!(
        now.owner_shard == shard && now.owner_grant == Some(*grant),
        "{what}: machine {} is owned by {:?} under {:?}; expected {shard} under the cluster grant {grant:?}",
        was.id,
        now.owner_shard,
        now.owner_grant
    );
    ensure!(
        now.version > was.version,
        "{what}: machine {} changed owner but kept version {} (a lister could not tell it moved)",
        was.id,
        now.version
    );
    let expected = Machine {
        owner_shard: now.owner_shard.clone(),
        owner_grant: now.owner_grant,
        version: now.version,
        ..was.clone()
    };
    ensure!(
        *now == expected,
        "{what}: machine {} changed more than its owner:\n  before {was:?}\n  after  {now:?}",
        was.id
    );
    Ok(())
}

/// Reads `machines` again (settled) and fails unless each is exactly as it was.
async fn unchanged(h: &Harness, what: &str, machines: &[Machine]) -> Verdict {
    for was in machines {
        let now = h.settle(&was.id).await?;
        ensure!(
            now == *was,
            "{what} changed machine {}:\n  before {was:?}\n  after  {now:?}",
            was.id
        );
    }
    Ok(())
}

pub async fn domain(h: &Harness) -> Verdict {
    let mut old = h.actor("domain-old", 10);
    let cluster = h.serve(&mut old);
    let m1 = success("CreateMachine by the domain's holder", h.create(&old).await)?;
    let m2 = success("CreateMachine by the domain's holder", h.create(&old).await)?;
    h.settle(&m1.id).await?;
    h.settle(&m2.id).await?;
    success(
        "ConfigureMachine by the domain's holder",
        h.configure(&old, &m1.id, &cluster).await,
    )?;

    // Another shard presenting the same grant does not hold the domain.
    let impostor = Actor {
        shard: h.unique("domain-impostor"),
        clusters: Default::default(),
        ..old.clone()
    };
    stale_grant(
        "ClaimDomain by another shard under the holder's (equal) domain grant",
        h.claim(&impostor).await,
        Stale::Domain(&old.domain),
        &old.grant,
        &old.grant,
    )?;
    stale_grant(
        "CreateMachine by another shard under the holder's (equal) domain grant",
        h.create(&impostor).await,
        Stale::Domain(&old.domain),
        &old.grant,
        &old.grant,
    )?;
    // The holder's own grant, presented again, still creates and claims (equal is accepted).
    let m3 = success(
        "CreateMachine by the holder under its (equal) domain grant",
        h.create(&old).await,
    )?;
    success(
        "ClaimDomain by the holder under its (equal) domain grant",
        h.claim(&old).await,
    )?;
    let mut before = Vec::new();
    for id in [&m1.id, &m2.id, &m3.id] {
        before.push(h.settle(id).await?);
    }

    // A newer grant claims the domain: the old holder may create there no more, but no
    // machine changes hands.
    let new = h.successor(&old, "domain-new");
    success(
        "ClaimDomain under a newer domain grant",
        h.claim(&new).await,
    )?;
    unchanged(
        h,
        "ClaimDomain under a newer domain grant (a domain claim moves no machine)",
        &before,
    )
    .await?;
    let owned = h.list_all(&old.domain, &old.shard, 0).await?;
    ensure!(
        ids(&owned) == ids(&before),
        "after another shard claimed the domain, ListMachines(owner {}) lists {:?}; the old holder's machines {:?} stay its own",
        old.shard,
        ids(&owned),
        ids(&before)
    );
    stale_grant(
        "CreateMachine by the old holder after a newer grant claimed the domain",
        h.create(&old).await,
        Stale::Domain(&old.domain),
        &old.grant,
        &new.grant,
    )?;
    stale_grant(
        "ClaimDomain by the old holder after a newer grant claimed the domain",
        h.claim(&old).await,
        Stale::Domain(&old.domain),
        &old.grant,
        &new.grant,
    )?;

    // Its machines are still its own, to act on under its clusters' grants.
    success(
        "ReleaseMachine by the old holder of its configured machine under its cluster grant, after another shard claimed the domain",
        h.release(&old, &m1.id, &cluster).await,
    )?;
    let mut configure = h.configure_request(&old, &m1.id, &cluster);
    if let Some(token) = configure.token.as_mut() {
        token.domain = Some(DomainGrant {
            domain: old.domain.clone(),
            grant: Some(old.grant),
        });
    }
    success(
        "ConfigureMachine by the old holder under its cluster grant, its token still carrying its older domain grant (a configure ignores domain grants)",
        h.send_configure(configure).await,
    )?;
    success(
        "ConfigureMachine by the old holder of its idle machine, after another shard claimed the domain",
        h.configure(&old, &m2.id, &cluster).await,
    )?;
    for id in [&m1.id, &m2.id] {
        let now = h.settle(id).await?;
        ensure!(
            now.owner_shard == old.shard
                && state_of(&now) == MachineState::Configured
                && now.cluster == cluster,
            "after the old holder configured machine {id} for {cluster}, it is {:?} for {:?}, owned by {:?}; expected CONFIGURED for {cluster}, owned by {}",
            state_of(&now),
            now.cluster,
            now.owner_shard,
            old.shard
        );
    }

    // The new holder creates in the domain.
    let made = success(
        "CreateMachine by the new holder of the domain",
        h.create(&new).await,
    )?;
    ensure!(
        made.owner_shard == new.shard && made.owner_grant == Some(new.grant),
        "the new holder's CreateMachine answered owner {:?} under {:?}; expected {} under {:?}",
        made.owner_shard,
        made.owner_grant,
        new.shard,
        new.grant
    );
    h.clean_up(&old).await?;
    h.clean_up(&new).await
}

pub async fn cluster(h: &Harness) -> Verdict {
    let cluster = h.cluster();
    let other = h.cluster();
    let older = h.grant();
    let current = h.grant();
    let owner = h
        .actor("cluster-old", 10)
        .with_cluster(&cluster, current)
        .with_cluster(&other, h.grant());
    let a = success("CreateMachine", h.create(&owner).await)?;
    let b = success("CreateMachine", h.create(&owner).await)?;
    let c = success("CreateMachine", h.create(&owner).await)?;
    for id in [&a.id, &b.id, &c.id] {
        h.settle(id).await?;
    }
    for id in [&a.id, &b.id] {
        success(
            "ConfigureMachine by the cluster's owner",
            h.configure(&owner, id, &cluster).await,
        )?;
    }
    success(
        "ConfigureMachine for another cluster",
        h.configure(&owner, &c.id, &other).await,
    )?;
    let mut serving = vec![a.id.clone(), b.id.clone()];
    serving.sort();

    // An older grant for the cluster is refused, even from the shard holding the newest.
    let behind = owner.with_cluster(&cluster, older);
    stale_grant(
        "ConfigureMachine under an older grant for the cluster than the one accepted",
        h.configure(&behind, &a.id, &cluster).await,
        Stale::Cluster(&cluster),
        &older,
        &current,
    )?;
    stale_grant(
        "ReleaseMachine of a machine serving the cluster under an older grant for it",
        h.release(&behind, &b.id, &cluster).await,
        Stale::Cluster(&cluster),
        &older,
        &current,
    )?;
    stale_grant(
        "AdoptCluster under an older grant for the cluster",
        h.adopt_cluster(&behind, &cluster).await,
        Stale::Cluster(&cluster),
        &older,
        &current,
    )?;
    // An equal grant held by another shard is refused too.
    let impostor = h
        .actor("cluster-impostor", 10)
        .with_cluster(&cluster, current);
    stale_grant(
        "AdoptCluster by another shard under the owner's (equal) cluster grant",
        h.adopt_cluster(&impostor, &cluster).await,
        Stale::Cluster(&cluster),
        &current,
        &current,
    )?;
    stale_grant(
        "ConfigureMachine of the owner's machine by another shard under the owner's (equal) cluster grant",
        h.configure(&impostor, &a.id, &cluster).await,
        Stale::Cluster(&cluster),
        &current,
        &current,
    )?;
    // The owner's own grant, presented again, acts (equal from the same shard is accepted).
    success(
        "ReleaseMachine by the owner under its (equal) cluster grant",
        h.release(&owner, &b.id, &cluster).await,
    )?;
    success(
        "ConfigureMachine by the owner under its (equal) cluster grant",
        h.configure(&owner, &b.id, &cluster).await,
    )?;
    let mine = success(
        "AdoptCluster by the owner under its (equal) cluster grant",
        h.adopt_cluster(&owner, &cluster).await,
    )?;
    ensure!(
        ids(&mine) == serving,
        "AdoptCluster by the owner under its (equal) grant answered machines {:?}; the cluster is served by {serving:?}",
        ids(&mine)
    );
    ensure!(
        mine.iter().all(|m| m.owner_shard == owner.shard),
        "AdoptCluster by the owner under its (equal) grant answered owners {:?}; every machine is {}'s",
        mine.iter().map(|m| &m.owner_shard).collect::<Vec<_>>(),
        owner.shard
    );
    let mut before = Vec::new();
    for id in [&a.id, &b.id, &c.id] {
        before.push(h.settle(id).await?);
    }
    for (machine, expected) in before.iter().zip([&cluster, &cluster, &other]) {
        ensure!(
            state_of(machine) == MachineState::Configured
                && machine.cluster == *expected
                && machine.owner_shard == owner.shard,
            "after the refused calls machine {} is {:?} for {:?}, owned by {:?}; expected CONFIGURED for {expected}, owned by {}",
            machine.id,
            state_of(machine),
            machine.cluster,
            machine.owner_shard,
            owner.shard
        );
    }

    // A newer grant, presented by another shard, takes the cluster over with every machine
    // serving it, in place.
    let newer = h.grant();
    let heir = h.actor("cluster-new", 10).with_cluster(&cluster, newer);
    let adopted = success(
        "AdoptCluster under a newer grant",
        h.adopt_cluster(&heir, &cluster).await,
    )?;
    ensure!(
        ids(&adopted) == serving,
        "AdoptCluster under a newer grant answered machines {:?}; the cluster is served by {serving:?} ({} serves another cluster)",
        ids(&adopted),
        c.id
    );
    for machine in &adopted {
        let was = before
            .iter()
            .find(|m| m.id == machine.id)
            .expect("an answered machine is one of the cluster's");
        moved_in_place(
            "AdoptCluster under a newer grant answered",
            was,
            machine,
            &heir.shard,
            &newer,
        )?;
        let now = h.settle(&machine.id).await?;
        moved_in_place(
            "GetMachine after AdoptCluster",
            was,
            &now,
            &heir.shard,
            &newer,
        )?;
        h.consistent("after AdoptCluster", machine).await?;
    }
    unchanged(
        h,
        &format!("AdoptCluster of {cluster} (a machine serving another cluster stays)"),
        &before[2..],
    )
    .await?;
    let listed = h.list_where("", "", &cluster, 0).await?;
    ensure!(
        ids(&listed) == serving && listed.iter().all(|m| m.owner_shard == heir.shard),
        "after AdoptCluster, ListMachines(cluster {cluster}) lists {:?} owned by {:?}; expected {serving:?}, all owned by {}",
        ids(&listed),
        listed.iter().map(|m| &m.owner_shard).collect::<Vec<_>>(),
        heir.shard
    );
    let kept = h.list_all(&owner.domain, &owner.shard, 0).await?;
    ensure!(
        ids(&kept) == vec![c.id.clone()],
        "after AdoptCluster, ListMachines(owner {}) lists {:?}; the old owner keeps only {} (serving another cluster)",
        owner.shard,
        ids(&kept),
        c.id
    );

    // From now on the old owner is refused on those machines, naming both grants.
    stale_grant(
        "ReleaseMachine by the old owner of a machine of the adopted cluster",
        h.release(&owner, &a.id, &cluster).await,
        Stale::Cluster(&cluster),
        &current,
        &newer,
    )?;
    stale_grant(
        "ConfigureMachine by the old owner of a machine of the adopted cluster",
        h.configure(&owner, &b.id, &cluster).await,
        Stale::Cluster(&cluster),
        &current,
        &newer,
    )?;
    stale_grant(
        "DeleteMachine by the old owner of a machine of the adopted cluster",
        h.delete(&owner, &b.id, &cluster).await,
        Stale::Cluster(&cluster),
        &current,
        &newer,
    )?;
    stale_grant(
        "AdoptCluster by the old owner after a newer grant adopted the cluster",
        h.adopt_cluster(&owner, &cluster).await,
        Stale::Cluster(&cluster),
        &current,
        &newer,
    )?;
    for id in &serving {
        let now = h.settle(id).await?;
        ensure!(
            now.owner_shard == heir.shard
                && now.cluster == cluster
                && state_of(&now) == MachineState::Configured,
            "refused calls of the old owner changed machine {id}: {:?} for {:?}, owned by {:?}",
            state_of(&now),
            now.cluster,
            now.owner_shard
        );
    }
    // The old owner keeps acting on its machine of the other cluster.
    success(
        "ReleaseMachine by the old owner of its machine serving another cluster",
        h.release(&owner, &c.id, &other).await,
    )?;
    // The new owner acts on the machines as its own; once idle, a machine is its owner's alone.
    success(
        "ReleaseMachine by the new owner of an adopted machine",
        h.release(&heir, &a.id, &cluster).await,
    )?;
    h.settle(&a.id).await?;
    not_owner(
        "DeleteMachine by the old owner of an adopted machine the new owner released (an idle machine is its owner's alone)",
        h.delete(&owner, &a.id, "").await,
        &a.id,
        &heir.shard,
    )?;
    h.clean_up(&heir).await?;
    h.clean_up(&owner).await
}

pub async fn implicit_adoption(h: &Harness) -> Verdict {
    let mut old = h.actor("implicit-old", 10);
    let cluster = h.serve(&mut old);
    let at_work = success("CreateMachine by the owner", h.create(&old).await)?;
    let idle = success("CreateMachine by the owner", h.create(&old).await)?;
    h.settle(&at_work.id).await?;
    h.settle(&idle.id).await?;
    success(
        "ConfigureMachine by the owner",
        h.configure(&old, &at_work.id, &cluster).await,
    )?;
    let before = vec![h.settle(&at_work.id).await?, h.settle(&idle.id).await?];

    // A create under a newer domain grant claims the domain (no ClaimDomain first) and moves
    // no machine.
    let new = h.successor(&old, "implicit-new");
    let made = success(
        "CreateMachine under a newer domain grant (no ClaimDomain first)",
        h.create(&new).await,
    )?;
    ensure!(
        made.owner_shard == new.shard,
        "the new holder's machine is owned by {:?}; expected {}",
        made.owner_shard,
        new.shard
    );
    stale_grant(
        "CreateMachine by the old holder after a create under a newer domain grant claimed the domain",
        h.create(&old).await,
        Stale::Domain(&old.domain),
        &old.grant,
        &new.grant,
    )?;
    unchanged(
        h,
        "a CreateMachine under a newer domain grant (a domain claim moves no machine)",
        &before,
    )
    .await?;

    // A configure under a newer cluster grant (no AdoptCluster first) hands the cluster over,
    // with the machine serving it, in place.
    let first = old.cluster_grant(&cluster).unwrap_or_default();
    let newer = h.grant();
    let new = new.with_cluster(&cluster, newer);
    h.settle(&made.id).await?;
    success(
        "ConfigureMachine of the new shard's own machine under a newer cluster grant (no AdoptCluster first)",
        h.configure(&new, &made.id, &cluster).await,
    )?;
    let moved = h.settle(&at_work.id).await?;
    moved_in_place(
        "after a ConfigureMachine under a newer cluster grant",
        &before[0],
        &moved,
        &new.shard,
        &newer,
    )?;
    stale_grant(
        "ReleaseMachine by the old owner after a ConfigureMachine under a newer cluster grant adopted the cluster",
        h.release(&old, &at_work.id, &cluster).await,
        Stale::Cluster(&cluster),
        &first,
        &newer,
    )?;
    // Its idle machine is still its own: a machine moves with its cluster, not its domain.
    success(
        "DeleteMachine by the old owner of its idle machine (it moved neither with the domain nor with the cluster)",
        h.delete(&old, &idle.id, "").await,
    )?;
    h.clean_up(&new).await?;
    h.clean_up(&old).await
}

pub async fn not_owner_check(h: &Harness) -> Verdict {
    let mut holder = h.actor("owner", 10);
    let own = h.serve(&mut holder);
    let machine = success("CreateMachine", h.create(&holder).await)?;
    let id = machine.id.clone();
    let before = vec![h.settle(&id).await?];

    let mut stranger = h.actor("owner-stranger", 10);
    let theirs = h.serve(&mut stranger);
    not_owner(
        "ReleaseMachine of another shard's idle machine",
        h.release(&stranger, &id, "").await,
        &id,
        &holder.shard,
    )?;
    not_owner(
        "DeleteMachine of another shard's idle machine",
        h.delete(&stranger, &id, "").await,
        &id,
        &holder.shard,
    )?;
    not_owner(
        "ConfigureMachine of another shard's idle machine under the caller's own cluster grant",
        h.configure(&stranger, &id, &theirs).await,
        &id,
        &holder.shard,
    )?;
    // Claiming the machine's domain under a newer grant does not make it the claimer's.
    let mut claimer = h.successor(&holder, "owner-claimer");
    let claimers = h.serve(&mut claimer);
    success(
        "ClaimDomain of the machine's domain under a newer grant",
        h.claim(&claimer).await,
    )?;
    not_owner(
        "ReleaseMachine of another shard's idle machine by the shard that claimed its domain",
        h.release(&claimer, &id, "").await,
        &id,
        &holder.shard,
    )?;
    not_owner(
        "DeleteMachine of another shard's idle machine by the shard that claimed its domain",
        h.delete(&claimer, &id, "").await,
        &id,
        &holder.shard,
    )?;
    not_owner(
        "ConfigureMachine of another shard's idle machine by the shard that claimed its domain",
        h.configure(&claimer, &id, &claimers).await,
        &id,
        &holder.shard,
    )?;
    unchanged(h, "calls refused not-owner", &before).await?;
    // The owner still acts on it.
    success(
        "ConfigureMachine by the owner after other shards were refused",
        h.configure(&holder, &id, &own).await,
    )?;
    success(
        "ReleaseMachine by the owner",
        h.release(&holder, &id, &own).await,
    )?;
    h.clean_up(&holder).await
}

pub async fn quota(h: &Harness) -> Verdict {
    h.bump_quota();
    let actor = h.actor("quota", 10);
    let stale_table = actor.quota.grant.unwrap_or_default();
    let quota = format!("{}/{}", actor.quota.quota_provider, actor.quota.region);
    success(
        "CreateMachine under the current slice table",
        h.create(&actor).await,
    )?;
    let revision = h.bump_quota();
    let accepted = Grant {
        restore_epoch: h.run(),
        revision,
    };
    let current = Actor {
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
    stale_grant(
        "CreateMachine under an older slice table",
        h.create(&actor).await,
        Stale::Quota(&quota),
        &stale_table,
        &accepted,
    )?;
    stale_grant(
        "ClaimDomain carrying an older slice table",
        h.claim(&actor).await,
        Stale::Quota(&quota),
        &stale_table,
        &accepted,
    )?;
    // Another shard with its own domain is fenced by the same table: slices are one table.
    let neighbour = Actor {
        quota: actor.quota.clone(),
        ..h.actor("quota-other", 10)
    };
    stale_grant(
        "another shard's CreateMachine under the older slice table",
        h.create(&neighbour).await,
        Stale::Quota(&quota),
        &stale_table,
        &accepted,
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
        metadata.get("slice").map(String::as_str) == Some("2")
            && metadata.get("held").map(String::as_str) == Some("2"),
        "an over-slice refusal names the live machines the shard holds (`held`) and its slice (`slice`): expected held=2, slice=2; got {metadata:?}"
    );
    let held: Vec<Machine> = h
        .list_all(&actor.domain, &actor.shard, 0)
        .await?
        .into_iter()
        .filter(live)
        .collect();
    ensure!(
        held.len() == 2,
        "after a refused create the shard holds {} live machines, expected 2",
        held.len()
    );
    success("DeleteMachine", h.delete(&actor, &first.id, "").await)?;
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
    let mut bigger = Actor {
        quota: h.quota(3),
        ..actor.clone()
    };
    let third = success(
        "CreateMachine under a bigger slice",
        h.create(&bigger).await,
    )?;
    h.settle(&third.id).await?;
    let cluster = h.serve(&mut bigger);
    success(
        "ConfigureMachine",
        h.configure(&bigger, &third.id, &cluster).await,
    )?;

    // Another shard creating in the same domain counts only the machines it owns: the 3
    // machines of the domain's previous holder are not its own.
    let neighbour = Actor {
        quota: h.quota(2),
        ..h.successor(&bigger, "slice-neighbour")
    };
    success(
        "CreateMachine 1 of a slice of 2 by another shard in the same domain under a newer domain grant (the 3 live machines of the domain's previous holder are not its own and do not count)",
        h.create(&neighbour).await,
    )?;
    // A machine it adopts with a cluster is its own, and counts.
    let neighbour = neighbour.with_cluster(&cluster, h.grant());
    success(
        "AdoptCluster of a cluster served by one machine",
        h.adopt_cluster(&neighbour, &cluster).await,
    )?;
    let (_, metadata) = refusal(
        "CreateMachine 2 of a slice of 2 by a shard holding 1 machine it created and 1 it adopted with a cluster",
        h.create(&neighbour).await,
        Reason::OverSlice,
    )?;
    ensure!(
        metadata.get("held").map(String::as_str) == Some("2"),
        "an over-slice refusal of a shard that created 1 machine and adopted 1 names held=2; got {metadata:?}"
    );
    h.clean_up(&neighbour).await?;
    h.clean_up(&bigger).await
}

pub async fn epoch(h: &Harness) -> Verdict {
    let mut actor = h.actor("epoch", 10);
    actor.epoch = 5;
    let cluster = h.serve(&mut actor);
    let machine = success("CreateMachine at epoch 5", h.create(&actor).await)?;
    h.settle(&machine.id).await?;
    let mut earlier = actor.clone();
    earlier.epoch = 4;
    refusal(
        "ReleaseMachine from the shard's older epoch 4",
        h.release(&earlier, &machine.id, "").await,
        Reason::StaleEpoch,
    )?;
    refusal(
        "ConfigureMachine from the shard's older epoch 4 (under its current cluster grant)",
        h.configure(&earlier, &machine.id, &cluster).await,
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
