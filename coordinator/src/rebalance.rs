//! The rebalancer's decision: which domains, cluster bindings and quota slices leave shards
//! that are draining or whose lease ran out, and where they go. Pure logic over the fleet
//! state; the leader runs it on a timer and proposes the result as a batch, planning again
//! after each commit until nothing is left to move (`crate::leader::rebalance`).
//!
//! Only unhealthy shards give anything away. Live shards are never rebalanced among
//! themselves, which is the dead band that keeps the fleet from oscillating (the jitter
//! TiKV's placement-driver operators complain about comes from continuous score balancing).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ballast_protocol::validate::MAX_BATCH;

use crate::fleet::{FleetCommand, FleetState, ShardStatus};

/// Limits of one plan (one proposal).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most domain moves in one plan; what does not fit waits for the next plan.
    pub max_domain_moves: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_domain_moves: MAX_BATCH / 2,
        }
    }
}

/// Plans one round: moves away from `unhealthy` shards (draining, or lease expired — the
/// caller decides liveness) to active shards not in `unhealthy`, preferring shards that are
/// not `quiet`, then the source's AZ, then the target with the fewest domains. Returns `None`
/// when nothing needs to move or no target exists.
///
/// A quiet shard missed a heartbeat but its lease has not lapsed yet. When an AZ goes down,
/// its shards' leases lapse over a heartbeat interval rather than together; without this
/// preference the first to lapse would hand its work to a same-AZ peer that is about to lapse
/// too, and every domain would hop from dying shard to dying shard before it left the AZ
/// (one domain moved five times in a full-scale AZ loss). A quiet shard still takes work when
/// no other shard can.
///
/// A source's slices follow its clusters in proportion to what each cluster asks for, as the
/// source's last heartbeat reported it in `demand` (shard → cluster → machines); a cluster
/// the report leaves out, or asking for nothing, counts as one machine, and a source with no
/// report weighs every cluster alike.
pub fn plan(
    state: &FleetState,
    unhealthy: &BTreeSet<String>,
    quiet: &BTreeSet<String>,
    limits: Limits,
    demand: &ClusterDemand,
) -> Option<FleetCommand> {
    let sources: Vec<&str> = state
        .shards()
        .filter(|s| s.status == ShardStatus::Draining || unhealthy.contains(&s.id))
        .map(|s| s.id.as_str())
        .collect();
    let mut targets: Vec<(&str, &str, bool, usize)> = state
        .shards()
        .filter(|s| s.status == ShardStatus::Active && !unhealthy.contains(&s.id))
        .map(|s| {
            let load = state.domain_count_of(&s.id);
            (s.id.as_str(), s.az.as_str(), quiet.contains(&s.id), load)
        })
        .collect();
    if sources.is_empty() || targets.is_empty() {
        return None;
    }
    let az_of: HashMap<&str, &str> = state
        .shards()
        .map(|s| (s.id.as_str(), s.az.as_str()))
        .collect();
    // Least-loaded target, heartbeating ones first, then the same AZ; ties by id keep the
    // choice deterministic.
    let mut pick = |source_az: &str| -> String {
        let best = targets
            .iter_mut()
            .min_by_key(|(id, az, quiet, load)| (*quiet, *az != source_az, *load, *id))
            .expect("targets is not empty");
        best.3 += 1;
        best.0.to_string()
    };

    let mut commands = Vec::new();
    let mut assignments = Vec::new();
    for source in &sources {
        let source_az = az_of.get(source).copied().unwrap_or("");
        for domain in state.domains_of(source) {
            if assignments.len() >= limits.max_domain_moves {
                break;
            }
            assignments.push((domain.to_string(), pick(source_az)));
        }
    }
    if !assignments.is_empty() {
        commands.push(FleetCommand::AssignDomains {
            assignments,
            allow_move: true,
        });
    }
    // Per source: the weight of its bindings, and how much of it went to each target this round.
    let weight = |shard: &str, cluster: &str| -> u64 {
        demand
            .get(shard)
            .and_then(|asked| asked.get(cluster))
            .copied()
            .unwrap_or(0)
            .max(1)
    };
    let mut bound: HashMap<&str, u64> = HashMap::new();
    let mut sent: HashMap<&str, BTreeMap<String, u64>> = HashMap::new();
    for (cluster, shard) in state.bindings() {
        if !sources.contains(&shard) {
            continue;
        }
        let weight = weight(shard, &cluster);
        *bound.entry(shard).or_default() += weight;
        // Room for the quota commands of this round.
        if commands.len() + state.quotas().count() < MAX_BATCH {
            let target = pick(az_of.get(shard).copied().unwrap_or(""));
            *sent
                .entry(shard)
                .or_default()
                .entry(target.clone())
                .or_default() += weight;
            commands.push(FleetCommand::MoveCluster {
                cluster: cluster.into_owned(),
                shard: target,
            });
        }
    }
    // A slice follows the clusters it served, in proportion to their demand: a target that
    // took clusters asking for a third of a source's machines takes a third of each of its
    // slices, so the demand that arrives with the clusters finds quota waiting. A source with
    // no clusters hands its slices to one target.
    let mut given: HashMap<&str, BTreeMap<QuotaKey, BTreeMap<String, u64>>> = HashMap::new();
    for source in &sources {
        let amounts: BTreeMap<QuotaKey, u64> = state
            .quotas()
            .filter_map(|q| {
                let amount = q.slices.get(*source).copied()?;
                Some(((q.provider.clone(), q.region.clone()), amount))
            })
            .collect();
        if amounts.is_empty() {
            continue;
        }
        let clusters = bound.get(source).copied().unwrap_or(0);
        let shares = match sent.get(source) {
            // Its clusters wait for a later round (the batch is full): so do its slices.
            None if clusters > 0 => continue,
            // Whatever the clusters still here serve stays until they go.
            Some(targets) => shares(&amounts, targets, clusters),
            None => {
                let target = pick(az_of.get(source).copied().unwrap_or(""));
                amounts
                    .iter()
                    .map(|(key, amount)| (key.clone(), BTreeMap::from([(target.clone(), *amount)])))
                    .collect()
            }
        };
        given.insert(source, shares);
    }
    for quota in state.quotas() {
        let key = (quota.provider.clone(), quota.region.clone());
        let mut slices: BTreeMap<String, u64> = BTreeMap::new();
        for source in &sources {
            let (Some(amount), Some(shares)) = (
                quota.slices.get(*source).copied(),
                given.get(source).and_then(|g| g.get(&key)),
            ) else {
                continue;
            };
            let leaving: u64 = shares.values().sum();
            for (target, share) in shares {
                let current = slices
                    .get(target)
                    .copied()
                    .unwrap_or_else(|| quota.slices.get(target).copied().unwrap_or(0));
                slices.insert(target.clone(), current.saturating_add(*share));
            }
            slices.insert(source.to_string(), amount - leaving);
        }
        if !slices.is_empty() {
            commands.push(FleetCommand::SetQuotaSlices {
                provider: quota.provider.clone(),
                region: quota.region.clone(),
                slices,
            });
        }
    }
    (!commands.is_empty()).then_some(FleetCommand::Batch { commands })
}

/// A quota: (provider, region).
type QuotaKey = (String, String);

/// What shards last reported their clusters ask for: shard → cluster → machines.
pub type ClusterDemand = HashMap<String, HashMap<String, u64>>;

/// What a source's slices give the targets its clusters went to: of every quota, a target's
/// share is the weight of the clusters it took (`weights`) over the weight of all the
/// source's clusters (`clusters`). Rounding runs over all quotas together, so a target's total
/// stays within one of exact: rounded quota by quota, a target that took a few clusters of
/// many would get a share that rounds to nothing in every quota, and clusters with nothing to
/// provision from. A target whose exact share is below one unit still gets one while the
/// units go round (from what the source keeps, or else from the target rounding favoured
/// most). No quota gives more than the source holds, and when every cluster leaves
/// (`weights` add up to `clusters`) every unit does.
pub fn shares(
    amounts: &BTreeMap<QuotaKey, u64>,
    weights: &BTreeMap<String, u64>,
    clusters: u64,
) -> BTreeMap<QuotaKey, BTreeMap<String, u64>> {
    let moved: u64 = weights.values().sum();
    let clusters = u128::from(clusters.max(moved).max(1));
    let all = u128::from(moved) == clusters;
    // Per target, in units of 1/clusters: what it is owed so far, and what it was given.
    let mut owed: BTreeMap<&str, u128> = BTreeMap::new();
    let mut given: BTreeMap<&str, u64> = BTreeMap::new();
    let mut out: BTreeMap<QuotaKey, BTreeMap<String, u64>> = BTreeMap::new();
    let mut left_over: BTreeMap<QuotaKey, u64> = BTreeMap::new();
    for (key, &amount) in amounts {
        let mut left = amount;
        let mut parts: BTreeMap<String, u64> = BTreeMap::new();
        for (target, &weight) in weights {
            *owed.entry(target).or_default() += u128::from(amount) * u128::from(weight);
        }
        // Furthest behind first, so where the quota runs short it is the targets already
        // closest to their due that wait for the next one.
        let mut order: Vec<(u128, &str)> = weights
            .keys()
            .map(|t| {
                let had = u128::from(given.get(t.as_str()).copied().unwrap_or(0)) * clusters;
                (owed[t.as_str()].saturating_sub(had), t.as_str())
            })
            .collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        for (_, target) in order {
            let owed = owed[target];
            let had = given.entry(target).or_default();
            let part = ((owed / clusters) as u64).saturating_sub(*had).min(left);
            *had += part;
            left -= part;
            *parts.entry(target.to_string()).or_default() += part;
        }
        if all {
            // What rounding kept back goes to the targets furthest below what they are owed.
            let mut behind: Vec<(u128, &str)> = weights
                .keys()
                .map(|t| {
                    let had = u128::from(given[t.as_str()]) * clusters;
                    (owed[t.as_str()].saturating_sub(had), t.as_str())
                })
                .collect();
            behind.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            for (_, target) in behind.iter().cycle().take(left as usize) {
                *given.get_mut(target).expect("listed") += 1;
                *parts.get_mut(*target).expect("listed") += 1;
            }
            if !behind.is_empty() {
                left = 0;
            }
        }
        out.insert(key.clone(), parts);
        left_over.insert(key.clone(), left);
    }
    // A quota that ran short kept a target below its due; another with room makes it up.
    for target in weights.keys() {
        let due = (owed.get(target.as_str()).copied().unwrap_or(0) / clusters) as u64;
        let had = given.entry(target.as_str()).or_default();
        for (key, left) in &mut left_over {
            let part = due.saturating_sub(*had).min(*left);
            if part > 0 {
                *left -= part;
                *had += part;
                *out.get_mut(key)
                    .expect("every quota listed")
                    .entry(target.clone())
                    .or_default() += part;
            }
        }
    }
    // No target that took clusters goes without.
    for target in weights.keys().filter(|t| weights[*t] > 0) {
        if given.get(target.as_str()).copied().unwrap_or(0) > 0 {
            continue;
        }
        if let Some((key, left)) = left_over.iter_mut().find(|(_, left)| **left > 0) {
            *left -= 1;
            *out.get_mut(key)
                .expect("every quota listed")
                .entry(target.clone())
                .or_default() += 1;
            given.insert(target.as_str(), 1);
            continue;
        }
        // The donor is the target furthest above its exact share that keeps at least one.
        let donor = weights
            .keys()
            .filter(|t| given.get(t.as_str()).copied().unwrap_or(0) >= 2)
            .max_by(|a, b| {
                let above = |t: &str| {
                    i128::try_from(u128::from(given[t]) * clusters).unwrap_or(i128::MAX)
                        - i128::try_from(owed[t]).unwrap_or(i128::MAX)
                };
                above(a).cmp(&above(b)).then(b.cmp(a))
            })
            .cloned();
        let Some(donor) = donor else {
            break;
        };
        let Some(parts) = out
            .values_mut()
            .find(|parts| parts.get(&donor).copied().unwrap_or(0) > 0)
        else {
            break;
        };
        *parts.get_mut(&donor).expect("found above") -= 1;
        *parts.entry(target.clone()).or_default() += 1;
        *given.get_mut(donor.as_str()).expect("a donor was given") -= 1;
        given.insert(target.as_str(), 1);
    }
    for parts in out.values_mut() {
        parts.retain(|_, part| *part > 0);
    }
    out.retain(|_, parts| !parts.is_empty());
    out
}

/// Splits `amount` over `weights` in proportion, largest remainders first (ties by name), so
/// the parts always add up to `amount`. Zero weights get nothing; all zero gives an empty split.
pub fn split(amount: u64, weights: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let total: u128 = weights.values().map(|w| u128::from(*w)).sum();
    if total == 0 {
        return BTreeMap::new();
    }
    let mut parts: BTreeMap<String, u64> = BTreeMap::new();
    let mut remainders: Vec<(u128, &String)> = Vec::new();
    let mut given = 0u64;
    for (name, weight) in weights {
        let exact = u128::from(amount) * u128::from(*weight);
        let part = (exact / total) as u64;
        given += part;
        parts.insert(name.clone(), part);
        remainders.push((exact % total, name));
    }
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    for (_, name) in remainders.into_iter().take((amount - given) as usize) {
        *parts.get_mut(name).expect("named above") += 1;
    }
    parts.retain(|_, part| *part > 0);
    parts
}

/// What a planned round moves: (domains, cluster bindings, quota slices changed).
pub fn moves(command: &FleetCommand) -> (usize, usize, usize) {
    let FleetCommand::Batch { commands } = command else {
        return (0, 0, 0);
    };
    commands
        .iter()
        .fold((0, 0, 0), |(d, c, q), command| match command {
            FleetCommand::AssignDomains { assignments, .. } => (d + assignments.len(), c, q),
            FleetCommand::MoveCluster { .. } => (d, c + 1, q),
            FleetCommand::SetQuotaSlices { .. } => (d, c, q + 1),
            _ => (d, c, q),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round with `unhealthy` evacuated, no quiet shard, the default limits and no demand
    /// reports.
    fn plan_away(state: &FleetState, unhealthy: &BTreeSet<String>) -> Option<FleetCommand> {
        plan(
            state,
            unhealthy,
            &BTreeSet::new(),
            Limits::default(),
            &ClusterDemand::new(),
        )
    }

    fn state() -> FleetState {
        let mut s = FleetState::new();
        let mut commands = Vec::new();
        for (id, az) in [("a1", "az-a"), ("a2", "az-a"), ("b1", "az-b")] {
            commands.push(FleetCommand::RegisterShard {
                id: id.into(),
                address: "x:1".into(),
                az: az.into(),
                now_ms: 0,
                lease_ttl_ms: 1,
            });
        }
        commands.push(FleetCommand::SetProvider {
            name: "aws".into(),
            endpoint: "e".into(),
            region: "r".into(),
            capacity_types: vec![],
        });
        s.apply(&FleetCommand::Batch { commands }).expect("seed");
        s.apply(&FleetCommand::AssignDomains {
            assignments: (0..6)
                .map(|n| (format!("z=a/r={n}"), "a1".to_string()))
                .chain([("z=b/r=0".to_string(), "b1".to_string())])
                .collect(),
            allow_move: false,
        })
        .expect("domains");
        s.apply(&FleetCommand::BindCluster {
            cluster: "c1".into(),
            shard: "a1".into(),
        })
        .expect("bind");
        s.apply(&FleetCommand::SetQuota {
            provider: "aws".into(),
            region: "r".into(),
            total: 100,
            slices: BTreeMap::from([("a1".into(), 30), ("a2".into(), 20), ("b1".into(), 10)]),
        })
        .expect("quota");
        s
    }

    #[test]
    fn healthy_fleets_stay_put() {
        assert!(plan_away(&state(), &BTreeSet::new()).is_none());
    }

    #[test]
    fn a_dead_shard_hands_everything_to_its_az_peer() {
        let mut s = state();
        let dead = BTreeSet::from(["a1".to_string()]);
        let cmd = plan_away(&s, &dead).expect("moves");
        s.apply(&cmd).expect("plan applies");
        assert!(s.domains_of("a1").is_empty());
        assert_eq!(s.domains_of("a2").len(), 6, "same-AZ peer preferred");
        assert_eq!(s.binding("c1"), Some("a2"));
        let q = s.quota("aws", "r").expect("quota");
        assert_eq!(q.slices.get("a2"), Some(&50));
        assert_eq!(q.slices.get("a1"), None);
        // Once empty, nothing more to do: no oscillation.
        assert!(plan_away(&s, &dead).is_none());
    }

    #[test]
    fn work_skips_a_peer_that_stopped_heartbeating_while_another_shard_can_take_it() {
        let mut s = state();
        let dead = BTreeSet::from(["a1".to_string()]);
        let quiet = BTreeSet::from(["a2".to_string()]);
        let cmd = plan(&s, &dead, &quiet, Limits::default(), &ClusterDemand::new()).expect("moves");
        s.apply(&cmd).expect("plan applies");
        assert_eq!(
            s.domains_of("b1").len(),
            7,
            "straight to the heartbeating AZ"
        );
        assert!(s.domains_of("a2").is_empty(), "nothing to the quiet peer");
        assert_eq!(s.binding("c1"), Some("b1"));
        // With every live shard quiet, the quiet ones still take the work.
        let mut s = state();
        let quiet = BTreeSet::from(["a2".to_string(), "b1".to_string()]);
        let cmd = plan(&s, &dead, &quiet, Limits::default(), &ClusterDemand::new()).expect("moves");
        s.apply(&cmd).expect("plan applies");
        assert_eq!(s.domains_of("a2").len(), 6, "same AZ among the quiet");
    }

    #[test]
    fn draining_spreads_by_load_and_respects_the_rate_limit() {
        let mut s = state();
        s.apply(&FleetCommand::DrainShard { id: "a1".into() })
            .expect("drain");
        let dead = BTreeSet::from(["a2".to_string()]);
        let cmd = plan(
            &s,
            &dead,
            &BTreeSet::new(),
            Limits {
                max_domain_moves: 4,
            },
            &ClusterDemand::new(),
        )
        .expect("moves");
        s.apply(&cmd).expect("applies");
        assert_eq!(s.domains_of("a1").len(), 2, "rate limited to 4 moves");
        assert_eq!(s.domains_of("b1").len(), 5);
        let q = s.quota("aws", "r").expect("quota");
        assert_eq!(q.slices.values().sum::<u64>(), 60, "slices keep their sum");
    }

    #[test]
    fn plans_one_after_another_empty_a_shard_larger_than_one_plan_and_then_stop() {
        let mut s = state();
        let dead = BTreeSet::from(["a1".to_string()]);
        let limits = Limits {
            max_domain_moves: 4,
        };
        let mut moved = Vec::new();
        while let Some(cmd) = plan(&s, &dead, &BTreeSet::new(), limits, &ClusterDemand::new()) {
            assert!(
                moved.len() < 2,
                "a third plan for 6 domains at 4 a plan: {cmd:?}"
            );
            s.apply(&cmd).expect("applies");
            moved.push(moves(&cmd));
        }
        // The first takes four domains, the cluster and its slice; the second the rest.
        assert_eq!(moved, [(4, 1, 1), (2, 0, 0)]);
        assert!(s.domains_of("a1").is_empty());
        assert!(s.bindings().all(|(_, shard)| shard != "a1"));
        let q = s.quota("aws", "r").expect("quota");
        assert_eq!(
            q.slices.get("a1").copied().unwrap_or(0),
            0,
            "{:?}",
            q.slices
        );
        assert_eq!(q.slices.values().sum::<u64>(), 60, "slices keep their sum");
    }

    /// [`state`] with a third shard in az-a, a3, and clusters c1 to c4 bound to a1.
    fn four_clusters_on_a1() -> FleetState {
        let mut s = state();
        s.apply(&FleetCommand::RegisterShard {
            id: "a3".into(),
            address: "x:1".into(),
            az: "az-a".into(),
            now_ms: 0,
            lease_ttl_ms: 1,
        })
        .expect("a3");
        for c in ["c2", "c3", "c4"] {
            s.apply(&FleetCommand::BindCluster {
                cluster: c.into(),
                shard: "a1".into(),
            })
            .expect("bind");
        }
        s
    }

    #[test]
    fn slices_follow_the_clusters_in_proportion() {
        let mut s = four_clusters_on_a1();
        let dead = BTreeSet::from(["a1".to_string()]);
        let cmd = plan_away(&s, &dead).expect("moves");
        s.apply(&cmd).expect("applies");
        let clusters_of = |shard: &str| s.bindings().filter(|(_, to)| *to == shard).count() as u64;
        let q = s.quota("aws", "r").expect("quota");
        assert_eq!(q.slices.get("a1"), None, "a1's slice is gone");
        let gained = |shard: &str, before: u64| q.slices.get(shard).copied().unwrap_or(0) - before;
        assert_eq!(gained("a2", 20) + gained("a3", 0), 30);
        assert_eq!(clusters_of("a2") + clusters_of("a3"), 4);
        assert!(
            clusters_of("a3") > 0 && clusters_of("a2") > 0,
            "spread over both"
        );
        // 30 machines for 4 clusters: each target gets 7.5 per cluster it took, rounded.
        for (shard, before) in [("a2", 20), ("a3", 0)] {
            let exact = 30.0 * clusters_of(shard) as f64 / 4.0;
            assert!(
                (gained(shard, before) as f64 - exact).abs() < 1.0,
                "{shard}"
            );
        }
    }

    #[test]
    fn slices_follow_the_clusters_demand_not_their_number() {
        let mut s = four_clusters_on_a1();
        // c1 asks for 57 machines, c2 and c3 for 1 each; c4 is missing from the report (it
        // counts as one machine): 60 in all, 30 units of slice to share.
        let asked = HashMap::from([
            ("c1".to_string(), 57),
            ("c2".to_string(), 1),
            ("c3".to_string(), 0),
        ]);
        let demand = ClusterDemand::from([("a1".to_string(), asked)]);
        let dead = BTreeSet::from(["a1".to_string()]);
        let cmd = plan(&s, &dead, &BTreeSet::new(), Limits::default(), &demand).expect("moves");
        s.apply(&cmd).expect("applies");
        let q = s.quota("aws", "r").expect("quota");
        let weight = |c: &str| match c {
            "c1" => 57,
            _ => 1,
        };
        for (shard, before) in [("a2", 20), ("a3", 0)] {
            let weights: u64 = s
                .bindings()
                .filter(|(_, to)| *to == shard)
                .map(|(c, _)| weight(&c))
                .sum();
            let exact = 30.0 * weights as f64 / 60.0;
            let gained = q.slices.get(shard).copied().unwrap_or(0) - before;
            assert!(
                (gained as f64 - exact).abs() < 1.0,
                "{shard} took clusters weighing {weights} of 60 and {gained} of 30 units"
            );
            assert!(weights > 0 && gained > 0, "{shard} took a cluster");
        }
    }

    #[test]
    fn no_target_that_took_a_cluster_goes_without() {
        // Ten units; one target took clusters asking for 1,000 machines, the other for one.
        let weights = BTreeMap::from([("big".to_string(), 1000), ("tiny".to_string(), 1)]);
        let given = shares(&quotas(&[10]), &weights, 1001);
        let parts = &given[&("p".to_string(), "r00".to_string())];
        assert_eq!(parts.get("tiny"), Some(&1), "{parts:?}");
        assert_eq!(parts.get("big"), Some(&9), "{parts:?}");
        // The same when clusters stay behind: the unit comes from what the source keeps.
        let given = shares(&quotas(&[10]), &weights, 2000);
        let parts = &given[&("p".to_string(), "r00".to_string())];
        assert_eq!(parts.get("tiny"), Some(&1), "{parts:?}");
        assert_eq!(parts.get("big"), Some(&5), "{parts:?}");
    }

    proptest::proptest! {
        #[test]
        fn a_split_adds_up_and_stays_within_one_of_exact(
            amount in 0u64..1_000_000,
            weights in proptest::collection::btree_map("[a-e]", 0u64..1000, 0..5),
        ) {
            let parts = split(amount, &weights);
            let total: u64 = weights.values().sum();
            if total == 0 {
                proptest::prop_assert!(parts.is_empty());
            } else {
                proptest::prop_assert_eq!(parts.values().sum::<u64>(), amount);
                for (name, weight) in &weights {
                    let exact = amount as f64 * *weight as f64 / total as f64;
                    let got = parts.get(name).copied().unwrap_or(0) as f64;
                    proptest::prop_assert!((got - exact).abs() < 1.0, "{name}: {got} vs {exact}");
                }
            }
        }
    }

    fn quotas(amounts: &[u64]) -> BTreeMap<QuotaKey, u64> {
        amounts
            .iter()
            .enumerate()
            .map(|(i, a)| (("p".to_string(), format!("r{i:02}")), *a))
            .collect()
    }

    #[test]
    fn a_few_clusters_of_many_take_their_share_over_all_quotas() {
        // 30 slices of 35 for 100 clusters; one cluster leaves. Quota by quota its share
        // (0.35) rounds to nothing; over all quotas it is owed 10.5.
        let amounts = quotas(&[35; 30]);
        let one = BTreeMap::from([("t".to_string(), 1)]);
        let got: u64 = shares(&amounts, &one, 100)
            .values()
            .map(|parts| parts["t"])
            .sum();
        assert_eq!(got, 10);
        assert_eq!(
            split(
                35,
                &BTreeMap::from([("t".to_string(), 1), ("rest".to_string(), 99)])
            )
            .get("t"),
            None,
            "what rounding each quota alone gave"
        );
    }

    proptest::proptest! {
        #[test]
        fn shares_stay_within_the_slices_and_within_one_of_exact(
            amounts in proptest::collection::vec(0u64..200, 1..40),
            weights in proptest::collection::btree_map("[a-e]", 1u64..50, 1..5),
            staying in 0u64..100,
        ) {
            let amounts = quotas(&amounts);
            let moved: u64 = weights.values().sum();
            let clusters = moved + staying;
            let given = shares(&amounts, &weights, clusters);
            for (key, amount) in &amounts {
                let out: u64 = given.get(key).map_or(0, |p| p.values().sum());
                proptest::prop_assert!(out <= *amount);
                if staying == 0 {
                    proptest::prop_assert_eq!(out, *amount, "every unit leaves with every cluster");
                }
            }
            let total: u64 = amounts.values().sum();
            let exact = |weight: u64| total as f64 * weight as f64 / clusters as f64;
            // Within one of exact, unless a target owed less than one unit was given one (the
            // unit it takes from another may put that one up to one more below).
            let topped_up = weights.values().any(|w| exact(*w) < 1.0);
            let bound = if topped_up { 2.0 } else { 1.0 };
            for (target, weight) in &weights {
                let exact = exact(*weight);
                let got: u64 = given.values().filter_map(|p| p.get(target)).sum();
                proptest::prop_assert!((got as f64 - exact).abs() < bound, "{target}: {got} vs {exact}");
                if total >= 2 * weights.len() as u64 {
                    proptest::prop_assert!(got >= 1, "{target} took clusters and got nothing");
                }
            }
        }
    }

    #[test]
    fn no_target_means_no_plan() {
        let s = state();
        let all: BTreeSet<String> = ["a1", "a2", "b1"].iter().map(|s| s.to_string()).collect();
        assert!(plan_away(&s, &all).is_none());
    }
}
