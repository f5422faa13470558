//! `ballast-bench worker-cycle`: a running shard worker's decision cycle with its provider in
//! the loop (issue #21). `ballast-bench engine` times the pure `Engine`; here the whole worker
//! runs in-process from a cache holding its domains, clusters, slice and demand but no
//! machines, with no coordinator reachable (static stability lets it act from its cache). It
//! provisions the fleet through its provider — the simulation built into the shard, or a
//! provider process (`provider-serve`, the reference provider) over gRPC, where every machine
//! goes through `CreateMachine` and `ConfigureMachine` — and once the fleet is made, 1% of the
//! demand rows change per step while the worker's own cycle durations are read
//! ([`Worker::recent_cycles`]): the cycle that decides each step's changes, and every cycle of
//! the steady phase, with the creates and configures of the earlier steps still in flight. The
//! two provider kinds alternate `--runs` times in one run.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ballast_protocol::providerpb::ListMachinesRequest;
use ballast_shard::engine::{Inputs, Need};
use ballast_shard::provider::SimulatedConfig;
use ballast_shard::worker::{ProviderChoice, ProviderSpec, Worker, WorkerConfig};
use ballast_testkit::ProviderProcess;

use crate::engine::{cache_dir, populate};
use crate::engine_fleet::{change_demand, fleet};
use crate::stats::{Summary, ms};

/// The section of the report this benchmark owns.
pub const SECTION: &str = "## Worker cycle with the provider in the loop";

/// The quota the shard's slice is of: the provider process's `--name` and `--region`.
const QUOTA: (&str, &str) = ("sim", "local");

/// Flags of `ballast-bench worker-cycle`.
#[derive(clap::Args, Debug)]
pub struct WorkerCycleArgs {
    #[command(flatten)]
    size: crate::engine::ShardSize,
    /// Steady steps to time (1% of the rows change in each).
    #[arg(long, default_value_t = 30)]
    cycles: usize,
    /// Runs of each provider kind, alternating.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// The worker's decision interval, in milliseconds.
    #[arg(long, default_value_t = 10)]
    cycle_ms: u64,
    /// Deadline of each call to the provider process, in milliseconds (default: the shard's).
    /// The shard keeps at most 128 creates in flight; the deadline counts from the call.
    #[arg(long, default_value_t = 10_000)]
    provider_timeout_ms: u64,
    /// Most seconds to wait for the fleet to be provisioned (and for it to settle after the
    /// steady steps), per run.
    #[arg(long, default_value_t = 3_600)]
    provision_limit: u64,
    /// Markdown file whose worker-cycle section is written (the rest is kept).
    #[arg(long, default_value = "docs/benchmarks-shard.md")]
    pub out: PathBuf,
}

/// Which provider the worker drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The simulation built into the shard (in-process, no I/O).
    BuiltIn,
    /// A provider process over gRPC on loopback, durable, group commit.
    Grpc,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::BuiltIn => "built in (in-process)",
            Kind::Grpc => "gRPC provider process (durable, group commit)",
        }
    }
}

/// What one run measured.
struct RunFigures {
    kind: Kind,
    run: usize,
    /// Worker start → demand met, nothing in flight, every placement confirmed.
    provisioned_in: Duration,
    /// Machines in the ledger then.
    machines: u64,
    /// Every cycle while provisioning, with the creates and configures in flight.
    provisioning_cycles: Summary,
    /// Provider calls the shard counted as failed while provisioning (from its metrics).
    provisioning_errors: u64,
    /// The cycle that decided each step's changes.
    change_cycles: Summary,
    /// Every cycle of the steady phase.
    all_cycles: Summary,
    /// Steps whose change cycle could not be told apart (another cycle ended while the
    /// changes were being applied): counted in `all_cycles` only.
    ambiguous: usize,
    /// Mean time to store one step's demand (one fsync per cluster, as `SubmitDemand` does).
    store_mean: Duration,
    /// Mean time to hand one step's demand to the engine (under its lock).
    apply_mean: Duration,
    /// After the last step: until nothing is in flight and every placement is confirmed.
    settled_in: Duration,
    /// At the provider during the steady phase and its settling: machines made, and calls
    /// that changed a machine (creates, configures, releases, deletes).
    made: u64,
    changed: u64,
    /// Provider calls the shard counted as failed during the steady phase (from its metrics).
    errors: u64,
}

/// A fresh cache directory, removed when dropped.
struct CacheDir(PathBuf);

impl Drop for CacheDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fleet's demand, asking for about `machines` machines, with no machine made yet, and a
/// slice of the provider's quota with room for the steady steps' growth.
fn demand(args: &WorkerCycleArgs) -> Inputs {
    let asked = |inputs: &Inputs| -> u64 { inputs.needs.iter().map(|n| u64::from(n.count)).sum() };
    // `fleet` asks for somewhat less than `demand` times the fleet (rows round down): scale.
    let probe = fleet(args.size.machines, args.size.rows, args.size.domains, 1.0);
    let ratio = asked(&probe) as f64 / args.size.machines.max(1) as f64;
    drop(probe);
    let mut inputs = fleet(
        args.size.machines,
        args.size.rows,
        args.size.domains,
        1.0 / ratio.max(0.01),
    );
    inputs.machines = Vec::new();
    let total = asked(&inputs);
    inputs.slices = [(
        (QUOTA.0.to_string(), QUOTA.1.to_string()),
        total + total / 5 + 10_000,
    )]
    .into();
    inputs
}

/// Polls `probe` every `every` until it answers, failing with `what` (and the probe's last
/// word) after `limit`.
async fn wait_until<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(last) if started.elapsed() > limit => {
                anyhow::bail!("{what}: not within {limit:?} ({last})")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// The worker's state as the waits read it: `Ok` once the demand is met with nothing in
/// flight and every placement confirmed at the provider.
fn settled(worker: &Worker) -> Result<u64, String> {
    let (in_flight, counts, demand) = {
        let state = worker.state();
        (
            state.in_flight.len(),
            state.engine.counts(),
            state.engine.demand_total(),
        )
    };
    let pending = worker.placements().pending();
    let shortfall = worker.shortfall();
    let cycles = worker.cycles();
    if cycles > 0 && in_flight == 0 && pending == 0 && shortfall == 0 && counts.assigned >= demand {
        return Ok(counts.total());
    }
    Err(format!(
        "{} of {demand} machines assigned, {} idle, {in_flight} creates in flight, {pending} \
         placements pending, shortfall {shortfall}, {cycles} cycles, provider backoff {:?}",
        counts.assigned,
        counts.idle,
        worker.provider_backoff().remaining()
    ))
}

/// The cycle count and the durations of the last cycles, read consistently: the last entry
/// is cycle number `count`.
fn cycles_read(worker: &Worker) -> (u64, Vec<Duration>) {
    loop {
        let before = worker.cycles();
        let recent = worker.recent_cycles();
        if worker.cycles() == before {
            return (before, recent);
        }
    }
}

/// The durations of cycles `from..=to` (numbered from 1), as far as the worker still keeps
/// them, and the number of the last cycle read.
fn cycles_between(worker: &Worker, from: u64, to: u64) -> (Vec<Duration>, u64) {
    let (count, recent) = cycles_read(worker);
    let first_kept = count + 1 - recent.len() as u64;
    let durations = (from.max(first_kept)..=to.min(count))
        .map(|n| recent[(n - first_kept) as usize])
        .collect();
    (durations, count)
}

/// Every cycle's duration from some point on, read often enough that the worker still keeps
/// them (it keeps the last 1024); cycles it no longer kept are counted as lost.
struct CycleLog {
    seen: u64,
    samples: Vec<Duration>,
    lost: u64,
}

impl CycleLog {
    /// From the next cycle on.
    fn from_now(worker: &Worker) -> CycleLog {
        CycleLog {
            seen: worker.cycles(),
            samples: Vec::new(),
            lost: 0,
        }
    }

    /// Takes the cycles that ended since the last call.
    fn collect(&mut self, worker: &Worker) {
        let (durations, count) = cycles_between(worker, self.seen + 1, u64::MAX);
        self.lost += (count - self.seen).saturating_sub(durations.len() as u64);
        self.samples.extend(durations);
        self.seen = count;
    }

    fn summary(mut self, what: &str) -> Summary {
        if self.lost > 0 {
            eprintln!("  {what}: {} cycles were not read in time", self.lost);
        }
        Summary::of(&mut self.samples)
    }
}

/// Stores one step's demand durably as `SubmitDemand` does (`Cache::store_demand`, one fsync
/// per cluster), on a blocking thread. `SubmitDemand` does it under the worker's demand lock,
/// not the engine's, one cluster at a time; here too the cycle timed next waits for no fsync
/// of this benchmark's (see [`apply`]).
async fn store(worker: &Arc<Worker>, changes: &[(String, Vec<Need>)]) -> anyhow::Result<()> {
    let worker = worker.clone();
    let changes = changes.to_vec();
    tokio::task::spawn_blocking(move || {
        for (cluster, rows) in &changes {
            worker.cache().store_demand(cluster, rows)?;
        }
        anyhow::Ok(())
    })
    .await
    .context("storing demand")?
}

/// Hands one step's stored demand to the live engine as `SubmitDemand` does, all under one hold
/// of the engine's lock so a single cycle decides them. Returns the cycle count read under it.
fn apply(worker: &Worker, changes: Vec<(String, Vec<Need>)>) -> u64 {
    let mut state = worker.state();
    for (cluster, rows) in changes {
        state.engine.set_demand(&cluster, rows);
    }
    worker.cycles()
}

/// The provider's record of this shard's machines: how many, and the newest version (the
/// provider bumps one counter for every change to any machine, so the difference of two
/// readings counts the calls that changed a machine in between).
async fn provider_record(worker: &Worker) -> anyhow::Result<(u64, u64)> {
    let provider = worker
        .providers()
        .of(QUOTA.0)
        .map_err(|e| anyhow::anyhow!("the worker's provider: {e}"))?;
    let (mut count, mut newest) = (0u64, 0u64);
    let mut cursor = String::new();
    for _ in 0..100_000 {
        let page = provider
            .list(ListMachinesRequest {
                owner_shard: worker.id().to_string(),
                cursor: cursor.clone(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("listing the provider's machines: {e}"))?;
        for machine in &page.machines {
            if ballast_testkit::live(machine) {
                count += 1;
            }
            newest = newest.max(machine.version);
        }
        if page.next_cursor.is_empty() {
            return Ok((count, newest));
        }
        cursor = page.next_cursor;
    }
    anyhow::bail!("the provider's listing did not end within 100,000 pages")
}

static METRICS: std::sync::Mutex<Option<std::net::SocketAddr>> = std::sync::Mutex::new(None);

/// The metrics port of the last worker started (the counters are the process's, so a new
/// worker's page starts where the last one's ended; read before a new worker starts).
fn remember_metrics(http: Option<std::net::SocketAddr>) {
    *METRICS.lock().unwrap_or_else(|e| e.into_inner()) = http;
}

fn last_metrics() -> Option<std::net::SocketAddr> {
    *METRICS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Failed provider calls the shard has counted (every `ballast_shard_provider_errors_total`
/// series of its metrics page).
fn provider_errors(http: Option<std::net::SocketAddr>) -> u64 {
    let Some(page) = http.and_then(|a| ballast_testkit::http_get(&a.to_string(), "/metrics"))
    else {
        return 0;
    };
    page.1
        .lines()
        .filter(|l| l.starts_with("ballast_shard_provider_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One run: a fresh provider (for gRPC) and cache, the worker started, the fleet provisioned,
/// the steady steps timed, and everything stopped.
async fn run_one(
    args: &WorkerCycleArgs,
    kind: Kind,
    run: usize,
    template: &Inputs,
) -> anyhow::Result<RunFigures> {
    // Killed when dropped, error paths included.
    let provider = match kind {
        Kind::BuiltIn => None,
        Kind::Grpc => {
            let program = std::env::current_exe().context("locating ballast-bench")?;
            let serve = format!(
                "'{}' provider-serve --name {} --region {}",
                program.display(),
                QUOTA.0,
                QUOTA.1
            );
            let started =
                tokio::task::spawn_blocking(move || ProviderProcess::start(&serve, "--sync group"))
                    .await
                    .context("starting the provider process")?;
            Some(started)
        }
    };
    let choice = match &provider {
        None => ProviderChoice::Sim(SimulatedConfig {
            latency: Duration::ZERO,
            ..SimulatedConfig::default()
        }),
        Some(p) => ProviderChoice::Grpc(format!("grpc://{}", p.endpoint)),
    };
    let dir = CacheDir(cache_dir());
    drop(populate(&dir.0, template)?);
    // The metrics are the process's (the runs before count too): read before the start.
    let errors_at_start = provider_errors(last_metrics());
    let started = Instant::now();
    let running = ballast_shard::worker::start(WorkerConfig {
        id: "s1".into(),
        az: "az-a".into(),
        // Nothing listens there: the worker acts from its cache.
        coordinators: vec!["127.0.0.1:1".into()],
        data_dir: dir.0.clone(),
        listen: "127.0.0.1:0".parse()?,
        advertise: None,
        lease_ttl: Duration::from_secs(10),
        heartbeat: Duration::from_secs(3),
        cycle: Duration::from_millis(args.cycle_ms),
        providers: vec![ProviderSpec { name: None, choice }],
        provider_timeout: Duration::from_millis(args.provider_timeout_ms),
        http_listen: Some("127.0.0.1:0".parse()?),
        tls: None,
        http_open_probes: false,
    })
    .await
    .context("starting the shard worker")?;
    remember_metrics(running.http_addr);
    let outcome = measure(
        args,
        kind,
        run,
        template,
        &running,
        started,
        errors_at_start,
    )
    .await;
    running.shutdown().await;
    let outcome = outcome.map_err(|e| match &provider {
        Some(p) => {
            let log = p.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            e.context(format!("provider log (last lines):\n{}", tail.join("\n")))
        }
        None => e,
    });
    drop(provider);
    drop(dir);
    outcome
}

/// The part of a run with the worker running: provisioning, steady steps, settling.
async fn measure(
    args: &WorkerCycleArgs,
    kind: Kind,
    run: usize,
    template: &Inputs,
    running: &ballast_shard::worker::RunningWorker,
    started: Instant,
    errors_at_start: u64,
) -> anyhow::Result<RunFigures> {
    let worker: &Arc<Worker> = &running.worker;
    let limit = Duration::from_secs(args.provision_limit);
    let label = format!("{} run {run}", kind.label());
    // Provisioning: progress every 10 s.
    let mut last_report = Instant::now();
    let mut provisioning = CycleLog {
        seen: 0,
        samples: Vec::new(),
        lost: 0,
    };
    let machines = wait_until(
        &format!("{label}: provisioning the fleet"),
        limit,
        Duration::from_millis(50),
        || {
            provisioning.collect(worker);
            let state = settled(worker);
            if let Err(progress) = &state
                && last_report.elapsed() > Duration::from_secs(10)
            {
                last_report = Instant::now();
                eprintln!(
                    "  {label}: {:.0} s: {progress}",
                    started.elapsed().as_secs_f64()
                );
            }
            state
        },
    )
    .await?;
    let provisioned_in = started.elapsed();
    provisioning.collect(worker);
    let provisioning_cycles = provisioning.summary(&format!("{label}: provisioning"));
    let provisioning_errors = provider_errors(running.http_addr).saturating_sub(errors_at_start);
    eprintln!(
        "  {label}: {machines} machines provisioned in {:.1} s; {} cycles meanwhile, p50 {} p99 \
         {} max {} ms; {provisioning_errors} provider calls failed",
        provisioned_in.as_secs_f64(),
        provisioning_cycles.count,
        ms(provisioning_cycles.p50),
        ms(provisioning_cycles.p99),
        ms(provisioning_cycles.max),
    );
    let (made_before, version_before) = provider_record(worker).await?;
    let errors_before = provider_errors(running.http_addr);

    // Steady steps: wait for a cycle to end, apply 1% of the rows' changes at once (the next
    // cycle starts one interval later), then read the duration of the cycle that decided them.
    let mut inputs = Inputs {
        domains: template.domains.clone(),
        slices: template.slices.clone(),
        machines: Vec::new(),
        needs: template.needs.clone(),
        in_flight: Vec::new(),
    };
    let step_limit = Duration::from_secs(60);
    let mut steady = CycleLog::from_now(worker);
    let mut change_samples = Vec::with_capacity(args.cycles);
    let mut ambiguous = 0;
    let mut applying = Duration::ZERO;
    let mut storing = Duration::ZERO;
    for step in 0..args.cycles {
        let changes = change_demand(&mut inputs, step);
        let stored_at = Instant::now();
        store(worker, &changes).await?;
        storing += stored_at.elapsed();
        let before = worker.cycles();
        wait_until(
            &format!("{label}: a cycle before step {step}"),
            step_limit,
            Duration::from_micros(200),
            || {
                (worker.cycles() > before)
                    .then_some(())
                    .ok_or_else(|| "no cycle ended".to_string())
            },
        )
        .await?;
        let ended = worker.cycles();
        let applied_at = Instant::now();
        let at = apply(worker, changes);
        applying += applied_at.elapsed();
        let deciding = at + 1;
        wait_until(
            &format!("{label}: the cycle deciding step {step}"),
            step_limit,
            Duration::from_micros(200),
            || {
                (worker.cycles() >= deciding)
                    .then_some(())
                    .ok_or_else(|| "no cycle ended".to_string())
            },
        )
        .await?;
        if at == ended {
            change_samples.extend(cycles_between(worker, deciding, deciding).0);
        } else {
            ambiguous += 1;
        }
        steady.collect(worker);
    }
    let errors = provider_errors(running.http_addr).saturating_sub(errors_before);
    let settling = Instant::now();
    wait_until(
        &format!("{label}: settling after the steady steps"),
        limit,
        Duration::from_millis(50),
        || settled(worker),
    )
    .await?;
    let settled_in = settling.elapsed();
    let (made_after, version_after) = provider_record(worker).await?;
    let figures = RunFigures {
        kind,
        run,
        provisioned_in,
        machines,
        provisioning_cycles,
        provisioning_errors,
        change_cycles: Summary::of(&mut change_samples),
        all_cycles: steady.summary(&format!("{label}: steady")),
        ambiguous,
        store_mean: storing / args.cycles.max(1) as u32,
        apply_mean: applying / args.cycles.max(1) as u32,
        settled_in,
        made: made_after.saturating_sub(made_before),
        changed: version_after.saturating_sub(version_before),
        errors,
    };
    eprintln!(
        "  {label}: change cycles p50 {} p99 {} max {} ms; all {} cycles p99 {} max {} ms; \
         {} made, {} machine changes at the provider, {} provider errors, settled in {:.1} s",
        ms(figures.change_cycles.p50),
        ms(figures.change_cycles.p99),
        ms(figures.change_cycles.max),
        figures.all_cycles.count,
        ms(figures.all_cycles.p99),
        ms(figures.all_cycles.max),
        figures.made,
        figures.changed,
        figures.errors,
        settled_in.as_secs_f64()
    );
    Ok(figures)
}

/// The report's section.
fn section(args: &WorkerCycleArgs, template: &Inputs, runs: &[RunFigures]) -> String {
    let asked: u64 = template.needs.iter().map(|n| u64::from(n.count)).sum();
    let mut out = String::new();
    let _ = writeln!(out, "{SECTION}\n");
    let _ = writeln!(
        out,
        "`cargo run --release -p ballast-bench -- worker-cycle --machines {} --rows {} --domains {} \
         --cycles {} --runs {}{}` ({}, {}). One shard worker, in-process, started from a cache \
         holding its {} domains, the clusters of {} demand rows (asking for {asked} machines; \
         3 shapes, a quarter AZ-constrained, 5 priorities), its slice and no machine; no \
         coordinator reachable; a {} ms cycle. It provisions the demand through its provider: \
         the simulation built into the shard, or a provider process (`ballast-provider-sim`'s \
         code, durable, `--sync group`) over gRPC on loopback, where every machine is created \
         and then configured for its cluster. A cycle's time is the worker's own figure, from \
         asking for the engine's lock to the decision made durable; *while provisioning* counts \
         every cycle from the start until the demand is met and every machine configured, with \
         the creates and configures in flight. Then, in each of {} steady steps, 1% of the rows \
         change, applied as the demand API does (stored, then handed to the live engine) at \
         once right after a cycle ends: the *change cycle* is the one that decides them, *every \
         cycle* covers the steady phase, with the calls of the earlier steps still in flight; \
         *settled after* is from the last step until nothing is in flight. The provider's own \
         record gives the machines made and the calls that changed a machine during the steady \
         phase and its settling; the failed calls are the shard's count. The kinds alternate \
         in one run.\n",
        args.size.machines,
        args.size.rows,
        args.size.domains,
        args.cycles,
        args.runs,
        tuned(args),
        crate::report::today(),
        crate::stats::machine(),
        template.domains.len(),
        template.needs.len(),
        args.cycle_ms,
        args.cycles,
    );
    let _ = writeln!(
        out,
        "| provider | run | fleet provisioned s | machines | while provisioning: cycles, p50 / p99 / max ms, failed calls | steady: change cycle p50 / p99 / max ms | steady: every cycle: count, p50 / p99 / max ms | steady: made / provider calls that changed a machine / failed calls | settled after s |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---|---|---|---|---:|");
    for r in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} | {}, {} / {} / {}, {} | {} / {} / {} | {}, {} / {} / {} | {} / {} / {} | {:.1} |",
            r.kind.label(),
            r.run,
            r.provisioned_in.as_secs_f64(),
            r.machines,
            r.provisioning_cycles.count,
            ms(r.provisioning_cycles.p50),
            ms(r.provisioning_cycles.p99),
            ms(r.provisioning_cycles.max),
            r.provisioning_errors,
            ms(r.change_cycles.p50),
            ms(r.change_cycles.p99),
            ms(r.change_cycles.max),
            r.all_cycles.count,
            ms(r.all_cycles.p50),
            ms(r.all_cycles.p99),
            ms(r.all_cycles.max),
            r.made,
            r.changed,
            r.errors,
            r.settled_in.as_secs_f64()
        );
    }
    let ambiguous: usize = runs.iter().map(|r| r.ambiguous).sum();
    let worst = |f: fn(&RunFigures) -> Duration| runs.iter().map(f).max().unwrap_or_default();
    let clusters = template.needs.len().div_ceil(100);
    let _ = writeln!(
        out,
        "\nEach step's demand (about {clusters} clusters) was stored first, one fsync per cluster \
         as `SubmitDemand` does (under the demand lock, outside the engine's): {} ms per step on \
         average (the worst run's mean). Handing it to the engine then held the lock {} ms per \
         step on average. {ambiguous} steps whose change cycle could not be told apart count \
         under every cycle only.",
        ms(worst(|r| r.store_mean)),
        ms(worst(|r| r.apply_mean)),
    );
    out
}

/// The flags a run gave other values than their defaults (besides the sizes).
fn tuned(args: &WorkerCycleArgs) -> String {
    let mut flags = String::new();
    if args.cycle_ms != 10 {
        let _ = write!(flags, " --cycle-ms {}", args.cycle_ms);
    }
    if args.provider_timeout_ms != 10_000 {
        let _ = write!(flags, " --provider-timeout-ms {}", args.provider_timeout_ms);
    }
    flags
}

/// Runs the benchmark and writes its section into `--out`.
pub async fn run(args: WorkerCycleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.size.machines > 0 && args.size.rows >= 100 && args.size.domains >= 3,
        "--machines > 0, --rows >= 100 and --domains >= 3, please"
    );
    let template = demand(&args);
    eprintln!(
        "worker-cycle: {} rows asking for {} machines in {} domains, {} steady steps, {} runs",
        template.needs.len(),
        template
            .needs
            .iter()
            .map(|n| u64::from(n.count))
            .sum::<u64>(),
        template.domains.len(),
        args.cycles,
        args.runs
    );
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        for kind in [Kind::BuiltIn, Kind::Grpc] {
            eprintln!("{} run {run}", kind.label());
            runs.push(run_one(&args, kind, run, &template).await?);
        }
    }
    let section = section(&args, &template, &runs);
    crate::report::write_section(&args.out, SECTION, &section)?;
    println!("{section}");
    Ok(())
}
