//! Concurrent callers: repeats, a slice raced for, and two owners racing in one domain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_protocol::provider::{Reason, reason_of};
use futures::future::join_all;
use parking_lot::Mutex;
use tonic::Status;

use crate::ensure;
use crate::harness::{Harness, Verdict, fail, show_status, success};

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
    let live = h.live_in(&actor.domain).await?;
    ensure!(
        live.len() as u64 == SLICE,
        "after the race the provider lists {} live machines for a slice of {SLICE}",
        live.len()
    );
    h.clean_up(&actor).await
}

/// One call of the old owner: when it started and whether it succeeded.
struct Attempt {
    started: Instant,
    outcome: Result<String, Status>,
}

pub async fn handover(h: &Harness) -> Verdict {
    let old = h.actor("race-old", 1_000);
    success("CreateMachine by the first owner", h.create(&old).await)?;
    let new = h.successor(&old, "race-new");
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let accepted: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();

    // The old owner keeps acting, as a partitioned shard would, until it has made 20 calls
    // after the new owner's grant was accepted (bounded by 400 calls and 60 s in all).
    let old_loop = {
        let attempts = attempts.clone();
        let accepted = accepted.clone();
        async move {
            let mut started_tx = Some(started_tx);
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..400 {
                let started = Instant::now();
                let outcome = h.create(&old).await.map(|m| m.id);
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
        let new = new.clone();
        async move {
            // Once the old owner is busy, the new one acts under its newer grant.
            let _ = started_rx.await;
            let outcome = h.create(&new).await;
            if outcome.is_ok() {
                *accepted.lock() = Some(Instant::now());
            }
            outcome
        }
    };
    let ((), first_new) = tokio::join!(old_loop, new_owner);
    success(
        "CreateMachine by the new owner under a newer grant",
        first_new,
    )?;
    let Some(accepted_at) = *accepted.lock() else {
        return fail("the new owner's grant was never accepted");
    };
    let attempts = std::mem::take(&mut *attempts.lock());
    let late: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.started > accepted_at)
        .collect();
    ensure!(
        !late.is_empty(),
        "the old owner made no call after the handover (the check could not judge)"
    );
    for attempt in &late {
        match &attempt.outcome {
            Ok(id) => {
                return fail(format!(
                    "the old owner created machine {id} in a call that started {:?} after the new owner's newer grant was accepted: two owners acted in one domain",
                    attempt.started - accepted_at
                ));
            }
            Err(status) => {
                ensure!(
                    reason_of(status).is_some_and(|(r, _)| r == Reason::StaleGrant),
                    "the old owner's call after the handover was refused {}; expected stale-grant",
                    show_status(status)
                );
            }
        }
    }
    let listed = h.list_all(&new.domain, "", 0).await?;
    let strays: Vec<&str> = listed
        .iter()
        .filter(|m| crate::harness::live(m) && m.owner_shard != new.shard)
        .map(|m| m.id.as_str())
        .collect();
    ensure!(
        strays.is_empty(),
        "after the handover live machines of the domain still belong to another shard: {strays:?}"
    );
    h.clean_up(&new).await
}
