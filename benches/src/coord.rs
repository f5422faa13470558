//! The coordinator macro benchmark.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ballast_protocol::client::BallastClient;
use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use ballast_testkit::fleet::{self, domain_name, shard_id};
use ballast_testkit::{ClusterOptions, TestCluster};

use crate::stats::{Summary, closed_loop, dir_bytes, mib, ms, rss_bytes};

/// Flags of `ballast-bench coord`.
#[derive(clap::Args, Debug)]
pub struct CoordBenchArgs {
    /// Seconds each write-concurrency level runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Sequential reads per read mode.
    #[arg(long, default_value_t = 2000)]
    reads: usize,
    /// Leader SIGKILLs to time.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Domains loaded for the memory figure.
    #[arg(long, default_value_t = 100_000)]
    domains: usize,
    /// Cluster bindings loaded for the memory figure.
    #[arg(long, default_value_t = 20_000)]
    bindings: usize,
    /// Shards registered.
    #[arg(long, default_value_t = 200)]
    shards: usize,
    /// AZ evacuation rounds to time (away and home alternately).
    #[arg(long, default_value_t = 6)]
    evacuations: usize,
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks-coord.md")]
    out: PathBuf,
}

fn command(inner: Wire) -> pb::Command {
    pb::Command {
        command: Some(inner),
    }
}

struct ThroughputRow {
    in_flight: usize,
    writes: usize,
    per_second: f64,
    latency: Summary,
    errors: usize,
}

/// Runs `in_flight` writers for `seconds`, each assigning fresh domains.
async fn write_throughput(
    client: Arc<BallastClient>,
    in_flight: usize,
    seconds: u64,
    shards: usize,
) -> ThroughputRow {
    let mut run = closed_loop(in_flight, Duration::from_secs(seconds), move |worker, n| {
        let client = client.clone();
        async move {
            let domain = format!("zone=bench/rack=c{in_flight}-w{worker}-n{n}");
            let shard = shard_id((worker + n) % shards);
            client
                .write(command(Wire::AssignDomains(pb::AssignDomains {
                    assignments: vec![pb::DomainAssignment { domain, shard }],
                    allow_move: false,
                })))
                .await
                .is_ok()
        }
    })
    .await;
    ThroughputRow {
        in_flight,
        writes: run.latencies.len(),
        per_second: run.rate(),
        latency: Summary::of(&mut run.latencies),
        errors: run.errors,
    }
}

async fn read_latency(
    client: &BallastClient,
    reads: usize,
    stale: bool,
) -> anyhow::Result<Summary> {
    let mut samples = Vec::with_capacity(reads);
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..reads {
        if Instant::now() > deadline {
            break;
        }
        let begin = Instant::now();
        client
            .fleet(|mut c, req| async move {
                c.get_shard(req.wrap(pb::GetShardRequest {
                    options: Some(pb::ReadOptions { stale }),
                    id: shard_id(0),
                }))
                .await
            })
            .await?;
        samples.push(begin.elapsed());
    }
    Ok(Summary::of(&mut samples))
}

/// Opens one assignment watch per shard, then assigns `changes` domains round-robin and
/// times each from the write's start until the owning shard's stream delivers it.
async fn propagation(
    client: Arc<BallastClient>,
    shards: usize,
    changes: usize,
) -> anyhow::Result<Summary> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut watchers = Vec::new();
    for i in 0..shards {
        let client = client.clone();
        let tx = tx.clone();
        let shard_id = shard_id(i);
        let from = client.revision().await?;
        watchers.push(tokio::spawn(async move {
            let stream = client.watch_assignments(&shard_id, from, 0).await;
            let Ok(mut stream) = stream else { return };
            while let Ok(Some(update)) = stream.message().await {
                let now = Instant::now();
                for domain in update.domains_added {
                    let _ = tx.send((domain, now));
                }
            }
        }));
    }
    // Let every stream open before timing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut started = std::collections::HashMap::new();
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0..changes {
        let domain = format!("zone=bench/rack=watch-{n}");
        started.insert(domain.clone(), Instant::now());
        client
            .write(command(Wire::AssignDomains(pb::AssignDomains {
                assignments: vec![pb::DomainAssignment {
                    domain,
                    shard: shard_id(n % shards),
                }],
                allow_move: false,
            })))
            .await?;
        while let Ok((domain, at)) = rx.try_recv() {
            if let Some(begin) = started.remove(&domain) {
                samples.push(at - begin);
            }
        }
    }
    while !started.is_empty() && Instant::now() < deadline {
        if let Ok(Some((domain, at))) =
            tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
            && let Some(begin) = started.remove(&domain)
        {
            samples.push(at - begin);
        }
    }
    for w in watchers {
        w.abort();
    }
    if !started.is_empty() {
        anyhow::bail!(
            "{} assignments never reached their shard's watch",
            started.len()
        );
    }
    Ok(Summary::of(&mut samples))
}

/// One AZ evacuation round: how long the write took to commit, and until every receiving
/// shard's watch had delivered all of its new domains (both from the write's start).
struct Evacuation {
    moved: usize,
    committed: Duration,
    delivered: Duration,
}

/// Moves every domain of the shards in the third AZ (`AZS[2]`: shards `i % 3 == 2`, as
/// `register_shards` places them) to the other shards in one write, the way the rebalancer does
/// when their leases run out, then moves them home again; `rounds` writes in all. Each round is
/// timed from the write's start until every receiving shard's watch stream has delivered every
/// domain it gained. The domains are the first `domains` of `fleet::assign_domains`.
async fn evacuation(
    client: Arc<BallastClient>,
    shards: usize,
    domains: usize,
    rounds: usize,
) -> anyhow::Result<Vec<Evacuation>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String, Instant)>();
    let from = client.revision().await?;
    let mut watchers = Vec::new();
    for i in 0..shards {
        let client = client.clone();
        let tx = tx.clone();
        watchers.push(tokio::spawn(async move {
            let Ok(mut stream) = client.watch_assignments(&shard_id(i), from, 0).await else {
                return;
            };
            while let Ok(Some(update)) = stream.message().await {
                let now = Instant::now();
                for domain in update.domains_added {
                    let _ = tx.send((i, domain, now));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let survivors: Vec<usize> = (0..shards).filter(|i| i % 3 != 2).collect();
    let evacuees: Vec<(String, usize, usize)> = (0..domains)
        .filter(|n| (n % shards) % 3 == 2)
        .enumerate()
        .map(|(k, n)| (domain_name(n), n % shards, survivors[k % survivors.len()]))
        .collect();
    let mut results = Vec::new();
    for round in 0..rounds {
        let home = round % 2 == 1;
        let mut waiting: std::collections::HashMap<&str, usize> = evacuees
            .iter()
            .map(|(d, owner, away)| (d.as_str(), if home { *owner } else { *away }))
            .collect();
        let assignments = waiting
            .iter()
            .map(|(domain, shard)| pb::DomainAssignment {
                domain: domain.to_string(),
                shard: shard_id(*shard),
            })
            .collect();
        let started = Instant::now();
        client
            .write(command(Wire::AssignDomains(pb::AssignDomains {
                assignments,
                allow_move: true,
            })))
            .await
            .context("evacuation write")?;
        let committed = started.elapsed();
        let mut last = started;
        let deadline = started + Duration::from_secs(60);
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((shard, domain, at))) => {
                    if waiting.get(domain.as_str()) == Some(&shard) {
                        waiting.remove(domain.as_str());
                        last = last.max(at);
                    }
                }
                _ => anyhow::bail!(
                    "round {round}: {} moved domains never reached their shard's watch",
                    waiting.len()
                ),
            }
        }
        results.push(Evacuation {
            moved: evacuees.len(),
            committed,
            delivered: last - started,
        });
        eprintln!(
            "  round {round}: {} domains committed in {} ms, at every receiving shard in {} ms",
            evacuees.len(),
            ms(committed),
            ms(last - started)
        );
    }
    for w in watchers {
        w.abort();
    }
    Ok(results)
}

/// SIGKILLs the leader `count` times; each time, how long until a write through a fresh client
/// over all three endpoints is acknowledged. The killed replica is restarted and caught up
/// before the next kill.
async fn leader_kills(
    cluster: &mut TestCluster,
    count: usize,
    label: &str,
) -> anyhow::Result<Summary> {
    let mut samples = Vec::new();
    for round in 0..count {
        let leader = cluster.leader().await;
        cluster.kill(leader);
        let killed = Instant::now();
        let fresh = cluster.client();
        fresh
            .write(command(Wire::AssignDomains(pb::AssignDomains {
                assignments: vec![pb::DomainAssignment {
                    domain: format!("zone=bench/rack={label}-{round}"),
                    shard: shard_id(0),
                }],
                allow_move: false,
            })))
            .await
            .context("first write after a leader kill")?;
        samples.push(killed.elapsed());
        eprintln!("  {label} {round}: {} ms", ms(killed.elapsed()));
        cluster.restart(leader);
        let revision = fresh.revision().await?;
        cluster.wait_for_revision(leader, revision).await;
    }
    Ok(Summary::of(&mut samples))
}

fn rss_row(cluster: &TestCluster) -> (Vec<u64>, u64) {
    let each: Vec<u64> = cluster
        .replicas
        .iter()
        .map(|r| r.pid().and_then(rss_bytes).unwrap_or(0))
        .collect();
    let total = each.iter().sum();
    (each, total)
}

/// Runs the benchmark and writes the report.
pub async fn run(args: CoordBenchArgs) -> anyhow::Result<()> {
    let program = std::env::current_exe().context("locating ballast-bench")?;
    let dir = tempdir_path();
    let mut cluster = TestCluster::start_with(
        ClusterOptions {
            program,
            leading_args: vec!["replica".into()],
            extra: Vec::new(),
            dir: Some(dir.clone()),
            ..ClusterOptions::default()
        },
        3,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss, idle_total) = rss_row(&cluster);
    eprintln!("idle RSS: {idle_rss:?}");

    let client = Arc::new(cluster.client());
    fleet::register_shards(&client, args.shards)
        .await
        .context("registering shards")?;

    let mut throughput = Vec::new();
    for in_flight in [1usize, 32, 128] {
        eprintln!("writes with {in_flight} in flight for {} s", args.seconds);
        let row = write_throughput(client.clone(), in_flight, args.seconds, args.shards).await;
        eprintln!("  {:.0} writes/s", row.per_second);
        throughput.push(row);
    }

    let leader = cluster.leader().await;
    let follower = cluster.follower_of(leader);
    eprintln!("reads");
    let read_leader_linear = read_latency(&cluster.client_of(leader), args.reads, false).await?;
    let read_follower_linear =
        read_latency(&cluster.client_of(follower), args.reads, false).await?;
    let read_stale = read_latency(&cluster.client_of(follower), args.reads, true).await?;

    eprintln!("assignment propagation to {} watching shards", args.shards);
    let propagated = propagation(client.clone(), args.shards, 1000).await?;

    eprintln!(
        "loading {} domains and {} bindings",
        args.domains, args.bindings
    );
    fleet::assign_domains(&client, args.domains, args.shards)
        .await
        .context("loading domains")?;
    fleet::bind_clusters(&client, args.bindings, args.shards)
        .await
        .context("loading bindings")?;
    // Give every replica time to apply and settle allocator arenas before reading RSS.
    let revision = client.revision().await?;
    cluster.wait_until_converged(revision).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (loaded_rss, loaded_total) = rss_row(&cluster);
    let disk: Vec<u64> = cluster
        .replicas
        .iter()
        .map(|r| dir_bytes(&r.data_dir))
        .collect();

    eprintln!("{} leader kills", args.kills);
    let kills = leader_kills(&mut cluster, args.kills, "kill").await?;

    eprintln!("AZ evacuation with {} watching shards", args.shards);
    let evacuations =
        evacuation(client.clone(), args.shards, args.domains, args.evacuations).await?;
    // Right after the evacuations, a follower may still be receiving their megabytes; a new
    // leader has to finish that before it can commit.
    let kills_after_evacuation = if args.evacuations > 0 {
        eprintln!("3 leader kills right after the evacuations");
        Some(leader_kills(&mut cluster, 3, "kill-after-evacuation").await?)
    } else {
        None
    };

    let mut report = String::new();
    let now = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    writeln!(report, "# Coordinator benchmark\n")?;
    writeln!(
        report,
        "Produced by `cargo run --release -p ballast-bench -- coord` on {now}.\n\nMachine: {}.\n\
         Cluster: 3 `ballast-coord` replicas (child processes) on 127.0.0.1 with default flags \
         ({}), each fsyncing its fjall journal before \
         acknowledging appends. {} shards registered. Figures move with the disk, which on this \
         machine changes speed from hour to hour; compare runs only within one report. Shard \
         figures (engine, cold restart) are in `benchmarks-shard.md`; DR figures (export, \
         restore, RTO, RPO, archive size for the 100M-fleet state, local and S3) in \
         `benchmarks-dr.md`.\n",
        crate::stats::machine(),
        ballast_coordinator::config::default_timers(),
        args.shards
    )?;
    writeln!(
        report,
        "## Committed writes (single-domain assignments, {} s per level)\n",
        args.seconds
    )?;
    writeln!(
        report,
        "| in flight | writes | writes/s | p50 ms | p99 ms | max ms | errors |"
    )?;
    writeln!(report, "|---:|---:|---:|---:|---:|---:|---:|")?;
    for row in &throughput {
        writeln!(
            report,
            "| {} | {} | {:.0} | {} | {} | {} | {} |",
            row.in_flight,
            row.writes,
            row.per_second,
            ms(row.latency.p50),
            ms(row.latency.p99),
            ms(row.latency.max),
            row.errors
        )?;
    }
    writeln!(report, "\n## Reads (`GetShard`, one client, sequential)\n")?;
    writeln!(report, "| read | count | p50 ms | p99 ms | max ms |")?;
    writeln!(report, "|---|---:|---:|---:|---:|")?;
    for (name, s) in [
        ("linearizable, on the leader", &read_leader_linear),
        (
            "linearizable, on a follower (read index)",
            &read_follower_linear,
        ),
        ("stale, on a follower", &read_stale),
    ] {
        writeln!(
            report,
            "| {name} | {} | {} | {} | {} |",
            s.count,
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        )?;
    }
    writeln!(
        report,
        "\n## Assignment change → owning shard's watch ({} watching shards)\n",
        args.shards
    )?;
    writeln!(
        report,
        "{} single-domain assignments, round-robin over the shards, one at a time; time from the \
         write's start (so including its commit) until the owner's watch stream delivers it. All \
         watch streams are served by the replicas the leader-aware client picks.\n",
        propagated.count
    )?;
    writeln!(report, "| p50 ms | p99 ms | max ms |")?;
    writeln!(report, "|---:|---:|---:|")?;
    writeln!(
        report,
        "| {} | {} | {} |",
        ms(propagated.p50),
        ms(propagated.p99),
        ms(propagated.max)
    )?;
    writeln!(
        report,
        "\n## AZ evacuation → every receiving shard's watch ({} watching shards)\n",
        args.shards
    )?;
    writeln!(
        report,
        "With the {} domains loaded, every domain of the shards in `az-c` (a third of them) is \
         moved to the other shards in one write, as the rebalancer does in one round when those \
         shards' leases run out; the next round moves them home. Time from the write's start \
         until its commit is acknowledged, and until every receiving shard's watch stream has \
         delivered every domain it gained. The lease wait before a rebalancer round is not \
         included (it is the shard lease, 10 s by default).\n",
        args.domains
    )?;
    writeln!(
        report,
        "| round | domains moved | committed ms | at every receiving shard ms |"
    )?;
    writeln!(report, "|---:|---:|---:|---:|")?;
    for (round, e) in evacuations.iter().enumerate() {
        writeln!(
            report,
            "| {} ({}) | {} | {} | {} |",
            round + 1,
            if round % 2 == 0 { "away" } else { "home" },
            e.moved,
            ms(e.committed),
            ms(e.delivered)
        )?;
    }
    writeln!(report, "\n## Leader SIGKILL → next acknowledged write\n")?;
    writeln!(
        report,
        "Time from SIGKILL of the leader until a write through a fresh client over all three \
         endpoints is acknowledged; the killed replica is restarted and caught up between kills.\n"
    )?;
    writeln!(report, "| when | kills | median ms | p99 ms | max ms |")?;
    writeln!(report, "|---|---:|---:|---:|---:|")?;
    for (when, k) in [
        ("after loading the fleet", Some(&kills)),
        (
            "right after the AZ evacuations above (a follower may still be taking in their megabytes)",
            kills_after_evacuation.as_ref(),
        ),
    ] {
        if let Some(k) = k {
            writeln!(
                report,
                "| {when} | {} | {} | {} | {} |",
                k.count,
                ms(k.p50),
                ms(k.p99),
                ms(k.max)
            )?;
        }
    }
    writeln!(report, "\n## Memory and disk\n")?;
    writeln!(
        report,
        "Loaded = {} shards + {} domains + {} cluster bindings (plus the benchmark's own \
         writes), applied on every replica.\n",
        args.shards, args.domains, args.bindings
    )?;
    writeln!(
        report,
        "| replica | RSS idle MiB | RSS loaded MiB | data dir MiB |"
    )?;
    writeln!(report, "|---|---:|---:|---:|")?;
    for (i, r) in cluster.replicas.iter().enumerate() {
        writeln!(
            report,
            "| {} | {} | {} | {} |",
            r.id,
            mib(idle_rss.get(i).copied().unwrap_or(0)),
            mib(loaded_rss.get(i).copied().unwrap_or(0)),
            mib(disk.get(i).copied().unwrap_or(0))
        )?;
    }
    writeln!(
        report,
        "| **total** | {} | {} | {} |",
        mib(idle_total),
        mib(loaded_total),
        mib(disk.iter().sum())
    )?;
    writeln!(
        report,
        "\nThe side-by-side run against a 3-member etcd (the same workload through both, \
         ratios) is `ballast-bench kv`, in `benchmarks-kv.md`."
    )?;
    crate::report::write_keeping(&args.out, &report, &[crate::heartbeat::SECTION])?;
    println!("{report}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempdir_path() -> PathBuf {
    std::env::temp_dir().join(format!("ballast-bench-{}", std::process::id()))
}
