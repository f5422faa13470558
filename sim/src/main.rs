//! `ballast-sim`: the demo, the fleet simulator, the fault-injection harness and the drills.
//! It runs each coordinator replica and shard worker as a child process of itself
//! (`ballast-sim replica ...`, `ballast-sim shard ...`), so one `cargo run` builds everything
//! and a leader can be killed with a real SIGKILL.

mod chaos;
mod demo;
mod drill;
mod fleet;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "ballast-sim", version, about = "Ballast demo and simulator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The README's demo: 3 replicas in az-a/b/c and 6 shard workers carry a seeded fleet
    /// through leader kills, a full outage, an AZ loss, a burst of moves and a DR restore
    /// (invariants checked after each), then an election over the KV; leaves a report and
    /// serves until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Fault injection: seeded schedules of kills, pauses, partitions, loss and delay against
    /// three replicas, with every history checked for linearizability and the healed cluster
    /// for convergence and fleet invariants.
    Chaos(chaos::ChaosArgs),
    /// The fleet simulator: real replicas and shard workers carry a seeded fleet through
    /// scenarios (leader kills, a full outage, an AZ loss, a burst of moves, a DR restore),
    /// checking invariants after each and writing a report with charts.
    Fleet(fleet::FleetArgs),
    /// Drills: `drill dr` exports, destroys, restores and compares a loaded cluster.
    #[command(subcommand)]
    Drill(drill::Drill),
    /// Run one coordinator replica (same flags as `ballast-coord`); used by the demo.
    Replica(Box<ballast_coordinator::config::CoordArgs>),
    /// Run one shard worker (same flags as `ballast-shard`); used by the demo and tests.
    Shard(Box<ballast_shard::config::ShardArgs>),
    /// Run the reference provider (same flags as `ballast-provider-sim`); used by the demo,
    /// the simulator and tests.
    Provider(Box<ballast_provider_sim::config::ProviderArgs>),
    /// Run the provider conformance suite (same flags as `ballast-provider-check`).
    ProviderCheck(Box<ballast_provider_check::CheckArgs>),
}

fn main() -> anyhow::Result<()> {
    // Replicas run inside this binary (`replica`): the same runtime as `ballast-coord`.
    ballast_coordinator::process::runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = ballast_settings::parse_or_exit::<Cli>();
    match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Drill(drill) => drill::run(drill).await,
        Command::Chaos(args) => chaos::run(args).await,
        Command::Fleet(args) => fleet::run(args).await.map(|_| ()),
        Command::Shard(args) => {
            ballast_shard::config::init_logging();
            ballast_shard::config::run_until_signal(*args).await?;
            Ok(())
        }
        Command::Provider(args) => {
            ballast_provider_sim::init_logging();
            ballast_provider_sim::run_until_signal(*args).await
        }
        Command::ProviderCheck(args) => {
            std::process::exit(ballast_provider_check::run_and_print(&args).await)
        }
        Command::Replica(args) => {
            ballast_coordinator::process::init_logging();
            ballast_coordinator::process::run_until_signal(*args).await?;
            Ok(())
        }
    }
}
