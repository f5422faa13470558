//! Shard engine benchmark: decision time for a large shard (default 500K machines, 50K demand
//! rows), cold (every machine idle) and steady (assignments in place, 1% of demand changing
//! each cycle).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ballast_shard::engine::{Inputs, Machine, Need, Placement, Resources, decide};

use crate::stats::{Summary, ms};

/// Flags of `ballast-bench engine`.
#[derive(clap::Args, Debug)]
pub struct EngineBenchArgs {
    /// Machines in the ledger.
    #[arg(long, default_value_t = 500_000)]
    machines: usize,
    /// Demand rows.
    #[arg(long, default_value_t = 50_000)]
    rows: usize,
    /// Domains the shard owns.
    #[arg(long, default_value_t = 1_000)]
    domains: usize,
    /// Steady-state cycles to time.
    #[arg(long, default_value_t = 30)]
    cycles: usize,
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks-shard.md")]
    pub out: std::path::PathBuf,
}

fn resources(n: usize) -> Resources {
    // Three machine shapes.
    let size = [2_000u64, 8_000, 32_000][n % 3];
    Resources {
        cpu_millis: size,
        memory_mib: size * 4,
        gpus: u32::from(n.is_multiple_of(10)),
    }
}

fn setup(args: &EngineBenchArgs) -> Inputs {
    let domains: Vec<String> = (0..args.domains)
        .map(|d| {
            format!(
                "topology.kubernetes.io/zone=az-{}/rack=r{d:05}",
                ["a", "b", "c"][d % 3]
            )
        })
        .collect();
    let machines = (0..args.machines)
        .map(|n| Machine {
            id: format!("m{n:07}"),
            domain: domains[n % domains.len()].clone(),
            resources: resources(n),
            quota: Some(("aws".into(), "us-east-1".into())),
            assigned_to: None,
        })
        .collect();
    // Rows ask for 1..=16 machines each; together about 85% of the fleet.
    let per_row = ((args.machines as f64 * 0.85) / args.rows as f64).max(1.0);
    let needs = (0..args.rows)
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
            args.machines as u64 + 10_000,
        )]),
        machines,
        needs,
        in_flight: BTreeMap::new(),
    }
}

/// Applies a plan's assignment changes to the inputs (what the run loop persists).
fn apply(inputs: &mut Inputs, plan: &ballast_shard::engine::Plan) {
    let mut index: std::collections::HashMap<String, usize> = inputs
        .machines
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.clone(), i))
        .collect();
    let mut set = |id: &str, need: Option<String>| {
        if let Some(i) = index.get_mut(id) {
            inputs.machines[*i].assigned_to = need;
        }
    };
    for id in &plan.release {
        set(id, None);
    }
    for (id, need) in &plan.assign {
        set(id, Some(need.clone()));
    }
    for (id, _, need) in &plan.preempt {
        set(id, Some(need.clone()));
    }
}

/// Fills a shard cache with `inputs`' domains, machines (as assigned by the steady cycles) and
/// demand, then times a cold start of the worker from it — journal recovery included, as after
/// a SIGKILL — with no coordinator reachable, until its first decision is made and persisted.
async fn cold_restart(inputs: &Inputs) -> anyhow::Result<Duration> {
    use ballast_protocol::pb;
    use ballast_shard::cache::{Assignments, Cache};
    use ballast_shard::provider::SimulatedConfig;
    use ballast_shard::worker::{WorkerConfig, start};

    let dir = std::env::temp_dir().join(format!("ballast-bench-shard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let cache = Cache::open(&dir, "s1")?;
        let mut held = Assignments::default();
        held.apply(&pb::AssignmentUpdate {
            revision: 1,
            term: 1,
            full: true,
            domains_added: inputs.domains.iter().cloned().collect(),
            status: "active".into(),
            ..Default::default()
        });
        cache.store(&Assignments::default(), &held)?;
        for chunk in inputs.machines.chunks(50_000) {
            let records: Vec<&Machine> = chunk.iter().collect();
            cache.store_machines(&records, &[])?;
        }
        let mut by_cluster: BTreeMap<&str, Vec<Need>> = BTreeMap::new();
        for need in &inputs.needs {
            by_cluster
                .entry(&need.cluster)
                .or_default()
                .push(need.clone());
        }
        for (cluster, rows) in by_cluster {
            cache.store_demand(cluster, &rows)?;
        }
    }
    let started = Instant::now();
    let running = start(WorkerConfig {
        id: "s1".into(),
        az: "az-a".into(),
        coordinators: vec!["127.0.0.1:1".into()],
        data_dir: dir.clone(),
        listen: "127.0.0.1:0".parse()?,
        advertise: None,
        lease_ttl: Duration::from_secs(10),
        heartbeat: Duration::from_secs(3),
        cycle: Duration::from_millis(10),
        provider: SimulatedConfig::default(),
    })
    .await?;
    while running.worker.cycles() == 0 {
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("no decision within 120 s of a cold start");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(elapsed)
}

/// Runs the benchmark and returns a markdown section.
pub async fn run(args: EngineBenchArgs) -> anyhow::Result<String> {
    let mut inputs = setup(&args);
    let started = Instant::now();
    let plan = decide(&inputs);
    let cold = started.elapsed();
    eprintln!(
        "cold cycle: {} ms, {} assigned, {} provisions, {} shortfalls",
        ms(cold),
        plan.assign.len(),
        plan.provision.len(),
        plan.shortfalls.len()
    );
    apply(&mut inputs, &plan);
    let mut samples: Vec<Duration> = Vec::new();
    for cycle in 0..args.cycles {
        // 1% of rows change their count every cycle (full-replacement demand churn).
        let step = (inputs.needs.len() / 100).max(1);
        for row in inputs.needs.iter_mut().skip(cycle % step).step_by(100) {
            row.count = (row.count + 1) % 17;
        }
        let started = Instant::now();
        let plan = decide(&inputs);
        samples.push(started.elapsed());
        apply(&mut inputs, &plan);
    }
    let steady = Summary::of(&mut samples);
    eprintln!(
        "cold restart from a cache of {} machines",
        inputs.machines.len()
    );
    let restart = cold_restart(&inputs).await?;
    let mut out = String::new();
    writeln!(out, "# Shard benchmarks\n")?;
    writeln!(
        out,
        "Machine: {}. Coordinator figures are in `benchmarks.md`.\n",
        crate::stats::machine()
    )?;
    writeln!(out, "## Engine decision time\n")?;
    writeln!(
        out,
        "`cargo run --release -p ballast-bench -- engine`: one shard with {} machines in {} domains \
         (3 AZs, 3 shapes) and {} demand rows (a quarter AZ-constrained, 5 priorities); pure \
         `decide()` on one core, no I/O.\n",
        args.machines, args.domains, args.rows
    )?;
    writeln!(out, "| cycle | count | p50 ms | p99 ms | max ms |")?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    writeln!(
        out,
        "| cold (all machines idle) | 1 | {} | {} | {} |",
        ms(cold),
        ms(cold),
        ms(cold)
    )?;
    writeln!(
        out,
        "| steady (1% of rows change per cycle) | {} | {} | {} | {} |",
        steady.count,
        ms(steady.p50),
        ms(steady.p99),
        ms(steady.max)
    )?;
    writeln!(
        out,
        "\nShard cold restart from its cache ({} machines, {} domains) with no coordinator \
         reachable, until its first decision (10 ms cycle): {} ms.",
        inputs.machines.len(),
        inputs.domains.len(),
        ms(restart)
    )?;
    Ok(out)
}
