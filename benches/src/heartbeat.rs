//! Heartbeats under load: how long a shard's lease renewal takes while the coordinator does
//! its heaviest work. A lease judged by heartbeats that queue behind bulk writes, snapshots or
//! KV traffic lapses at shards that are serving (issue #26): this measures the renewal's round
//! trip in each phase, with 200 shards renewing as real ones do.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ballast_protocol::client::BallastClient;
use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use ballast_testkit::fleet::{self, domain_name, shard_id};
use ballast_testkit::{ClusterOptions, TestCluster};
use std::sync::Mutex;

use crate::stats::{Summary, ms};

/// Title of this benchmark's section in `docs/benchmarks-coord.md`.
pub const SECTION: &str = "## Heartbeats under load";

/// Flags of `ballast-bench heartbeat`.
#[derive(clap::Args, Debug)]
pub struct HeartbeatArgs {
    /// Shards renewing their leases.
    #[arg(long, default_value_t = 200)]
    shards: usize,
    /// Each shard's heartbeat interval, ms (a third of the default 3 s lease, as shards do).
    #[arg(long, default_value_t = 1_000)]
    interval_ms: u64,
    /// Quotas reported in each heartbeat's summary.
    #[arg(long, default_value_t = 30)]
    quotas: usize,
    /// Domains in the fleet (the bulk writes move them between shards).
    #[arg(long, default_value_t = 100_000)]
    domains: usize,
    /// Domains moved by each bulk write (one log entry).
    #[arg(long, default_value_t = 25_000)]
    batch: usize,
    /// Seconds each phase lasts.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Replicas snapshot after this many log entries (small, so snapshots of the whole fleet
    /// state fall inside the bulk phase).
    #[arg(long, default_value_t = 10)]
    snapshot_entries: u64,
    /// Markdown file whose heartbeat section is written (the rest is kept).
    #[arg(long, default_value = "docs/benchmarks-coord.md")]
    pub out: PathBuf,
}

/// One phase's figures.
struct Phase {
    name: &'static str,
    beats: Summary,
    failed: usize,
    load: String,
}

/// Heartbeats of every shard, each on its own connection, until `stop`; round trips of the
/// renewals that succeeded and the count of those that failed (2 s deadline).
async fn heartbeats(
    clients: Arc<Vec<BallastClient>>,
    args: &HeartbeatArgs,
    stop: Arc<AtomicBool>,
) -> (Vec<Duration>, usize) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let interval = Duration::from_millis(args.interval_ms);
    let summary = pb::ShardSummary {
        machines_by_state: [("assigned".to_string(), 500), ("idle".to_string(), 20)].into(),
        demand: 500,
        shortfall: 0,
        quotas: (0..args.quotas)
            .map(|q| pb::QuotaUse {
                provider: format!("provider-{}", q / 6),
                region: format!("region-{}", q % 6),
                slice: 40,
                held: 17,
                in_flight: 0,
            })
            .collect(),
        quota_shortfall: 0,
        // The full-scale fleet's 100 clusters per shard, each asking for 7 machines.
        cluster_demand: (0..100).map(|c| (format!("cluster-{c:06}"), 7)).collect(),
    };
    let tasks: Vec<_> = (0..clients.len())
        .map(|i| {
            let (clients, stop, samples, failed, summary) = (
                clients.clone(),
                stop.clone(),
                samples.clone(),
                failed.clone(),
                summary.clone(),
            );
            tokio::spawn(async move {
                // Spread over the interval, as shards started at different times are.
                tokio::time::sleep(interval * i as u32 / clients.len() as u32).await;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let begun = Instant::now();
                    let beat = pb::HeartbeatRequest {
                        shard_id: shard_id(i),
                        address: format!("10.0.{}.{}:7800", i / 250, i % 250),
                        az: fleet::AZS[i % 3].into(),
                        lease_ttl_ms: 3_000,
                        epoch: 1,
                        summary: Some(summary.clone()),
                    };
                    let call = clients[i].assignments(|mut c, req| {
                        let beat = beat.clone();
                        async move { c.heartbeat(req.wrap(beat)).await }
                    });
                    match tokio::time::timeout(Duration::from_secs(2), call).await {
                        Ok(Ok(_)) => samples
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(begun.elapsed()),
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    next += interval;
                    tokio::time::sleep_until(next.into()).await;
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    (samples, failed.load(Ordering::Relaxed))
}

/// Runs `load` for the phase while every shard heartbeats; the heartbeats' figures and what
/// the load did.
async fn phase<F, Fut>(
    name: &'static str,
    clients: &Arc<Vec<BallastClient>>,
    args: &HeartbeatArgs,
    load: F,
) -> Phase
where
    F: FnOnce(Arc<AtomicBool>) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    eprintln!("phase: {name}");
    let stop = Arc::new(AtomicBool::new(false));
    let beating = tokio::spawn({
        let (clients, stop) = (clients.clone(), stop.clone());
        let args = HeartbeatArgs {
            out: PathBuf::new(),
            ..*args
        };
        async move { heartbeats(clients, &args, stop).await }
    });
    let load_stop = Arc::new(AtomicBool::new(false));
    let timer = tokio::spawn({
        let (stop, load_stop) = (stop.clone(), load_stop.clone());
        let seconds = args.seconds;
        async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            load_stop.store(true, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
        }
    });
    let load = load(load_stop).await;
    let _ = timer.await;
    let (mut samples, failed) = beating.await.unwrap_or_default();
    let beats = Summary::of(&mut samples);
    eprintln!(
        "  {} beats, p50 {} p99 {} max {} ms, {failed} failed; {load}",
        beats.count,
        ms(beats.p50),
        ms(beats.p99),
        ms(beats.max)
    );
    Phase {
        name,
        beats,
        failed,
        load,
    }
}

/// Bulk fleet writes until `stop`: each moves `batch` domains to other shards in one command.
async fn bulk_writes(client: BallastClient, args: &HeartbeatArgs, stop: Arc<AtomicBool>) -> String {
    let (mut written, mut failed, mut round) = (0usize, 0usize, 1usize);
    let mut took = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let start = (round * args.batch) % args.domains.max(1);
        let assignments = (start..start + args.batch)
            .map(|n| pb::DomainAssignment {
                domain: domain_name(n % args.domains),
                shard: shard_id((n + round) % args.shards),
            })
            .collect();
        let begun = Instant::now();
        let answer = client
            .write(pb::Command {
                command: Some(Wire::AssignDomains(pb::AssignDomains {
                    assignments,
                    allow_move: true,
                })),
            })
            .await;
        match answer {
            Ok(_) => {
                written += 1;
                took.push(begun.elapsed());
            }
            Err(_) => failed += 1,
        }
        round += 1;
    }
    let each = Summary::of(&mut took);
    format!(
        "{written} writes of {} domain moves (p50 {} ms each), {failed} failed",
        args.batch,
        ms(each.p50)
    )
}

/// etcd-API puts with 128 in flight until `stop`.
async fn kv_puts(address: String, stop: Arc<AtomicBool>) -> String {
    let Ok(kv) = epb::kv_client::KvClient::connect(format!("http://{address}")).await else {
        return "could not connect for puts".into();
    };
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let workers: Vec<_> = (0..128)
        .map(|w| {
            let (mut kv, stop, done, failed) =
                (kv.clone(), stop.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let put = kv.put(epb::PutRequest {
                        key: format!("hb/{w}/{n}").into_bytes(),
                        value: vec![b'x'; 64],
                        ..Default::default()
                    });
                    match tokio::time::timeout(Duration::from_secs(5), put).await {
                        Ok(Ok(_)) => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    n += 1;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let done = done.load(Ordering::Relaxed);
    format!(
        "{done} puts ({:.0}/s), {} failed",
        done as f64 / began.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed)
    )
}

/// Runs the benchmark and writes its section into `--out`.
pub async fn run(args: HeartbeatArgs) -> anyhow::Result<()> {
    let program = std::env::current_exe().context("locating ballast-bench")?;
    let dir = tempfile::tempdir().context("temp dir")?;
    let snapshot_entries = args.snapshot_entries.to_string();
    let cluster = TestCluster::start_with(
        ClusterOptions {
            program,
            leading_args: vec!["replica".into()],
            extra: vec!["--snapshot-entries".into(), snapshot_entries],
            dir: Some(dir.path().to_path_buf()),
            ..ClusterOptions::default()
        },
        3,
    )
    .await;
    let client = cluster.client();
    fleet::register_shards(&client, args.shards)
        .await
        .context("registering shards")?;
    fleet::assign_domains(&client, args.domains, args.shards)
        .await
        .context("assigning domains")?;
    let clients: Arc<Vec<BallastClient>> =
        Arc::new((0..args.shards).map(|_| cluster.client()).collect());
    let leader = cluster.leader().await;
    let leader_address = cluster.replica(leader).address.clone();
    let mut phases = Vec::new();
    phases.push(
        phase("idle", &clients, &args, |_| async {
            "nothing else".to_string()
        })
        .await,
    );
    phases.push(
        phase("bulk fleet writes and snapshots", &clients, &args, |stop| {
            let client = cluster.client();
            let args = &args;
            async move { bulk_writes(client, args, stop).await }
        })
        .await,
    );
    phases.push(
        phase("KV puts, 128 in flight", &clients, &args, |stop| {
            kv_puts(leader_address.clone(), stop)
        })
        .await,
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{SECTION}\n\n`cargo run --release -p ballast-bench -- heartbeat` ({}, {}). Three \
         replicas (child processes, default timers, `--snapshot-entries {}` so snapshots of the \
         whole state fall inside the bulk phase), {} domains over {} registered shards. Every \
         shard renews its lease every {} ms on its own connection, with a summary of {} quotas, \
         as shard workers do; a renewal failing within 2 s counts as failed. Each phase lasts \
         {} s. A renewal is the time a shard's lease judgement depends on: one slower than the \
         lease (3 s) lets a serving shard lapse.\n",
        crate::report::today(),
        crate::stats::machine(),
        args.snapshot_entries,
        args.domains,
        args.shards,
        args.interval_ms,
        args.quotas,
        args.seconds,
    );
    let _ = writeln!(
        out,
        "| phase | renewals | p50 ms | p99 ms | max ms | failed | the load |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    for p in &phases {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            p.beats.count,
            ms(p.beats.p50),
            ms(p.beats.p99),
            ms(p.beats.max),
            p.failed,
            p.load
        );
    }
    crate::report::write_section(&args.out, SECTION, &out)?;
    println!("{out}");
    Ok(())
}
