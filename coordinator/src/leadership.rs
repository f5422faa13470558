//! What a leader must know before it acts alone: that it still leads. A leader cut off from
//! its peers keeps believing it leads (openraft 0.9 has no check-quorum and no way to make a
//! leader step down), while the majority elects another; anything the old one answers from
//! its own memory — a lease renewal, a lease's time to live — can then contradict the new
//! leader. Two defences:
//!
//! - **check-quorum** ([`heard_from_majority`]): a leader that has not heard from a majority
//!   of voters for longer than the election timeout stops serving as leader: it routes
//!   nothing to itself, answers "no leader" and runs no leader duties;
//! - **confirmed rounds** ([`Confirmations`]): answers that rest on leadership alone are given
//!   only after a majority confirmed it in a round that began after the request arrived; one
//!   round answers every request that arrived before it began.
//!
//! Leader-local state that is not replicated (shard lease renewals, KV lease deadlines) is
//! kept per term ([`TermScoped`]), so a replica that leads again after another replica led
//! starts afresh instead of trusting what it saw in an earlier term.

use parking_lot::Mutex;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::ReplicaError;

/// State that is valid only in the term it was recorded in.
#[derive(Default)]
pub struct TermScoped<T> {
    inner: Mutex<(u64, Option<T>)>,
}

impl<T: Default> TermScoped<T> {
    /// Runs `f` on the state of `term`, starting it empty if it belonged to another term.
    pub fn with<R>(&self, term: u64, f: impl FnOnce(&mut T) -> R) -> R {
        let mut inner = self.inner.lock();
        if inner.0 != term || inner.1.is_none() {
            *inner = (term, Some(T::default()));
        }
        f(inner.1.as_mut().expect("set above"))
    }

    /// Reads the state of `term` (`None` if what is held belongs to another term).
    pub fn read<R>(&self, term: u64, f: impl FnOnce(Option<&T>) -> R) -> R {
        let inner = self.inner.lock();
        f(inner.1.as_ref().filter(|_| inner.0 == term))
    }

    /// Drops everything (leadership lost).
    pub fn clear(&self) {
        self.inner.lock().1 = None;
    }
}

/// Whether a leader heard from a majority of `voters` (itself included) within `limit`;
/// `age` tells how long ago a voter last answered.
pub fn heard_from_majority(
    me: u64,
    voters: impl IntoIterator<Item = u64>,
    limit: Duration,
    age: impl Fn(u64) -> Option<Duration>,
) -> bool {
    let (mut count, mut heard) = (0usize, 0usize);
    for voter in voters {
        count += 1;
        if voter == me || age(voter).is_some_and(|a| a <= limit) {
            heard += 1;
        }
    }
    heard * 2 > count
}

/// Leadership confirmations shared by the requests that wait for one: a request is answered
/// by the first round that began after it arrived. Linearizable reads share them the same way
/// (`T` is then what the round found, such as a read index), as etcd batches its read-index
/// requests: without it, every read sent its own heartbeat to every voter.
pub struct Confirmations<T = ()> {
    last: tokio::sync::Mutex<Option<(Instant, Result<T, ReplicaError>)>>,
}

impl<T> Default for Confirmations<T> {
    fn default() -> Self {
        Confirmations {
            last: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T: Clone> Confirmations<T> {
    /// Confirms `what` for a request that arrived at `asked`: reuses a round that began at or
    /// after `asked`, or runs one with `round` (one at a time; requests arriving meanwhile share
    /// the next). A round that takes longer than `limit` fails with "retry", so the requests
    /// waiting on it do not queue behind a round that will not end.
    pub async fn confirm<F, Fut>(
        &self,
        asked: Instant,
        (what, limit): (&str, Duration),
        round: F,
    ) -> Result<T, ReplicaError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ReplicaError>>,
    {
        let mut last = self.last.lock().await;
        if let Some((began, outcome)) = &*last
            && *began >= asked
        {
            return outcome.clone();
        }
        let began = Instant::now();
        let outcome = tokio::time::timeout(limit, round())
            .await
            .unwrap_or_else(|_| {
                Err(ReplicaError::retry(format!(
                    "{what} not confirmed within {limit:?}"
                )))
            });
        *last = Some((began, outcome.clone()));
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_majority_includes_the_leader_itself() {
        let fresh = Duration::from_millis(250);
        let ages = |v: u64| match v {
            2 => Some(Duration::from_millis(100)),
            3 => Some(Duration::from_millis(900)),
            _ => None,
        };
        assert!(heard_from_majority(1, [1, 2, 3], fresh, ages));
        assert!(
            !heard_from_majority(1, [1, 3, 4], fresh, ages),
            "3 is stale, 4 silent"
        );
        assert!(
            heard_from_majority(1, [1], fresh, ages),
            "a single voter is a majority"
        );
        assert!(!heard_from_majority(1, [1, 3, 4, 5, 2], fresh, ages));
    }

    #[test]
    fn term_scoped_state_starts_afresh_in_another_term() {
        let state: TermScoped<Vec<u32>> = TermScoped::default();
        state.with(7, |v| v.push(1));
        assert_eq!(state.read(7, |v| v.cloned()), Some(vec![1]));
        assert_eq!(state.read(8, |v| v.cloned()), None);
        state.with(9, |v| v.push(2));
        assert_eq!(state.read(9, |v| v.cloned()), Some(vec![2]));
        assert_eq!(
            state.read(7, |v| v.cloned()),
            None,
            "term 7's state is gone"
        );
        state.clear();
        assert_eq!(state.read(9, |v| v.cloned()), None);
    }

    #[tokio::test]
    async fn one_round_answers_every_request_that_arrived_before_it_began() {
        let confirmations = Arc::new(Confirmations::default());
        let rounds = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        // The first request's round is held open while three more arrive.
        let first = {
            let (confirmations, rounds, mut gate) =
                (confirmations.clone(), rounds.clone(), gate.clone());
            tokio::spawn(async move {
                confirmations
                    .confirm(
                        Instant::now(),
                        ("test", Duration::from_secs(60)),
                        || async move {
                            rounds.fetch_add(1, Ordering::SeqCst);
                            let _ = gate.wait_for(|open| *open).await;
                            Ok(())
                        },
                    )
                    .await
            })
        };
        while rounds.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let (confirmations, rounds) = (confirmations.clone(), rounds.clone());
                let asked = Instant::now();
                tokio::spawn(async move {
                    confirmations
                        .confirm(asked, ("test", Duration::from_secs(60)), || async move {
                            rounds.fetch_add(1, Ordering::SeqCst);
                            Err(ReplicaError::retry("no quorum"))
                        })
                        .await
                })
            })
            .collect();
        release.send_replace(true);
        assert!(first.await.unwrap().is_ok());
        for request in waiting {
            // They arrived during the first round, so it cannot answer them: the second round
            // does, for all three.
            assert!(request.await.unwrap().is_err());
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_read_index_round_answers_with_the_index_it_found_after_every_read_arrived() {
        // The log's commit index rises with every acknowledged write; a read index round
        // reports the index it saw when it began.
        let committed = Arc::new(AtomicUsize::new(0));
        let indexes = Arc::new(Confirmations::<u64>::default());
        let rounds = Arc::new(AtomicUsize::new(0));
        let reads: Vec<_> = (0..32)
            .map(|_| {
                // A write is acknowledged, then a read is asked.
                let before = committed.fetch_add(1, Ordering::SeqCst) as u64 + 1;
                let (indexes, committed, rounds) =
                    (indexes.clone(), committed.clone(), rounds.clone());
                let asked = Instant::now();
                tokio::spawn(async move {
                    let index = indexes
                        .confirm(asked, ("test", Duration::from_secs(60)), || async move {
                            rounds.fetch_add(1, Ordering::SeqCst);
                            let index = committed.load(Ordering::SeqCst) as u64;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            Ok(index)
                        })
                        .await
                        .unwrap();
                    assert!(index >= before, "read index {index} misses write {before}");
                })
            })
            .collect();
        for read in reads {
            tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("answered within 10 s")
                .unwrap();
        }
        let rounds = rounds.load(Ordering::SeqCst);
        assert!(rounds < 32, "{rounds} rounds for 32 reads asked together");
    }
}
