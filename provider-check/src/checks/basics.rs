//! Describe, a machine's life, and listing.

use std::collections::BTreeSet;

use ballast_protocol::provider::{CONTRACT, Reason};
use ballast_protocol::providerpb::{ListMachinesRequest, MachineState};

use crate::ensure;
use crate::harness::{Harness, Verdict, fail, refusal, show_status, success};

fn state(machine: &ballast_protocol::providerpb::Machine) -> MachineState {
    MachineState::try_from(machine.state).unwrap_or_default()
}

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
    let actor = h.actor("life", 10);
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
        h.configure(&actor, &created.id, "cluster-a").await,
    )?;
    h.consistent("after ConfigureMachine", &configured).await?;
    let configured = h.settle(&created.id).await?;
    ensure!(
        state(&configured) == MachineState::Configured && configured.cluster == "cluster-a",
        "after ConfigureMachine the machine is {:?} for cluster {:?}; expected CONFIGURED for cluster-a",
        state(&configured),
        configured.cluster
    );
    ensure!(
        configured.version > idle.version,
        "ConfigureMachine did not raise the machine's version ({} then {})",
        idle.version,
        configured.version
    );

    let released = success("ReleaseMachine", h.release(&actor, &created.id).await)?;
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

    let deleted = success("DeleteMachine", h.delete(&actor, &created.id).await)?;
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
    let actor = h.actor("state", 10);
    let machine = success("CreateMachine", h.create(&actor).await)?;
    h.settle(&machine.id).await?;
    success(
        "ConfigureMachine",
        h.configure(&actor, &machine.id, "cluster-a").await,
    )?;
    h.settle(&machine.id).await?;
    refusal(
        "ConfigureMachine for another cluster while configured",
        h.configure(&actor, &machine.id, "cluster-b").await,
        Reason::InvalidState,
    )?;
    let still = h.settle(&machine.id).await?;
    ensure!(
        still.cluster == "cluster-a",
        "a refused ConfigureMachine moved the machine to cluster {:?}",
        still.cluster
    );
    success("DeleteMachine", h.delete(&actor, &machine.id).await)?;
    if h.get(&machine.id).await.is_ok() {
        h.settle(&machine.id).await?;
        refusal(
            "ConfigureMachine of a deleted machine",
            h.configure(&actor, &machine.id, "cluster-a").await,
            Reason::InvalidState,
        )?;
    }
    Ok(())
}

pub async fn paging(h: &Harness) -> Verdict {
    const COUNT: usize = 23;
    let actor = h.actor("paging", COUNT as u64 + 1);
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
