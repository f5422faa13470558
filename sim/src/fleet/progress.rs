//! Whether short shards are still provisioning: each shard whose own status shows it short
//! keeps the most machines it has been seen with at work, its count of failed provider calls,
//! and when either last rose. A shard that adds nothing and has no provider call fail for a
//! whole window while short has stalled, however slowly the box runs the rest; one whose calls
//! keep failing is waiting on its provider, which is not what the check is about. Only a shard
//! seen short counts: one that did not answer a status call in time, or whose demand is met,
//! is not judged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What a pass saw of one short shard.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct Seen {
    /// Machines at work.
    pub at_work: u64,
    /// Provider calls that failed since the shard started.
    pub provider_failures: u64,
}

/// Progress of the shards found short, by shard index.
#[derive(Debug, Default)]
pub(super) struct Progress {
    seen: BTreeMap<usize, (Seen, Instant)>,
}

/// A shard that added no machine, and had no provider call fail, for a window while short.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Stall {
    pub shard: usize,
    pub seen: Seen,
    pub quiet: Duration,
}

impl Progress {
    /// Notes one pass over the fleet at `now`: `short` holds each shard whose own status just
    /// showed it short, with what it showed. A shard's clock starts when it is first seen short
    /// and restarts whenever it has more machines at work or more failed provider calls; a
    /// shard missing from the pass (met, or not answering) is forgotten, so one found short
    /// again later starts a fresh clock.
    pub(super) fn observe(&mut self, short: &[(usize, Seen)], now: Instant) {
        self.seen
            .retain(|shard, _| short.iter().any(|(i, _)| i == shard));
        for &(shard, seen) in short {
            let last = self.seen.entry(shard).or_insert((seen, now));
            if seen.at_work > last.0.at_work || seen.provider_failures > last.0.provider_failures {
                *last = (seen, now);
            }
        }
    }

    /// The shard last seen short that has gone longest without either, if that is at least
    /// `window` at `now`.
    pub(super) fn stalled(&self, window: Duration, now: Instant) -> Option<Stall> {
        self.seen
            .iter()
            .min_by_key(|(_, (_, since))| *since)
            .map(|(&shard, &(seen, since))| Stall {
                shard,
                seen,
                quiet: now.saturating_duration_since(since),
            })
            .filter(|stall| stall.quiet >= window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn at(at_work: u64) -> Seen {
        Seen {
            at_work,
            provider_failures: 0,
        }
    }

    #[test]
    fn a_slow_shard_that_keeps_adding_machines_never_stalls() {
        let start = Instant::now();
        let mut progress = Progress::default();
        // One machine every 50 s for ten minutes: slow, never stalled.
        for step in 0..12u64 {
            let now = start + Duration::from_secs(50 * step);
            progress.observe(&[(3, at(100 + step))], now);
            assert_eq!(progress.stalled(WINDOW, now), None, "step {step}");
        }
    }

    #[test]
    fn a_short_shard_adding_nothing_for_the_window_stalls() {
        let start = Instant::now();
        let mut progress = Progress::default();
        progress.observe(&[(1, at(10)), (2, at(50))], start);
        progress.observe(&[(1, at(10)), (2, at(51))], start + Duration::from_secs(30));
        let now = start + Duration::from_secs(61);
        progress.observe(&[(1, at(10)), (2, at(51))], now);
        let stall = progress.stalled(WINDOW, now).expect("shard 1 stalled");
        assert_eq!((stall.shard, stall.seen), (1, at(10)));
        assert_eq!(stall.quiet, Duration::from_secs(61));
        // Shard 1 met its demand: only shard 2 is short, and it grew 31 s ago.
        progress.observe(&[(2, at(51))], now);
        assert_eq!(progress.stalled(WINDOW, now), None);
    }

    #[test]
    fn a_shard_short_again_after_meeting_its_demand_starts_a_fresh_clock() {
        let start = Instant::now();
        let mut progress = Progress::default();
        progress.observe(&[(0, at(700))], start);
        progress.observe(&[(0, at(701))], start + Duration::from_secs(10));
        // Met at 20 s (absent from the pass), short again at 70 s with the same count: its
        // count has not risen for 60 s, but it has been short for no time at all.
        progress.observe(&[], start + Duration::from_secs(20));
        let now = start + Duration::from_secs(70);
        progress.observe(&[(0, at(701))], now);
        assert_eq!(progress.stalled(WINDOW, now), None);
        let later = start + Duration::from_secs(131);
        progress.observe(&[(0, at(701))], later);
        assert_eq!(
            progress.stalled(WINDOW, later).map(|s| s.quiet),
            Some(Duration::from_secs(61))
        );
    }

    #[test]
    fn a_shard_whose_provider_calls_keep_failing_is_waiting_not_stalled() {
        let start = Instant::now();
        let mut progress = Progress::default();
        // Four minutes without a machine added, a failed create every 10 s.
        for step in 0..25u64 {
            let now = start + Duration::from_secs(10 * step);
            let seen = Seen {
                at_work: 641,
                provider_failures: 100 + step,
            };
            progress.observe(&[(9, seen)], now);
            assert_eq!(progress.stalled(WINDOW, now), None, "step {step}");
        }
        // Its calls stop failing and it still adds nothing: now it has stalled.
        let last = Seen {
            at_work: 641,
            provider_failures: 124,
        };
        let later = start + Duration::from_secs(240 + 61);
        progress.observe(&[(9, last)], later);
        assert_eq!(
            progress.stalled(WINDOW, later).map(|s| s.quiet),
            Some(Duration::from_secs(61))
        );
    }

    #[test]
    fn fewer_machines_at_work_is_not_progress() {
        let start = Instant::now();
        let mut progress = Progress::default();
        progress.observe(&[(0, at(20))], start);
        progress.observe(&[(0, at(19))], start + Duration::from_secs(40));
        let now = start + Duration::from_secs(60);
        assert!(progress.stalled(WINDOW, now).is_some());
    }
}
