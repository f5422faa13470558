//! KV benchmark: the same etcd-API put workload against a 3-replica Ballast and a 3-member etcd
//! (Debian `etcd-server`, fsync on, both on loopback) started in the same run, alternating the
//! two at each concurrency level so disk-speed drift hits both alike; reports ratios.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ballast_protocol::coordination::Coordinator;
use ballast_protocol::etcdserverpb as epb;
use ballast_testkit::etcd::EtcdCluster;
use ballast_testkit::{ClusterOptions, TestCluster};

use crate::stats::{Summary, closed_loop, mib, ms, rss_bytes};

/// Flags of `ballast-bench kv`.
#[derive(clap::Args, Debug)]
pub struct KvBenchArgs {
    /// Seconds per concurrency level and system.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Leader SIGKILLs per system (alternating), each timed to the next acknowledged put.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Extra flags for the Ballast replicas (e.g. `--replica-flag=--election-max-ms=150`);
    /// named in the report.
    #[arg(long = "replica-flag", allow_hyphen_values = true)]
    replica_flags: Vec<String>,
    /// Markdown report to write; the charts go next to it (`<name>-throughput.svg`,
    /// `<name>-failover.svg`).
    #[arg(long, default_value = "docs/benchmarks-kv.md")]
    pub out: PathBuf,
}

/// Puts through `coordinator` until one is acknowledged (each attempt bounded by 1 s);
/// how long that took.
async fn first_ack(coordinator: &Coordinator, round: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut kv = coordinator.kv();
        let put = kv.put(epb::PutRequest {
            key: format!("failover/{round}").into_bytes(),
            value: b"x".to_vec(),
            ..Default::default()
        });
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), put).await {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("no put acknowledged within 60 s of a leader kill");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// SIGKILLs Ballast's leader, times the next acknowledged put, restarts the replica and
/// waits until it serves again.
async fn ballast_failover(
    cluster: &mut TestCluster,
    client: &Coordinator,
    round: usize,
) -> anyhow::Result<Duration> {
    let leader = cluster.leader().await;
    cluster.kill(leader);
    let took = first_ack(client, round).await?;
    cluster.restart(leader);
    let revision = cluster.client().revision().await?;
    cluster.wait_for_revision(leader, revision).await;
    Ok(took)
}

/// The same for etcd.
async fn etcd_failover(
    etcd: &mut EtcdCluster,
    client: &Coordinator,
    round: usize,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if let Some(leader) = etcd.leader().await {
            break leader;
        }
        if Instant::now() > deadline {
            bail!("etcd reports no leader");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    etcd.kill(leader);
    let took = first_ack(client, round).await?;
    etcd.restart(leader)?;
    // Back in the cluster: it reports the leader again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while etcd.pids().len() < etcd.endpoints.len() || etcd.leader().await.is_none() {
        if Instant::now() > deadline {
            bail!("etcd member {leader} did not rejoin");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ready(client).await?;
    Ok(took)
}

/// Puts for `seconds` with `in_flight` concurrent writers; latencies of acknowledged puts.
pub(crate) async fn puts(
    coordinator: &Coordinator,
    in_flight: usize,
    seconds: u64,
    value: &[u8],
) -> (f64, Summary, usize) {
    let value = Arc::new(value.to_vec());
    let coordinator = coordinator.clone();
    let mut run = closed_loop(in_flight, Duration::from_secs(seconds), move |worker, n| {
        let mut kv = coordinator.kv();
        let value = value.to_vec();
        async move {
            kv.put(epb::PutRequest {
                key: format!("bench/{in_flight}/{worker}/{n}").into_bytes(),
                value,
                ..Default::default()
            })
            .await
            .is_ok()
        }
    })
    .await;
    (run.rate(), Summary::of(&mut run.latencies), run.errors)
}

/// Waits until `coordinator` accepts a put.
pub(crate) async fn ready(coordinator: &Coordinator) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while coordinator
        .kv()
        .put(epb::PutRequest {
            key: b"ready".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        })
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("not accepting writes within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Runs the benchmark and writes the report.
pub async fn run(args: KvBenchArgs) -> anyhow::Result<()> {
    let work = tempfile::tempdir().context("temp dir")?;
    let program = std::env::current_exe().context("locating ballast-bench")?;
    let mut ballast = TestCluster::start_with(
        ClusterOptions {
            program: program.clone(),
            leading_args: vec!["replica".into()],
            extra: args.replica_flags.clone(),
            ..ClusterOptions::default()
        },
        3,
    )
    .await;
    let mut etcd = EtcdCluster::start(work.path(), 3).context("starting etcd")?;
    let etcd_client = Coordinator::new(&etcd.endpoints)?;
    ready(&etcd_client).await?;
    // Ballast's etcd backend (ADR 0009) on the same etcd: its log goes through etcd's quorum.
    let on_etcd = TestCluster::start_unformed(
        ClusterOptions {
            program,
            leading_args: vec!["replica".into()],
            extra: vec![
                "--backend".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                etcd.endpoints.join(","),
                "--etcd-prefix".into(),
                "/ballast/bench".into(),
            ],
            ..ClusterOptions::default()
        },
        3,
    )
    .await;
    let ballast_client = Coordinator::new(&ballast.endpoints())?;
    let on_etcd_client = Coordinator::new(&on_etcd.endpoints())?;
    ready(&ballast_client).await?;
    ready(&on_etcd_client).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = |pids: Vec<u32>| -> u64 { pids.into_iter().filter_map(rss_bytes).sum() };
    let ballast_pids = || {
        ballast
            .replicas
            .iter()
            .filter_map(|r| r.pid())
            .collect::<Vec<_>>()
    };
    let etcd_pids = || etcd.pids();
    let idle = (rss(ballast_pids()), rss(etcd_pids()));
    let value = vec![b'x'; args.value_bytes];
    let mut rows = Vec::new();
    for in_flight in [1usize, 32, 128] {
        // etcd first, then Ballast, at each level: both see the same disk minutes.
        eprintln!("{in_flight} in flight: etcd");
        let e = puts(&etcd_client, in_flight, args.seconds, &value).await;
        eprintln!("{in_flight} in flight: ballast");
        let b = puts(&ballast_client, in_flight, args.seconds, &value).await;
        eprintln!("{in_flight} in flight: ballast on etcd");
        let o = puts(&on_etcd_client, in_flight, args.seconds, &value).await;
        eprintln!(
            "  etcd {:.0}/s, ballast {:.0}/s, ballast on etcd {:.0}/s",
            e.0, b.0, o.0
        );
        rows.push((in_flight, b, e, o));
    }
    let loaded = (rss(ballast_pids()), rss(etcd_pids()));
    let disk = (
        ballast
            .replicas
            .iter()
            .map(|r| crate::stats::dir_bytes(&r.data_dir))
            .sum::<u64>(),
        etcd.data_dirs()
            .iter()
            .map(|d| crate::stats::dir_bytes(d))
            .sum::<u64>(),
    );
    // Leader SIGKILL → next acknowledged put, alternating the two systems.
    let (mut ballast_kills, mut etcd_kills) = (Vec::new(), Vec::new());
    for round in 0..args.kills {
        let e = etcd_failover(&mut etcd, &etcd_client, round).await?;
        let b = ballast_failover(&mut ballast, &ballast_client, round).await?;
        eprintln!("kill {round}: etcd {} ms, ballast {} ms", ms(e), ms(b));
        etcd_kills.push(e);
        ballast_kills.push(b);
    }
    let failover = (
        Summary::of(&mut ballast_kills.clone()),
        Summary::of(&mut etcd_kills.clone()),
    );
    let mut out = String::new();
    writeln!(out, "# KV benchmark: Ballast vs etcd\n")?;
    writeln!(
        out,
        "`cargo run --release -p ballast-bench -- kv`: the same etcd-API client (tonic, balanced \
         over the three endpoints) puts {}-byte values under unique keys for {} s per level into a \
         3-replica Ballast and a 3-member etcd {} (Debian `etcd-server`, default flags, fsync on), \
         both on loopback in the same run; etcd then Ballast at each level. Machine: {}.\n",
        args.value_bytes,
        args.seconds,
        ballast_testkit::etcd::version(),
        crate::stats::machine()
    )?;
    writeln!(
        out,
        "| in flight | Ballast puts/s | etcd puts/s | ratio | Ballast p50 / p99 / max ms | etcd p50 / p99 / max ms | errors B / e |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---|---|---|")?;
    for (in_flight, b, e, _) in &rows {
        writeln!(
            out,
            "| {in_flight} | {:.0} | {:.0} | {:.2} | {} / {} / {} | {} / {} / {} | {} / {} |",
            b.0,
            e.0,
            b.0 / e.0.max(1.0),
            ms(b.1.p50),
            ms(b.1.p99),
            ms(b.1.max),
            ms(e.1.p50),
            ms(e.1.p99),
            ms(e.1.max),
            b.2,
            e.2
        )?;
    }
    let stem = args
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "benchmarks-kv".into());
    let chart = |suffix: &str| args.out.with_file_name(format!("{stem}-{suffix}.svg"));
    writeln!(out, "\n![puts per second]({stem}-throughput.svg)\n")?;
    writeln!(
        out,
        "Leader SIGKILL → next acknowledged put (client retrying every 2 ms, each attempt bounded \
         by 1 s), {} kills each, alternating; the killed member is restarted and back before the \
         next kill. Ballast {}, etcd with its defaults (heartbeat 100 ms, election timeout \
         1 s):\n",
        args.kills,
        if args.replica_flags.is_empty() {
            format!(
                "with its default timers ({})",
                ballast_coordinator::config::default_timers()
            )
        } else {
            format!("with `{}`", args.replica_flags.join(" "))
        }
    )?;
    writeln!(out, "| | median ms | max ms |")?;
    writeln!(out, "|---|---:|---:|")?;
    writeln!(
        out,
        "| Ballast | {} | {} |",
        ms(failover.0.p50),
        ms(failover.0.max)
    )?;
    writeln!(
        out,
        "| etcd | {} | {} |",
        ms(failover.1.p50),
        ms(failover.1.max)
    )?;
    writeln!(out, "\n![failover]({stem}-failover.svg)\n")?;
    writeln!(
        out,
        "On-disk size of the three members after the run: Ballast {} MiB, etcd {} MiB.",
        mib(disk.0),
        mib(disk.1)
    )?;
    let throughput: Vec<(String, f64)> = rows
        .iter()
        .flat_map(|(in_flight, b, e, _)| {
            [
                (format!("etcd ×{in_flight}"), e.0),
                (format!("Ballast ×{in_flight}"), b.0),
            ]
        })
        .collect();
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(
        chart("throughput"),
        ballast_testkit::svg::bar_chart(
            "etcd-API puts per second, 3 members on loopback (×N = in flight)",
            "system × in flight",
            "puts/s",
            &throughput,
        ),
    )?;
    let kills: Vec<(String, f64)> = ballast_kills
        .iter()
        .zip(&etcd_kills)
        .enumerate()
        .flat_map(|(n, (b, e))| {
            [
                (format!("e{n}"), e.as_secs_f64() * 1000.0),
                (format!("B{n}"), b.as_secs_f64() * 1000.0),
            ]
        })
        .collect();
    std::fs::write(
        chart("failover"),
        ballast_testkit::svg::bar_chart(
            "Leader SIGKILL → next acknowledged put, per kill (e = etcd, B = Ballast)",
            "kill",
            "ms",
            &kills,
        ),
    )?;
    writeln!(
        out,
        "\nBallast with `--backend etcd` (ADR 0009: three Ballast replicas keeping their log in \
         the same 3-member etcd, one etcd transaction per batch of writes), same client and \
         workload, run third at each level:\n"
    )?;
    writeln!(
        out,
        "| in flight | Ballast-on-etcd puts/s | vs etcd alone | p50 / p99 ms | errors |"
    )?;
    writeln!(out, "|---:|---:|---:|---|---:|")?;
    for (in_flight, _, e, o) in &rows {
        writeln!(
            out,
            "| {in_flight} | {:.0} | {:.2} | {} / {} | {} |",
            o.0,
            o.0 / e.0.max(1.0),
            ms(o.1.p50),
            ms(o.1.p99),
            o.2
        )?;
    }
    writeln!(
        out,
        "\nRSS of the three members together: Ballast {} MiB idle, {} MiB after the run; etcd {} MiB \
         idle, {} MiB after the run.",
        mib(idle.0),
        mib(loaded.0),
        mib(idle.1),
        mib(loaded.1)
    )?;
    std::fs::write(&args.out, &out).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{out}");
    drop(on_etcd);
    drop(etcd);
    drop(ballast);
    Ok(())
}
