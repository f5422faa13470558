//! Whether the shard may act on the assignments it holds, or must first catch up with the
//! coordinator. Pure logic over times and revisions; the worker feeds it heartbeat outcomes
//! and asks it before every decision cycle.
//!
//! A shard that lost contact for longer than its lease (a partition, a frozen process) may
//! have lost domains, clusters or slices meanwhile, and its watch tells it so only once it
//! reconnects and catches up. Acting before then would provision in domains another shard now
//! owns. So after such a gap — or after the coordinator was unreachable at all — the first
//! heartbeat that gets through names the revision the shard must hold before it acts again,
//! and the shard holds its decisions until its watch brings it there.
//!
//! Static stability bounds the wait: while the coordinator cannot be reached the shard acts
//! from its cache, and no hold lasts longer than [`Freshness::new`]'s `hold_limit`. A start
//! from the cache is not held (the restart target is a decision within a second, with or
//! without a coordinator). The hold narrows the window in which a returning shard acts on
//! stale grants; it cannot close it (a shard cut off from a healthy coordinator keeps acting
//! until it learns it lost its grants). Fencing at the provider closes it.

use std::time::{Duration, Instant};

/// What the shard may do this cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Decide and act.
    Act,
    /// Skip this cycle: the assignments are behind the coordinator's revision (or contact was
    /// lost for longer than the lease and no heartbeat has answered since).
    Hold(String),
}

/// Contact with the coordinator as it bears on acting.
#[derive(Debug)]
pub struct Freshness {
    lease: Duration,
    hold_limit: Duration,
    /// Last heartbeat that got through.
    last_contact: Option<Instant>,
    /// The last heartbeat failed.
    unreachable: bool,
    /// The revision to hold before acting again.
    catch_up_to: Option<u64>,
    /// When the current hold began.
    holding_since: Option<Instant>,
}

impl Freshness {
    /// A gap in contact longer than `lease` may have cost the shard its grants; a hold ends
    /// after `hold_limit` whatever happens.
    pub fn new(lease: Duration, hold_limit: Duration) -> Self {
        Self {
            lease,
            hold_limit,
            last_contact: None,
            unreachable: false,
            catch_up_to: None,
            holding_since: None,
        }
    }

    fn gap(&self, now: Instant) -> bool {
        self.last_contact
            .is_some_and(|t| now.saturating_duration_since(t) > self.lease)
    }

    /// A heartbeat got through at `now`; the coordinator was at `revision`. Returns true when
    /// the shard must now catch up to it (contact came back after failures or a long gap).
    pub fn heartbeat_answered(&mut self, now: Instant, revision: u64) -> bool {
        let returning = self.unreachable || self.gap(now);
        self.unreachable = false;
        self.last_contact = Some(now);
        if returning {
            self.catch_up_to = Some(self.catch_up_to.map_or(revision, |r| r.max(revision)));
        }
        returning
    }

    /// A heartbeat failed: the coordinator cannot be reached, so the cache is the truth.
    pub fn heartbeat_failed(&mut self) {
        self.unreachable = true;
    }

    /// Whether to act now, holding assignments at `held` revision.
    pub fn verdict(&mut self, now: Instant, held: u64) -> Verdict {
        if self.catch_up_to.is_some_and(|r| held >= r) {
            self.catch_up_to = None;
        }
        let reason = if self.unreachable {
            None
        } else if let Some(target) = self.catch_up_to {
            Some(format!(
                "catching up with the coordinator: holding revision {held}, it is at {target}"
            ))
        } else if self.gap(now) {
            Some("no contact with the coordinator for longer than the lease; waiting for a heartbeat".to_string())
        } else {
            None
        };
        let Some(reason) = reason else {
            self.holding_since = None;
            return Verdict::Act;
        };
        let since = *self.holding_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.hold_limit {
            // Static stability wins: act on the cache rather than stall.
            self.catch_up_to = None;
            self.holding_since = None;
            return Verdict::Act;
        }
        Verdict::Hold(reason)
    }

    /// Whether a hold is in progress.
    pub fn holding(&self) -> bool {
        self.holding_since.is_some()
    }
}

/// How often the shard's lease may have run out at the coordinator. The coordinator renews the
/// lease when it handles a heartbeat, somewhere between the shard sending it and the answer
/// arriving; so from sending the last answered heartbeat to the next answer is the longest the
/// coordinator can have gone without a renewal. Longer than the lease counts as a lapse, so a
/// count that did not rise says the lease held.
#[derive(Debug, Default)]
pub struct ContactLapses {
    /// When the last answered heartbeat was sent.
    last_answered_sent: Option<Instant>,
    /// Lapses that ended with an answer.
    ended: u64,
}

impl ContactLapses {
    /// A heartbeat sent at `sent` was answered at `now`; returns how long contact may have
    /// been lost when that was longer than the lease.
    pub fn answered(&mut self, sent: Instant, now: Instant, lease: Duration) -> Option<Duration> {
        let lapse = self
            .last_answered_sent
            .map(|last| now.saturating_duration_since(last))
            .filter(|gap| *gap > lease);
        self.ended += u64::from(lapse.is_some());
        self.last_answered_sent = Some(sent);
        lapse
    }

    /// Lapses so far, one still going on at `now` included, and whether one is.
    pub fn count(&self, now: Instant, lease: Duration) -> (u64, bool) {
        let ongoing = self
            .last_answered_sent
            .is_some_and(|last| now.saturating_duration_since(last) > lease);
        (self.ended + u64::from(ongoing), ongoing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lapse_counts_from_the_last_answered_send_to_the_next_answer() {
        let lease = Duration::from_secs(3);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut lapses = ContactLapses::default();
        assert_eq!(
            lapses.count(at(10_000), lease),
            (0, false),
            "no contact yet is no lapse"
        );
        lapses.answered(at(0), at(100), lease);
        // Answered every second, each answer 2.5 s after the send before it: within the lease.
        lapses.answered(at(1_000), at(2_500), lease);
        lapses.answered(at(2_000), at(3_400), lease);
        assert_eq!(lapses.count(at(4_000), lease), (0, false));
        // Sent at 2.0 s and nothing answered since: at 5.1 s the lease may have run out.
        assert_eq!(
            lapses.count(at(5_100), lease),
            (1, true),
            "an ongoing lapse counts"
        );
        // The answer at 6 s to a heartbeat sent at 5.5 s ends that lapse; it stays counted.
        lapses.answered(at(5_500), at(6_000), lease);
        assert_eq!(lapses.count(at(6_100), lease), (1, false));
        // An answer slow enough on its own: sent at 5.5 s, the next answered at 8.6 s.
        lapses.answered(at(7_000), at(8_600), lease);
        assert_eq!(lapses.count(at(8_700), lease), (2, false));
    }

    const LEASE: Duration = Duration::from_secs(10);
    const LIMIT: Duration = Duration::from_secs(2);

    #[test]
    fn a_start_from_the_cache_acts_at_once() {
        let mut f = Freshness::new(LEASE, LIMIT);
        assert_eq!(f.verdict(Instant::now(), 0), Verdict::Act);
    }

    #[test]
    fn after_an_outage_the_shard_catches_up_before_acting() {
        let t0 = Instant::now();
        let mut f = Freshness::new(LEASE, LIMIT);
        assert!(
            !f.heartbeat_answered(t0, 10),
            "first contact of a running shard"
        );
        f.heartbeat_failed();
        // During the outage the cache is the truth.
        assert_eq!(f.verdict(t0 + Duration::from_secs(30), 10), Verdict::Act);
        // Contact again: the coordinator moved on to revision 40.
        let back = t0 + Duration::from_secs(31);
        assert!(f.heartbeat_answered(back, 40));
        assert!(matches!(f.verdict(back, 10), Verdict::Hold(_)));
        assert!(f.holding());
        assert_eq!(
            f.verdict(back + Duration::from_millis(100), 40),
            Verdict::Act
        );
        assert!(!f.holding());
        assert_eq!(
            f.verdict(back + Duration::from_millis(200), 40),
            Verdict::Act
        );
    }

    #[test]
    fn a_frozen_shard_waits_for_a_heartbeat_then_catches_up() {
        let t0 = Instant::now();
        let mut f = Freshness::new(LEASE, LIMIT);
        f.heartbeat_answered(t0, 5);
        // SIGCONT after 30 s: nothing failed, but the lease ran out long ago.
        let thawed = t0 + Duration::from_secs(30);
        assert!(matches!(f.verdict(thawed, 5), Verdict::Hold(_)));
        assert!(f.heartbeat_answered(thawed + Duration::from_millis(20), 9));
        assert!(matches!(
            f.verdict(thawed + Duration::from_millis(30), 5),
            Verdict::Hold(_)
        ));
        assert_eq!(
            f.verdict(thawed + Duration::from_millis(60), 9),
            Verdict::Act
        );
    }

    #[test]
    fn a_hold_never_outlasts_its_limit() {
        let t0 = Instant::now();
        let mut f = Freshness::new(LEASE, LIMIT);
        f.heartbeat_answered(t0, 5);
        f.heartbeat_failed();
        f.heartbeat_answered(t0 + Duration::from_secs(1), 50);
        let held_from = t0 + Duration::from_secs(1);
        assert!(matches!(f.verdict(held_from, 5), Verdict::Hold(_)));
        // The watch never delivers: after the limit the shard acts on its cache.
        assert_eq!(f.verdict(held_from + LIMIT, 5), Verdict::Act);
        assert_eq!(f.verdict(held_from + LIMIT * 2, 5), Verdict::Act);
    }

    #[test]
    fn losing_the_coordinator_again_ends_a_hold() {
        let t0 = Instant::now();
        let mut f = Freshness::new(LEASE, LIMIT);
        f.heartbeat_failed();
        f.heartbeat_answered(t0, 50);
        assert!(matches!(f.verdict(t0, 5), Verdict::Hold(_)));
        f.heartbeat_failed();
        assert_eq!(f.verdict(t0 + Duration::from_millis(10), 5), Verdict::Act);
    }
}
