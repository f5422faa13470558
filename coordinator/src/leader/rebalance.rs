//! The rebalancing loop on the leader: judges every shard's lease each round and proposes
//! the moves the rebalancer ([`crate::rebalance`]) plans away from draining and expired shards.
//! Leases are judged calmly ([`crate::disruption`]): with the leader's own lag added, with a
//! full lease of grace after it was stopped, and with evacuation slowed or stopped when many
//! shards lapse together.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_protocol::pb;
use tokio::sync::watch;

use crate::disruption::{Admission, AzState, EvacuationPolicy, Evacuations, Judge, Mode, assess};
use crate::fleet::{FleetCommand, FleetRequest, ShardStatus};
use crate::rebalance;
use crate::replica::Replica;
use crate::slice_placement::{self, QuotaReport, RecentGivers, SlicePolicy};

/// On the leader: moves domains, bindings and quota slices away from draining shards and from
/// shards whose lease ran out. A leader judges only by heartbeats it saw in its current term;
/// at the start of a term it has seen none, so it gives every shard one full lease of grace
/// before judging it dead (leases get a fresh TTL after a leader change instead of expiring
/// early, and a replica that leads again does not trust what it saw in an earlier term). The
/// same grace follows a tick of the leader's clock sampler that came half a lease late (the
/// leader itself was stopped).
pub async fn rebalance_loop(
    replica: Arc<Replica>,
    (interval, policy, slice_policy): (Duration, EvacuationPolicy, Option<SlicePolicy>),
    mut stopped: watch::Receiver<bool>,
) {
    let lease_ms = replica.timing.default_shard_lease.as_millis() as u64;
    let base = Instant::now();
    let mono = || base.elapsed().as_millis() as u64;
    let judge = Arc::new(parking_lot::Mutex::new(Judge::new(
        lease_ms,
        interval.as_millis() as u64,
    )));
    tokio::spawn(sample_lag(judge.clone(), interval, base, stopped.clone()));
    let mut evacuations = Evacuations::default();
    let mut givers = RecentGivers::default();
    let mut leading_in: Option<u64> = None;
    let mut last_mode: Option<(String, String)> = None;
    loop {
        if crate::stopping::pause(interval, &mut stopped).await {
            return;
        }
        if !replica.is_leader() {
            leading_in = None;
            *replica.evacuation.lock() = None;
            continue;
        }
        let term = replica.consensus.term();
        let now = ballast_protocol::clock::unix_ms();
        if leading_in != Some(term) {
            leading_in = Some(term);
            judge.lock().lead(mono());
            evacuations = Evacuations::default();
            givers = RecentGivers::default();
        }
        // The rounds and counts of this term carry from report to report.
        let previous = replica.evacuation.lock().clone().unwrap_or_default();
        let round_started = Instant::now();
        let (plan, mut report, evacuation, lost_azs) = {
            let mut judge = judge.lock();
            let fleet = replica.state.fleet();
            let active: Vec<_> = fleet
                .shards()
                .filter(|s| s.status == ShardStatus::Active)
                .map(|s| {
                    let lease = replica
                        .leases
                        .read(term, &s.id, |l| (l.expires_at_ms, l.ttl_ms));
                    (s, lease)
                })
                .collect();
            // The leases the shards asked for bound the judge's windows (before any
            // heartbeat in this term: the default lease).
            let (shortest, longest) = active
                .iter()
                .filter_map(|(_, lease)| lease.map(|(_, ttl)| ttl))
                .filter(|ttl| *ttl > 0)
                .fold((lease_ms, lease_ms), |(lo, hi), ttl| {
                    (lo.min(ttl), hi.max(ttl))
                });
            judge.set_leases(shortest, longest);
            let at = mono();
            // Active shards and whether their lease lapsed, the earliest lapse first.
            let mut judged: Vec<(u64, String, String, bool)> = active
                .iter()
                .map(|(s, lease)| {
                    let expires = lease.map_or(s.lease_expires_at_ms, |(expires, _)| expires);
                    let lapsed = judge.lapsed(expires, now, at);
                    (expires, s.id.clone(), s.az.clone(), lapsed)
                })
                .collect();
            judged.sort();
            let assessment = assess(
                judged
                    .iter()
                    .map(|(_, _, az, lapsed)| (az.as_str(), *lapsed)),
                policy.threshold,
            );
            let lapsed: Vec<(String, String)> = judged
                .iter()
                .filter(|(.., lapsed)| *lapsed)
                .map(|(_, id, az, _)| (id.clone(), az.clone()))
                .collect();
            // Shards that missed a heartbeat: the last to take work, and while one has not
            // lapsed yet, its AZ may be going down with it (its lapsed shards wait for it).
            let quiet: BTreeSet<String> = active
                .iter()
                .filter_map(|(s, lease)| {
                    let (expires, ttl) = (*lease)?;
                    quiet(expires, ttl, now).then(|| s.id.clone())
                })
                .collect();
            let settling: BTreeSet<String> = judged
                .iter()
                .filter(|(_, id, _, lapsed)| !*lapsed && quiet.contains(id))
                .map(|(_, _, az, _)| az.clone())
                .collect();
            let evacuating = evacuations.admit(
                &lapsed,
                Admission {
                    mode: &assessment.mode,
                    now: at,
                    slow_every_ms: policy.slow_every.as_millis() as u64,
                    settling: &settling,
                    // A shard that missed a heartbeat lapses within half its lease.
                    hold_ms: shortest / 2 + judge.allowance_ms(),
                },
            );
            let report = pb::Evacuation {
                mode: assessment.mode.name().to_string(),
                reason: assessment.reason.clone(),
                lapsed: lapsed.iter().map(|(id, _)| id.clone()).collect(),
                evacuating: evacuating.iter().cloned().collect(),
                allowance_ms: judge.allowance_ms(),
                slowed_azs: match &assessment.mode {
                    Mode::Slowed(azs) => azs.iter().cloned().collect(),
                    _ => Vec::new(),
                },
                grace_until_unix_ms: (now + judge.grace_ends()).saturating_sub(at),
                interval_ms: interval.as_millis() as u64,
                ..previous.clone()
            };
            let unhealthy: BTreeSet<String> = evacuating;
            // What the leaving shards' clusters asked for when last heard from in this term
            // (their slices follow that demand; without a report, the number of clusters).
            let demand: rebalance::ClusterDemand = unhealthy
                .iter()
                .filter_map(|id| {
                    let asked = replica.leases.read(term, id, |l| {
                        l.summary.as_ref().map(|s| s.cluster_demand.clone())
                    })??;
                    Some((id.clone(), asked))
                })
                .collect();
            let evacuation = Evacuation {
                unhealthy,
                quiet,
                demand,
                limits: rebalance::Limits {
                    max_domain_moves: policy.batch_domains,
                },
            };
            let mut plan = evacuation
                .plan(&fleet)
                .map(|command| (command, Cause::Evacuation));
            // Slices follow demand only while the fleet is calm: nothing to evacuate, and the
            // leader judging leases normally (its reports are current).
            if let (None, Some(slice_policy), Mode::Normal) =
                (&plan, slice_policy, &assessment.mode)
            {
                let reports: BTreeMap<String, QuotaReport> = judged
                    .iter()
                    .filter(|(.., lapsed)| !*lapsed)
                    .filter_map(|(_, id, ..)| {
                        let report = replica
                            .leases
                            .read(term, id, |l| l.summary.as_ref().map(quota_report))??;
                        Some((id.clone(), report))
                    })
                    .collect();
                let tables = slice_placement::tables(&fleet);
                givers.forget_rested(mono(), slice_policy.giver_rest_ms);
                let moves = slice_placement::place(&tables, &reports, slice_policy, &givers);
                givers.record(&moves, mono());
                plan = slice_placement::command(&tables, &moves).map(|command| {
                    (
                        command,
                        Cause::Demand(moves.iter().map(|m| m.amount).sum::<u64>()),
                    )
                });
            }
            let lost_azs: Vec<String> = assessment
                .azs
                .iter()
                .filter(|(_, (.., state))| *state == AzState::Full)
                .map(|(az, _)| az.clone())
                .collect();
            (plan, report, evacuation, lost_azs)
        };
        let mode = (report.mode.clone(), report.reason.clone());
        if last_mode.as_ref().map(|(m, _)| m) != Some(&mode.0) {
            if mode.0 == "normal" {
                tracing::info!(reason = %mode.1, "evacuation mode normal");
            } else {
                tracing::warn!(mode = %mode.0, reason = %mode.1, "evacuation mode changed");
            }
            crate::metrics::evacuation_mode(&mode.0, last_mode.is_some());
        }
        last_mode = Some(mode);
        let mut round = pb::RebalanceRound {
            started_unix_ms: now,
            cause: "none".into(),
            allowance_ms: report.allowance_ms,
            grace_until_unix_ms: report.grace_until_unix_ms,
            lost_azs,
            ..Default::default()
        };
        *replica.evacuation.lock() = Some(report.clone());
        crate::metrics::rebalance_round();
        if let Some((command, cause)) = plan {
            round.cause = cause.name().into();
            // An evacuating round proposes until the shards it evacuates hold nothing: a lost
            // AZ's work (33K domains at full scale) may not fit one proposal, and a round
            // between proposals would add an interval per batch to the evacuation.
            let mut next = Some(command);
            let mut last: Option<FleetCommand> = None;
            while let Some(command) = next.take() {
                // A plan that repeats itself made no progress; a round's proposals are bounded.
                if last.as_ref() == Some(&command) || round.proposals >= MAX_PROPOSALS_PER_ROUND {
                    tracing::warn!(
                        proposals = round.proposals,
                        "evacuation left work on shards it evacuates; the next round retries"
                    );
                    round.carried_over = true;
                    break;
                }
                let Some((domains, clusters, quotas)) =
                    propose(&replica, command.clone(), cause).await
                else {
                    round.carried_over = matches!(cause, Cause::Evacuation);
                    break;
                };
                round.proposals += 1;
                round.domains += domains as u64;
                round.clusters += clusters as u64;
                round.quotas += quotas as u64;
                if let Cause::Evacuation = cause {
                    next = evacuation.plan(&replica.state.fleet());
                    last = Some(command);
                }
            }
            round.duration_ms = round_started.elapsed().as_millis() as u64;
        }
        if round.carried_over {
            report.rounds_carried_over += 1;
            crate::metrics::evacuation_carried_over();
        }
        // Rounds that only judged are kept when they found an AZ lost that was not before.
        let found_lost = report
            .rounds
            .last()
            .is_none_or(|last| last.lost_azs != round.lost_azs)
            && !round.lost_azs.is_empty();
        if round.proposals > 0 || round.carried_over || found_lost {
            report.rounds.push(round);
            let excess = report.rounds.len().saturating_sub(ROUNDS_KEPT);
            report.rounds.drain(..excess);
            *replica.evacuation.lock() = Some(report);
        }
    }
}

/// Rounds kept in the leader's evacuation report.
const ROUNDS_KEPT: usize = 32;

/// The leader's clock sampler: ticks the judge every `interval`, apart from the rounds. A round
/// busy proposing an evacuation is the leader working, not the leader stopped; measured by the
/// rounds themselves, that time would extend every lease after each evacuation, so a lost AZ's
/// first lapsed shards would put off the judgement of the rest.
async fn sample_lag(
    judge: Arc<parking_lot::Mutex<Judge>>,
    interval: Duration,
    base: Instant,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if crate::stopping::pause(interval, &mut stopped).await {
            return;
        }
        let lag = judge.lock().tick(base.elapsed().as_millis() as u64);
        if lag > 0 {
            crate::metrics::leader_lag(lag);
        }
    }
}

/// Most proposals one round makes: enough for every domain of a large fleet at the smallest
/// sensible batch, and a bound if a plan ever stopped making progress.
const MAX_PROPOSALS_PER_ROUND: u32 = 64;

/// What a round evacuates, planned again after each of its proposals commits.
struct Evacuation {
    unhealthy: BTreeSet<String>,
    quiet: BTreeSet<String>,
    demand: rebalance::ClusterDemand,
    limits: rebalance::Limits,
}

impl Evacuation {
    fn plan(&self, fleet: &crate::fleet::FleetState) -> Option<FleetCommand> {
        rebalance::plan(
            fleet,
            &self.unhealthy,
            &self.quiet,
            self.limits,
            &self.demand,
        )
    }
}

/// Proposes one of a round's commands; what it moved (domains, clusters, slice tables) once
/// it committed, `None` when it was refused.
async fn propose(
    replica: &Replica,
    command: FleetCommand,
    cause: Cause,
) -> Option<(usize, usize, usize)> {
    let (domains, clusters, quotas) = rebalance::moves(&command);
    match cause {
        Cause::Evacuation => tracing::info!(
            domains,
            clusters,
            quotas,
            "rebalancing away from draining or expired shards"
        ),
        Cause::Demand(machines) => tracing::info!(
            quotas,
            machines,
            "moving slice capacity to shards whose demand found their slices full"
        ),
    }
    match replica
        .propose(FleetRequest {
            request_id: String::new(),
            command,
        })
        .await
    {
        Ok(_) => {
            match cause {
                Cause::Evacuation => crate::metrics::rebalanced(domains, clusters, quotas),
                Cause::Demand(machines) => crate::metrics::slices_placed(quotas, machines),
            }
            Some((domains, clusters, quotas))
        }
        Err(status) => {
            tracing::warn!(%status, "rebalancing proposal refused; retrying next round");
            None
        }
    }
}

/// A shard heartbeats every third of its lease, so a lease renewed on time always has more
/// than two thirds of it left, minus the network's delay. Under half left means a heartbeat
/// is missing: the shard may be going down with its AZ.
fn quiet(expires_at_ms: u64, ttl_ms: u64, now_ms: u64) -> bool {
    ttl_ms > 0 && expires_at_ms.saturating_sub(now_ms) < ttl_ms / 2
}

/// Why a round proposes what it does.
#[derive(Clone, Copy, Debug)]
enum Cause {
    /// Work leaves draining or lapsed shards.
    Evacuation,
    /// Slice capacity (this many machines' worth) goes where demand found slices full.
    Demand(u64),
}

impl Cause {
    /// As the evacuation report's rounds name it.
    fn name(self) -> &'static str {
        match self {
            Cause::Evacuation => "evacuation",
            Cause::Demand(_) => "demand",
        }
    }
}

/// A heartbeat's summary as the slice placement reads it.
fn quota_report(summary: &pb::ShardSummary) -> QuotaReport {
    QuotaReport {
        short: summary.quota_shortfall,
        quotas: summary
            .quotas
            .iter()
            .map(|q| {
                let used = q.held.saturating_add(q.in_flight);
                ((q.provider.clone(), q.region.clone()), (q.slice, used))
            })
            .collect(),
    }
}
