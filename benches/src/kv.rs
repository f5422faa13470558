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
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks-kv.md")]
    pub out: PathBuf,
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
    let ballast = TestCluster::start_with(
        ClusterOptions {
            program: program.clone(),
            leading_args: vec!["replica".into()],
            ..ClusterOptions::default()
        },
        3,
    )
    .await;
    let etcd = EtcdCluster::start(work.path(), 3).context("starting etcd")?;
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
        "| in flight | Ballast puts/s | etcd puts/s | ratio | Ballast p50 / p99 ms | etcd p50 / p99 ms | errors B / e |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---|---|---|")?;
    for (in_flight, b, e, _) in &rows {
        writeln!(
            out,
            "| {in_flight} | {:.0} | {:.0} | {:.2} | {} / {} | {} / {} | {} / {} |",
            b.0,
            e.0,
            b.0 / e.0.max(1.0),
            ms(b.1.p50),
            ms(b.1.p99),
            ms(e.1.p50),
            ms(e.1.p99),
            b.2,
            e.2
        )?;
    }
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
