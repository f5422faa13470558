//! The provisioning engine: one pure decision per cycle, no I/O. Given the shard's allocation
//! (domains and quota slices), its machine ledger and the clusters' demand, it decides which
//! idle machines to assign, what to provision within quota, what lower-priority work to
//! preempt, what surplus to release, and what remains short.
//!
//! Invariants (checked by property tests): a quota slice is never exceeded, no machine outside
//! the shard's domains is ever used, and no machine is assigned twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ballast_protocol::validate::DomainKey;
use serde::{Deserialize, Serialize};

/// Resources of one machine, or asked for per machine by a need.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// GPUs.
    pub gpus: u32,
}

impl Resources {
    /// Whether a machine with `self` can serve a need asking for `want`.
    pub fn covers(&self, want: &Resources) -> bool {
        self.cpu_millis >= want.cpu_millis
            && self.memory_mib >= want.memory_mib
            && self.gpus >= want.gpus
    }
}

/// Where a need's machines must be.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Placement {
    /// Anywhere in the shard's domains.
    Any,
    /// In domains of this AZ (the domain's `zone` or `topology.kubernetes.io/zone` label).
    Az(String),
    /// In exactly this domain.
    Domain(String),
}

/// One row of a cluster's demand: `count` machines with at least `resources`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    /// Unique within the shard (cluster id + the cluster's own row id).
    pub id: String,
    /// Cluster asking.
    pub cluster: String,
    /// Machines wanted.
    pub count: u32,
    /// Per-machine minimum.
    pub resources: Resources,
    /// Higher wins; lower-priority work may be preempted for it.
    pub priority: i32,
    /// Placement constraint.
    pub placement: Placement,
}

/// Quota a machine was provisioned under.
pub type QuotaKey = (String, String);

/// What the ledger knows about one machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Machine id.
    pub id: String,
    /// Topology domain it sits in.
    pub domain: String,
    /// Its resources.
    pub resources: Resources,
    /// Quota it counts against, if the shard provisioned it.
    pub quota: Option<QuotaKey>,
    /// Need it serves, if any.
    pub assigned_to: Option<String>,
}

/// Everything one decision looks at.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Domains the shard owns.
    pub domains: BTreeSet<String>,
    /// Quota slices: machines the shard may hold per (provider, region).
    pub slices: BTreeMap<QuotaKey, u64>,
    /// Machine ledger.
    pub machines: Vec<Machine>,
    /// Current demand of every cluster (full replacement: a cluster's rows replace its old ones).
    pub needs: Vec<Need>,
    /// Machines being provisioned and not yet in the ledger, per quota (they count against it).
    pub in_flight: BTreeMap<QuotaKey, u64>,
}

/// A machine to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provision {
    /// Need it is for.
    pub need: String,
    /// Domain to create it in.
    pub domain: String,
    /// Quota it counts against.
    pub quota: QuotaKey,
    /// Resources to ask for.
    pub resources: Resources,
}

/// A shortfall: a need the shard could not fully serve this cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// Need.
    pub need: String,
    /// Machines missing.
    pub missing: u32,
}

/// The decision of one cycle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `(machine, need)`: idle (or released) machines put to work.
    pub assign: Vec<(String, String)>,
    /// Machines to create.
    pub provision: Vec<Provision>,
    /// `(machine, from need, to need)`: lower-priority work displaced.
    pub preempt: Vec<(String, String, String)>,
    /// Machines no need wants any more (they become idle).
    pub release: Vec<String>,
    /// Machines in the ledger outside the shard's domains (lost in a rebalance); never used.
    pub foreign: Vec<String>,
    /// What could not be served.
    pub shortfalls: Vec<Shortfall>,
}

const ZONE_LABELS: [&str; 2] = ["topology.kubernetes.io/zone", "zone"];

/// AZ of a domain, from its zone label.
pub fn domain_az(domain: &str) -> Option<String> {
    let key = DomainKey::parse(domain).ok()?;
    ZONE_LABELS
        .iter()
        .find_map(|label| key.get(label))
        .map(str::to_string)
}

/// Decides one cycle.
pub fn decide(inputs: &Inputs) -> Plan {
    let mut plan = Plan::default();
    let machines = &inputs.machines;

    // Dense ids: domains and needs by position, machines by position in id order, so the hot
    // loops below index vectors instead of hashing strings (500K machines per cycle).
    let domain_list: Vec<&str> = inputs.domains.iter().map(String::as_str).collect();
    let domain_index: HashMap<&str, u32> = domain_list
        .iter()
        .enumerate()
        .map(|(i, d)| (*d, i as u32))
        .collect();
    let domain_azs: Vec<Option<String>> = domain_list.iter().map(|d| domain_az(d)).collect();
    let mut domains_of_az: HashMap<&str, Vec<u32>> = HashMap::new();
    for (i, az) in domain_azs.iter().enumerate() {
        if let Some(az) = az {
            domains_of_az.entry(az.as_str()).or_default().push(i as u32);
        }
    }
    let all_domains: Vec<u32> = (0..domain_list.len() as u32).collect();
    let need_index: HashMap<&str, u32> = inputs
        .needs
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i as u32))
        .collect();
    let placed = |need: &Need, domain: u32| match &need.placement {
        Placement::Any => true,
        Placement::Domain(d) => domain_index.get(d.as_str()) == Some(&domain),
        Placement::Az(az) => domain_azs[domain as usize].as_deref() == Some(az.as_str()),
    };

    let mut order: Vec<u32> = (0..machines.len() as u32).collect();
    if !machines.windows(2).all(|w| w[0].id <= w[1].id) {
        order.sort_by(|a, b| machines[*a as usize].id.cmp(&machines[*b as usize].id));
    }
    const FOREIGN: u32 = u32::MAX;
    let mut domain_of = vec![FOREIGN; machines.len()];
    let mut holder: Vec<Option<u32>> = vec![None; machines.len()];
    let mut held_per_quota: BTreeMap<&QuotaKey, u64> = BTreeMap::new();
    for &i in &order {
        let m = &machines[i as usize];
        if let Some(q) = &m.quota {
            *held_per_quota.entry(q).or_insert(0) += 1;
        }
        match domain_index.get(m.domain.as_str()) {
            Some(d) => {
                domain_of[i as usize] = *d;
                holder[i as usize] = m
                    .assigned_to
                    .as_deref()
                    .map(|n| need_index.get(n).copied().unwrap_or(u32::MAX));
            }
            None => plan.foreign.push(m.id.clone()),
        }
    }

    // Keep assignments that still fit their need, up to its count; release the rest.
    let mut served = vec![0u32; inputs.needs.len()];
    for &i in &order {
        let Some(need) = holder[i as usize] else {
            continue;
        };
        let m = &machines[i as usize];
        let keep = inputs.needs.get(need as usize).is_some_and(|n| {
            served[need as usize] < n.count
                && m.resources.covers(&n.resources)
                && placed(n, domain_of[i as usize])
        });
        if keep {
            served[need as usize] += 1;
        } else {
            plan.release.push(m.id.clone());
            holder[i as usize] = None;
        }
    }

    // Idle machines per domain, smallest first (ties in id order).
    let mut rank = vec![0u32; machines.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i as usize] = r as u32;
    }
    let mut idle: Vec<BTreeSet<(Resources, u32)>> = vec![BTreeSet::new(); domain_list.len()];
    for &i in &order {
        let d = domain_of[i as usize];
        if d != FOREIGN && holder[i as usize].is_none() {
            idle[d as usize].insert((machines[i as usize].resources, rank[i as usize]));
        }
    }

    // Serve needs by priority (then id, for determinism).
    let mut by_priority: Vec<u32> = (0..inputs.needs.len() as u32).collect();
    by_priority.sort_by(|a, b| {
        let (a, b) = (&inputs.needs[*a as usize], &inputs.needs[*b as usize]);
        b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id))
    });
    let mut quota_room: BTreeMap<&QuotaKey, u64> = inputs
        .slices
        .iter()
        .map(|(q, slice)| {
            let used = held_per_quota.get(q).copied().unwrap_or(0)
                + inputs.in_flight.get(q).copied().unwrap_or(0);
            (q, slice.saturating_sub(used))
        })
        .collect();
    // Assigned machines by ascending priority of what they serve; built on first need.
    let mut victims: Option<Vec<(i32, u32)>> = None;
    let mut moved = vec![false; machines.len()];
    // Pools only shrink within a cycle: once a (resources, placement) found nothing more,
    // every later need with the same shape and no higher priority finds nothing either.
    let mut idle_exhausted: HashSet<(Resources, &Placement)> = HashSet::new();
    let mut victims_exhausted: HashSet<(Resources, &Placement)> = HashSet::new();

    for &ni in &by_priority {
        let need = &inputs.needs[ni as usize];
        let mut missing = need.count.saturating_sub(served[ni as usize]);
        if missing == 0 {
            continue;
        }
        let shape = (need.resources, &need.placement);
        let candidates: &[u32] = match &need.placement {
            Placement::Any => &all_domains,
            Placement::Az(az) => domains_of_az
                .get(az.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]),
            Placement::Domain(d) => domain_index
                .get(d.as_str())
                .map(|i| std::slice::from_ref(&all_domains[*i as usize]))
                .unwrap_or(&[]),
        };
        // 1. Idle machines that fit, smallest first so big machines stay for big needs.
        if !idle_exhausted.contains(&shape) {
            for &d in candidates {
                if missing == 0 {
                    break;
                }
                let pool = &mut idle[d as usize];
                let taken: Vec<(Resources, u32)> = pool
                    .range((need.resources, 0)..)
                    .filter(|(r, _)| r.covers(&need.resources))
                    .take(missing as usize)
                    .copied()
                    .collect();
                for entry in taken {
                    pool.remove(&entry);
                    let i = order[entry.1 as usize] as usize;
                    holder[i] = Some(ni);
                    moved[i] = true;
                    plan.assign.push((machines[i].id.clone(), need.id.clone()));
                    missing -= 1;
                }
            }
            if missing > 0 {
                idle_exhausted.insert(shape);
            }
        }
        // 2. Provision within quota in a domain that satisfies the placement.
        if missing > 0
            && let Some(&d) = candidates.first()
        {
            for (quota, room) in quota_room.iter_mut() {
                while missing > 0 && *room > 0 {
                    plan.provision.push(Provision {
                        need: need.id.clone(),
                        domain: domain_list[d as usize].to_string(),
                        quota: (*quota).clone(),
                        resources: need.resources,
                    });
                    *room -= 1;
                    missing -= 1;
                }
            }
        }
        // 3. Preempt lower-priority work on machines that fit.
        if missing > 0 && !victims_exhausted.contains(&shape) {
            let list = victims.get_or_insert_with(|| {
                let mut list: Vec<(i32, u32)> = order
                    .iter()
                    .filter_map(|&i| {
                        let need = holder[i as usize]?;
                        inputs
                            .needs
                            .get(need as usize)
                            .map(|n| (n.priority, rank[i as usize]))
                    })
                    .collect();
                list.sort_unstable();
                list
            });
            for &(priority, r) in list.iter() {
                if missing == 0 || priority >= need.priority {
                    break;
                }
                let i = order[r as usize] as usize;
                if moved[i] {
                    continue;
                }
                let Some(from) = holder[i] else { continue };
                if machines[i].resources.covers(&need.resources) && placed(need, domain_of[i]) {
                    holder[i] = Some(ni);
                    moved[i] = true;
                    plan.preempt.push((
                        machines[i].id.clone(),
                        inputs.needs[from as usize].id.clone(),
                        need.id.clone(),
                    ));
                    missing -= 1;
                }
            }
            if missing > 0 {
                victims_exhausted.insert(shape);
            }
        }
        if missing > 0 {
            plan.shortfalls.push(Shortfall {
                need: need.id.clone(),
                missing,
            });
        }
    }
    // A preempted need may now be short; it shows up as a shortfall next cycle, when its
    // lost machines are no longer counted as served.
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn res(cpu: u64) -> Resources {
        Resources {
            cpu_millis: cpu,
            memory_mib: cpu,
            gpus: 0,
        }
    }

    fn machine(id: &str, domain: &str, cpu: u64, assigned: Option<&str>) -> Machine {
        Machine {
            id: id.into(),
            domain: domain.into(),
            resources: res(cpu),
            quota: Some(("aws".into(), "r1".into())),
            assigned_to: assigned.map(String::from),
        }
    }

    fn need(id: &str, count: u32, cpu: u64, priority: i32, placement: Placement) -> Need {
        Need {
            id: id.into(),
            cluster: "c1".into(),
            count,
            resources: res(cpu),
            priority,
            placement,
        }
    }

    fn inputs() -> Inputs {
        Inputs {
            domains: BTreeSet::from(["zone=az-a/rack=1".into(), "zone=az-b/rack=1".into()]),
            slices: BTreeMap::from([(("aws".into(), "r1".into()), 4)]),
            ..Inputs::default()
        }
    }

    #[test]
    fn idle_first_then_quota_then_shortfall() {
        let mut i = inputs();
        i.machines = vec![machine("m1", "zone=az-a/rack=1", 4, None)];
        i.needs = vec![need("n1", 5, 2, 0, Placement::Any)];
        let p = decide(&i);
        assert_eq!(p.assign, vec![("m1".into(), "n1".into())]);
        assert_eq!(
            p.provision.len(),
            3,
            "slice of 4 with one machine held leaves 3"
        );
        assert_eq!(
            p.shortfalls,
            vec![Shortfall {
                need: "n1".into(),
                missing: 1
            }]
        );
    }

    #[test]
    fn higher_priority_preempts_lower() {
        let mut i = inputs();
        i.slices.clear();
        i.machines = vec![
            machine("m1", "zone=az-a/rack=1", 4, Some("low")),
            machine("m2", "zone=az-a/rack=1", 4, Some("low")),
        ];
        i.needs = vec![
            need("low", 2, 1, 0, Placement::Any),
            need("high", 1, 2, 10, Placement::Any),
        ];
        let p = decide(&i);
        assert_eq!(p.preempt.len(), 1);
        assert_eq!(p.preempt[0].2, "high");
        assert!(p.shortfalls.is_empty());
    }

    #[test]
    fn placement_and_foreign_machines_are_respected() {
        let mut i = inputs();
        i.machines = vec![
            machine("m1", "zone=az-a/rack=1", 4, None),
            machine("lost", "zone=az-c/rack=9", 4, Some("n1")),
        ];
        i.needs = vec![need("n1", 1, 1, 0, Placement::Az("az-b".into()))];
        let p = decide(&i);
        assert_eq!(p.foreign, vec!["lost".to_string()]);
        assert!(p.assign.is_empty(), "m1 is in az-a");
        assert_eq!(p.provision.len(), 1);
        assert_eq!(p.provision[0].domain, "zone=az-b/rack=1");
        let mut impossible = inputs();
        impossible.needs = vec![need("n2", 1, 1, 0, Placement::Domain("zone=az-z".into()))];
        assert_eq!(decide(&impossible).shortfalls.len(), 1);
    }

    #[test]
    fn surplus_and_vanished_needs_are_released() {
        let mut i = inputs();
        i.machines = vec![
            machine("m1", "zone=az-a/rack=1", 4, Some("n1")),
            machine("m2", "zone=az-a/rack=1", 4, Some("n1")),
            machine("m3", "zone=az-a/rack=1", 4, Some("gone")),
        ];
        i.needs = vec![need("n1", 1, 1, 0, Placement::Any)];
        let p = decide(&i);
        assert_eq!(p.release, vec!["m2".to_string(), "m3".to_string()]);
    }

    fn arb_inputs() -> impl Strategy<Value = Inputs> {
        let domains = ["zone=az-a/rack=1", "zone=az-b/rack=1", "zone=az-c/rack=1"];
        (
            prop::collection::vec((0..4usize, 1..8u64, prop::option::of(0..6usize)), 0..20),
            prop::collection::vec((1..6u32, 1..8u64, -2..3i32, 0..5usize), 0..6),
            0..10u64,
            0..3u64,
        )
            .prop_map(move |(machines, needs, slice, in_flight)| {
                let quota: QuotaKey = ("aws".into(), "r1".into());
                Inputs {
                    domains: domains[..2].iter().map(|s| s.to_string()).collect(),
                    slices: BTreeMap::from([(quota.clone(), slice)]),
                    in_flight: BTreeMap::from([(quota, in_flight)]),
                    machines: machines
                        .into_iter()
                        .enumerate()
                        .map(|(i, (d, cpu, a))| Machine {
                            id: format!("m{i}"),
                            domain: domains
                                .get(d)
                                .copied()
                                .unwrap_or("zone=az-z/rack=0")
                                .to_string(),
                            resources: res(cpu),
                            quota: Some(("aws".into(), "r1".into())),
                            assigned_to: a.map(|n| format!("n{n}")),
                        })
                        .collect(),
                    needs: needs
                        .into_iter()
                        .enumerate()
                        .map(|(i, (count, cpu, priority, p))| {
                            let placement = match p {
                                0 => Placement::Az("az-a".into()),
                                1 => Placement::Domain(domains[1].into()),
                                2 => Placement::Az("az-c".into()),
                                _ => Placement::Any,
                            };
                            need(&format!("n{i}"), count, cpu, priority, placement)
                        })
                        .collect(),
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn invariants_hold(i in arb_inputs()) {
            let p = decide(&i);
            // Never exceed a slice: held + in flight + new <= slice, unless already over.
            for (quota, slice) in &i.slices {
                let held = i.machines.iter().filter(|m| m.quota.as_ref() == Some(quota)).count() as u64;
                let before = held + i.in_flight.get(quota).copied().unwrap_or(0);
                let new = p.provision.iter().filter(|x| &x.quota == quota).count() as u64;
                prop_assert!(new == 0 || before + new <= *slice);
            }
            // Never touch a machine outside the shard's domains, never provision outside them.
            let usable: BTreeSet<&str> = i.machines.iter()
                .filter(|m| i.domains.contains(&m.domain)).map(|m| m.id.as_str()).collect();
            for (m, _) in &p.assign { prop_assert!(usable.contains(m.as_str())); }
            for (m, _, _) in &p.preempt { prop_assert!(usable.contains(m.as_str())); }
            for x in &p.provision { prop_assert!(i.domains.contains(&x.domain)); }
            // Never double-assign: each machine moves at most once per cycle.
            let mut moved = BTreeSet::new();
            for (m, _) in &p.assign { prop_assert!(moved.insert(m.clone())); }
            for (m, _, _) in &p.preempt { prop_assert!(moved.insert(m.clone())); }
            // Each need gets at most its count (kept + assigned + preempted + provisioned).
            for n in &i.needs {
                let kept = i.machines.iter().filter(|m| usable.contains(m.id.as_str())
                    && m.assigned_to.as_deref() == Some(n.id.as_str())
                    && !p.release.contains(&m.id)
                    && !p.preempt.iter().any(|(id, _, _)| id == &m.id)).count();
                let got = p.assign.iter().filter(|(_, x)| x == &n.id).count()
                    + p.preempt.iter().filter(|(_, _, x)| x == &n.id).count()
                    + p.provision.iter().filter(|x| x.need == n.id).count();
                prop_assert!(kept + got <= n.count as usize, "need {} over-served", n.id);
            }
            // Deterministic.
            prop_assert_eq!(decide(&i), p);
        }
    }
}
