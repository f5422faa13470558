//! `ballast-bench`: measures a real 3-replica cluster on loopback and writes a markdown report.
//! Replicas run as child processes of this binary (`ballast-bench replica ...`).

mod coord;
mod engine;
mod engine_fleet;
mod etcd_tools;
mod heartbeat;
mod kv;
mod memory;
mod provider;
mod provider_memory;
mod report;
mod stats;
mod tls;
mod worker_cycle;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "ballast-bench", version, about = "Ballast benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Coordinator benchmark: write throughput and latency, read latency, leader-kill
    /// recovery, RSS and disk use; writes a markdown report.
    Coord(coord::CoordBenchArgs),
    /// Shard engine benchmark: decision time at 500K machines / 50K demand rows; prints a
    /// markdown section.
    Engine(engine::EngineBenchArgs),
    /// KV benchmark: etcd-API puts into Ballast and a real 3-member etcd in the same run.
    Kv(kv::KvBenchArgs),
    /// One put level against a Ballast cluster alone: CPU a put per replica, and with
    /// `--perf-out` a `perf record` of the leader (issue #23's CPU work).
    KvProfile(kv::profile::KvProfileArgs),
    /// The tools etcd operators run, against Ballast and etcd in the same run: `etcdctl
    /// check perf` and puts through the HTTP/JSON gateway; writes a markdown report.
    EtcdTools(etcd_tools::EtcdToolsArgs),
    /// Memory benchmark: RSS, PSS, private memory, live heap and data dirs of three
    /// `ballast-coord` replicas idle, with a 100M-machine fleet's state loaded, after
    /// snapshots, restarts and KV writes, and of a three-member etcd in the same run.
    Memory(memory::MemoryBenchArgs),
    /// TLS benchmark: the same puts into a plain and a mutual-TLS group in one run.
    Tls(tls::TlsBenchArgs),
    /// Provider benchmark: create round trips through the built-in provider and a provider
    /// process over gRPC (in memory and durable) at 1, 32 and 128 in flight.
    Provider(provider::ProviderBenchArgs),
    /// Provider memory: RSS of a provider process under one fleet provider's load (200
    /// shards' connections, 100K domains claimed, 20K clusters adopted, machines made).
    ProviderMemory(provider_memory::ProviderMemoryArgs),
    /// Worker cycle with the provider in the loop: a running shard worker provisions its fleet
    /// through the built-in provider and a provider process over gRPC (alternating), then its
    /// decision cycles are timed while 1% of the demand changes per step; writes a section of
    /// `docs/benchmarks-shard.md`.
    WorkerCycle(worker_cycle::WorkerCycleArgs),
    /// Heartbeats under load: shards' lease renewals timed while the coordinator does bulk
    /// fleet writes with snapshots, and etcd-API puts; writes a section of
    /// `docs/benchmarks-coord.md`.
    Heartbeat(heartbeat::HeartbeatArgs),
    /// Run the reference provider (same flags as `ballast-provider-sim`); used by `provider`.
    ProviderServe(Box<ballast_provider_sim::config::ProviderArgs>),
    /// Run one coordinator replica (same flags as `ballast-coord`).
    Replica(Box<ballast_coordinator::config::CoordArgs>),
}

fn main() -> anyhow::Result<()> {
    // Replicas run inside this binary (`replica`): the same runtime as `ballast-coord`.
    ballast_coordinator::process::runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Coord(args) => coord::run(args).await,
        Command::Kv(args) => kv::run(args).await,
        Command::KvProfile(args) => kv::profile::run(args).await,
        Command::EtcdTools(args) => etcd_tools::run(args).await,
        Command::Tls(args) => tls::run(args).await,
        Command::Memory(args) => memory::run(args).await,
        Command::Provider(args) => provider::run(args).await,
        Command::ProviderMemory(args) => provider_memory::run(args).await,
        Command::WorkerCycle(args) => worker_cycle::run(args).await,
        Command::Heartbeat(args) => heartbeat::run(args).await,
        Command::ProviderServe(args) => {
            ballast_provider_sim::init_logging();
            ballast_provider_sim::run_until_signal(*args).await
        }
        Command::Engine(args) => {
            let out = args.out.clone();
            let report = engine::run(args).await?;
            report::write_keeping(&out, &report, &[worker_cycle::SECTION])?;
            println!("{report}");
            Ok(())
        }
        Command::Replica(args) => {
            ballast_coordinator::process::init_logging();
            ballast_coordinator::process::run_until_signal(*args).await?;
            Ok(())
        }
    }
}
