//! Slices placed by demand: quota capacity goes where shards report demand they cannot
//! serve because every slice they hold is full, taken first from what no shard holds and then
//! from live shards with room to spare. Pure logic over the quota tables and the shards'
//! heartbeat reports; the leader runs it after each rebalancing round that evacuated nothing
//! and proposes the result as slice changes, which are fenced at the provider like every other.
//!
//! Three things keep the fleet from oscillating. Only a shortfall that found every slice full
//! asks (one waiting on a provider's backoff or a takeover does not). A giving shard keeps a
//! margin above what it uses ([`SlicePolicy::headroom`]), so a small rise in its own demand does
//! not make it ask back at once. And a report counts only when it was made under the table the
//! coordinator holds now: once a quota's slices change, the shards involved are heard from again
//! before they give or get more, and each round moves at most [`SlicePolicy::max_move`] of a
//! quota's total.
//!
//! Demand that arrives over several rounds is met by further givers rather than by the same
//! ones again: a shard that gave slice of a quota rests for [`SlicePolicy::giver_rest_ms`]
//! ([`RecentGivers`]) and is asked again within that time only once every other giver of the
//! quota is spent. So a shard whose own demand holds still sees its slice change once, not in
//! a string of small cuts.

use std::collections::BTreeMap;

use crate::fleet::{FleetCommand, FleetState};

/// A quota: (provider, region).
pub type QuotaKey = (String, String);

/// What a shard last reported about its quotas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaReport {
    /// Machines short that found every slice full.
    pub short: u64,
    /// Per quota: the slice the shard acts under and the machines it uses (held or being
    /// created).
    pub quotas: BTreeMap<QuotaKey, (u64, u64)>,
}

/// One quota's table as the fleet state holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaTable {
    /// The quota's total.
    pub total: u64,
    /// Shard → slice.
    pub slices: BTreeMap<String, u64>,
}

/// How eagerly slices follow demand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlicePolicy {
    /// Share of what it uses a giving shard keeps free in its slice.
    pub headroom: f64,
    /// Fewest machines a giving shard keeps free in its slice.
    pub min_headroom: u64,
    /// Most of a quota's total moved in one round (at least one machine's worth).
    pub max_move: f64,
    /// How long a shard that gave slice of a quota is asked again only as a last resort.
    pub giver_rest_ms: u64,
}

impl Default for SlicePolicy {
    fn default() -> Self {
        Self {
            headroom: 0.1,
            min_headroom: 2,
            max_move: 0.05,
            giver_rest_ms: 10 * 60 * 1000,
        }
    }
}

/// The shards that gave slice of each quota lately, and when (the leader's monotonic ms). The
/// leader keeps one for its term; a new leader starts without (at worst a shard gives twice).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecentGivers {
    /// Quota → giving shard → when it gave (keyed so a lookup needs no owned key).
    gave: BTreeMap<QuotaKey, BTreeMap<String, u64>>,
}

impl RecentGivers {
    /// Notes the givers of `moves`, planned at `now_ms`.
    pub fn record(&mut self, moves: &[SliceMove], now_ms: u64) {
        for m in moves {
            if let Some(from) = &m.from {
                self.gave
                    .entry(m.quota.clone())
                    .or_default()
                    .insert(from.clone(), now_ms);
            }
        }
    }

    /// Forgets the givers that gave `rest_ms` or longer before `now_ms`.
    pub fn forget_rested(&mut self, now_ms: u64, rest_ms: u64) {
        for givers in self.gave.values_mut() {
            givers.retain(|_, at| now_ms.saturating_sub(*at) < rest_ms);
        }
        self.gave.retain(|_, givers| !givers.is_empty());
    }

    /// Whether `shard` gave slice of `quota` within its rest.
    fn resting(&self, shard: &str, quota: &QuotaKey) -> bool {
        self.gave
            .get(quota)
            .is_some_and(|givers| givers.contains_key(shard))
    }
}

/// One slice change: `amount` of `quota` from a shard (or from what no shard holds) to a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceMove {
    /// The quota.
    pub quota: QuotaKey,
    /// The giving shard; `None` for capacity no shard held.
    pub from: Option<String>,
    /// The shard that asked.
    pub to: String,
    /// Machines' worth of slice.
    pub amount: u64,
}

/// The quota tables of the fleet state.
pub fn tables(state: &FleetState) -> BTreeMap<QuotaKey, QuotaTable> {
    state
        .quotas()
        .map(|q| {
            (
                (q.provider.clone(), q.region.clone()),
                QuotaTable {
                    total: q.total,
                    slices: q.slices.clone(),
                },
            )
        })
        .collect()
}

/// Whether `report` was made under the tables held now: the shard's slice of every quota is
/// the one it reported (a quota it did not report, it holds no slice of).
fn current(shard: &str, report: &QuotaReport, tables: &BTreeMap<QuotaKey, QuotaTable>) -> bool {
    tables.iter().all(|(key, table)| {
        let held = table.slices.get(shard).copied().unwrap_or(0);
        let reported = report.quotas.get(key).map_or(0, |(slice, _)| *slice);
        held == reported
    }) && report
        .quotas
        .iter()
        .all(|(key, (slice, _))| *slice == 0 || tables.contains_key(key))
}

/// Plans one round: for each shard reporting a quota-bound shortfall (largest first), slice
/// capacity up to its shortfall from the quota with most to give, first what no shard holds,
/// then the live shards' spare room: shards not resting from an earlier give first, most spare
/// first. `reports` holds live shards only: the slices of a shard whose lease ran out move
/// with its clusters instead ([`crate::rebalance::plan`]).
pub fn place(
    tables: &BTreeMap<QuotaKey, QuotaTable>,
    reports: &BTreeMap<String, QuotaReport>,
    policy: SlicePolicy,
    recent: &RecentGivers,
) -> Vec<SliceMove> {
    let fresh: BTreeMap<&str, &QuotaReport> = reports
        .iter()
        .filter(|(shard, report)| current(shard, report, tables))
        .map(|(shard, report)| (shard.as_str(), report))
        .collect();
    let mut asking: Vec<(&str, u64)> = fresh
        .iter()
        .filter(|(_, r)| r.short > 0)
        .map(|(shard, r)| (*shard, r.short))
        .collect();
    if asking.is_empty() {
        return Vec::new();
    }
    asking.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    // Per quota: unheld capacity, each giving shard's spare room, and the round's budget.
    let mut unheld: BTreeMap<&QuotaKey, u64> = BTreeMap::new();
    let mut spare: BTreeMap<&QuotaKey, BTreeMap<&str, u64>> = BTreeMap::new();
    let mut budget: BTreeMap<&QuotaKey, u64> = BTreeMap::new();
    for (key, table) in tables {
        let held: u64 = table.slices.values().sum();
        unheld.insert(key, table.total.saturating_sub(held));
        budget.insert(key, ((table.total as f64 * policy.max_move) as u64).max(1));
        let givers = spare.entry(key).or_default();
        for (shard, report) in &fresh {
            if report.short > 0 {
                continue;
            }
            let Some(&slice) = table.slices.get(*shard) else {
                continue;
            };
            let used = report.quotas.get(key).map_or(0, |(_, used)| *used);
            let keep = ((used as f64 * policy.headroom).ceil() as u64).max(policy.min_headroom);
            let room = slice.saturating_sub(used.saturating_add(keep));
            if room > 0 {
                givers.insert(shard, room);
            }
        }
    }
    let mut moves = Vec::new();
    for (shard, short) in asking {
        let mut wanted = short;
        while wanted > 0 {
            // The quota with most to give this round (ties by key).
            let offer = |key: &QuotaKey| -> u64 {
                let givable = unheld[key] + spare[key].values().sum::<u64>();
                givable.min(budget[key])
            };
            let Some(key) = tables
                .keys()
                .filter(|k| offer(k) > 0)
                .max_by(|a, b| offer(a).cmp(&offer(b)).then(b.cmp(a)))
            else {
                break;
            };
            let mut take = |from: Option<&str>, available: &mut u64, wanted: &mut u64| {
                let amount = (*available).min(*wanted).min(budget[key]);
                if amount > 0 {
                    *available -= amount;
                    *wanted -= amount;
                    *budget.get_mut(key).expect("every quota budgeted") -= amount;
                    moves.push(SliceMove {
                        quota: key.clone(),
                        from: from.map(str::to_string),
                        to: shard.to_string(),
                        amount,
                    });
                }
            };
            take(
                None,
                unheld.get_mut(key).expect("every quota listed"),
                &mut wanted,
            );
            let mut givers: Vec<(bool, &str, u64)> = spare[key]
                .iter()
                .map(|(s, room)| (recent.resting(s, key), *s, *room))
                .collect();
            givers.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)).then(a.1.cmp(b.1)));
            for (_, giver, _) in givers {
                if wanted == 0 {
                    break;
                }
                let room = spare
                    .get_mut(key)
                    .and_then(|g| g.get_mut(giver))
                    .expect("listed");
                take(Some(giver), room, &mut wanted);
            }
        }
    }
    moves
}

/// The slice changes `moves` make, one `SetQuotaSlices` per quota naming only the shards whose
/// slice changed; `None` when nothing moves.
pub fn command(
    tables: &BTreeMap<QuotaKey, QuotaTable>,
    moves: &[SliceMove],
) -> Option<FleetCommand> {
    let mut changed: BTreeMap<&QuotaKey, BTreeMap<String, u64>> = BTreeMap::new();
    for m in moves {
        let Some(table) = tables.get(&m.quota) else {
            continue;
        };
        let slices = changed.entry(&m.quota).or_default();
        let slice_of = |slices: &BTreeMap<String, u64>, shard: &str| {
            slices
                .get(shard)
                .copied()
                .unwrap_or_else(|| table.slices.get(shard).copied().unwrap_or(0))
        };
        if let Some(from) = &m.from {
            let had = slice_of(slices, from);
            slices.insert(from.clone(), had.saturating_sub(m.amount));
        }
        let had = slice_of(slices, &m.to);
        slices.insert(m.to.clone(), had.saturating_add(m.amount));
    }
    let commands: Vec<FleetCommand> = changed
        .into_iter()
        .map(
            |((provider, region), slices)| FleetCommand::SetQuotaSlices {
                provider: provider.clone(),
                region: region.clone(),
                slices,
            },
        )
        .collect();
    (!commands.is_empty()).then_some(FleetCommand::Batch { commands })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(region: &str) -> QuotaKey {
        ("aws".into(), region.into())
    }

    fn table(total: u64, slices: &[(&str, u64)]) -> QuotaTable {
        QuotaTable {
            total,
            slices: slices.iter().map(|(s, a)| (s.to_string(), *a)).collect(),
        }
    }

    fn report(short: u64, quotas: &[(&str, u64, u64)]) -> QuotaReport {
        QuotaReport {
            short,
            quotas: quotas
                .iter()
                .map(|(region, slice, used)| (key(region), (*slice, *used)))
                .collect(),
        }
    }

    fn policy() -> SlicePolicy {
        SlicePolicy {
            headroom: 0.1,
            min_headroom: 2,
            max_move: 1.0,
            giver_rest_ms: 1000,
        }
    }

    #[test]
    fn a_shortfall_takes_unheld_capacity_first_then_the_most_spare_room() {
        let tables = BTreeMap::from([(key("r1"), table(130, &[("a", 40), ("b", 40), ("c", 40)]))]);
        let reports = BTreeMap::from([
            ("a".to_string(), report(25, &[("r1", 40, 40)])),
            ("b".to_string(), report(0, &[("r1", 40, 20)])),
            ("c".to_string(), report(0, &[("r1", 40, 30)])),
        ]);
        let moves = place(&tables, &reports, policy(), &RecentGivers::default());
        assert_eq!(
            moves,
            vec![
                SliceMove {
                    quota: key("r1"),
                    from: None,
                    to: "a".into(),
                    amount: 10
                },
                // b keeps 20 + 2 (a tenth of 20, at least 2): 18 spare.
                SliceMove {
                    quota: key("r1"),
                    from: Some("b".into()),
                    to: "a".into(),
                    amount: 15
                },
            ]
        );
        let Some(FleetCommand::Batch { commands }) = command(&tables, &moves) else {
            panic!("a batch");
        };
        assert_eq!(
            commands,
            vec![FleetCommand::SetQuotaSlices {
                provider: "aws".into(),
                region: "r1".into(),
                slices: BTreeMap::from([("a".into(), 65), ("b".into(), 25)]),
            }]
        );
    }

    #[test]
    fn a_shard_that_gave_lately_is_asked_again_only_when_every_other_giver_is_spent() {
        let tables = BTreeMap::from([(key("r1"), table(120, &[("a", 40), ("b", 40), ("c", 40)]))]);
        let reports = |a_short| {
            BTreeMap::from([
                ("a".to_string(), report(a_short, &[("r1", 40, 40)])),
                ("b".to_string(), report(0, &[("r1", 40, 10)])),
                ("c".to_string(), report(0, &[("r1", 40, 20)])),
            ])
        };
        let from = |moves: &[SliceMove]| -> Vec<(Option<String>, u64)> {
            moves.iter().map(|m| (m.from.clone(), m.amount)).collect()
        };
        // b has most spare (40 - 10 - 2 = 28) and gives first.
        let mut recent = RecentGivers::default();
        let first = place(&tables, &reports(5), policy(), &recent);
        assert_eq!(from(&first), [(Some("b".into()), 5)]);
        recent.record(&first, 100);
        // More demand a round later: c gives, though b still has more spare.
        assert_eq!(
            from(&place(&tables, &reports(5), policy(), &recent)),
            [(Some("c".into()), 5)]
        );
        // More than c can give (18): b is asked for the rest.
        assert_eq!(
            from(&place(&tables, &reports(30), policy(), &recent)),
            [(Some("c".into()), 18), (Some("b".into()), 12)]
        );
        // Once rested, b is first again.
        recent.forget_rested(100 + policy().giver_rest_ms, policy().giver_rest_ms);
        assert_eq!(recent, RecentGivers::default());
        assert_eq!(
            from(&place(&tables, &reports(5), policy(), &recent)),
            [(Some("b".into()), 5)]
        );
    }

    #[test]
    fn nothing_moves_without_a_quota_bound_shortfall_or_room_to_give() {
        let tables = BTreeMap::from([(key("r1"), table(80, &[("a", 40), ("b", 40)]))]);
        let calm = BTreeMap::from([
            ("a".to_string(), report(0, &[("r1", 40, 39)])),
            ("b".to_string(), report(0, &[("r1", 40, 10)])),
        ]);
        assert!(place(&tables, &calm, policy(), &RecentGivers::default()).is_empty());
        // b's spare room is within its margin: 38 used + 4 kept > 40.
        let tight = BTreeMap::from([
            ("a".to_string(), report(5, &[("r1", 40, 40)])),
            ("b".to_string(), report(0, &[("r1", 40, 38)])),
        ]);
        assert!(place(&tables, &tight, policy(), &RecentGivers::default()).is_empty());
        // Both short: neither gives.
        let both = BTreeMap::from([
            ("a".to_string(), report(5, &[("r1", 40, 40)])),
            ("b".to_string(), report(1, &[("r1", 40, 30)])),
        ]);
        assert!(place(&tables, &both, policy(), &RecentGivers::default()).is_empty());
    }

    #[test]
    fn a_report_made_under_an_older_table_counts_for_nothing() {
        let tables = BTreeMap::from([(key("r1"), table(100, &[("a", 50), ("b", 40)]))]);
        // a still reports the slice it had before the last change.
        let reports = BTreeMap::from([
            ("a".to_string(), report(10, &[("r1", 40, 40)])),
            ("b".to_string(), report(0, &[("r1", 40, 0)])),
        ]);
        assert!(place(&tables, &reports, policy(), &RecentGivers::default()).is_empty());
        // A shard reporting a slice of a quota it holds none of is behind as well.
        let reports =
            BTreeMap::from([("a".to_string(), report(10, &[("r1", 50, 50), ("r2", 5, 5)]))]);
        assert!(place(&tables, &reports, policy(), &RecentGivers::default()).is_empty());
    }

    #[test]
    fn a_round_moves_at_most_its_budget_and_spreads_over_quotas() {
        let tables = BTreeMap::from([
            (key("r1"), table(100, &[("a", 50), ("b", 50)])),
            (key("r2"), table(100, &[("b", 50)])),
        ]);
        let reports = BTreeMap::from([
            ("a".to_string(), report(30, &[("r1", 50, 50)])),
            ("b".to_string(), report(0, &[("r1", 50, 10), ("r2", 50, 0)])),
        ]);
        let budget = SlicePolicy {
            max_move: 0.1,
            ..policy()
        };
        let moves = place(&tables, &reports, budget, &RecentGivers::default());
        let moved: u64 = moves.iter().map(|m| m.amount).sum();
        assert_eq!(moved, 20, "10 of each quota's 100: {moves:?}");
        for m in &moves {
            let per_quota: u64 = moves
                .iter()
                .filter(|o| o.quota == m.quota)
                .map(|o| o.amount)
                .sum();
            assert!(per_quota <= 10, "{moves:?}");
        }
    }

    #[test]
    fn the_quotas_stay_within_their_totals_and_giving_shards_above_their_use() {
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::default();
        let strategy = (
            proptest::collection::vec((0u64..60, 0u64..80, 0u64..30), 1..6),
            0u64..100,
            0.0f64..1.0,
        );
        runner
            .run(&strategy, |(shards, extra, max_move)| {
                let names: Vec<String> = (0..shards.len()).map(|i| format!("s{i}")).collect();
                let slices: BTreeMap<String, u64> = names
                    .iter()
                    .zip(&shards)
                    .filter(|(_, (slice, ..))| *slice > 0)
                    .map(|(n, (slice, ..))| (n.clone(), *slice))
                    .collect();
                let total = slices.values().sum::<u64>() + extra;
                let tables = BTreeMap::from([(
                    key("r1"),
                    QuotaTable {
                        total,
                        slices: slices.clone(),
                    },
                )]);
                let reports: BTreeMap<String, QuotaReport> = names
                    .iter()
                    .zip(&shards)
                    .map(|(n, (slice, used, short))| {
                        let used = (*used).min(*slice);
                        let quotas = if *slice > 0 {
                            BTreeMap::from([(key("r1"), (*slice, used))])
                        } else {
                            BTreeMap::new()
                        };
                        (
                            n.clone(),
                            QuotaReport {
                                short: *short,
                                quotas,
                            },
                        )
                    })
                    .collect();
                let policy = SlicePolicy {
                    max_move,
                    ..policy()
                };
                let moves = place(&tables, &reports, policy, &RecentGivers::default());
                let Some(FleetCommand::Batch { commands }) = command(&tables, &moves) else {
                    prop_assert!(moves.is_empty());
                    return Ok(());
                };
                let mut after = slices.clone();
                for c in commands {
                    let FleetCommand::SetQuotaSlices { slices, .. } = c else {
                        panic!("slice changes only");
                    };
                    after.extend(slices);
                }
                prop_assert!(after.values().sum::<u64>() <= total);
                let budget = ((total as f64 * max_move) as u64).max(1);
                prop_assert!(moves.iter().map(|m| m.amount).sum::<u64>() <= budget);
                for (n, report) in &reports {
                    let before = slices.get(n).copied().unwrap_or(0);
                    let now = after.get(n).copied().unwrap_or(0);
                    if now < before {
                        prop_assert_eq!(report.short, 0, "only a shard not short gives");
                        let used = report.quotas.get(&key("r1")).map_or(0, |q| q.1);
                        prop_assert!(now >= used + 2, "{n} keeps its margin: {now} < {used}+2");
                    }
                    if now > before {
                        prop_assert!(now - before <= report.short, "no more than asked");
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}
