//! Judging shard leases when the judge may be what failed. Pure logic: the leader's rebalancing
//! loop feeds it the times and the shards, and moves away only from the shards it lets go.
//!
//! - [`Judge`]: the leader's own scheduling lag. A sampler ticks at a fixed interval; a tick that
//!   comes late says the leader was not running (paused, starved of CPU, swapping), and the
//!   heartbeats that reached it meanwhile may not have been handled yet. Every lease is judged
//!   with the lag of the last lease window added to it, and a tick late by half a lease or more
//!   gives every shard a full lease of grace, as a new leader does.
//! - [`assess`] and [`Evacuations`]: how many shards lapsed together, per AZ, as Kubernetes'
//!   node lifecycle controller judges zones. An AZ with more than `threshold` of its shards
//!   lapsed but not all is *partially disrupted*: its shards are evacuated slowly (the loss may
//!   be the network's, not the shards'). An AZ with all of them lapsed while others are fine is
//!   lost: evacuated at once (the AZ-loss case). When every AZ is disrupted together, or more
//!   than `threshold` of the whole fleet lapsed, the common factor is the coordinator side, not
//!   the shards: evacuation stops, or slows, and says why.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How the leader evacuates lapsed shards (`--disruption-threshold`,
/// `--slow-evacuation-every-ms`, `--evacuation-batch-domains`).
#[derive(Clone, Copy, Debug)]
pub struct EvacuationPolicy {
    /// Share of shards (per AZ, and fleet-wide) lapsed within one lease beyond which the
    /// lapses are taken as a common cause.
    pub threshold: f64,
    /// At the slow rate, one more shard is let go this often.
    pub slow_every: std::time::Duration,
    /// Most domain moves in one proposal; a round proposes until the shards it evacuates
    /// hold nothing, so this bounds a proposal's size, not how much a round moves.
    pub batch_domains: usize,
}

impl Default for EvacuationPolicy {
    fn default() -> Self {
        EvacuationPolicy {
            threshold: 0.55,
            slow_every: std::time::Duration::from_secs(60),
            batch_domains: crate::rebalance::Limits::default().max_domain_moves,
        }
    }
}

/// The leader's view of its own timeliness.
#[derive(Debug)]
pub struct Judge {
    /// The shortest lease: a tick late by half of it starts a grace period.
    shortest_ms: u64,
    /// The longest lease: the grace period, and the window the lag is summed over.
    lease_ms: u64,
    interval_ms: u64,
    /// Monotonic ms of the last tick.
    last_tick: Option<u64>,
    /// Monotonic ms before which no shard is judged.
    grace_until: u64,
    /// (monotonic ms of the tick, lag in ms) of ticks within the last lease.
    lags: VecDeque<(u64, u64)>,
}

/// A tick late by this share of a lease or more means the leader was stopped long enough that
/// no lease judged on its heartbeats can be trusted: a full lease of grace follows.
const STARVED_SHARE: u64 = 2;

impl Judge {
    /// A judge for leases of `lease_ms` and a loop ticking every `interval_ms`.
    pub fn new(lease_ms: u64, interval_ms: u64) -> Judge {
        Judge {
            shortest_ms: lease_ms,
            lease_ms,
            interval_ms,
            last_tick: None,
            grace_until: 0,
            lags: VecDeque::new(),
        }
    }

    /// The shortest and longest lease the shards hold now.
    pub fn set_leases(&mut self, shortest_ms: u64, longest_ms: u64) {
        self.shortest_ms = shortest_ms.min(longest_ms);
        self.lease_ms = longest_ms;
    }

    /// This replica started leading at monotonic `now`: it has seen no heartbeat in its term,
    /// so every shard gets a full lease.
    pub fn lead(&mut self, now: u64) {
        self.grace_until = now.saturating_add(self.lease_ms);
        self.last_tick = Some(now);
        self.lags.clear();
    }

    /// A tick of the leader's clock sampler at monotonic `now`, an interval after the last.
    /// Returns the lag of this tick (ms past the interval), which the caller reports.
    pub fn tick(&mut self, now: u64) -> u64 {
        let lag = self.last_tick.map_or(0, |last| {
            now.saturating_sub(last).saturating_sub(self.interval_ms)
        });
        self.last_tick = Some(now);
        if lag > 0 {
            self.lags.push_back((now, lag));
        }
        while self
            .lags
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > self.lease_ms)
        {
            self.lags.pop_front();
        }
        if lag.saturating_mul(STARVED_SHARE) >= self.shortest_ms {
            self.grace_until = self.grace_until.max(now.saturating_add(self.lease_ms));
        }
        lag
    }

    /// Extra time every lease gets now: the leader's lag over the last lease.
    pub fn allowance_ms(&self) -> u64 {
        self.lags.iter().map(|(_, lag)| lag).sum()
    }

    /// Monotonic ms at which the latest grace period ends or ended (0: none yet).
    pub fn grace_ends(&self) -> u64 {
        self.grace_until
    }

    /// Whether shards are in a grace period at monotonic `now` (no lease is judged).
    pub fn in_grace(&self, now: u64) -> bool {
        now < self.grace_until
    }

    /// Whether a lease that runs out at `expires_at` (wall-clock ms) has lapsed at wall-clock
    /// `wall_now`, judged at monotonic `now`.
    pub fn lapsed(&self, expires_at: u64, wall_now: u64, now: u64) -> bool {
        !self.in_grace(now) && expires_at.saturating_add(self.allowance_ms()) < wall_now
    }
}

/// How an AZ's shards stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AzState {
    /// At most `threshold` of its shards lapsed.
    Normal,
    /// More than `threshold` lapsed, not all.
    Partial,
    /// Every shard lapsed.
    Full,
}

/// What evacuation does this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Lapsed shards are evacuated at once.
    Normal,
    /// Lapsed shards in these AZs are evacuated at the slow rate (the others at once).
    Slowed(BTreeSet<String>),
    /// Nothing is evacuated (draining shards still are: that is the operator's intent).
    Stopped,
}

impl Mode {
    /// `normal`, `slowed` or `stopped`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Slowed(_) => "slowed",
            Mode::Stopped => "stopped",
        }
    }
}

/// The judgement of one round: each AZ's state and the mode, with the reason in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    /// AZ → (shards, lapsed, state).
    pub azs: BTreeMap<String, (usize, usize, AzState)>,
    /// What evacuation does.
    pub mode: Mode,
    /// Why, for the log, the status and `ballastctl cluster status`.
    pub reason: String,
}

/// Judges the fleet from each active shard's AZ and whether its lease lapsed. `threshold` is
/// the share of shards (per AZ and fleet-wide) beyond which lapses are taken as a common cause.
pub fn assess<'a>(shards: impl IntoIterator<Item = (&'a str, bool)>, threshold: f64) -> Assessment {
    let mut azs: BTreeMap<String, (usize, usize, AzState)> = BTreeMap::new();
    for (az, lapsed) in shards {
        let entry = azs.entry(az.to_string()).or_insert((0, 0, AzState::Normal));
        entry.0 += 1;
        entry.1 += usize::from(lapsed);
    }
    for (total, lapsed, state) in azs.values_mut() {
        *state = if *lapsed == *total && *lapsed > 0 {
            AzState::Full
        } else if *lapsed as f64 > threshold * *total as f64 {
            AzState::Partial
        } else {
            AzState::Normal
        };
    }
    let (total, lapsed) = azs
        .values()
        .fold((0, 0), |(t, l), (total, lapsed, _)| (t + total, l + lapsed));
    let disrupted: BTreeSet<String> = azs
        .iter()
        .filter(|(_, (_, _, state))| *state != AzState::Normal)
        .map(|(az, _)| az.clone())
        .collect();
    let partial: BTreeSet<String> = azs
        .iter()
        .filter(|(_, (_, _, state))| *state == AzState::Partial)
        .map(|(az, _)| az.clone())
        .collect();
    let (mode, reason) = if lapsed == 0 {
        (Mode::Normal, "every shard's lease is current".to_string())
    } else if !azs.is_empty() && disrupted.len() == azs.len() {
        (
            Mode::Stopped,
            format!(
                "shards lapsed together in every AZ ({lapsed} of {total}): the coordinator side, \
                 not the shards, is the likely cause; nothing is evacuated until heartbeats \
                 return or an operator drains shards"
            ),
        )
    } else if lapsed as f64 > threshold * total as f64 {
        let all: BTreeSet<String> = azs.keys().cloned().collect();
        (
            Mode::Slowed(all),
            format!(
                "{lapsed} of {total} shards lapsed within one lease (more than {:.0}%): \
                 evacuating slowly",
                threshold * 100.0
            ),
        )
    } else if !partial.is_empty() {
        let names = partial.iter().cloned().collect::<Vec<_>>().join(", ");
        (
            Mode::Slowed(partial),
            format!(
                "more than {:.0}% but not all of the shards lapsed in {names}: evacuating there \
                 slowly",
                threshold * 100.0
            ),
        )
    } else {
        (
            Mode::Normal,
            format!("{lapsed} of {total} shards lapsed; evacuating them"),
        )
    };
    Assessment { azs, mode, reason }
}

/// Which lapsed shards are let go, round after round, at the slow rate where the mode says so.
/// A shard once let go stays let go while it is lapsed (its evacuation takes several rounds).
///
/// A lapsed shard whose AZ has shards that missed a heartbeat without lapsing yet (*settling*)
/// waits, for at most `hold_ms`: an AZ going down loses its shards' leases over a heartbeat
/// interval, and letting the first go on its own would move the AZ's work in a string of
/// rounds, each changing the receiving shards' slices again. Held, the AZ is found lost in one
/// round, which moves all of it.
#[derive(Debug, Default)]
pub struct Evacuations {
    admitted: BTreeSet<String>,
    last_slow: Option<u64>,
    /// Lapsed shards held while their AZ settles, since when (monotonic ms).
    held: BTreeMap<String, u64>,
}

/// What a round lets lapsed shards go under.
#[derive(Clone, Copy, Debug)]
pub struct Admission<'a> {
    /// This round's mode.
    pub mode: &'a Mode,
    /// Monotonic ms of the round.
    pub now: u64,
    /// At the slow rate, one more shard this often.
    pub slow_every_ms: u64,
    /// AZs with a shard that missed a heartbeat but has not lapsed.
    pub settling: &'a BTreeSet<String>,
    /// Longest a lapsed shard waits for its AZ to settle.
    pub hold_ms: u64,
}

impl Evacuations {
    /// The shards to evacuate this round, of `lapsed` (shard → AZ, lapsed first first).
    pub fn admit(&mut self, lapsed: &[(String, String)], round: Admission) -> BTreeSet<String> {
        let still: BTreeSet<&String> = lapsed.iter().map(|(shard, _)| shard).collect();
        self.admitted.retain(|shard| still.contains(shard));
        self.held.retain(|shard, _| still.contains(shard));
        if *round.mode == Mode::Stopped {
            self.admitted.clear();
            return BTreeSet::new();
        }
        for (shard, az) in lapsed {
            if self.admitted.contains(shard) {
                continue;
            }
            if round.settling.contains(az) {
                let since = *self.held.entry(shard.clone()).or_insert(round.now);
                if round.now.saturating_sub(since) < round.hold_ms {
                    continue;
                }
            }
            let slowed = matches!(round.mode, Mode::Slowed(azs) if azs.contains(az));
            if !slowed {
                self.admitted.insert(shard.clone());
            } else if self
                .last_slow
                .is_none_or(|last| round.now.saturating_sub(last) >= round.slow_every_ms)
            {
                self.admitted.insert(shard.clone());
                self.last_slow = Some(round.now);
            }
        }
        self.admitted.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_tick_extends_every_lease_by_the_lag() {
        let mut judge = Judge::new(3_000, 500);
        judge.lead(0);
        for t in (500..=3_500).step_by(500) {
            assert_eq!(judge.tick(t), 0);
        }
        assert!(!judge.in_grace(3_500));
        // 500 ms late: a lease that ran out 400 ms ago has not lapsed yet, one 600 ms ago has.
        assert_eq!(judge.tick(4_500), 500);
        assert_eq!(judge.allowance_ms(), 500);
        assert!(!judge.lapsed(10_000 - 400, 10_000, 4_500));
        assert!(judge.lapsed(10_000 - 600, 10_000, 4_500));
        // A lease later the lag no longer counts.
        for t in (5_000..=8_000).step_by(500) {
            judge.tick(t);
        }
        assert_eq!(judge.allowance_ms(), 0);
    }

    #[test]
    fn a_leader_stopped_for_half_a_lease_gives_a_full_lease_of_grace() {
        let mut judge = Judge::new(3_000, 500);
        judge.lead(0);
        for t in (500..=3_500).step_by(500) {
            judge.tick(t);
        }
        assert!(!judge.in_grace(3_500));
        // Stopped 4.5 s (1.5 leases): every lease looks lapsed, none is judged.
        judge.tick(8_000);
        assert!(judge.in_grace(8_000));
        assert_eq!(judge.grace_ends(), 11_000);
        assert!(!judge.lapsed(0, 1_000_000, 10_999));
        assert!(judge.lapsed(0, 1_000_000, 11_001));
    }

    fn shards(spec: &[(&'static str, usize, usize)]) -> Vec<(&'static str, bool)> {
        spec.iter()
            .flat_map(|(az, total, lapsed)| (0..*total).map(move |i| (*az, i < *lapsed)))
            .collect()
    }

    #[test]
    fn a_lost_az_is_evacuated_at_once() {
        let a = assess(shards(&[("a", 3, 0), ("b", 3, 0), ("c", 3, 3)]), 0.55);
        assert_eq!(a.mode, Mode::Normal, "{}", a.reason);
        assert_eq!(a.azs["c"].2, AzState::Full);
    }

    #[test]
    fn a_partly_lapsed_az_is_evacuated_slowly() {
        let a = assess(shards(&[("a", 4, 3), ("b", 4, 0), ("c", 4, 0)]), 0.55);
        assert_eq!(a.mode, Mode::Slowed(BTreeSet::from(["a".to_string()])));
        let few = assess(shards(&[("a", 4, 2), ("b", 4, 0), ("c", 4, 0)]), 0.55);
        assert_eq!(few.mode, Mode::Normal, "{}", few.reason);
    }

    #[test]
    fn lapses_in_every_az_together_stop_evacuation() {
        let a = assess(shards(&[("a", 3, 2), ("b", 3, 3), ("c", 3, 2)]), 0.55);
        assert_eq!(a.mode, Mode::Stopped);
        assert!(a.reason.contains("every AZ"), "{}", a.reason);
        // One shard down in each AZ is not a common cause.
        let one_each = assess(shards(&[("a", 3, 1), ("b", 3, 1), ("c", 3, 1)]), 0.55);
        assert_eq!(one_each.mode, Mode::Normal, "{}", one_each.reason);
    }

    #[test]
    fn most_of_the_fleet_lapsing_slows_every_az() {
        // Two AZs lost outright and most of the third up: 6 of 9 lapsed.
        let a = assess(shards(&[("a", 3, 3), ("b", 3, 3), ("c", 3, 0)]), 0.55);
        assert!(
            matches!(a.mode, Mode::Slowed(ref azs) if azs.len() == 3),
            "{a:?}"
        );
    }

    fn round(mode: &Mode, now: u64) -> Admission<'_> {
        static NONE: BTreeSet<String> = BTreeSet::new();
        Admission {
            mode,
            now,
            slow_every_ms: 60_000,
            settling: &NONE,
            hold_ms: 5_000,
        }
    }

    #[test]
    fn slowed_shards_are_let_go_one_per_period_and_stay_let_go() {
        let mut evacuations = Evacuations::default();
        let slowed = Mode::Slowed(BTreeSet::from(["a".to_string()]));
        let lapsed = vec![
            ("a1".to_string(), "a".to_string()),
            ("a2".to_string(), "a".to_string()),
            ("b1".to_string(), "b".to_string()),
        ];
        let first = evacuations.admit(&lapsed, round(&slowed, 0));
        assert_eq!(first, BTreeSet::from(["a1".to_string(), "b1".to_string()]));
        assert_eq!(evacuations.admit(&lapsed, round(&slowed, 30_000)), first);
        let later = evacuations.admit(&lapsed, round(&slowed, 60_000));
        assert_eq!(later.len(), 3);
        // Back in time: a1 is fine again and leaves the set; stopping clears it.
        let back = evacuations.admit(&lapsed[1..], round(&slowed, 61_000));
        assert!(!back.contains("a1"));
        assert!(
            evacuations
                .admit(&lapsed, round(&Mode::Stopped, 62_000))
                .is_empty()
        );
    }

    #[test]
    fn a_lapsed_shard_waits_while_its_az_settles_and_no_longer_than_the_hold() {
        let mut evacuations = Evacuations::default();
        let normal = Mode::Normal;
        let settling = BTreeSet::from(["a".to_string()]);
        let held = |now| Admission {
            settling: &settling,
            ..round(&normal, now)
        };
        let lapsed = vec![
            ("a1".to_string(), "a".to_string()),
            ("b1".to_string(), "b".to_string()),
        ];
        // a2 in az a missed a heartbeat: a1 waits, b1 (az b settled) goes.
        assert_eq!(
            evacuations.admit(&lapsed, held(0)),
            BTreeSet::from(["b1".to_string()])
        );
        assert_eq!(evacuations.admit(&lapsed, held(4_999)).len(), 1);
        // Still settling after the hold: a1 goes anyway.
        assert_eq!(evacuations.admit(&lapsed, held(5_000)).len(), 2);
        // Az a settled (its quiet shard lapsed too, or heartbeat again): no wait.
        let mut evacuations = Evacuations::default();
        let both = vec![
            ("a1".to_string(), "a".to_string()),
            ("a2".to_string(), "a".to_string()),
        ];
        assert!(evacuations.admit(&both[..1], held(0)).is_empty());
        assert_eq!(evacuations.admit(&both, round(&normal, 1_500)).len(), 2);
        // A shard held once and fine again is forgotten: its next lapse waits afresh.
        let mut evacuations = Evacuations::default();
        assert!(evacuations.admit(&both[..1], held(0)).is_empty());
        assert!(evacuations.admit(&[], held(3_000)).is_empty());
        assert!(evacuations.admit(&both[..1], held(6_000)).is_empty());
    }
}
