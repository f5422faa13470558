//! Lease reads (`--read-policy lease`, ADR 0020): a leader answers a linearizable read from its
//! own state, without a quorum round, while no other replica can have been elected.
//!
//! Why that holds: an openraft 0.9 voter that accepts an append from the leader refuses every
//! vote request for `--election-max-ms` after it, by its own clock (openraft's leader lease).
//! Once a majority accepted appends this leader sent at `t` or later, any other leader needs a
//! vote from one of them, or from this leader; so as long as this leader's own core still leads
//! (it has granted no vote since) and its clock reads less than `t` plus the lease, no one
//! else leads. The lease is a share of `--election-max-ms`, which absorbs clock-rate
//! differences between the replicas (see [`lease_length`]).
//!
//! A voter that restarts forgets when it last accepted an append, so a restarted replica
//! refuses to vote for one `--election-max-ms` after it starts ([`votes_allowed`]).
//!
//! The times come from the leader's own appends and heartbeats (recorded by the network layer
//! as the send time of each append a peer accepted); this module is the pure rule.

use std::time::{Duration, Instant};

use super::types::NodeId;

/// Values of `--read-policy`: how a leader makes linearizable reads.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadPolicy {
    /// Confirm leadership with a majority for each round of reads (etcd's default).
    #[default]
    ReadIndex,
    /// Answer from the leader's own state while its read lease holds; a read index round
    /// when it does not.
    Lease,
}

/// The part of `--election-max-ms` a leader counts as its read lease, in tenths.
///
/// A voter refuses votes for `election_max` by its clock after an append arrives; the leader
/// measures from before it sent it. If either clock runs fast or slow against real time by up
/// to a rate `r`, the leader must stop after `election_max / (1 + r)²`; nine tenths covers
/// `r` up to 5.4%. The monotonic clocks of Linux hosts under NTP differ by at most 0.05%
/// (NTP's slew limit), so the margin is a hundred times what a sane host needs; it does not
/// cover a host whose clock stops while the process runs, which no lease can.
const LEASE_TENTHS: u32 = 9;

/// How long after a majority accepted its append a leader may answer reads on its own.
pub fn lease_length(election_timeout_max: Duration) -> Duration {
    election_timeout_max * LEASE_TENTHS / 10
}

/// When the read lease of leader `me` ends: the send time of the latest append that a
/// majority of every voter configuration accepted (`me` counting as accepting at `now`), plus
/// `length`. `None` when some configuration has no such majority.
///
/// `configs` is the effective membership's voter sets (two during a joint change: a majority
/// of each is needed, as for a commit); `accepted(peer)` is when the last append that `peer`
/// accepted in this leader's term was sent.
pub fn lease_end(
    me: NodeId,
    configs: &[Vec<NodeId>],
    now: Instant,
    length: Duration,
    accepted: impl Fn(NodeId) -> Option<Instant>,
) -> Option<Instant> {
    let mut start: Option<Instant> = None;
    for voters in configs {
        if voters.is_empty() {
            return None;
        }
        let mut times: Vec<Option<Instant>> = voters
            .iter()
            .map(|&voter| {
                if voter == me {
                    Some(now)
                } else {
                    accepted(voter)
                }
            })
            .collect();
        // Latest first; `None` (never accepted) sorts last.
        times.sort_unstable_by(|a, b| b.cmp(a));
        let majority = voters.len() / 2 + 1;
        let quorum_time = times[majority - 1]?;
        start = Some(start.map_or(quorum_time, |s| s.min(quorum_time)));
    }
    start.map(|s| s + length)
}

/// Whether a replica that started at `started` may grant votes at `now`: not within
/// `election_timeout_max` of its start, since before it stopped it may have accepted an append
/// that a leader counts in its read lease, and the restart forgot when.
pub fn votes_allowed(started: Instant, now: Instant, election_timeout_max: Duration) -> bool {
    now.saturating_duration_since(started) >= election_timeout_max
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const LENGTH: Duration = Duration::from_millis(225);

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn the_lease_runs_from_the_append_a_majority_accepted_last() {
        let base = Instant::now();
        let now = at(base, 1_000);
        let acks = HashMap::from([(2, at(base, 900)), (3, at(base, 700))]);
        // Three voters: the leader and the fresher follower are a majority.
        let end = lease_end(1, &[vec![1, 2, 3]], now, LENGTH, |p| acks.get(&p).copied());
        assert_eq!(end, Some(at(base, 900) + LENGTH));
        // Five voters: the third-latest time counts.
        let acks = HashMap::from([(2, at(base, 900)), (3, at(base, 700)), (4, at(base, 800))]);
        let end = lease_end(1, &[vec![1, 2, 3, 4, 5]], now, LENGTH, |p| {
            acks.get(&p).copied()
        });
        assert_eq!(end, Some(at(base, 800) + LENGTH));
    }

    #[test]
    fn no_lease_without_a_majority_that_accepted() {
        let base = Instant::now();
        let acks = HashMap::from([(2, at(base, 900))]);
        let end = lease_end(1, &[vec![1, 2, 3, 4, 5]], at(base, 1_000), LENGTH, |p| {
            acks.get(&p).copied()
        });
        assert_eq!(end, None);
        assert_eq!(lease_end(1, &[vec![1, 2, 3]], base, LENGTH, |_| None), None);
        assert_eq!(lease_end(1, &[], base, LENGTH, |_| Some(base)), None);
        assert_eq!(lease_end(1, &[vec![]], base, LENGTH, |_| Some(base)), None);
    }

    #[test]
    fn a_single_voter_leads_on_its_own_clock() {
        let now = Instant::now();
        assert_eq!(
            lease_end(1, &[vec![1]], now, LENGTH, |_| None),
            Some(now + LENGTH)
        );
    }

    #[test]
    fn a_leader_outside_the_configuration_counts_only_the_voters() {
        let base = Instant::now();
        let acks = HashMap::from([(2, at(base, 600)), (3, at(base, 500)), (4, at(base, 100))]);
        let end = lease_end(1, &[vec![2, 3, 4]], at(base, 1_000), LENGTH, |p| {
            acks.get(&p).copied()
        });
        assert_eq!(end, Some(at(base, 500) + LENGTH));
    }

    #[test]
    fn a_joint_configuration_needs_a_majority_of_each_and_takes_the_earlier() {
        let base = Instant::now();
        let now = at(base, 1_000);
        let acks = HashMap::from([
            (2, at(base, 950)),
            (3, at(base, 100)),
            (4, at(base, 400)),
            (5, at(base, 300)),
        ]);
        let get = |p| acks.get(&p).copied();
        // Old {1,2,3}: 950. New {1,4,5}: 400. The lease is the earlier.
        let end = lease_end(1, &[vec![1, 2, 3], vec![1, 4, 5]], now, LENGTH, get);
        assert_eq!(end, Some(at(base, 400) + LENGTH));
        // New {3,4,5} without the leader: the second latest of 100, 400, 300 is 300.
        let end = lease_end(1, &[vec![1, 2, 3], vec![3, 4, 5]], now, LENGTH, get);
        assert_eq!(end, Some(at(base, 300) + LENGTH));
        // A configuration with no majority at all ends it.
        let end = lease_end(1, &[vec![1, 2, 3], vec![6, 7, 8]], now, LENGTH, get);
        assert_eq!(end, None);
    }

    #[test]
    fn the_lease_is_nine_tenths_of_the_election_maximum() {
        assert_eq!(
            lease_length(Duration::from_millis(250)),
            Duration::from_millis(225)
        );
    }

    #[test]
    fn a_restarted_replica_votes_only_after_one_election_maximum() {
        let started = Instant::now();
        let max = Duration::from_millis(250);
        assert!(!votes_allowed(started, started, max));
        assert!(!votes_allowed(started, at(started, 249), max));
        assert!(votes_allowed(started, at(started, 250), max));
    }
}
