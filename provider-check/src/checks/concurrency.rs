//! Concurrent callers: repeats, a slice raced for, an old owner racing the shard given its
//! domain or its cluster, and two shards racing for one domain or one cluster under one grant.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_protocol::provider::{Reason, reason_of};
use futures::future::join_all;
use parking_lot::Mutex;
use tonic::Status;

use ballast_protocol::providerpb::{Machine, MachineState};

use crate::ensure;
use crate::harness::{
    Actor, Failure, Harness, Verdict, fail, ids, live, refusal, show, show_status, state_of,
    success,
};

/// Retries a call refused as retryable (`unavailable`, or a busy provider's
/// `insufficient-capacity`) a few times: concurrent callers may meet either legitimately.
async fn settled_outcome<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut outcome = call().await;
    for attempt in 0..20u64 {
        match &outcome {
            Err(status) if reason_of(status).is_some_and(|(r, _)| r == Reason::Unavailable) => {
                tokio::time::sleep(Duration::from_millis(10 * (attempt + 1))).await;
                outcome = call().await;
            }
            _ => break,
        }
    }
    outcome
}

pub async fn same_key(h: &Harness) -> Verdict {
    let actor = h.actor("race-key", 10);
    let request = h.create_request(&actor);
    let answers = join_all((0..12).map(|_| {
        let mut attempt = request.clone();
        attempt.token = Some(h.token(&actor));
        settled_outcome(move || h.send_create(attempt.clone()))
    }))
    .await;
    for answer in &answers {
        let machine = match answer {
            Ok(machine) => machine,
            Err(status) => {
                return fail(format!(
                    "12 concurrent repeats of one CreateMachine: one answered {}; every repeat must answer the machine",
                    show_status(status)
                ));
            }
        };
        ensure!(
            machine.id == request.machine_id,
            "a concurrent repeat answered machine {}, not {}",
            machine.id,
            request.machine_id
        );
    }
    let listed = h.list_all(&actor.domain, &actor.shard, 0).await?;
    ensure!(
        listed.len() == 1,
        "12 concurrent repeats of one CreateMachine left {} machines",
        listed.len()
    );
    h.clean_up(&actor).await
}

pub async fn slice(h: &Harness) -> Verdict {
    const SLICE: u64 = 5;
    const ATTEMPTS: usize = 20;
    let actor = h.actor("race-slice", SLICE);
    let answers = join_all((0..ATTEMPTS).map(|_| {
        let request = h.create_request(&actor);
        settled_outcome(move || h.send_create(request.clone()))
    }))
    .await;
    let made = answers.iter().filter(|a| a.is_ok()).count() as u64;
    let over = answers
        .iter()
        .filter(|a| {
            a.as_ref()
                .err()
                .and_then(reason_of)
                .is_some_and(|(r, _)| r == Reason::OverSlice)
        })
        .count();
    if let Some(Err(other)) = answers.iter().find(|a| {
        a.as_ref()
            .err()
            .is_some_and(|s| reason_of(s).is_none_or(|(r, _)| r != Reason::OverSlice))
    }) {
        return fail(format!(
            "{ATTEMPTS} concurrent creates against a slice of {SLICE}: one answered {}; expected success or over-slice",
            show_status(other)
        ));
    }
    ensure!(
        made <= SLICE,
        "{ATTEMPTS} concurrent creates against a slice of {SLICE}: {made} succeeded (the quota was over-committed)"
    );
    ensure!(
        made == SLICE && over == ATTEMPTS - SLICE as usize,
        "{ATTEMPTS} concurrent creates against a slice of {SLICE}: {made} succeeded and {over} were refused over-slice; expected {SLICE} and {}",
        ATTEMPTS - SLICE as usize
    );
    let live: Vec<Machine> = h
        .list_all(&actor.domain, &actor.shard, 0)
        .await?
        .into_iter()
        .filter(live)
        .collect();
    ensure!(
        live.len() as u64 == SLICE,
        "after the race the provider lists {} live machines for a slice of {SLICE}",
        live.len()
    );
    h.clean_up(&actor).await
}

/// One call of the old owner: when it started and what it answered (a machine id).
struct Attempt {
    started: Instant,
    outcome: Result<String, Status>,
}

/// The old owner keeps calling `old_call`, as a partitioned shard would, until it has made 20
/// calls after the new owner's newer grant was accepted (bounded by 400 calls and 60 s in
/// all); once it is busy, the new owner calls `new_call` once. Answers the new owner's
/// outcome, when it was accepted, and the old owner's attempts.
async fn race<T, O, OF, N, NF>(
    mut old_call: O,
    new_call: N,
) -> (Result<T, Status>, Option<Instant>, Vec<Attempt>)
where
    O: FnMut() -> OF,
    OF: std::future::Future<Output = Result<String, Status>>,
    N: FnOnce() -> NF,
    NF: std::future::Future<Output = Result<T, Status>>,
{
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let accepted: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let old_loop = {
        let attempts = attempts.clone();
        let accepted = accepted.clone();
        async move {
            let mut started_tx = Some(started_tx);
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..400 {
                let started = Instant::now();
                let outcome = old_call().await;
                attempts.lock().push(Attempt { started, outcome });
                if attempts.lock().len() >= 3
                    && let Some(tx) = started_tx.take()
                {
                    let _ = tx.send(());
                }
                let after = accepted
                    .lock()
                    .map(|at| attempts.lock().iter().filter(|a| a.started > at).count());
                if after.is_some_and(|n| n >= 20) || Instant::now() > deadline {
                    break;
                }
            }
        }
    };
    let new_owner = {
        let accepted = accepted.clone();
        async move {
            // Once the old owner is busy, the new one acts under its newer grant.
            let _ = started_rx.await;
            let outcome = new_call().await;
            if outcome.is_ok() {
                *accepted.lock() = Some(Instant::now());
            }
            outcome
        }
    };
    let ((), outcome) = tokio::join!(old_loop, new_owner);
    let accepted_at = *accepted.lock();
    let attempts = std::mem::take(&mut *attempts.lock());
    (outcome, accepted_at, attempts)
}

/// Fails unless every call of the old owner that started after `accepted_at` was refused
/// stale-grant; `what` names the race, `scope` what changed hands.
fn judge(what: &str, scope: &str, accepted_at: Instant, attempts: &[Attempt]) -> Verdict {
    let late: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.started > accepted_at)
        .collect();
    ensure!(
        !late.is_empty(),
        "{what}: the old owner made no call after the handover (the check could not judge)"
    );
    for attempt in &late {
        match &attempt.outcome {
            Ok(id) => {
                return fail(format!(
                    "{what}: the old owner's call (machine {id}) succeeded though it started {:?} after the new owner's newer grant was accepted; expected stale-grant: two owners acted in one {scope}",
                    attempt.started - accepted_at
                ));
            }
            Err(status) => {
                ensure!(
                    reason_of(status).is_some_and(|(r, _)| r == Reason::StaleGrant),
                    "{what}: the old owner's call after the handover was refused {}; expected stale-grant",
                    show_status(status)
                );
            }
        }
    }
    Ok(())
}

pub async fn handover(h: &Harness) -> Verdict {
    // A domain: the old holder keeps creating while another shard creates under a newer
    // domain grant.
    let old = h.actor("race-old", 1_000);
    let first = success(
        "CreateMachine by the domain's first holder",
        h.create(&old).await,
    )?;
    let new = h.successor(&old, "race-new");
    let (outcome, accepted_at, attempts) = race(
        || async { h.create(&old).await.map(|m| m.id) },
        || h.create(&new),
    )
    .await;
    let made = success(
        "CreateMachine by the new holder under a newer domain grant",
        outcome,
    )?;
    let Some(accepted_at) = accepted_at else {
        return fail("the new holder's domain grant was never accepted");
    };
    let what = "CreateMachine racing a create under a newer domain grant";
    judge(what, "domain", accepted_at, &attempts)?;
    // Nothing moved: the old holder keeps exactly the machines it created.
    let mut created: Vec<String> = attempts
        .iter()
        .filter_map(|a| a.outcome.as_ref().ok().cloned())
        .chain([first.id.clone()])
        .collect();
    created.sort();
    let kept: Vec<Machine> = h
        .list_all(&old.domain, &old.shard, 0)
        .await?
        .into_iter()
        .filter(live)
        .collect();
    ensure!(
        ids(&kept) == created,
        "{what}: the old holder lists live machines {:?}; it created {created:?} (a domain claim moves no machine)",
        ids(&kept)
    );
    let theirs = h.list_all(&new.domain, &new.shard, 0).await?;
    ensure!(
        ids(&theirs) == vec![made.id.clone()],
        "{what}: the new holder lists machines {:?}; it created only {}",
        ids(&theirs),
        made.id
    );
    h.clean_up(&new).await?;
    h.clean_up(&old).await?;

    // A cluster: the old owner keeps configuring its machine while another shard adopts the
    // cluster under a newer grant.
    let mut owner = h.actor("race-owner", 10);
    let cluster = h.serve(&mut owner);
    let machine = success("CreateMachine", h.create(&owner).await)?;
    h.settle(&machine.id).await?;
    success(
        "ConfigureMachine by the cluster's owner",
        h.configure(&owner, &machine.id, &cluster).await,
    )?;
    let heir = h.actor("race-heir", 10).with_cluster(&cluster, h.grant());
    let (outcome, accepted_at, attempts) = race(
        || async {
            h.configure(&owner, &machine.id, &cluster)
                .await
                .map(|m| m.id)
        },
        || h.adopt_cluster(&heir, &cluster),
    )
    .await;
    let adopted = success("AdoptCluster by the new owner under a newer grant", outcome)?;
    let Some(accepted_at) = accepted_at else {
        return fail("the new owner's cluster grant was never accepted");
    };
    judge(
        "ConfigureMachine racing an AdoptCluster under a newer grant",
        "cluster",
        accepted_at,
        &attempts,
    )?;
    ensure!(
        ids(&adopted) == vec![machine.id.clone()],
        "AdoptCluster racing the old owner answered machines {:?}; the cluster is served by {}",
        ids(&adopted),
        machine.id
    );
    let now = h.settle(&machine.id).await?;
    ensure!(
        now.owner_shard == heir.shard
            && now.cluster == cluster
            && state_of(&now) == MachineState::Configured,
        "after AdoptCluster raced the old owner, machine {} is {:?} for {:?}, owned by {:?}; expected CONFIGURED for {cluster}, owned by {}",
        machine.id,
        state_of(&now),
        now.cluster,
        now.owner_shard,
        heir.shard
    );
    h.clean_up(&heir).await?;
    h.clean_up(&owner).await
}

/// Two calls at once; Ok(index of the one that succeeded) when exactly one did and the other
/// was refused stale-grant.
fn one_of<T: std::fmt::Debug>(
    what: &str,
    a: Result<T, Status>,
    b: Result<T, Status>,
) -> Result<usize, Failure> {
    let stale = |r: &Result<T, Status>| {
        r.as_ref()
            .err()
            .and_then(reason_of)
            .is_some_and(|(reason, _)| reason == Reason::StaleGrant)
    };
    match (&a, &b) {
        (Ok(_), _) if stale(&b) => Ok(0),
        (_, Ok(_)) if stale(&a) => Ok(1),
        (Ok(_), Ok(_)) => fail(format!(
            "{what}: both succeeded; exactly one may win, the other must be refused stale-grant (an equal grant held by another shard)"
        )),
        _ => fail(format!(
            "{what}: expected one success and one stale-grant refusal, got {} and {}",
            show(&a),
            show(&b)
        )),
    }
}

pub async fn one_winner(h: &Harness) -> Verdict {
    const ROUNDS: usize = 8;
    for round in 1..=ROUNDS {
        let first = h.actor("claim-a", 10);
        let second = Actor {
            shard: h.unique("claim-b"),
            ..first.clone()
        };
        let (a, b) = (h.claim_request(&first), h.claim_request(&second));
        let (a, b) = tokio::join!(
            settled_outcome(|| h.send_claim(a.clone())),
            settled_outcome(|| h.send_claim(b.clone()))
        );
        let what = format!(
            "round {round}: two shards' ClaimDomain of domain {} at once under the same grant",
            first.domain
        );
        let winner = one_of(&what, a, b)?;
        let (winner, loser) = if winner == 0 {
            (&first, &second)
        } else {
            (&second, &first)
        };
        refusal(
            &format!("{what}: the loser's ClaimDomain again"),
            h.claim(loser).await,
            Reason::StaleGrant,
        )?;
        success(
            &format!("{what}: the winner's ClaimDomain again"),
            h.claim(winner).await,
        )?;
    }

    let mut owner = h.actor("adopt-race", 10);
    let cluster = h.serve(&mut owner);
    let machine = success("CreateMachine", h.create(&owner).await)?;
    h.settle(&machine.id).await?;
    success(
        "ConfigureMachine",
        h.configure(&owner, &machine.id, &cluster).await,
    )?;
    let mut holder = owner;
    for round in 1..=ROUNDS {
        let grant = h.grant();
        let first = h.actor("adopt-a", 10).with_cluster(&cluster, grant);
        let second = h.actor("adopt-b", 10).with_cluster(&cluster, grant);
        let (a, b) = (
            h.adopt_request(&first, &cluster),
            h.adopt_request(&second, &cluster),
        );
        let (a, b) = tokio::join!(
            settled_outcome(|| h.send_adopt(a.clone())),
            settled_outcome(|| h.send_adopt(b.clone()))
        );
        let what = format!(
            "round {round}: two shards' AdoptCluster of cluster {cluster} at once under the same newer grant"
        );
        let winner = one_of(&what, a, b)?;
        holder = if winner == 0 { first } else { second };
        let now = h.settle(&machine.id).await?;
        ensure!(
            now.owner_shard == holder.shard && now.cluster == cluster,
            "{what}: machine {} is owned by {:?} for cluster {:?}; the winner {} adopted it",
            machine.id,
            now.owner_shard,
            now.cluster,
            holder.shard
        );
    }
    h.clean_up(&holder).await
}
