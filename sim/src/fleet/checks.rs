//! The invariants, checked after every scenario against what the coordinator lists
//! (linearizable reads) and what every live shard reports about itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ballast_protocol::pb;
use ballast_testkit::fleet::{FleetListing, list_fleet};

use super::Sim;

/// One invariant's verdict.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// Invariant.
    pub name: String,
    /// Whether it held.
    pub holds: bool,
    /// What was compared, or the first counterexample.
    pub detail: String,
}

impl Check {
    /// A verdict.
    pub fn new(name: &str, holds: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            holds,
            detail: detail.into(),
        }
    }
}

/// The invariant that quota holdings stay within the slices.
const SLICE_CHECK: &str = "no quota slice exceeded";

/// What the live shards said about themselves.
struct ShardViews {
    /// Shard id → domains it believes it holds.
    domains: BTreeMap<String, BTreeSet<String>>,
    /// Shard id → its machines.
    machines: BTreeMap<String, Vec<pb::MachineInfo>>,
}

/// Pure checks over one consistent moment: the coordinator's listing and the shards' views
/// at (or past) the listing's revision.
fn verdicts(listing: &FleetListing, views: &ShardViews) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut owned: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for a in &listing.domains {
        owned.entry(&a.shard).or_default().insert(&a.domain);
    }

    let mut mismatched = Vec::new();
    for (shard, held) in &views.domains {
        let expected = owned.get(shard.as_str()).cloned().unwrap_or_default();
        let held: BTreeSet<&str> = held.iter().map(String::as_str).collect();
        if held != expected {
            let extra = held.difference(&expected).count();
            let missing = expected.difference(&held).count();
            mismatched.push(format!("{shard} (+{extra} / -{missing})"));
        }
    }
    checks.push(Check::new(
        "shard views match the coordinator",
        mismatched.is_empty(),
        if mismatched.is_empty() {
            format!(
                "{} live shards hold exactly the {} domains the coordinator gives them",
                views.domains.len(),
                views.domains.values().map(BTreeSet::len).sum::<usize>()
            )
        } else {
            format!("differ: {}", mismatched.join(", "))
        },
    ));

    let mut holders: HashMap<&str, Vec<&str>> = HashMap::new();
    for (shard, held) in &views.domains {
        for domain in held {
            holders.entry(domain).or_default().push(shard);
        }
    }
    let doubled: Vec<String> = holders
        .iter()
        .filter(|(_, shards)| shards.len() > 1)
        .map(|(domain, shards)| format!("{domain} held by {}", shards.join(" and ")))
        .take(3)
        .collect();
    checks.push(Check::new(
        "no domain owned by two live shards",
        doubled.is_empty(),
        if doubled.is_empty() {
            format!("{} domains, one holder each", holders.len())
        } else {
            doubled.join("; ")
        },
    ));

    // A machine serving a need on two shards would be one machine doing two jobs. Machines
    // serve wherever their domain went (ADR 0016), so every machine at work counts.
    let mut machine_owner: HashMap<&str, &str> = HashMap::new();
    let mut twice = Vec::new();
    for (shard, machines) in &views.machines {
        let at_work = |m: &&pb::MachineInfo| !m.need.is_empty();
        for m in machines.iter().filter(at_work) {
            if let Some(other) = machine_owner.insert(&m.id, shard) {
                twice.push(format!(
                    "{} (domain {}) on {other} and {shard} (for {})",
                    m.id, m.domain, m.need
                ));
            }
        }
    }
    checks.push(Check::new(
        "no machine double-assigned",
        twice.is_empty(),
        if twice.is_empty() {
            format!(
                "{} machines at work, each on one shard",
                machine_owner.len()
            )
        } else {
            twice.into_iter().take(3).collect::<Vec<_>>().join("; ")
        },
    ));

    let mut sliced: BTreeMap<&str, u64> = BTreeMap::new();
    let mut over_total = Vec::new();
    for quota in &listing.quotas {
        let sum: u64 = quota.slices.iter().map(|s| s.amount).sum();
        if sum > quota.total {
            over_total.push(format!(
                "{}/{} slices {sum} > total {}",
                quota.provider, quota.region, quota.total
            ));
        }
        for slice in &quota.slices {
            *sliced.entry(&slice.shard).or_default() += slice.amount;
        }
    }
    let over_slice: Vec<String> = views
        .machines
        .iter()
        .filter(|(shard, machines)| {
            machines.len() as u64 > sliced.get(shard.as_str()).copied().unwrap_or(0)
        })
        .map(|(shard, machines)| {
            format!(
                "{shard} holds {} machines, slices {}",
                machines.len(),
                sliced.get(shard.as_str()).copied().unwrap_or(0)
            )
        })
        .collect();
    let holds = over_total.is_empty() && over_slice.is_empty();
    checks.push(Check::new(
        SLICE_CHECK,
        holds,
        if holds {
            format!(
                "{} quotas within their totals; every live shard within its slices (fullest at {:.0}%)",
                listing.quotas.len(),
                views
                    .machines
                    .iter()
                    .map(|(shard, m)| m.len() as f64 * 100.0
                        / sliced.get(shard.as_str()).copied().unwrap_or(1).max(1) as f64)
                    .fold(0.0, f64::max)
            )
        } else {
            over_total
                .into_iter()
                .chain(over_slice)
                .collect::<Vec<_>>()
                .join("; ")
        },
    ));
    checks
}

/// Cluster → shard as listed.
fn bound(listing: &FleetListing) -> HashMap<&str, &str> {
    listing
        .bindings
        .iter()
        .map(|b| (b.cluster.as_str(), b.shard.as_str()))
        .collect()
}

/// Acknowledged bindings the listing lacks. A binding may since have moved to another shard
/// (the rebalancer moves a dead shard's clusters), but it may not vanish.
pub fn lost_bindings(listing: &FleetListing, acked: &[(String, String)]) -> Vec<String> {
    let bound = bound(listing);
    acked
        .iter()
        .filter(|(cluster, _)| !bound.contains_key(cluster.as_str()))
        .map(|(cluster, _)| cluster.clone())
        .collect()
}

/// Acknowledged bindings now on another shard than the one written.
fn moved_bindings(listing: &FleetListing, acked: &[(String, String)]) -> usize {
    let bound = bound(listing);
    acked
        .iter()
        .filter(|(cluster, shard)| bound.get(cluster.as_str()).is_some_and(|s| s != shard))
        .count()
}

impl Sim {
    /// The providers' own record, judged against the coordinator's quotas: live machines per
    /// (provider, region) never above the quota's total (no quota committed twice), and every
    /// live machine owned by a registered shard.
    async fn provider_record(&self, listing: &FleetListing) -> Check {
        let totals: BTreeMap<(String, String), u64> = listing
            .quotas
            .iter()
            .map(|q| ((q.provider.clone(), q.region.clone()), q.total))
            .collect();
        let registered: BTreeSet<&str> = listing.shards.iter().map(|s| s.id.as_str()).collect();
        let mut live: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut strays = Vec::new();
        let mut machines = 0;
        for (_, provider) in &self.providers {
            for m in ballast_testkit::provider_machines(&provider.endpoint, "").await {
                if !ballast_testkit::live(&m) {
                    continue;
                }
                machines += 1;
                *live
                    .entry((m.quota_provider.clone(), m.region.clone()))
                    .or_default() += 1;
                if !registered.contains(m.owner_shard.as_str()) {
                    strays.push(format!("{} owned by {}", m.id, m.owner_shard));
                }
            }
        }
        let over: Vec<String> = live
            .iter()
            .filter(|(key, n)| **n > totals.get(*key).copied().unwrap_or(0))
            .map(|((p, r), n)| {
                format!(
                    "{p}/{r}: {n} live, total {}",
                    totals.get(&(p.clone(), r.clone())).copied().unwrap_or(0)
                )
            })
            .collect();
        Check::new(
            "the providers' record: no quota over-committed, no machine without a shard",
            over.is_empty() && strays.is_empty(),
            if over.is_empty() && strays.is_empty() {
                format!(
                    "{machines} live machines at {} provider processes, every quota within its total",
                    self.providers.len()
                )
            } else {
                format!(
                    "over: {over:?}; strays: {:?}",
                    strays.iter().take(3).collect::<Vec<_>>()
                )
            },
        )
    }

    /// Every live shard's machines, as it reports them.
    pub(super) async fn machines_of_live_shards(
        &self,
    ) -> anyhow::Result<BTreeMap<String, Vec<pb::MachineInfo>>> {
        let mut machines = BTreeMap::new();
        for i in self.live_shards() {
            let mut client = self.shard_clients[i].clone();
            let allocations = client
                .allocations(pb::AllocationsRequest::default())
                .await?
                .into_inner();
            machines.insert(self.shards[i].id.clone(), allocations.machines);
        }
        Ok(machines)
    }

    /// Checks every invariant now: waits until the live shards caught up with the
    /// coordinator, then compares. `demand` also requires every live shard to meet its
    /// demand (shortfall 0) within 30 s.
    pub(super) async fn checkpoint(
        &self,
        demand: bool,
    ) -> anyhow::Result<Vec<super::checks::Check>> {
        self.follow_bindings().await?;
        // Taken first: a write acknowledged after the listing would look lost.
        let acked = self.shared.acked_bindings.lock().clone();
        let revision = self.client.revision().await?;
        self.wait_for_shards_at(revision).await?;
        let listing = list_fleet(&self.client).await?;
        let mut views = ShardViews {
            domains: BTreeMap::new(),
            machines: BTreeMap::new(),
        };
        for i in self.live_shards() {
            let id = self.shards[i].id.clone();
            let status = self
                .shard_status(i)
                .await
                .ok_or_else(|| anyhow::anyhow!("shard {id} does not answer"))?;
            views
                .domains
                .insert(id.clone(), status.domains.into_iter().collect());
        }
        // The listing is as of `revision` and the shards at or past it; anything written
        // after the listing (the background writer's bindings) does not touch domains or
        // quotas, so the two describe one moment for what is compared.
        //
        // A slice that shrank (moved with its clusters, or cut by the operator) leaves its shard
        // above it until the provider has taken the idle surplus back: holdings are compared
        // again until they are within the slices, for up to 30 s.
        let settling = Instant::now();
        let mut checks = loop {
            views.machines = self.machines_of_live_shards().await?;
            let checks = verdicts(&listing, &views);
            let within = checks.iter().all(|c| c.holds || c.name != SLICE_CHECK);
            if within || settling.elapsed() > Duration::from_secs(30) {
                break checks;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        if let Some(check) = checks.iter_mut().find(|c| c.name == SLICE_CHECK && c.holds) {
            check.detail = format!(
                "{} (holdings within slices {} ms after the check began)",
                check.detail,
                settling.elapsed().as_millis()
            );
        }

        let lost = lost_bindings(&listing, &acked);
        let moved = moved_bindings(&listing, &acked);
        checks.push(Check::new(
            "no acknowledged write lost",
            lost.is_empty(),
            if lost.is_empty() {
                format!(
                    "all {} acknowledged bindings present at revision {revision} ({moved} since moved by the rebalancer or the simulator)",
                    acked.len()
                )
            } else {
                format!("{} missing, e.g. {}", lost.len(), lost[0])
            },
        ));

        if !self.providers.is_empty() {
            checks.push(self.provider_record(&listing).await);
        }

        if demand {
            let hold = self.shared.hold_demand();
            let live = self.live_shards().len();
            let met = self.until_demand_met(Duration::from_secs(30)).await;
            let drift = self.ledgers_match_providers().await?;
            drop(hold);
            checks.push(Check::new(
                "every live shard meets its demand",
                met.is_ok(),
                match met {
                    Ok(d) => format!(
                        "all {live} live shards serve every machine asked for ({} ms after the check began)",
                        d.as_millis()
                    ),
                    Err(short) => format!("still short after 30 s: {short}"),
                },
            ));
            checks.extend(drift);
        }
        Ok(checks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine at work (`id`) or, with a `~` prefix, idle (as a handed-over copy is).
    fn machine(id: &str) -> pb::MachineInfo {
        match id.strip_prefix('~') {
            Some(idle) => pb::MachineInfo {
                id: idle.into(),
                ..Default::default()
            },
            None => pb::MachineInfo {
                id: id.into(),
                need: "c1/web".into(),
                ..Default::default()
            },
        }
    }

    fn listing() -> FleetListing {
        FleetListing {
            domains: vec![
                pb::DomainAssignment {
                    domain: "d1".into(),
                    shard: "s1".into(),
                },
                pb::DomainAssignment {
                    domain: "d2".into(),
                    shard: "s2".into(),
                },
            ],
            quotas: vec![pb::Quota {
                provider: "p".into(),
                region: "r".into(),
                total: 4,
                slices: vec![
                    pb::QuotaSlice {
                        shard: "s1".into(),
                        amount: 2,
                    },
                    pb::QuotaSlice {
                        shard: "s2".into(),
                        amount: 2,
                    },
                ],
                unallocated: 0,
            }],
            ..Default::default()
        }
    }

    fn placed(machines: &[&str], domains: &[&str]) -> Vec<pb::MachineInfo> {
        machines
            .iter()
            .map(|m| pb::MachineInfo {
                domain: domains.first().unwrap_or(&"").to_string(),
                ..machine(m)
            })
            .collect()
    }

    fn views(s1: &[&str], s2: &[&str], m1: &[&str], m2: &[&str]) -> ShardViews {
        let set = |d: &[&str]| d.iter().map(|s| s.to_string()).collect();
        ShardViews {
            domains: [("s1".to_string(), set(s1)), ("s2".to_string(), set(s2))].into(),
            // Each shard's machines sit in its first domain.
            machines: [
                ("s1".to_string(), placed(m1, s1)),
                ("s2".to_string(), placed(m2, s2)),
            ]
            .into(),
        }
    }

    fn failing(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.holds)
            .map(|c| c.name.as_str())
            .collect()
    }

    #[test]
    fn a_consistent_moment_passes() {
        let checks = verdicts(&listing(), &views(&["d1"], &["d2"], &["a"], &["b", "c"]));
        assert!(failing(&checks).is_empty(), "{checks:?}");
    }

    #[test]
    fn each_violation_is_named() {
        let checks = verdicts(&listing(), &views(&["d1", "d2"], &["d2"], &["a"], &["b"]));
        assert_eq!(
            failing(&checks),
            [
                "shard views match the coordinator",
                "no domain owned by two live shards"
            ]
        );
        let checks = verdicts(&listing(), &views(&["d1"], &["d2"], &["a"], &["a"]));
        assert_eq!(failing(&checks), ["no machine double-assigned"]);
        // A handed-over machine still idle in its old owner's ledger serves nothing there.
        let checks = verdicts(&listing(), &views(&["d1"], &["d2"], &["~a"], &["a"]));
        assert!(failing(&checks).is_empty(), "{:?}", failing(&checks));
        let checks = verdicts(&listing(), &views(&["d1"], &["d2"], &["a", "b", "c"], &[]));
        assert_eq!(failing(&checks), ["no quota slice exceeded"]);
    }

    #[test]
    fn lost_bindings_are_found() {
        let mut listing = listing();
        listing.bindings = vec![pb::Binding {
            cluster: "c1".into(),
            shard: "s1".into(),
        }];
        let acked = vec![
            ("c1".to_string(), "s2".to_string()),
            ("c2".to_string(), "s1".to_string()),
        ];
        assert_eq!(lost_bindings(&listing, &acked), ["c2"]);
        assert_eq!(moved_bindings(&listing, &acked), 1);
    }
}
