//! Describe, a machine's life, and listing.

use std::collections::BTreeSet;

use ballast_protocol::provider::{CONTRACT, Reason};
use ballast_protocol::providerpb::{ListMachinesRequest, MachineState};

use crate::ensure;
use crate::harness::{
    Harness, Verdict, fail, ids, refusal, show_status, state_of as state, success,
};

pub async fn describe(h: &Harness) -> Verdict {
    let d = &h.describe;
    ensure!(
        d.contract == CONTRACT,
        "Describe: contract is {:?}, this suite checks {CONTRACT:?}",
        d.contract
    );
    ensure!(!d.name.is_empty(), "Describe: name is empty");
    ensure!(
        !d.quota_provider.is_empty(),
        "Describe: quota_provider is empty (machines must count against a quota)"
    );
    ensure!(!d.regions.is_empty(), "Describe: no regions");
    ensure!(!d.shapes.is_empty(), "Describe: no shapes");
    ensure!(!d.capacity_types.is_empty(), "Describe: no capacity types");
    let mut names = BTreeSet::new();
    for shape in &d.shapes {
        ensure!(!shape.name.is_empty(), "Describe: a shape has no name");
        ensure!(
            names.insert(shape.name.clone()),
            "Describe: shape {:?} listed twice",
            shape.name
        );
        let Some(resources) = shape.resources else {
            return fail(format!("Describe: shape {:?} has no resources", shape.name));
        };
        ensure!(
            resources.cpu_millis > 0 && resources.memory_mib > 0 && resources.gpus >= 0,
            "Describe: shape {:?} has resources {resources:?}; cpu and memory must be positive",
            shape.name
        );
        ensure!(
            shape.price_per_hour.is_finite() && shape.price_per_hour >= 0.0,
            "Describe: shape {:?} has price {}",
            shape.name,
            shape.price_per_hour
        );
    }
    let again = h
        .call_describe()
        .await
        .or_else(|s| fail(format!("Describe a second time: {}", show_status(&s))))?;
    ensure!(
        &again == d,
        "Describe answered differently on a second call"
    );
    Ok(())
}

pub async fn lifecycle(h: &Harness) -> Verdict {
    let mut actor = h.actor("life", 10);
    let cluster = h.serve(&mut actor);
    let created = success("CreateMachine", h.create(&actor).await)?;
    ensure!(
        matches!(state(&created), MachineState::Creating | MachineState::Idle),
        "CreateMachine answered state {:?}; a new machine is CREATING or IDLE",
        state(&created)
    );
    ensure!(
        created.owner_shard == actor.shard && created.owner_grant == Some(actor.grant),
        "CreateMachine answered owner {:?} under grant {:?}; expected {} under {:?}",
        created.owner_shard,
        created.owner_grant,
        actor.shard,
        actor.grant
    );
    ensure!(
        created.domain == actor.domain
            && created.shape == h.shape()
            && created.quota_provider == actor.quota.quota_provider
            && created.region == actor.quota.region,
        "CreateMachine answered {created:?}, which does not match the request"
    );
    ensure!(
        h.describe.capacity_types.contains(&created.capacity_type),
        "CreateMachine answered capacity type {:?}, not one Describe lists",
        created.capacity_type
    );
    let expected_resources = h.describe.shapes.first().and_then(|s| s.resources);
    ensure!(
        created.resources == expected_resources,
        "CreateMachine answered resources {:?}; shape {} has {:?}",
        created.resources,
        h.shape(),
        expected_resources
    );
    h.consistent("after CreateMachine", &created).await?;
    let idle = h.settle(&created.id).await?;
    ensure!(
        state(&idle) == MachineState::Idle,
        "a created machine settled in {:?}, expected IDLE",
        state(&idle)
    );

    let configured = success(
        "ConfigureMachine",
        h.configure(&actor, &created.id, &cluster).await,
    )?;
    h.consistent("after ConfigureMachine", &configured).await?;
    let configured = h.settle(&created.id).await?;
    ensure!(
        state(&configured) == MachineState::Configured && configured.cluster == cluster,
        "after ConfigureMachine the machine is {:?} for cluster {:?}; expected CONFIGURED for {cluster}",
        state(&configured),
        configured.cluster
    );
    ensure!(
        configured.owner_shard == actor.shard,
        "ConfigureMachine moved the machine to owner {:?}; the shard that configured it owns it",
        configured.owner_shard
    );
    ensure!(
        configured.version > idle.version,
        "ConfigureMachine did not raise the machine's version ({} then {})",
        idle.version,
        configured.version
    );

    let released = success(
        "ReleaseMachine under the grant of the cluster it serves",
        h.release(&actor, &created.id, &cluster).await,
    )?;
    h.consistent("after ReleaseMachine", &released).await?;
    let released = h.settle(&created.id).await?;
    ensure!(
        state(&released) == MachineState::Idle && released.cluster.is_empty(),
        "after ReleaseMachine the machine is {:?} for cluster {:?}; expected IDLE with no cluster",
        state(&released),
        released.cluster
    );
    ensure!(
        released.owner_shard == actor.shard,
        "ReleaseMachine moved the machine to owner {:?}; it stays the shard's",
        released.owner_shard
    );

    let deleted = success(
        "DeleteMachine of an idle machine (no cluster grant)",
        h.delete(&actor, &created.id, "").await,
    )?;
    ensure!(
        matches!(
            state(&deleted),
            MachineState::Deleting | MachineState::Deleted
        ),
        "DeleteMachine answered state {:?}; expected DELETING or DELETED",
        state(&deleted)
    );
    match h.get(&created.id).await {
        Ok(_) => {
            let gone = h.settle(&created.id).await?;
            ensure!(
                state(&gone) == MachineState::Deleted,
                "a deleted machine settled in {:?}, expected DELETED",
                state(&gone)
            );
        }
        Err(status) => {
            refusal(
                "GetMachine of a deleted machine",
                Err::<(), _>(status),
                Reason::NotFound,
            )?;
        }
    }
    let live = h.live_in(&actor.domain).await?;
    ensure!(
        live.iter().all(|m| m.id != created.id),
        "a deleted machine is still listed as live: {:?}",
        live.iter().find(|m| m.id == created.id)
    );
    Ok(())
}

pub async fn invalid_state(h: &Harness) -> Verdict {
    let mut actor = h.actor("state", 10);
    let first = h.serve(&mut actor);
    let second = h.serve(&mut actor);
    let machine = success("CreateMachine", h.create(&actor).await)?;
    h.settle(&machine.id).await?;
    success(
        "ConfigureMachine",
        h.configure(&actor, &machine.id, &first).await,
    )?;
    h.settle(&machine.id).await?;
    refusal(
        "ConfigureMachine for another cluster while configured",
        h.configure(&actor, &machine.id, &second).await,
        Reason::InvalidState,
    )?;
    let still = h.settle(&machine.id).await?;
    ensure!(
        still.cluster == first,
        "a refused ConfigureMachine moved the machine from cluster {first} to {:?}",
        still.cluster
    );
    let again = success(
        "ConfigureMachine for the cluster it already serves (a no-op)",
        h.configure(&actor, &machine.id, &first).await,
    )?;
    ensure!(
        again.cluster == first && state(&again) == MachineState::Configured,
        "ConfigureMachine for the cluster the machine already serves answered {:?} for {:?}; expected CONFIGURED for {first}",
        state(&again),
        again.cluster
    );
    success(
        "DeleteMachine of a configured machine under its cluster's grant",
        h.delete(&actor, &machine.id, &first).await,
    )?;
    if h.get(&machine.id).await.is_ok() {
        let gone = h.settle(&machine.id).await?;
        ensure!(
            gone.cluster.is_empty(),
            "a deleted machine still names cluster {:?} (a delete clears it)",
            gone.cluster
        );
        refusal(
            "ConfigureMachine of a deleted machine",
            h.configure(&actor, &machine.id, &first).await,
            Reason::InvalidState,
        )?;
        refusal(
            "ReleaseMachine of a deleted machine",
            h.release(&actor, &machine.id, "").await,
            Reason::InvalidState,
        )?;
        let repeat = success(
            "DeleteMachine of a deleted machine under a new key (it answers as it is)",
            h.delete(&actor, &machine.id, "").await,
        )?;
        ensure!(
            state(&repeat) == MachineState::Deleted,
            "DeleteMachine of a deleted machine answered {:?}; expected it as it is, DELETED",
            state(&repeat)
        );
    }
    Ok(())
}

pub async fn paging(h: &Harness) -> Verdict {
    const COUNT: usize = 23;
    let mut actor = h.actor("paging", COUNT as u64 + 1);
    let mut made = BTreeSet::new();
    for _ in 0..COUNT {
        made.insert(success("CreateMachine", h.create(&actor).await)?.id);
    }
    for limit in [1u32, 7, 0] {
        let listed = h.list_all(&actor.domain, &actor.shard, limit).await?;
        let ids: BTreeSet<String> = listed.into_iter().map(|m| m.id).collect();
        ensure!(
            ids == made,
            "ListMachines with limit {limit}: listed {} machines of the {} created ({} missing, {} unexpected)",
            ids.len(),
            made.len(),
            made.difference(&ids).count(),
            ids.difference(&made).count()
        );
    }
    // A cursor can be used again: the page after it is the same.
    let first = h
        .list_page(ListMachinesRequest {
            domain: actor.domain.clone(),
            owner_shard: actor.shard.clone(),
            cluster: String::new(),
            cursor: String::new(),
            limit: 5,
        })
        .await
        .or_else(|s| fail(format!("ListMachines: {}", show_status(&s))))?;
    ensure!(
        !first.1.is_empty(),
        "ListMachines with limit 5 over {COUNT} machines returned no cursor"
    );
    let page = |cursor: String| ListMachinesRequest {
        domain: actor.domain.clone(),
        owner_shard: actor.shard.clone(),
        cluster: String::new(),
        cursor,
        limit: 5,
    };
    let second = h.list_page(page(first.1.clone())).await;
    let again = h.list_page(page(first.1.clone())).await;
    match (second, again) {
        (Ok(a), Ok(b)) => {
            let ids = |p: &(Vec<ballast_protocol::providerpb::Machine>, String)| {
                p.0.iter().map(|m| m.id.clone()).collect::<Vec<_>>()
            };
            ensure!(
                ids(&a) == ids(&b),
                "the same cursor gave two different pages: {:?} then {:?}",
                ids(&a),
                ids(&b)
            );
        }
        (a, b) => {
            return fail(format!(
                "resuming from a cursor: {} / {}",
                crate::harness::show(&a),
                crate::harness::show(&b)
            ));
        }
    }
    let other = h.list_all(&h.unique("empty-domain"), "", 0).await?;
    ensure!(
        other.is_empty(),
        "ListMachines for a domain never used listed {} machines",
        other.len()
    );
    let by_owner = h.list_all("", &actor.shard, 0).await?;
    ensure!(
        by_owner.len() == COUNT,
        "ListMachines(owner only) listed {} machines of the shard's {COUNT}",
        by_owner.len()
    );
    // The cluster filter: only machines configured for the cluster, combined (AND) with the
    // domain and owner filters.
    let cluster = h.serve(&mut actor);
    let serving: Vec<String> = made.iter().take(5).cloned().collect();
    for id in &serving {
        h.settle(id).await?;
        success("ConfigureMachine", h.configure(&actor, id, &cluster).await)?;
    }
    for (what, listed) in [
        (
            "ListMachines(domain, owner, cluster) with limit 2",
            h.list_where(&actor.domain, &actor.shard, &cluster, 2)
                .await?,
        ),
        (
            "ListMachines(cluster only)",
            h.list_where("", "", &cluster, 0).await?,
        ),
    ] {
        ensure!(
            ids(&listed) == serving,
            "{what}: listed {:?}; the machines configured for {cluster} are {serving:?}",
            ids(&listed)
        );
    }
    for (what, domain, owner) in [
        (
            "ListMachines(cluster, another owner)",
            actor.domain.clone(),
            h.unique("no-such-owner"),
        ),
        (
            "ListMachines(cluster, another domain)",
            h.unique("empty-domain"),
            String::new(),
        ),
    ] {
        let listed = h.list_where(&domain, &owner, &cluster, 0).await?;
        ensure!(
            listed.is_empty(),
            "{what}: listed {:?}; the filters combine, so none match",
            ids(&listed)
        );
    }
    let never = h.list_where("", "", &h.cluster(), 0).await?;
    ensure!(
        never.is_empty(),
        "ListMachines for a cluster never configured listed {:?}",
        ids(&never)
    );
    refusal(
        "ListMachines with limit 1001",
        h.list_page(ListMachinesRequest {
            limit: 1001,
            ..Default::default()
        })
        .await,
        Reason::InvalidArgument,
    )?;
    h.clean_up(&actor).await
}
