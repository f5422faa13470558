//! `ballast-sim chaos`: the fault-injection harness. Three real replica processes on loopback
//! run through seeded fault schedules — SIGKILL and restart, SIGSTOP/SIGCONT pauses (some past
//! every lease), isolated replicas (their clients still reach them), connection resets, message
//! loss and delay between replicas (the replicas' test-only `--fault-rules` transport layer) —
//! while clients record every operation and two lock clients contend for a lease-backed lock.
//! After each schedule everything is healed and checked: each register's history must be
//! linearizable (which also catches lost acknowledged writes and writes applied twice), no two
//! lock holders' beliefs may overlap, every replica must hold the same state at the same
//! revision, no domain may have two owners and no quota may be over-sliced. A failed
//! schedule's histories are written next to the report.

pub mod checker;
mod locks;
pub mod schedule;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ballast_coordinator::log::raft::read_lease::ReadPolicy;
use ballast_protocol::client::BallastClient;
use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::pb;
use ballast_testkit::{ClusterOptions, FAST_FLAGS, TestCluster, current_revision};
use clap::ValueEnum as _;

use checker::{Input, Operation, Output, Verdict};
use schedule::{Fault, Schedule, Target};
use workload::{Record, Register, SHARDS, Workload};

/// Flags of `ballast-sim chaos`.
#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    /// Schedules to run; schedule i uses seed --seed + i.
    #[arg(long, default_value_t = 20)]
    pub schedules: u64,
    /// Seed of the first schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long faults are injected in each schedule (ms).
    #[arg(long, default_value_t = 3_000)]
    pub duration_ms: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Read KV keys with serializable (local) reads, which are allowed to be stale: the run
    /// must then report violations. Checks that the checker can see them.
    #[arg(long)]
    pub stale_reads: bool,
    /// Answered operations each schedule must hold: once its faults are over, a schedule's
    /// clients keep working (faults healed, for at most --extra-limit-ms) until they have this
    /// many, so a slow machine still gives histories with content instead of a short count.
    #[arg(long, default_value_t = 0)]
    pub min_definite: usize,
    /// Longest a schedule's clients keep working past its faults for --min-definite (ms).
    #[arg(long, default_value_t = 60_000)]
    pub extra_limit_ms: u64,
    /// Stop after the first schedule that finds a violation (the check of the checker: on a
    /// slow machine few stale reads land inside a fault, so it runs schedules until one does).
    #[arg(long)]
    pub stop_at_violation: bool,
    /// How the replicas' leaders make linearizable reads (`--read-policy` of the replicas):
    /// with `lease` the histories check lease reads under the same faults (ADR 0020).
    #[arg(long, value_enum, default_value_t = ReadPolicy::ReadIndex)]
    pub read_policy: ReadPolicy,
    /// Where the report (`report.json`), failed histories and the replicas' data and logs go.
    #[arg(long, default_value = "target/chaos")]
    pub out: PathBuf,
}

/// Search steps allowed per register history before the checker gives up (reported).
const CHECK_BUDGET: u64 = 20_000_000;

/// What happened in one schedule.
#[derive(Debug, serde::Serialize)]
struct ScheduleReport {
    seed: u64,
    faults: Vec<String>,
    operations: usize,
    definite: usize,
    unknown: usize,
    registers: usize,
    /// Brand-new bindings written with request ids (the exactly-once check).
    bindings: usize,
    /// Lock holdings checked for mutual exclusion.
    lock_holdings: usize,
    /// Linearizable reads the leaders answered under a read lease, their own and the read
    /// indexes they handed followers (`--read-policy lease`; a lower bound: a replica's
    /// count restarts with it).
    lease_reads: u64,
    violations: Vec<String>,
    /// How long the clients worked on past the faults to reach --min-definite.
    past_faults_ms: u64,
    elapsed_ms: u64,
}

/// Runs the schedules and writes `report.json`; fails when any schedule found a violation.
pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    if args.schedules == 0 || args.clients == 0 || args.duration_ms < 500 {
        bail!("--schedules and --clients must be at least 1 and --duration-ms at least 500");
    }
    if args.out.exists() {
        std::fs::remove_dir_all(&args.out)
            .with_context(|| format!("clearing {}", args.out.display()))?;
    }
    std::fs::create_dir_all(&args.out)?;
    let program = std::env::current_exe().context("locating the ballast-sim binary")?;
    let mut extra: Vec<String> = FAST_FLAGS.iter().map(|s| s.to_string()).collect();
    // The rebalancer would move domains on its own; the histories must hold every write.
    extra.extend(["--rebalance-interval-ms".into(), "0".into()]);
    let policy = args
        .read_policy
        .to_possible_value()
        .context("every read policy has a flag value")?;
    extra.extend(["--read-policy".into(), policy.get_name().to_string()]);
    let mut cluster = TestCluster::start_with(
        ClusterOptions {
            program,
            leading_args: vec!["replica".into()],
            extra,
            dir: Some(args.out.join("cluster")),
            faults: true,
            ..ClusterOptions::default()
        },
        3,
    )
    .await;
    setup(&cluster.client()).await?;
    let started = Instant::now();
    let mut reports = Vec::new();
    for i in 0..args.schedules {
        let schedule = schedule::generate(args.seed + i, args.duration_ms);
        let report = run_schedule(&mut cluster, &schedule, &args).await?;
        println!(
            "schedule seed={:<5} faults={:<3} ops={:<5} definite={:<5} unknown={:<4} {}",
            report.seed,
            report.faults.len(),
            report.operations,
            report.definite,
            report.unknown,
            if report.violations.is_empty() {
                "ok".to_string()
            } else {
                format!("VIOLATIONS: {}", report.violations.join("; "))
            }
        );
        let found = !report.violations.is_empty();
        reports.push(report);
        if found && args.stop_at_violation {
            break;
        }
    }
    let violations: usize = reports.iter().map(|r| r.violations.len()).sum();
    let mut faults_by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for fault in reports.iter().flat_map(|r| &r.faults) {
        let kind = fault.split([' ', '(']).nth(1).unwrap_or("?").to_string();
        *faults_by_kind.entry(kind).or_default() += 1;
    }
    let summary = serde_json::json!({
        "schedules": reports.len(),
        "first_seed": args.seed,
        "duration_ms_per_schedule": args.duration_ms,
        "clients": args.clients,
        "faults_injected": reports.iter().map(|r| r.faults.len()).sum::<usize>(),
        "faults_by_kind": faults_by_kind,
        "operations": reports.iter().map(|r| r.operations).sum::<usize>(),
        "definite": reports.iter().map(|r| r.definite).sum::<usize>(),
        "unknown": reports.iter().map(|r| r.unknown).sum::<usize>(),
        "bindings": reports.iter().map(|r| r.bindings).sum::<usize>(),
        "lock_holdings": reports.iter().map(|r| r.lock_holdings).sum::<usize>(),
        "lease_reads": reports.iter().map(|r| r.lease_reads).sum::<u64>(),
        "violations": violations,
        "elapsed_s": started.elapsed().as_secs(),
        "runs": reports,
    });
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!(
        "{} schedules, {} faults, {} operations ({} with unknown outcome), {} violations; report: {}",
        summary["schedules"],
        summary["faults_injected"],
        summary["operations"],
        summary["unknown"],
        violations,
        args.out.join("report.json").display()
    );
    if violations > 0 {
        bail!(
            "{violations} violation(s); histories are in {}",
            args.out.display()
        );
    }
    Ok(())
}

/// Shards with day-long leases (nothing expires during a run), a provider and a quota.
async fn setup(client: &BallastClient) -> anyhow::Result<()> {
    use pb::command::Command as C;
    let mut commands: Vec<pb::Command> = SHARDS
        .iter()
        .enumerate()
        .map(|(i, id)| pb::Command {
            command: Some(C::RegisterShard(pb::RegisterShard {
                id: id.to_string(),
                address: format!("127.0.0.1:{}", 9000 + i),
                az: ["az-a", "az-b", "az-c"][i].to_string(),
                lease_ttl_ms: 86_400_000,
            })),
        })
        .collect();
    commands.push(pb::Command {
        command: Some(C::SetProvider(pb::SetProvider {
            name: "chaos".into(),
            endpoint: "https://chaos.example".into(),
            region: "r1".into(),
            capacity_types: Vec::new(),
        })),
    });
    commands.push(pb::Command {
        command: Some(C::SetQuota(pb::SetQuota {
            provider: "chaos".into(),
            region: "r1".into(),
            total: 100,
            slices: Vec::new(),
        })),
    });
    for command in commands {
        client
            .write(command)
            .await
            .context("setting up the chaos fleet")?;
    }
    Ok(())
}

/// Faults in force at one moment, turned into each replica's rules and process states.
#[derive(Default)]
struct Active {
    killed: BTreeSet<u64>,
    paused: BTreeSet<u64>,
    isolated: BTreeMap<usize, u64>,
    reset: BTreeMap<usize, u64>,
    loss: BTreeMap<usize, f64>,
    delay: BTreeMap<usize, (u64, u64)>,
}

impl Active {
    fn rules(&self, cluster: &TestCluster, id: u64) -> String {
        let mut rules = String::new();
        for &target in self.isolated.values() {
            for replica in &cluster.replicas {
                if replica.id == id {
                    continue;
                }
                if target == id || replica.id == target {
                    rules.push_str(&format!("block {}\n", replica.address));
                }
            }
        }
        if self.reset.values().any(|target| *target == id) {
            rules.push_str("reset * 4\n");
        }
        for p in self.loss.values() {
            rules.push_str(&format!("loss * {p}\n"));
        }
        for (lo, hi) in self.delay.values() {
            rules.push_str(&format!("delay * {lo} {hi}\n"));
        }
        rules
    }
}

/// The replica leading right now, asking each live one briefly (a paused replica must not
/// stall the driver).
async fn leader_now(cluster: &TestCluster, active: &Active) -> Option<u64> {
    for replica in &cluster.replicas {
        if active.killed.contains(&replica.id) || active.paused.contains(&replica.id) {
            continue;
        }
        let status = tokio::time::timeout(Duration::from_millis(300), cluster.status(replica.id));
        if let Ok(Some(status)) = status.await
            && status.state == "leader"
        {
            return Some(replica.id);
        }
    }
    None
}

async fn resolve(cluster: &TestCluster, active: &Active, target: Target) -> Option<u64> {
    let leader = leader_now(cluster, active).await;
    match target {
        Target::Leader => leader,
        Target::Follower(n) => {
            let others: Vec<u64> = cluster
                .replicas
                .iter()
                .map(|r| r.id)
                .filter(|id| Some(*id) != leader)
                .collect();
            others.get(n % others.len().max(1)).copied()
        }
    }
}

async fn run_schedule(
    cluster: &mut TestCluster,
    schedule: &Schedule,
    args: &ChaosArgs,
) -> anyhow::Result<ScheduleReport> {
    let (clients, out) = (args.clients, args.out.as_path());
    let run_started = Instant::now();
    let seed = schedule.seed;
    let lease_reads_before = lease_reads(cluster);
    let registers = vec![
        Register::Key(format!("chaos/{seed}/k0")),
        Register::Key(format!("chaos/{seed}/k1")),
        Register::Key(format!("chaos/{seed}/k2")),
        Register::Domain(format!("zone=az-a/rack=chaos-{seed}-0")),
        Register::Domain(format!("zone=az-b/rack=chaos-{seed}-1")),
    ];
    let workload = Arc::new(Workload {
        registers: registers.clone(),
        endpoints: cluster.endpoints(),
        started: Instant::now(),
        stop: Default::default(),
        stale_reads: args.stale_reads,
        history: Default::default(),
        binds: Default::default(),
    });
    let mut tasks: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(workload::client(workload.clone(), c, seed)))
        .collect();
    // Two lock clients contend for one lock key.
    let locks = Arc::new(locks::Locks::default());
    for c in 0..2 {
        let key = format!("chaos/{seed}/lock");
        tasks.push(tokio::spawn(locks::client(
            workload.clone(),
            locks.clone(),
            (key, seed),
            c,
        )));
    }

    // Start and end of every step, in time order.
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (i, step) in schedule.steps.iter().enumerate() {
        events.push((step.at_ms, true, i));
        events.push((step.at_ms + step.for_ms, false, i));
    }
    events.sort_by_key(|(at, starts, i)| (*at, *starts, *i));
    let mut active = Active::default();
    let mut hit: BTreeMap<usize, u64> = BTreeMap::new();
    let mut faults = Vec::new();
    for (at, starts, i) in events {
        let wait = Duration::from_millis(at).saturating_sub(workload.started.elapsed());
        tokio::time::sleep(wait).await;
        let step = &schedule.steps[i];
        if starts {
            let id = match step.fault {
                Fault::Kill(t)
                | Fault::Pause(t)
                | Fault::LongPause(t)
                | Fault::Isolate(t)
                | Fault::Reset(t) => resolve(cluster, &active, t).await,
                _ => None,
            };
            let applied = match (&step.fault, id) {
                (Fault::Kill(_), Some(id)) if !active.killed.contains(&id) => {
                    active.paused.remove(&id);
                    cluster.kill(id);
                    active.killed.insert(id);
                    Some(format!("kill({id})"))
                }
                (Fault::Pause(_) | Fault::LongPause(_), Some(id))
                    if !active.killed.contains(&id) && !active.paused.contains(&id) =>
                {
                    cluster.pause(id);
                    active.paused.insert(id);
                    Some(match step.fault {
                        Fault::LongPause(_) => format!("long-pause({id})"),
                        _ => format!("pause({id})"),
                    })
                }
                (Fault::Reset(_), Some(id)) => {
                    active.reset.insert(i, id);
                    Some(format!("reset({id})"))
                }
                (Fault::Isolate(_), Some(id)) => {
                    active.isolated.insert(i, id);
                    Some(format!("isolate({id})"))
                }
                (Fault::Loss(p), _) => {
                    active.loss.insert(i, *p);
                    Some(format!("loss({p})"))
                }
                (Fault::Delay(lo, hi), _) => {
                    active.delay.insert(i, (*lo, *hi));
                    Some(format!("delay({lo}-{hi}ms)"))
                }
                _ => None,
            };
            if let Some(what) = applied {
                if let Some(id) = id {
                    hit.insert(i, id);
                }
                faults.push(format!("{}ms {what} for {}ms", step.at_ms, step.for_ms));
            }
        } else {
            match (&step.fault, hit.remove(&i)) {
                (Fault::Kill(_), Some(id)) if active.killed.remove(&id) => cluster.restart(id),
                (Fault::Pause(_) | Fault::LongPause(_), Some(id)) if active.paused.remove(&id) => {
                    cluster.resume(id)
                }
                _ => {}
            }
            active.isolated.remove(&i);
            active.reset.remove(&i);
            active.loss.remove(&i);
            active.delay.remove(&i);
        }
        for replica in cluster.replicas.iter().map(|r| r.id).collect::<Vec<_>>() {
            cluster.set_faults(replica, &active.rules(cluster, replica));
        }
    }
    let wait =
        Duration::from_millis(schedule.duration_ms).saturating_sub(workload.started.elapsed());
    tokio::time::sleep(wait).await;
    // Every step has ended by the schedule's duration, so what runs on is fault-free.
    let faults_over = Instant::now();
    let extra_until = faults_over + Duration::from_millis(args.extra_limit_ms);
    while workload.definite() < args.min_definite && Instant::now() < extra_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let past_faults_ms = faults_over.elapsed().as_millis() as u64;
    workload.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }

    // Heal: links, pauses, kills.
    for id in cluster.replicas.iter().map(|r| r.id).collect::<Vec<_>>() {
        cluster.set_faults(id, "");
    }
    for id in std::mem::take(&mut active.paused) {
        cluster.resume(id);
    }
    for id in std::mem::take(&mut active.killed) {
        cluster.restart(id);
    }
    cluster.leader().await;
    let client = cluster.client();
    let revision = current_revision(&client).await;
    cluster.wait_until_converged(revision).await;

    let lease_reads_after = lease_reads(cluster);
    let lease_reads: u64 = lease_reads_after
        .iter()
        .map(|(id, after)| match lease_reads_before.get(id) {
            Some(before) if before <= after => after - before,
            _ => *after,
        })
        .sum();

    // A final linearizable read of every register: lost acknowledged writes show here.
    final_reads(&client, cluster, &workload).await?;

    let history: Vec<Record> = workload.history.lock().clone();
    let mut violations = Vec::new();
    for register in &registers {
        let ops: Vec<Operation> = history
            .iter()
            .filter(|r| &r.register == register)
            .map(|r| r.op.clone())
            .collect();
        let verdict = checker::check(&ops, None, CHECK_BUDGET);
        if verdict != Verdict::Linearizable {
            violations.push(format!("{register:?}: {verdict:?}"));
            let file = out.join(format!("history-{seed}-{}.json", violations.len()));
            std::fs::write(
                &file,
                serde_json::to_string_pretty(&serde_json::json!({
                    "register": register, "verdict": format!("{verdict:?}"), "operations": ops,
                }))?,
            )?;
        }
    }
    violations.extend(invariants(cluster).await?);
    violations.extend(exactly_once(&client, &workload).await?);
    let holdings = locks.holdings.lock().clone();
    let exclusion = locks::overlaps(&holdings);
    if !exclusion.is_empty() {
        let file = out.join(format!("locks-{seed}.json"));
        std::fs::write(&file, serde_json::to_string_pretty(&holdings)?)?;
    }
    violations.extend(exclusion);
    let unknown = history.iter().filter(|r| r.op.ret.is_none()).count();
    Ok(ScheduleReport {
        seed,
        faults,
        operations: history.len(),
        definite: history.len() - unknown,
        unknown,
        registers: registers.len(),
        bindings: workload.binds.lock().len(),
        lock_holdings: holdings.len(),
        lease_reads,
        violations,
        past_faults_ms,
        elapsed_ms: run_started.elapsed().as_millis() as u64,
    })
}

/// Each running replica's count of reads answered under a read lease (see
/// [`ScheduleReport::lease_reads`]); read while no replica is paused.
fn lease_reads(cluster: &TestCluster) -> BTreeMap<u64, u64> {
    cluster
        .replicas
        .iter()
        .filter(|r| r.is_running())
        .map(|r| {
            let count: f64 = ["lease", "lease_read_index"]
                .iter()
                .filter_map(|how| {
                    cluster.metric(
                        r.id,
                        &format!("ballast_linearizable_reads_total{{how=\"{how}\"}}"),
                    )
                })
                .sum();
            (r.id, count as u64)
        })
        .collect()
}

async fn final_reads(
    client: &BallastClient,
    cluster: &TestCluster,
    workload: &Workload,
) -> anyhow::Result<()> {
    let call = workload.started.elapsed().as_micros() as u64;
    let domains = workload::all_domains(client)
        .await
        .context("final domain read")?;
    let mut kv = epb::kv_client::KvClient::new(cluster.channel(cluster.leader().await));
    let mut records = Vec::new();
    for register in &workload.registers {
        let value = match register {
            Register::Domain(domain) => domains
                .iter()
                .find(|d| &d.domain == domain)
                .map(|d| d.shard.clone()),
            Register::Key(key) => kv
                .range(epb::RangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                })
                .await
                .context("final KV read")?
                .into_inner()
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).to_string()),
        };
        records.push(Record {
            register: register.clone(),
            op: Operation {
                client: usize::MAX,
                call,
                ret: Some(workload.started.elapsed().as_micros() as u64),
                input: Input::Get,
                output: Output::Get(value),
            },
        });
    }
    workload.history.lock().extend(records);
    Ok(())
}

/// Every brand-new binding acknowledged as a change (a retry applied twice would have answered
/// "unchanged") and present after healing (nothing acknowledged lost).
async fn exactly_once(client: &BallastClient, workload: &Workload) -> anyhow::Result<Vec<String>> {
    let binds = workload.binds.lock().clone();
    let mut bound = BTreeSet::new();
    let mut after = String::new();
    loop {
        let page = client
            .fleet(|mut c, req| {
                let after = after.clone();
                async move {
                    c.list_bindings(req.wrap(pb::ListBindingsRequest {
                        options: None,
                        shard: String::new(),
                        after,
                        limit: 10_000,
                    }))
                    .await
                }
            })
            .await?;
        bound.extend(page.bindings.into_iter().map(|b| b.cluster));
        if page.next_after.is_empty() {
            break;
        }
        after = page.next_after;
    }
    let mut violations = Vec::new();
    for (cluster, outcome) in binds {
        match outcome {
            Some(false) => violations.push(format!(
                "binding {cluster} was acknowledged as unchanged: applied twice"
            )),
            Some(true) if !bound.contains(&cluster) => {
                violations.push(format!("acknowledged binding {cluster} is lost"))
            }
            _ => {}
        }
    }
    Ok(violations)
}

/// Invariants over the healed cluster.
async fn invariants(cluster: &TestCluster) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    // The replicas are read one after another, so a write landing in between (the leader's
    // rebalancer, a late retry) shows as different revisions: read again until all are at the
    // same one. Only states at one revision can diverge.
    let mut states = BTreeMap::new();
    for _attempt in 0..50 {
        states.clear();
        for replica in &cluster.replicas {
            states.insert(replica.id, cluster.state_of(replica.id, "chaos/").await?);
        }
        let revisions: BTreeSet<&str> = states.values().filter_map(|s| s.lines().next()).collect();
        if revisions.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = states.values().next().cloned().unwrap_or_default();
    for (id, state) in &states {
        if *state != first {
            violations.push(format!("replica {id} diverged:\n{state}\nvs\n{first}"));
        }
    }
    let client = cluster.client();
    let domains = workload::all_domains(&client).await?;
    let mut seen = BTreeSet::new();
    for d in &domains {
        if !seen.insert(&d.domain) {
            violations.push(format!("domain {} listed twice", d.domain));
        }
        if !SHARDS.contains(&d.shard.as_str()) {
            violations.push(format!(
                "domain {} owned by unknown shard {}",
                d.domain, d.shard
            ));
        }
    }
    let quotas = client
        .fleet(|mut c, req| async move {
            c.list_quotas(req.wrap(pb::ListQuotasRequest { options: None }))
                .await
        })
        .await?
        .quotas;
    for q in quotas {
        let sliced: u64 = q.slices.iter().map(|s| s.amount).sum();
        if sliced > q.total {
            violations.push(format!(
                "quota {}/{} sliced {sliced} of {}",
                q.provider, q.region, q.total
            ));
        }
    }
    Ok(violations)
}
