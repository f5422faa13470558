//! The shard fleet the engine benchmarks run on, shared by `ballast-bench engine` and the
//! criterion engine-cycle bench (which includes this file).

use std::collections::{BTreeMap, BTreeSet};

use ballast_shard::engine::{Inputs, Machine, Need, Placement, Resources};

fn resources(n: usize) -> Resources {
    // Three machine shapes.
    let size = [2_000u64, 8_000, 32_000][n % 3];
    Resources {
        cpu_millis: size,
        memory_mib: size * 4,
        gpus: u32::from(n.is_multiple_of(10)),
    }
}

/// One shard's fleet: `machines` machines over `domains` domains in 3 AZs (3 machine shapes,
/// one quota with room for 10,000 more) and `rows` demand rows (3 shapes, a quarter
/// AZ-constrained, 5 priorities) asking for `demand` times the fleet, every machine idle.
pub fn fleet(machines: usize, rows: usize, domains: usize, demand: f64) -> Inputs {
    let domains: Vec<String> = (0..domains)
        .map(|d| {
            format!(
                "topology.kubernetes.io/zone=az-{}/rack=r{d:05}",
                ["a", "b", "c"][d % 3]
            )
        })
        .collect();
    let fleet = (0..machines)
        .map(|n| Machine {
            id: format!("m{n:07}"),
            domain: domains[n % domains.len()].clone(),
            resources: resources(n),
            quota: Some(("aws".into(), "us-east-1".into())),
            assigned_to: None,
        })
        .collect();
    // Rows ask for 1..=16 machines each; together `demand` times the fleet.
    let per_row = ((machines as f64 * demand) / rows as f64).max(1.0);
    let needs = (0..rows)
        .map(|n| Need {
            id: format!("c{:05}/r{n}", n / 10),
            cluster: format!("c{:05}", n / 10),
            count: ((n % 16) as f64 / 8.0 * per_row).max(1.0) as u32,
            resources: Resources {
                cpu_millis: [1_000u64, 4_000, 16_000][n % 3],
                memory_mib: [4_000u64, 16_000, 64_000][n % 3],
                gpus: 0,
            },
            priority: (n % 5) as i32,
            placement: match n % 4 {
                0 => Placement::Az(["az-a", "az-b", "az-c"][n % 3].into()),
                _ => Placement::Any,
            },
        })
        .collect();
    Inputs {
        domains: domains.into_iter().collect::<BTreeSet<_>>(),
        slices: BTreeMap::from([(
            ("aws".to_string(), "us-east-1".to_string()),
            machines as u64 + 10_000,
        )]),
        machines: fleet,
        needs,
        in_flight: Vec::new(),
    }
}

/// A steady cycle's demand change: 1% of the rows (a different 1% each `cycle`) change their
/// count, and each changed cluster sends its full demand again (full replacement), as
/// clusters do through the demand API.
pub fn change_demand(inputs: &mut Inputs, cycle: usize) -> Vec<(String, Vec<Need>)> {
    let step = (inputs.needs.len() / 100).max(1);
    let mut clusters = BTreeSet::new();
    for row in inputs.needs.iter_mut().skip(cycle % step).step_by(100) {
        row.count = (row.count + 1) % 17;
        clusters.insert(row.cluster.clone());
    }
    let by_cluster = inputs.demand_by_cluster();
    clusters
        .into_iter()
        .map(|c| {
            let rows = by_cluster.get(c.as_str()).cloned().unwrap_or_default();
            (c, rows)
        })
        .collect()
}
