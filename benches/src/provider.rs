//! `ballast-bench provider`: what a provisioning round trip costs through each way a shard can
//! reach its provider — the simulated provider built into the shard (in-process, no I/O), a
//! provider process over gRPC on loopback keeping its book in memory, and the same process
//! keeping it durable, with one fsync per call and with group commit (calls running together
//! share an fsync) — at 1, 32 and 128 creates in flight, alternating the four at every level so
//! the disk's mood hits them alike.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ballast_protocol::providerpb::CreateMachineRequest;
use ballast_shard::provider::grpc::GrpcProvider;
use ballast_shard::provider::local::LocalProvider;
use ballast_shard::provider::{Actor, Grants, Provider, SimulatedConfig, token};
use ballast_testkit::ProviderProcess;

use crate::stats::{Summary, ms};

/// Flags of `ballast-bench provider`.
#[derive(clap::Args, Debug)]
pub struct ProviderBenchArgs {
    /// Seconds per concurrency level and path.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks-provider.md")]
    pub out: PathBuf,
}

/// Calls `create` with `in_flight` callers for `seconds`; the latencies and the count.
async fn drive(
    provider: Arc<dyn Provider>,
    in_flight: usize,
    seconds: u64,
    run: &str,
) -> anyhow::Result<(Summary, f64)> {
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..in_flight {
        let provider = provider.clone();
        let counter = counter.clone();
        let run = run.to_string();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            // Each caller acts as its own shard in its own domain, under a slice too large to
            // matter: the round trip is what is measured, not the fences.
            let domain = format!("{run}-d{caller}");
            let grants = Grants {
                restore_epoch: 1,
                domain: Some((domain.clone(), 1)),
                cluster: None,
                quota: Some(("sim".into(), "local".into(), 1, u64::MAX / 2)),
            };
            let shard = format!("{run}-s{caller}");
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let actor = Actor {
                    shard: shard.clone(),
                    epoch: 1,
                    sequence: n,
                };
                let request = CreateMachineRequest {
                    idempotency_key: format!("create/{run}-{n}"),
                    token: Some(token(&actor, &grants)),
                    machine_id: format!("{run}-{n}"),
                    domain: domain.clone(),
                    shape: "small".into(),
                    capacity_type: String::new(),
                };
                let begun = Instant::now();
                provider
                    .create(request)
                    .await
                    .map_err(|e| anyhow::anyhow!("create failed: {e}"))?;
                samples.push(begun.elapsed());
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.context("a caller panicked")??);
    }
    let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
    Ok((Summary::of(&mut samples), rate))
}

/// Runs the benchmark and writes the report.
pub async fn run(args: ProviderBenchArgs) -> anyhow::Result<()> {
    let program = std::env::current_exe().context("locating ballast-bench")?;
    let serve = format!(
        "'{}' provider-serve --name sim --region local",
        program.display()
    );
    let durable = ProviderProcess::start(&serve, "");
    let per_call = ProviderProcess::start(&serve, "--sync per-call");
    let in_memory = ProviderProcess::start_in_memory(&serve, "");
    let timeout = Duration::from_secs(30);
    let paths: Vec<(&str, Arc<dyn Provider>)> = vec![
        (
            "built in (in-process)",
            Arc::new(LocalProvider::new(SimulatedConfig::default())),
        ),
        (
            "gRPC, in memory",
            Arc::new(GrpcProvider::new(
                &format!("grpc://{}", in_memory.endpoint),
                None,
                timeout,
            )?),
        ),
        (
            "gRPC, durable (fsync per call)",
            Arc::new(GrpcProvider::new(
                &format!("grpc://{}", per_call.endpoint),
                None,
                timeout,
            )?),
        ),
        (
            "gRPC, durable (group commit)",
            Arc::new(GrpcProvider::new(
                &format!("grpc://{}", durable.endpoint),
                None,
                timeout,
            )?),
        ),
    ];
    let mut out = String::new();
    writeln!(
        out,
        "# Provider round trips\n\nCreated by `cargo run --release -p ballast-bench -- provider --seconds {}` \
         on this machine ({} cores). One `CreateMachine` per call, each caller its own shard and \
         domain; the four paths alternate at every level in one run.\n",
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    writeln!(
        out,
        "| in flight | path | creates/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|"
    )?;
    for in_flight in [1usize, 32, 128] {
        for (index, (name, provider)) in paths.iter().enumerate() {
            let run = format!("b{in_flight}-{index}");
            let (summary, rate) = drive(provider.clone(), in_flight, args.seconds, &run).await?;
            let line = format!(
                "| {in_flight} | {name} | {rate:.0} | {} | {} | {} |",
                ms(summary.p50),
                ms(summary.p99),
                ms(summary.max)
            );
            eprintln!("{line}");
            writeln!(out, "{line}")?;
        }
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, &out)?;
    println!("{out}");
    Ok(())
}
