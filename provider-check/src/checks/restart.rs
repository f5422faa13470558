//! Durability: what the provider answered before its restart still holds after it.

use std::time::{Duration, Instant};

use ballast_protocol::provider::Reason;
use ballast_protocol::providerpb::Machine;

use super::{Context, Outcome};
use crate::ensure;
use crate::harness::{
    Harness, Stale, Verdict, fail, refusal, same_or_newer, show_status, stale_grant, success,
};

pub async fn restart(cx: &Context<'_>) -> Outcome {
    let h = cx.harness;
    if !h.describe.durable {
        return Outcome::Skip(
            "the provider says it is not durable (Describe.durable = false)".into(),
        );
    }
    let Some(command) = cx.restart_command else {
        return Outcome::Skip(
            "the provider says it is durable, but no --restart-command was given to prove it"
                .into(),
        );
    };
    Outcome::from(across_restart(h, command, cx.restart_timeout).await)
}

async fn across_restart(h: &Harness, command: &str, timeout: Duration) -> Verdict {
    // Before: machines in two states, a domain claimed and a cluster adopted by another shard,
    // a newer epoch and an answered key.
    let mut old = h.actor("durable-old", 10);
    let cluster = h.serve(&mut old);
    let a = success("CreateMachine", h.create(&old).await)?;
    let b = success("CreateMachine", h.create(&old).await)?;
    h.settle(&a.id).await?;
    h.settle(&b.id).await?;
    success("ConfigureMachine", h.configure(&old, &a.id, &cluster).await)?;
    let first = old.cluster_grant(&cluster).unwrap_or_default();
    let mut new = h.successor(&old, "durable-new");
    new.epoch = 7;
    let newer = h.grant();
    let new = new.with_cluster(&cluster, newer);
    success(
        "ClaimDomain under a newer domain grant",
        h.claim(&new).await,
    )?;
    success(
        "AdoptCluster under a newer cluster grant",
        h.adopt_cluster(&new, &cluster).await,
    )?;
    let create = h.create_request(&new);
    let c = success(
        "CreateMachine by the domain's new holder",
        h.send_create(create.clone()).await,
    )?;
    let c = h
        .settle(&c.id)
        .await
        .map(|m| if m.version > c.version { m } else { c })?;
    // Concurrent creates: a provider that batches its disk writes (group commit) must still
    // have made each one durable before answering it.
    let together = futures::future::join_all((0..6).map(|_| h.create(&new))).await;
    let mut answered = Vec::new();
    for outcome in together {
        answered.push(success("CreateMachine among six sent at once", outcome)?.id);
    }
    let before: Vec<Machine> = h.list_all(&new.domain, "", 0).await?;
    for id in &answered {
        ensure!(
            before.iter().any(|m| &m.id == id),
            "machine {id}, answered to one of six concurrent creates, is not listed"
        );
    }

    run_restart(command).await?;
    wait_for_describe(h, timeout).await?;

    let after = h.list_all(&new.domain, "", 0).await?;
    ensure!(
        after.len() == before.len(),
        "after the restart the domain lists {} machines; before it {}",
        after.len(),
        before.len()
    );
    for machine in &before {
        let Some(now) = after.iter().find(|m| m.id == machine.id) else {
            return fail(format!("machine {} is gone after the restart", machine.id));
        };
        same_or_newer("across the restart", machine, now)?;
        ensure!(
            now.owner_shard == machine.owner_shard
                && now.owner_grant == machine.owner_grant
                && now.cluster == machine.cluster,
            "across the restart machine {} went from owner {:?} under {:?}, cluster {:?} to owner {:?} under {:?}, cluster {:?}",
            machine.id,
            machine.owner_shard,
            machine.owner_grant,
            machine.cluster,
            now.owner_shard,
            now.owner_grant,
            now.cluster
        );
    }
    stale_grant(
        "the old holder's CreateMachine after the restart (the domain fence must survive it)",
        h.create(&old).await,
        Stale::Domain(&old.domain),
        &old.grant,
        &new.grant,
    )?;
    stale_grant(
        "the old owner's ReleaseMachine of a machine of the adopted cluster after the restart (the cluster fence must survive it)",
        h.release(&old, &a.id, &cluster).await,
        Stale::Cluster(&cluster),
        &first,
        &newer,
    )?;
    let impostor = h
        .actor("durable-impostor", 10)
        .with_cluster(&cluster, newer);
    stale_grant(
        "another shard's AdoptCluster under the adopter's (equal) grant after the restart (the cluster mark must keep the shard it went to)",
        h.adopt_cluster(&impostor, &cluster).await,
        Stale::Cluster(&cluster),
        &newer,
        &newer,
    )?;
    let mut earlier = new.clone();
    earlier.epoch = 6;
    refusal(
        "the new owner's older epoch after the restart (the epoch fence must survive it)",
        h.create(&earlier).await,
        Reason::StaleEpoch,
    )?;
    let mut replay = create.clone();
    replay.token = Some(h.token(&new));
    let replayed = success(
        "CreateMachine replayed with its key after the restart",
        h.send_create(replay).await,
    )?;
    ensure!(
        replayed.id == c.id,
        "a replayed CreateMachine answered {} after the restart; before it {}",
        replayed.id,
        c.id
    );
    let listed = h.list_all(&new.domain, "", 0).await?;
    ensure!(
        listed.len() == before.len(),
        "replaying a CreateMachine after the restart made a machine: {} listed, {} before",
        listed.len(),
        before.len()
    );
    // The old owner's idle machine is still its own after the restart.
    success(
        "the old owner's ReleaseMachine of its idle machine after the restart (ownership must survive it)",
        h.release(&old, &b.id, "").await,
    )?;
    h.clean_up(&new).await?;
    h.clean_up(&old).await
}

async fn run_restart(command: &str) -> Verdict {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await;
    match output {
        Err(_) => fail(format!("--restart-command {command:?} ran for over 120 s")),
        Ok(Err(e)) => fail(format!("--restart-command {command:?}: {e}")),
        Ok(Ok(out)) if !out.status.success() => fail(format!(
            "--restart-command {command:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Ok(_)) => Ok(()),
    }
}

async fn wait_for_describe(h: &Harness, timeout: Duration) -> Verdict {
    let deadline = Instant::now() + timeout;
    loop {
        match h.call_describe().await {
            Ok(_) => return Ok(()),
            Err(status) if Instant::now() >= deadline => {
                return fail(format!(
                    "the provider did not answer Describe within {timeout:?} of the restart: {}",
                    show_status(&status)
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
