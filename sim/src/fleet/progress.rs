//! Whether short shards are still provisioning: each shard found short keeps the most
//! machines it has been seen with at work and when that count last rose. A shard that adds
//! nothing for a whole window while short has stalled, however slowly the box runs the rest.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Progress of the shards found short, by shard index.
#[derive(Debug, Default)]
pub(super) struct Progress {
    seen: BTreeMap<usize, (u64, Instant)>,
}

/// A shard that added no machine for a window while short.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Stall {
    pub shard: usize,
    pub at_work: u64,
    pub quiet: Duration,
}

impl Progress {
    /// Notes that shard `shard` was short with `at_work` machines at work at `now`; its clock
    /// starts the first time it is seen and restarts whenever the count rises.
    pub(super) fn observe(&mut self, shard: usize, at_work: u64, now: Instant) {
        let seen = self.seen.entry(shard).or_insert((at_work, now));
        if at_work > seen.0 {
            *seen = (at_work, now);
        }
    }

    /// The shard among `short` that has gone longest without a machine added, if that is at
    /// least `window` at `now`.
    pub(super) fn stalled(&self, short: &[usize], window: Duration, now: Instant) -> Option<Stall> {
        short
            .iter()
            .filter_map(|i| {
                self.seen
                    .get(i)
                    .map(|&(at_work, since)| (*i, at_work, since))
            })
            .min_by_key(|&(_, _, since)| since)
            .map(|(shard, at_work, since)| Stall {
                shard,
                at_work,
                quiet: now.saturating_duration_since(since),
            })
            .filter(|stall| stall.quiet >= window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn a_slow_shard_that_keeps_adding_machines_never_stalls() {
        let start = Instant::now();
        let mut progress = Progress::default();
        // One machine every 50 s for ten minutes: slow, never stalled.
        for step in 0..12u64 {
            let now = start + Duration::from_secs(50 * step);
            progress.observe(3, 100 + step, now);
            assert_eq!(progress.stalled(&[3], WINDOW, now), None, "step {step}");
        }
    }

    #[test]
    fn a_short_shard_adding_nothing_for_the_window_stalls() {
        let start = Instant::now();
        let mut progress = Progress::default();
        progress.observe(1, 10, start);
        progress.observe(2, 50, start);
        progress.observe(2, 51, start + Duration::from_secs(30));
        let now = start + Duration::from_secs(61);
        progress.observe(1, 10, now);
        progress.observe(2, 51, now);
        let stall = progress
            .stalled(&[1, 2], WINDOW, now)
            .expect("shard 1 stalled");
        assert_eq!((stall.shard, stall.at_work), (1, 10));
        assert_eq!(stall.quiet, Duration::from_secs(61));
        // A shard no longer short does not count, however long ago it last grew.
        assert_eq!(progress.stalled(&[2], WINDOW, now), None);
    }

    #[test]
    fn fewer_machines_at_work_is_not_progress() {
        let start = Instant::now();
        let mut progress = Progress::default();
        progress.observe(0, 20, start);
        progress.observe(0, 19, start + Duration::from_secs(40));
        let now = start + Duration::from_secs(60);
        assert!(progress.stalled(&[0], WINDOW, now).is_some());
    }
}
