//! `ballast-bench kv-profile`: one put level against a Ballast cluster alone, for finding
//! where the CPU a put costs goes (issue #23: on a 2-core box the put rate at 32 and 128 in
//! flight is bound by CPU, so twice etcd's rate needs half its CPU a put).
//!
//! It prints the CPU time each replica used per acknowledged put, by role, and with
//! `--perf-out` records the leader with `perf record` for the level's length, so
//! `perf report -i <dir>/leader.data` shows what the leader spends it on.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use ballast_protocol::coordination::Coordinator;
use ballast_testkit::cpu_time;

use super::{ballast_cluster, failover, puts, ready};

/// Flags of `ballast-bench kv-profile`.
#[derive(clap::Args, Debug)]
pub struct KvProfileArgs {
    /// Concurrent writers.
    #[arg(long, default_value_t = 128)]
    in_flight: usize,
    /// Seconds of load (after a warm-up of a quarter of it).
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Where the clients send their puts: `balanced` over every replica (as etcd clients do),
    /// `leader` or `follower` only.
    #[arg(long, default_value = "balanced")]
    via: String,
    /// Extra flags for the replicas, as for `ballast-bench kv`.
    #[arg(long = "replica-flag", allow_hyphen_values = true)]
    replica_flags: Vec<String>,
    /// Directory for `leader.data` from `perf record -g` of the leader during the level
    /// (needs `perf`; build with frame pointers for useful call graphs, see
    /// docs/benchmarks.md).
    #[arg(long)]
    perf_out: Option<PathBuf>,
}

/// Runs one level and prints what each replica spent on it.
pub async fn run(args: KvProfileArgs) -> anyhow::Result<()> {
    let program = std::env::current_exe().context("locating ballast-bench")?;
    let cluster = ballast_cluster(&program, &args.replica_flags).await;
    let endpoints = cluster.endpoints();
    ready(&Coordinator::new(&endpoints)?).await?;
    let (leader, _) = failover::find_leader(&endpoints).await?;
    let follower = (leader + 1) % endpoints.len();
    let client = match args.via.as_str() {
        "balanced" => Coordinator::new(&endpoints)?,
        "leader" => Coordinator::new(&[endpoints[leader].clone()])?,
        "follower" => Coordinator::new(&[endpoints[follower].clone()])?,
        other => anyhow::bail!("--via {other}: expected balanced, leader or follower"),
    };
    let pids: Vec<u32> = cluster
        .replicas
        .iter()
        .map(|r| r.pid().context("a replica that is not running"))
        .collect::<anyhow::Result<_>>()?;
    let value = vec![b'x'; args.value_bytes];

    // A warm-up, so the level measures a cluster whose connections and caches are set up.
    puts(&client, args.in_flight, args.seconds.div_ceil(4), &value).await;

    let mut perf = match &args.perf_out {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let data = dir.join("leader.data");
            let child = Command::new("perf")
                .args(["record", "-g", "-F", "999", "-o"])
                .arg(&data)
                .args(["-p", &pids[leader].to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf record")?;
            Some((child, data))
        }
        None => None,
    };
    let before: Vec<Duration> = pids
        .iter()
        .map(|&p| cpu_time(p).unwrap_or_default())
        .collect();
    let (rate, latency, errors, first_error) =
        puts(&client, args.in_flight, args.seconds, &value).await;
    let after: Vec<Duration> = pids
        .iter()
        .map(|&p| cpu_time(p).unwrap_or_default())
        .collect();
    if let Some((child, data)) = perf.take() {
        stop_perf(child).await?;
        eprintln!("perf data: {}", data.display());
    }

    let acknowledged = (rate * args.seconds as f64).max(1.0);
    println!(
        "{} B × {} in flight via {}: {rate:.0} puts/s, p50 {:?}, p99 {:?}, {errors} errors{}",
        args.value_bytes,
        args.in_flight,
        args.via,
        latency.p50,
        latency.p99,
        first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    let mut total = Duration::ZERO;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let used = a.saturating_sub(*b);
        total += used;
        let role = if i == leader { "leader" } else { "follower" };
        println!(
            "  replica {i} ({role}, pid {}): {:.0} µs CPU a put, {:.2} cores",
            pids[i],
            used.as_secs_f64() * 1e6 / acknowledged,
            used.as_secs_f64() / args.seconds as f64
        );
    }
    println!(
        "  all replicas: {:.0} µs CPU a put",
        total.as_secs_f64() * 1e6 / acknowledged
    );
    Ok(())
}

/// Stops `perf record` with SIGINT, as Ctrl-C would, so it writes its data file out whole.
async fn stop_perf(mut child: std::process::Child) -> anyhow::Result<()> {
    ballast_testkit::interrupt(child.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(
                status.success() || status.code() == Some(130) || status.code().is_none(),
                "perf record ended with {status}"
            );
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "perf record did not stop within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
