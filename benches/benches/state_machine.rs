//! Micro-benchmarks of the fleet state machine: applying commands and encoding snapshots.
//! Run with `cargo bench -p ballast-bench`.

use std::hint::black_box;

use ballast_coordinator::fleet::{FleetCommand, FleetState};
use ballast_coordinator::history::History;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn shard(i: usize) -> String {
    format!("shard-{i:03}")
}

/// A state like a 100M-machine fleet's: 200 shards, 100K domains, 20K bindings.
fn loaded_state() -> FleetState {
    let mut state = FleetState::new();
    let mut commands = Vec::new();
    for i in 0..200 {
        commands.push(FleetCommand::RegisterShard {
            id: shard(i),
            address: format!("10.0.0.{}:7800", i % 250),
            az: format!("az-{}", ["a", "b", "c"][i % 3]),
            now_ms: 0,
            lease_ttl_ms: 10_000,
        });
    }
    state
        .apply(&FleetCommand::Batch { commands })
        .expect("registering shards");
    for chunk in 0..10 {
        let assignments = (chunk * 10_000..(chunk + 1) * 10_000)
            .map(|n| {
                (
                    format!(
                        "topology.kubernetes.io/zone=az-{}/rack=r{n:06}",
                        ["a", "b", "c"][n % 3]
                    ),
                    shard(n % 200),
                )
            })
            .collect();
        state
            .apply(&FleetCommand::AssignDomains {
                assignments,
                allow_move: false,
            })
            .expect("assigning domains");
    }
    let commands = (0..20_000)
        .map(|n| FleetCommand::BindCluster {
            cluster: format!("cluster-{n:06}"),
            shard: shard(n % 200),
        })
        .collect();
    state
        .apply(&FleetCommand::Batch { commands })
        .expect("binding clusters");
    state
}

fn benches(c: &mut Criterion) {
    let state = loaded_state();
    let mut n = 0u64;
    c.bench_function("apply: assign one domain (100K-domain state)", |b| {
        let mut state = state.clone();
        b.iter(|| {
            n += 1;
            let cmd = FleetCommand::AssignDomains {
                assignments: vec![(format!("zone=bench/rack=n{n}"), shard(0))],
                allow_move: false,
            };
            black_box(state.apply_request(Some(&format!("req-{n}")), &cmd).ok());
        })
    });
    c.bench_function("apply: move 10K domains in one batch", |b| {
        b.iter_batched(
            || state.clone(),
            |mut state| {
                let assignments = (0..10_000)
                    .map(|n| {
                        (
                            format!(
                                "topology.kubernetes.io/zone=az-{}/rack=r{n:06}",
                                ["a", "b", "c"][n % 3]
                            ),
                            shard((n + 1) % 200),
                        )
                    })
                    .collect();
                black_box(
                    state
                        .apply(&FleetCommand::AssignDomains {
                            assignments,
                            allow_move: true,
                        })
                        .ok(),
                );
            },
            BatchSize::LargeInput,
        )
    });
    c.bench_function("history: record a batch of 10K domain moves", |b| {
        // What a replica does after applying a rebalance: the batch's changes go into the
        // history, which is full and evicts as many.
        let (_, changes) = state
            .clone()
            .apply_tracked(&FleetCommand::AssignDomains {
                assignments: (0..10_000)
                    .map(|n| {
                        (
                            format!(
                                "topology.kubernetes.io/zone=az-{}/rack=r{n:06}",
                                ["a", "b", "c"][n % 3]
                            ),
                            shard((n + 1) % 200),
                        )
                    })
                    .collect(),
                allow_move: true,
            })
            .expect("moving domains");
        let mut history = History::starting_at(0);
        let mut revision = 0;
        b.iter_batched(
            || changes.clone(),
            |changes| {
                revision += 1;
                history.push(revision, changes);
            },
            BatchSize::LargeInput,
        )
    });
    c.bench_function("snapshot: encode 100K-domain state", |b| {
        b.iter(|| black_box(state.encode().len()))
    });
    let encoded = state.encode();
    c.bench_function("snapshot: decode 100K-domain state", |b| {
        b.iter(|| black_box(FleetState::decode(&encoded).map(|s| s.revision()).ok()))
    });
}

criterion_group! {
    name = state_machine;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(state_machine);
