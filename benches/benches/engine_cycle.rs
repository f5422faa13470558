//! Micro-benchmark of the shard engine's steady decision cycle at 500K machines and 50K demand
//! rows: 1% of the rows change, the changed clusters' demand goes to the live engine, and it
//! decides. Run with `cargo bench -p ballast-bench --bench engine_cycle`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ballast_shard::engine::Engine;
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../src/engine_fleet.rs"]
mod engine_fleet;

fn benches(c: &mut Criterion) {
    for (name, demand) in [("76% of the fleet", 0.85), ("113% of the fleet", 1.25)] {
        let mut inputs = engine_fleet::fleet(500_000, 50_000, 1_000, demand);
        let mut engine = Engine::from_inputs(&inputs);
        engine.decide();
        let mut cycle = 0;
        c.bench_function(&format!("engine: steady cycle, demand {name}"), |b| {
            // Each cycle's demand change is made outside the timed part, as in the macro bench.
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    cycle += 1;
                    let demand = engine_fleet::change_demand(&mut inputs, cycle);
                    let started = Instant::now();
                    for (cluster, rows) in demand {
                        engine.set_demand(&cluster, rows);
                    }
                    black_box(engine.decide().assign.len());
                    timed += started.elapsed();
                }
                timed
            })
        });
    }
}

criterion_group! {
    name = engine_cycle;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(engine_cycle);
