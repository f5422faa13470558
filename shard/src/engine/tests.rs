use super::*;
use std::collections::{BTreeMap, BTreeSet};

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
fn only_a_shortfall_that_found_every_slice_full_asks_for_more_slice() {
    let mut i = inputs();
    i.machines = vec![machine("m1", "zone=az-a/rack=1", 4, None)];
    i.needs = vec![need("n1", 5, 2, 0, Placement::Any)];
    let mut engine = Engine::from_inputs(&i);
    let full = engine.decide();
    assert_eq!(full.quota_short, 1, "a slice of 4 leaves one of five short");
    assert_eq!(
        engine.quota_uses(),
        vec![(("aws".into(), "r1".into()), (1, 3, 4))],
        "slice 4, one machine held and three in flight"
    );
    // No domain in az-c: a larger slice would not help.
    let mut i = inputs();
    i.needs = vec![need("n1", 2, 1, 0, Placement::Az("az-c".into()))];
    assert_eq!(decide(&i).quota_short, 0);
    assert_eq!(decide(&i).shortfalls.len(), 1);
    // Paused by a provider's backoff: not the slice's fault either.
    let mut i = inputs();
    i.needs = vec![need("n1", 9, 1, 0, Placement::Any)];
    let mut engine = Engine::from_inputs(&i);
    engine.pause_provisioning(true);
    assert_eq!(engine.decide().quota_short, 0);
    engine.pause_provisioning(false);
    assert_eq!(engine.decide().quota_short, 5, "9 wanted, 4 started");
    // Nor while the provider refuses the slice table the shard holds.
    let mut engine = Engine::from_inputs(&i);
    engine.block_quotas(&BTreeSet::from([("aws".to_string(), "r1".to_string())]));
    assert_eq!(engine.decide().quota_short, 0);
}

#[test]
fn each_clusters_demand_is_the_sum_of_its_rows_as_they_change() {
    let mut i = inputs();
    let mut other = need("n3", 4, 1, 0, Placement::Any);
    other.cluster = "c2".into();
    i.needs = vec![
        need("n1", 5, 2, 0, Placement::Any),
        need("n2", 2, 1, 0, Placement::Any),
        other,
    ];
    let mut engine = Engine::from_inputs(&i);
    assert_eq!(
        engine.cluster_demands(),
        vec![("c1".to_string(), 7), ("c2".to_string(), 4)]
    );
    engine.set_demand("c1", vec![need("n1", 1, 2, 0, Placement::Any)]);
    engine.set_demand("c2", Vec::new());
    assert_eq!(engine.cluster_demands(), vec![("c1".to_string(), 1)]);
}

#[test]
fn paused_provisioning_reports_shortfalls_and_resumes() {
    let mut i = inputs();
    i.needs = vec![need("n1", 2, 1, 0, Placement::Any)];
    let mut engine = Engine::from_inputs(&i);
    engine.pause_provisioning(true);
    let paused = engine.decide();
    assert!(paused.provision.is_empty());
    assert_eq!(paused.shortfalls.len(), 1);
    engine.pause_provisioning(false);
    let resumed = engine.decide();
    assert_eq!(resumed.provision.len(), 2, "the short need is retried");
    assert!(resumed.shortfalls.is_empty());
    assert!(
        engine.decide().provision.is_empty(),
        "in-flight provisions serve the need"
    );
}

#[test]
fn a_need_placed_anywhere_takes_the_smallest_fitting_machines_of_every_az() {
    let mut i = inputs();
    i.slices.clear();
    i.machines = vec![
        machine("a8", "zone=az-a/rack=1", 8, None),
        machine("a2", "zone=az-a/rack=1", 2, None),
        machine("b4", "zone=az-b/rack=1", 4, None),
        machine("b1", "zone=az-b/rack=1", 1, None),
    ];
    i.needs = vec![need("n1", 2, 2, 0, Placement::Any)];
    let p = decide(&i);
    assert_eq!(
        p.assign,
        vec![("a2".into(), "n1".into()), ("b4".into(), "n1".into())],
        "the 1-CPU machine does not fit and the 8-CPU one stays for bigger needs"
    );
}

#[test]
fn a_need_placed_anywhere_preempts_the_cheapest_work_of_every_az() {
    let mut i = inputs();
    i.slices.clear();
    i.machines = vec![
        machine("a1", "zone=az-a/rack=1", 4, Some("p3")),
        machine("b1", "zone=az-b/rack=1", 4, Some("p1")),
        machine("b2", "zone=az-b/rack=1", 4, Some("p2")),
    ];
    i.needs = vec![
        need("p1", 1, 1, 1, Placement::Any),
        need("p2", 1, 1, 2, Placement::Any),
        need("p3", 1, 1, 3, Placement::Any),
        need("high", 2, 1, 10, Placement::Any),
    ];
    let p = decide(&i);
    let taken: Vec<(&str, &str)> = p
        .preempt
        .iter()
        .map(|(m, from, _)| (m.as_str(), from.as_str()))
        .collect();
    assert_eq!(taken, vec![("b1", "p1"), ("b2", "p2")]);
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
    // The need that lost a machine looks for a replacement in the same cycle and finds none.
    assert_eq!(
        p.shortfalls,
        vec![Shortfall {
            need: "low".into(),
            missing: 1
        }]
    );
}

#[test]
fn placement_is_respected_and_machines_in_lost_domains_keep_serving() {
    let mut i = inputs();
    i.machines = vec![
        machine("m1", "zone=az-a/rack=1", 4, None),
        machine("kept", "zone=az-c/rack=9", 4, Some("n0")),
    ];
    i.needs = vec![
        need("n0", 1, 1, 0, Placement::Any),
        need("n1", 1, 1, 0, Placement::Az("az-b".into())),
    ];
    let p = decide(&i);
    // A domain the shard no longer owns is where it may not create; its machine there keeps
    // serving its need (ADR 0016).
    assert!(p.release.is_empty(), "{:?}", p.release);
    assert!(p.assign.is_empty(), "m1 is in az-a");
    assert_eq!(p.provision.len(), 1);
    assert_eq!(p.provision[0].domain, "zone=az-b/rack=1");
    let mut impossible = inputs();
    impossible.needs = vec![need("n2", 1, 1, 0, Placement::Domain("zone=az-z".into()))];
    assert_eq!(decide(&impossible).shortfalls.len(), 1);
}

#[test]
fn machines_adopted_with_their_cluster_wait_for_its_demand_and_serve_it_first() {
    // Three machines adopted with cluster c1 (the provider knows the cluster, not the row),
    // one idle machine of the shard's own, and no demand for c1 yet.
    let mut i = inputs();
    i.machines = vec![
        machine("a1", "zone=az-a/rack=1", 4, Some("c1/")),
        machine("a2", "zone=az-c/rack=9", 4, Some("c1/")),
        machine("a3", "zone=az-a/rack=1", 4, Some("c1/")),
        machine("own", "zone=az-a/rack=1", 4, None),
    ];
    let mut engine = Engine::from_inputs(&i);
    let waiting = engine.decide();
    assert!(
        waiting.release.is_empty() && waiting.assign.is_empty(),
        "no demand yet: they wait, at work for c1: {waiting:?}"
    );
    assert_eq!(engine.counts().assigned, 3);
    assert_eq!(engine.check(), Ok(()));
    // c1's demand follows the cluster: two rows. The adopted machines serve them before the
    // idle one, wherever their domain; the third is surplus to c1 and goes idle.
    engine.set_demand(
        "c1",
        vec![
            Need {
                id: "c1/web".into(),
                ..need("c1/web", 1, 1, 0, Placement::Any)
            },
            Need {
                id: "c1/db".into(),
                ..need("c1/db", 1, 1, 0, Placement::Any)
            },
        ],
    );
    let served = engine.decide();
    assert!(served.provision.is_empty(), "{served:?}");
    let mut held: Vec<String> = engine.allocations("c1").into_iter().map(|m| m.id).collect();
    held.sort();
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(!held.contains(&"own".to_string()), "{held:?}");
    assert_eq!(engine.check(), Ok(()));
    // A claim on a cluster that has demand but no open row is released like any other.
    assert_eq!(served.release.len(), 1, "{served:?}");
}

#[test]
fn adopted_machines_find_the_rows_they_served() {
    // The provider knows the cluster, not the row: a big machine must go back to the big row,
    // not to the first row it fits, or the big row provisions while a small machine idles.
    let mut i = inputs();
    i.machines = vec![
        machine("big", "zone=az-a/rack=1", 8, Some("c1/")),
        machine("small", "zone=az-a/rack=1", 2, Some("c1/")),
    ];
    let mut engine = Engine::from_inputs(&i);
    engine.set_demand(
        "c1",
        vec![
            need("c1/small", 1, 2, 0, Placement::Any),
            need("c1/big", 1, 8, 0, Placement::Any),
        ],
    );
    let plan = engine.decide();
    assert!(
        plan.provision.is_empty() && plan.release.is_empty() && plan.shortfalls.is_empty(),
        "{plan:?}"
    );
    let holder = |id: &str| engine.machine(id).and_then(|m| m.assigned_to);
    assert_eq!(holder("big").as_deref(), Some("c1/big"));
    assert_eq!(holder("small").as_deref(), Some("c1/small"));
}

#[test]
fn a_cluster_being_adopted_waits_for_its_machines_instead_of_making_others() {
    let mut i = inputs();
    i.machines = vec![machine("own", "zone=az-a/rack=1", 4, None)];
    let mut engine = Engine::from_inputs(&i);
    engine.await_adoption("c1", true);
    // The demand arrives before the adopted machines: nothing is taken or made for it.
    engine.set_demand("c1", vec![need("c1/web", 2, 1, 0, Placement::Any)]);
    let waiting = engine.decide();
    assert!(
        waiting.assign.is_empty() && waiting.provision.is_empty(),
        "{waiting:?}"
    );
    assert_eq!(waiting.shortfalls.len(), 1);
    // The adopted machines arrive, claimed by the cluster, and take the rows.
    for id in ["a1", "a2"] {
        engine.upsert_machine(&machine(id, "zone=az-b/rack=1", 4, Some("c1/")));
    }
    engine.await_adoption("c1", false);
    let served = engine.decide();
    assert!(
        served.provision.is_empty() && served.release.is_empty(),
        "{served:?}"
    );
    let mut held: Vec<String> = engine.allocations("c1").into_iter().map(|m| m.id).collect();
    held.sort();
    assert_eq!(held, ["a1", "a2"]);
    assert_eq!(engine.check(), Ok(()));
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

#[test]
fn idle_machines_above_a_shrunken_slice_go_back_to_the_provider() {
    let mut i = inputs();
    i.machines = vec![
        machine("busy1", "zone=az-a/rack=1", 4, Some("n1")),
        machine("busy2", "zone=az-a/rack=1", 4, Some("n1")),
        machine("idle1", "zone=az-a/rack=1", 4, None),
        machine("idle2", "zone=az-b/rack=1", 4, None),
        machine("away", "zone=az-z/rack=9", 4, None),
    ];
    i.needs = vec![need("n1", 2, 1, 0, Placement::Any)];
    let mut engine = Engine::from_inputs(&i);
    // A machine in a domain the shard no longer owns is still its own and counts.
    assert_eq!(
        engine.decide().surplus.len(),
        1,
        "5 held, slice 4: one idle machine goes back"
    );
    engine.set_slices(&BTreeMap::from([(quota(), 2)]));
    let plan = engine.decide();
    let mut surplus = plan.surplus.clone();
    surplus.sort();
    assert_eq!(
        surplus,
        vec!["away".to_string(), "idle1".to_string(), "idle2".to_string()],
        "idle machines go, wherever their domain; busy ones stay"
    );
    assert_eq!(engine.check(), Ok(()));
    assert_eq!(engine.above_slices(), 3, "5 held against a slice of 2");
    assert_eq!(engine.decide().surplus, plan.surplus, "listed until gone");
    // Set aside means out of reach of needs.
    engine.set_demand("c1", vec![need("n1", 4, 1, 0, Placement::Any)]);
    let grown = engine.decide();
    assert!(grown.assign.is_empty() && grown.provision.is_empty());
    for id in &plan.surplus {
        engine.remove_machine(id);
    }
    assert!(engine.decide().surplus.is_empty());
    assert_eq!(engine.check(), Ok(()));
    // Work letting go brings no more returns once the shard is within its slice.
    engine.set_slices(&BTreeMap::from([(quota(), 1)]));
    engine.set_demand("c1", vec![need("n1", 0, 1, 0, Placement::Any)]);
    let after = engine.decide();
    assert_eq!(
        after.surplus.len(),
        1,
        "one of the two released busy machines"
    );
    assert_eq!(engine.check(), Ok(()));
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
                in_flight: (0..in_flight)
                    .map(|k| Provision {
                        need: format!("n{k}"),
                        domain: domains[0].into(),
                        quota: quota.clone(),
                        resources: res(1),
                    })
                    .collect(),
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
            let before = held + i.in_flight.iter().filter(|p| &p.quota == quota).count() as u64;
            let new = p.provision.iter().filter(|x| &x.quota == quota).count() as u64;
            prop_assert!(new == 0 || before + new <= *slice);
        }
        // Use only machines the shard holds (wherever their domain went: ADR 0016), never
        // provision outside its domains.
        let usable: BTreeSet<&str> = i.machines.iter().map(|m| m.id.as_str()).collect();
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
            let in_flight = i.in_flight.iter().filter(|p| p.need == n.id).count();
            prop_assert!(
                kept + got == 0 || kept + got + in_flight <= n.count as usize,
                "need {} over-served", n.id
            );
        }
        // Deterministic.
        prop_assert_eq!(decide(&i), p);
    }
}

/// One change fed to a live engine.
#[derive(Clone, Debug)]
enum Op {
    Domains(u8),
    Slice(u64),
    Upsert(usize, usize, u64, Option<usize>),
    Remove(usize),
    Demand(usize, Vec<(usize, u32, u64, i32, usize)>),
    Finish(bool),
    /// The provider took back what the last decision set aside as surplus.
    Returned,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..8u8).prop_map(Op::Domains),
        (0..12u64).prop_map(Op::Slice),
        (0..14usize, 0..4usize, 1..8u64, prop::option::of(0..9usize))
            .prop_map(|(m, d, cpu, a)| Op::Upsert(m, d, cpu, a)),
        (0..14usize).prop_map(Op::Remove),
        (
            0..3usize,
            prop::collection::vec((0..3usize, 0..5u32, 1..8u64, -2..3i32, 0..5usize), 0..4)
        )
            .prop_map(|(c, rows)| Op::Demand(c, rows)),
        any::<bool>().prop_map(Op::Finish),
        Just(Op::Returned),
    ]
}

const DOMAINS: [&str; 4] = [
    "zone=az-a/rack=1",
    "zone=az-b/rack=1",
    "zone=az-a/rack=2",
    "zone=az-z/rack=0",
];

fn quota() -> QuotaKey {
    ("aws".into(), "r1".into())
}

fn apply_op(
    engine: &mut Engine,
    op: &Op,
    in_flight: &mut Vec<Provision>,
    made: &mut usize,
    surplus: &[String],
) {
    match op {
        Op::Returned => {
            for id in surplus {
                engine.remove_machine(id);
            }
        }
        Op::Domains(mask) => engine.set_domains(
            &(0..3)
                .filter(|d| mask & (1 << d) != 0)
                .map(|d| DOMAINS[d].to_string())
                .collect(),
        ),
        Op::Slice(n) => engine.set_slices(&BTreeMap::from([(quota(), *n)])),
        Op::Upsert(m, d, cpu, a) => engine.upsert_machine(&Machine {
            id: format!("m{m}"),
            domain: DOMAINS[*d].into(),
            resources: res(*cpu),
            quota: Some(quota()),
            assigned_to: a.map(|a| format!("c{}/r{}", a / 3, a % 3)),
        }),
        Op::Remove(m) => {
            engine.remove_machine(&format!("m{m}"));
        }
        Op::Demand(c, rows) => {
            let mut seen = BTreeSet::new();
            let rows = rows
                .iter()
                .filter(|(r, ..)| seen.insert(*r))
                .map(|(r, count, cpu, priority, p)| Need {
                    id: format!("c{c}/r{r}"),
                    cluster: format!("c{c}"),
                    count: *count,
                    resources: res(*cpu),
                    priority: *priority,
                    placement: match p {
                        0 => Placement::Az("az-a".into()),
                        1 => Placement::Domain(DOMAINS[1].into()),
                        2 => Placement::Domain(DOMAINS[3].into()),
                        _ => Placement::Any,
                    },
                })
                .collect();
            engine.set_demand(&format!("c{c}"), rows);
        }
        Op::Finish(ok) => {
            if in_flight.is_empty() {
                return;
            }
            let provision = in_flight.remove(0);
            *made += 1;
            let machine = ok.then(|| Machine {
                id: format!("p{made}"),
                domain: provision.domain.clone(),
                resources: provision.resources,
                quota: Some(provision.quota.clone()),
                assigned_to: Some(provision.need.clone()),
            });
            engine.provision_finished(&provision, machine.as_ref());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A live engine fed any sequence of changes keeps its indexes consistent, never
    /// over-serves a need or overruns a slice, and leaves no short need with a fitting idle
    /// machine.
    #[test]
    fn live_engine_stays_consistent(ops in prop::collection::vec(arb_op(), 1..40)) {
        let mut engine = Engine::default();
        let mut in_flight = Vec::new();
        let mut made = 0;
        let mut surplus = Vec::new();
        for op in &ops {
            apply_op(&mut engine, op, &mut in_flight, &mut made, &surplus);
            let plan = engine.decide();
            surplus = plan.surplus.clone();
            if let Err(e) = engine.check() {
                prop_assert!(false, "after {op:?}: {e}");
            }
            prop_assert_eq!(engine.idle_fits_a_short_need(), None);
            // Every need left short is reported short.
            let mut reported: Vec<(String, u32)> =
                plan.shortfalls.iter().map(|s| (s.need.clone(), s.missing)).collect();
            reported.sort();
            prop_assert_eq!(engine.unserved(), reported, "after {:?}", op);
            // Over its slice, the shard keeps no idle machine it could give back.
            let (held, flying, slice) = engine.quota_use(&quota());
            let counts = engine.counts();
            if held + flying > slice + plan.surplus.len() as u64 {
                prop_assert_eq!(counts.idle, plan.surplus.len() as u64, "idle machines kept over the slice");
            }
            prop_assert!(plan.surplus.len() as u64 <= counts.idle);
            if !plan.provision.is_empty() {
                let (held, flying, slice) = engine.quota_use(&quota());
                prop_assert!(held + flying <= slice, "slice overrun: {held}+{flying} > {slice}");
            }
            let mut moved = BTreeSet::new();
            for (m, _) in &plan.assign { prop_assert!(moved.insert(m.clone())); }
            for (m, _, _) in &plan.preempt { prop_assert!(moved.insert(m.clone())); }
            in_flight.extend(plan.provision);
            prop_assert_eq!(engine.in_flight(), in_flight.len() as u64);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Loading a ledger in bulk builds the same engine as upserting it record by record.
    #[test]
    fn bulk_load_matches_one_by_one(i in arb_inputs()) {
        let mut one_by_one = Engine::from_inputs(&Inputs { machines: Vec::new(), ..i.clone() });
        let mut bulk = Engine::from_inputs(&Inputs { machines: Vec::new(), ..i.clone() });
        for m in &i.machines {
            one_by_one.upsert_machine(m);
        }
        bulk.bulk_load::<()>(i.machines.len(), |upsert| {
            for m in &i.machines {
                upsert(m.view());
            }
            Ok(())
        }).expect("load");
        prop_assert_eq!(bulk.check(), Ok(()));
        prop_assert_eq!(bulk.counts(), one_by_one.counts());
        prop_assert_eq!(bulk.decide(), one_by_one.decide());
    }
}
