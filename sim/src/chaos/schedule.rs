//! Seeded fault schedules: which fault starts when and how long it lasts. Pure data — the same
//! seed and duration always give the same schedule; which replica is "the leader" is decided
//! when the step runs.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which replica a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Target {
    /// Whoever leads when the step runs.
    Leader,
    /// A replica that does not lead when the step runs (the n-th of them, modulo their count).
    Follower(usize),
}

/// One fault.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Fault {
    /// SIGKILL, restarted when the fault ends.
    Kill(Target),
    /// SIGSTOP, SIGCONT when the fault ends.
    Pause(Target),
    /// SIGSTOP for longer than any leader lease and (unless the schedule ends first) the lock
    /// clients' lease TTL (2 s), so the others elect, expire leases and hand locks on while
    /// the target sleeps.
    LongPause(Target),
    /// Reset the target's connections to its peers four times a second (a flapping link;
    /// new connections fail for 100 ms after each cut).
    Reset(Target),
    /// Cut every link between the target and the others, both ways.
    Isolate(Target),
    /// Drop this fraction of messages on every link.
    Loss(f64),
    /// Delay every message by a random time in this range (ms).
    Delay(u64, u64),
}

/// A fault starting at `at_ms` into the schedule and lasting `for_ms`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Step {
    /// Start, from the beginning of the schedule.
    pub at_ms: u64,
    /// Duration.
    pub for_ms: u64,
    /// What.
    pub fault: Fault,
}

/// The faults of one run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Schedule {
    /// Seed it was generated from.
    pub seed: u64,
    /// Length of the run with faults; everything heals at its end.
    pub duration_ms: u64,
    /// Steps in start order.
    pub steps: Vec<Step>,
}

fn target(rng: &mut StdRng) -> Target {
    if rng.random_bool(0.5) {
        Target::Leader
    } else {
        Target::Follower(rng.random_range(0..2))
    }
}

/// Generates the schedule for `seed`: faults start every 150–600 ms and last 100–1,200 ms
/// (long pauses and a third of the isolations 3.5–5 s, cut short by the end of the schedule),
/// so two or three may overlap (a majority can be down at times:
/// safety must hold regardless).
pub fn generate(seed: u64, duration_ms: u64) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut steps = Vec::new();
    let mut at = rng.random_range(100..400);
    while at + 100 < duration_ms {
        let fault = match rng.random_range(0..100) {
            0..20 => Fault::Kill(target(&mut rng)),
            20..30 => Fault::Pause(target(&mut rng)),
            30..38 => Fault::LongPause(target(&mut rng)),
            38..63 => Fault::Isolate(target(&mut rng)),
            63..75 => Fault::Reset(target(&mut rng)),
            75..87 => Fault::Loss(f64::from(rng.random_range(10..60u32)) / 100.0),
            _ => {
                let lo = rng.random_range(5..50);
                Fault::Delay(lo, lo + rng.random_range(0..100))
            }
        };
        let for_ms = match fault {
            Fault::LongPause(_) => rng.random_range(3_500..5_000),
            // A third of the isolations outlast the leader lease and the lock lease: the
            // isolated replica's clients, which still reach it, must learn it no longer leads.
            Fault::Isolate(_) if rng.random_bool(0.35) => rng.random_range(3_500..5_000),
            _ => rng.random_range(100..1_200),
        }
        .min(duration_ms - at);
        steps.push(Step {
            at_ms: at,
            for_ms,
            fault,
        });
        at += rng.random_range(150..600);
    }
    Schedule {
        seed,
        duration_ms,
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        assert_eq!(generate(7, 5_000), generate(7, 5_000));
        assert_ne!(generate(7, 5_000), generate(8, 5_000));
        let schedule = generate(42, 5_000);
        assert!(schedule.steps.len() >= 5, "{schedule:?}");
        assert!(
            schedule
                .steps
                .iter()
                .all(|s| s.at_ms + s.for_ms <= 5_000 && s.for_ms > 0)
        );
        assert!(schedule.steps.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    }

    #[test]
    fn every_kind_of_fault_appears_over_many_seeds() {
        let steps: Vec<Step> = (0..50).flat_map(|s| generate(s, 4_000).steps).collect();
        let has = |f: fn(&Fault) -> bool| steps.iter().any(|s| f(&s.fault));
        assert!(has(|f| matches!(f, Fault::Kill(Target::Leader))));
        assert!(has(|f| matches!(f, Fault::Kill(Target::Follower(_)))));
        assert!(has(|f| matches!(f, Fault::Pause(_))));
        assert!(has(|f| matches!(f, Fault::LongPause(_))));
        assert!(has(|f| matches!(f, Fault::Reset(_))));
        assert!(has(|f| matches!(f, Fault::Isolate(_))));
        assert!(has(|f| matches!(f, Fault::Loss(_))));
        assert!(has(|f| matches!(f, Fault::Delay(..))));
    }
}
