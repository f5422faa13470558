//! Shard engine benchmark: decision time for a large shard (default 500K machines, 50K demand
//! rows), cold (every machine idle) and steady (assignments in place, 1% of demand changing
//! each cycle, fed to the live engine the way the demand API does).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ballast_protocol::pb;
use ballast_shard::cache::{Assignments, Cache};
use ballast_shard::engine::{Engine, Inputs, Machine};

use crate::engine_fleet::{change_demand, fleet};

use crate::stats::{Summary, ms};

/// One shard's size at the target (500K machines, 50K demand rows, 1,000 domains): flags of
/// `ballast-bench engine` and `worker-cycle`.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ShardSize {
    /// Machines in the ledger (for `worker-cycle`: to provision; the demand asks for about
    /// this many).
    #[arg(long, default_value_t = 500_000)]
    pub machines: usize,
    /// Demand rows.
    #[arg(long, default_value_t = 50_000)]
    pub rows: usize,
    /// Domains the shard owns.
    #[arg(long, default_value_t = 1_000)]
    pub domains: usize,
}

/// Flags of `ballast-bench engine`.
#[derive(clap::Args, Debug)]
pub struct EngineBenchArgs {
    #[command(flatten)]
    size: ShardSize,
    /// Steady-state cycles to time.
    #[arg(long, default_value_t = 30)]
    cycles: usize,
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks-shard.md")]
    pub out: std::path::PathBuf,
}

/// A timed cold start: total to the first persisted decision, and its phases.
struct Restart {
    total: Duration,
    cache_open: Duration,
    engine_load: Duration,
}

/// A fresh directory for one cache. Each cache gets its own path: fjall's background flushes of
/// a dropped cache may still be writing, and a new cache at the same path would take their files.
pub(crate) fn cache_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ballast-bench-shard-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A shard cache in `dir` holding `inputs`' domains, machines and demand, written the way a
/// shard takes on a fleet: machines in batches of 50,000.
pub(crate) fn populate(dir: &std::path::Path, inputs: &Inputs) -> anyhow::Result<Cache> {
    let cache = Cache::open(dir, "s1")?;
    let demand = inputs.demand_by_cluster();
    let mut held = Assignments::default();
    held.apply(&pb::AssignmentUpdate {
        revision: 1,
        term: 1,
        full: true,
        domains_added: inputs.domains.iter().cloned().collect(),
        // The clusters whose demand the cache holds are bound here: a restarted shard serves
        // only the demand of its own clusters.
        clusters_added: demand.keys().map(|cluster| cluster.to_string()).collect(),
        // And the shard holds its slices: without them its idle machines would be surplus.
        slices: inputs
            .slices
            .iter()
            .map(|((provider, region), amount)| pb::QuotaSliceOf {
                provider: provider.clone(),
                region: region.clone(),
                amount: *amount,
                granted: 1,
            })
            .collect(),
        status: "active".into(),
        ..Default::default()
    });
    cache.store(&Assignments::default(), &held)?;
    for chunk in inputs.machines.chunks(50_000) {
        let records: Vec<&Machine> = chunk.iter().collect();
        cache.store_machines(&records, &[])?;
    }
    for (cluster, rows) in demand {
        cache.store_demand(cluster, &rows)?;
    }
    Ok(cache)
}

/// Times persisting one decision's machine changes into a full ledger: `batch` machines spread
/// over the ledger, each with its assignment changed, written and fsynced as a decision is.
fn persist_cost(inputs: &Inputs, batch: usize, rounds: usize) -> anyhow::Result<Summary> {
    let dir = cache_dir();
    let cache = populate(&dir, inputs)?;
    let stride = (inputs.machines.len() / batch.max(1)).max(1);
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let changed: Vec<Machine> = inputs
            .machines
            .iter()
            .skip(round % stride)
            .step_by(stride)
            .take(batch)
            .map(|m| Machine {
                assigned_to: Some(format!("bench/round-{round}")),
                ..m.clone()
            })
            .collect();
        let records: Vec<&Machine> = changed.iter().collect();
        let started = Instant::now();
        cache.store_machines(&records, &[])?;
        samples.push(started.elapsed());
    }
    drop(cache);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Summary::of(&mut samples))
}

/// Fills a shard cache with `inputs`' domains, machines (as assigned by the steady cycles) and
/// demand, then times a cold start of the worker from it with no coordinator reachable, until
/// its first decision is made and persisted. With `settled`, the writer lives on for a few
/// seconds first so fjall flushes its memtables, as in a shard that has been running for a
/// while; without, the start replays the whole ledger from the journal (killed right after
/// writing it).
async fn cold_restart(inputs: &Inputs, settled: bool) -> anyhow::Result<Restart> {
    use ballast_shard::provider::SimulatedConfig;
    use ballast_shard::worker::{WorkerConfig, start};

    let dir = cache_dir();
    {
        let _cache = populate(&dir, inputs)?;
        if settled {
            tokio::time::sleep(Duration::from_secs(5)).await;
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
        providers: vec![ballast_shard::worker::ProviderSpec {
            name: None,
            choice: ballast_shard::worker::ProviderChoice::Sim(SimulatedConfig::default()),
        }],
        provider_timeout: Duration::from_secs(10),
        http_listen: None,
        tls: None,
        http_open_probes: false,
    })
    .await?;
    while running.worker.cycles() == 0 {
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("no decision within 120 s of a cold start");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let total = started.elapsed();
    let startup = running.worker.startup();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Restart {
        total,
        cache_open: startup.cache_open,
        engine_load: startup.engine_load,
    })
}

/// Runs the benchmark and returns a markdown section.
/// What one demand scenario measured.
struct Scenario {
    name: String,
    loaded: Duration,
    cold: Duration,
    cold_plan: (usize, usize, usize),
    steady: Summary,
    /// Per steady cycle on average: assigned or preempted, released, provisions, shortfalls.
    per_cycle: [usize; 4],
}

/// Times one shard's engine: built from the ledger, a cold decision, then steady cycles with
/// 1% of the rows changing each cycle. Returns the figures and the ledger as the cycles left it.
fn scenario(args: &EngineBenchArgs, demand: f64) -> (Scenario, Inputs) {
    let mut inputs = fleet(
        args.size.machines,
        args.size.rows,
        args.size.domains,
        demand,
    );
    let asked: u64 = inputs.needs.iter().map(|n| u64::from(n.count)).sum();
    let name = format!(
        "demand {asked} machines ({:.0}% of the fleet)",
        asked as f64 * 100.0 / args.size.machines.max(1) as f64
    );
    let started = Instant::now();
    let mut engine = Engine::from_inputs(&inputs);
    let loaded = started.elapsed();
    let plan = engine.decide();
    let cold = started.elapsed() - loaded;
    let cold_plan = (
        plan.assign.len(),
        plan.provision.len(),
        plan.shortfalls.len(),
    );
    let mut samples: Vec<Duration> = Vec::new();
    let mut totals = [0usize; 4];
    for cycle in 0..args.cycles {
        let demand = change_demand(&mut inputs, cycle);
        let started = Instant::now();
        for (cluster, rows) in demand {
            engine.set_demand(&cluster, rows);
        }
        let plan = engine.decide();
        samples.push(started.elapsed());
        totals[0] += plan.assign.len() + plan.preempt.len();
        totals[1] += plan.release.len();
        totals[2] += plan.provision.len();
        totals[3] += plan.shortfalls.len();
    }
    let per_cycle = totals.map(|t| t / args.cycles.max(1));
    eprintln!("{name}: cold {cold_plan:?}, steady per cycle {per_cycle:?}");
    inputs.machines = engine.allocations("");
    let figures = Scenario {
        name,
        loaded,
        cold,
        cold_plan,
        steady: Summary::of(&mut samples),
        per_cycle,
    };
    (figures, inputs)
}

/// Runs the benchmark and returns a markdown section.
pub async fn run(args: EngineBenchArgs) -> anyhow::Result<String> {
    let (fits, inputs) = scenario(&args, 0.85);
    let (over, _) = scenario(&args, 1.25);
    eprintln!(
        "cold restart from a cache of {} machines",
        inputs.machines.len()
    );
    let settled = cold_restart(&inputs, true).await?;
    let replayed = cold_restart(&inputs, false).await?;
    eprintln!(
        "persisting decisions into a ledger of {} machines",
        inputs.machines.len()
    );
    let persists = [100, 1_000, 10_000]
        .into_iter()
        .map(|batch| Ok((batch, persist_cost(&inputs, batch, 20)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut out = String::new();
    writeln!(out, "# Shard benchmarks\n")?;
    writeln!(
        out,
        "Machine: {}. Coordinator figures are in `benchmarks-coord.md`.\n",
        crate::stats::machine()
    )?;
    writeln!(out, "## Engine decision time\n")?;
    writeln!(
        out,
        "`cargo run --release -p ballast-bench -- engine`: one shard with {} machines in {} domains \
         (3 AZs, 3 machine shapes, quota room for 10,000 more) and {} demand rows (3 shapes, a \
         quarter AZ-constrained, 5 priorities); the live `Engine` on one core, no I/O. A steady \
         cycle is the demand updates of the clusters whose rows changed (1% of the rows) plus \
         `decide()`; {} steady cycles per scenario.\n",
        args.size.machines, args.size.domains, args.size.rows, args.cycles
    )?;
    writeln!(
        out,
        "| scenario | build from ledger ms | cold cycle ms | cold: assigned / provisioned / short rows | steady p50 ms | steady p99 ms | steady max ms | per steady cycle: moved / released / provisioned / short rows |"
    )?;
    writeln!(out, "|---|---:|---:|---|---:|---:|---:|---|")?;
    for s in [&fits, &over] {
        writeln!(
            out,
            "| {} | {} | {} | {} / {} / {} | {} | {} | {} | {} / {} / {} / {} |",
            s.name,
            ms(s.loaded),
            ms(s.cold),
            s.cold_plan.0,
            s.cold_plan.1,
            s.cold_plan.2,
            ms(s.steady.p50),
            ms(s.steady.p99),
            ms(s.steady.max),
            s.per_cycle[0],
            s.per_cycle[1],
            s.per_cycle[2],
            s.per_cycle[3]
        )?;
    }
    writeln!(
        out,
        "\n## Shard cold restart\n\nFrom its cache ({} machines, {} domains, {} demand rows, the \
         demand's clusters bound to the shard and its slice) with no coordinator reachable, until \
         its first decision is made and persisted (10 ms cycle).\n",
        inputs.machines.len(),
        inputs.domains.len(),
        inputs.needs.len()
    )?;
    writeln!(
        out,
        "| cache state | open + journal recovery ms | ledger into engine ms | to first decision ms |"
    )?;
    writeln!(out, "|---|---:|---:|---:|")?;
    for (what, r) in [
        (
            "settled (memtables flushed, as after running a while)",
            &settled,
        ),
        (
            "whole ledger in the journal (killed right after writing it)",
            &replayed,
        ),
    ] {
        writeln!(
            out,
            "| {what} | {} | {} | {} |",
            ms(r.cache_open),
            ms(r.engine_load),
            ms(r.total)
        )?;
    }
    writeln!(
        out,
        "\n## Persisting a decision\n\nOne decision's machine changes written into the same \
         cache and fsynced (`Cache::store_machines`), machines spread over the ledger, 20 \
         rounds per size. The ledger is kept in {} pages, so a changed machine rewrites its \
         page (about {} records at this size); `docs/adr/0012-paged-machine-ledger.md` compares \
         this with one record per machine.\n",
        ballast_shard::cache::LEDGER_PAGES,
        inputs
            .machines
            .len()
            .div_ceil(ballast_shard::cache::LEDGER_PAGES as usize)
    )?;
    writeln!(out, "| machines changed | p50 ms | max ms |")?;
    writeln!(out, "|---:|---:|---:|")?;
    for (batch, s) in &persists {
        writeln!(out, "| {batch} | {} | {} |", ms(s.p50), ms(s.max))?;
    }
    Ok(out)
}
