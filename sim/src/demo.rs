//! The demo: the fleet simulator at CI scale on fixed ports — a real 3-replica cluster, six
//! shard workers and a seeded fleet through leader kills, a full outage, an AZ loss, a burst
//! of moves and a DR restore — then an election over the etcd-compatible KV; it leaves a
//! report with charts and keeps serving for `ballastctl`, `etcdctl` and the status pages.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use ballast_protocol::pb;

use crate::fleet::{FleetArgs, Sim};

/// Flags of `ballast-sim demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where replicas and shards keep their data and logs, and where the report goes (wiped
    /// at start).
    #[arg(long, default_value = "ballast-demo")]
    dir: PathBuf,
    /// Replica N listens on 127.0.0.1:(base-port + N - 1), so `ballastctl`'s default
    /// endpoint 127.0.0.1:7701 reaches replica 1.
    #[arg(long, default_value_t = 7701)]
    base_port: u16,
    /// Exit after the scripted part instead of serving until Ctrl-C.
    #[arg(long)]
    exit: bool,
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn print_members(status: &pb::StatusResponse) {
    for m in &status.members {
        println!(
            "    replica {} {:<16} {}  {:<7} {}",
            m.id,
            m.address,
            m.az,
            m.role,
            if m.leader { "leader" } else { "" }
        );
    }
    if let Some(p) = &status.placement {
        println!(
            "    placement: {} ({})",
            if p.healthy { "healthy" } else { "AT RISK" },
            p.message
        );
    }
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir).context("resolving --dir")?;
    step(
        "starting 3 coordinator replicas (az-a, az-b, az-c) and 6 shard workers (two per AZ), \
         loading a seeded fleet: 600 topology domains, 120 clusters with changing demand, \
         2 quotas sliced over the shards; the shards provision at a provider process \
         (ballast-provider-sim) that fences ownership",
    );
    // The shards drive capacity outside their processes, as in production: one durable
    // provider process per quota provider, shared by every shard, fencing ownership.
    let mut fleet = FleetArgs::ci(dir.clone(), Some(args.base_port));
    fleet.provider_processes = true;
    let mut sim = Sim::start(fleet).await?;
    let leader = sim.cluster.leader().await;
    let status = sim.cluster.status(leader).await.context("reading status")?;
    print_members(&status);

    step(
        "scenarios, invariants checked after each: steady demand; 3 leader SIGKILLs; a full \
         coordinator outage with a demand surge and a shard SIGKILLed and restarted from its \
         cache; the loss of az-c; a shard cut off from the coordinator past its lease; a burst \
         of 600 domain moves; a DR export, destroy, restore",
    );
    let report = sim.run_scenarios().await?;

    step("coordination KV (etcd API): two workers campaign; one leads until it resigns");
    let coordinator = ballast_protocol::coordination::Coordinator::new(&sim.cluster.endpoints())?;
    let election = ballast_protocol::coordination::Election::new("demo-scheduler");
    let first = ballast_protocol::coordination::Session::new(&coordinator, 10).await?;
    let second = ballast_protocol::coordination::Session::new(&coordinator, 10).await?;
    let led = election.campaign(&first, b"worker-1").await?;
    {
        let waiting = election.campaign(&second, b"worker-2");
        tokio::pin!(waiting);
        let blocked = tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err();
        println!(
            "    worker-1 leads (fencing token {}); worker-2 waits: {blocked}",
            led.fencing_token
        );
        election.resign(&first, led.clone()).await?;
        let next = waiting.await?;
        println!(
            "    worker-1 resigned; worker-2 leads with fencing token {}",
            next.fencing_token
        );
    }
    second.close().await?;
    first.close().await?;

    let endpoints = sim.cluster.endpoints().join(",");
    println!("\nThe cluster is serving. Try:");
    println!("    cargo run -p ballast-ctl -- --endpoints {endpoints} cluster status");
    println!("    cargo run -p ballast-ctl -- --endpoints {endpoints} shard list");
    println!(
        "    cargo run -p ballast-ctl -- shard worker-status {}",
        sim.shards[0].address
    );
    println!(
        "    cargo run -p ballast-ctl -- --endpoints {endpoints} dr list --from {}",
        dir.join("archives").display()
    );
    println!("    ETCDCTL_API=3 etcdctl --endpoints={endpoints} put hello world");
    println!("    cargo run -p ballast-ctl -- --endpoints {endpoints} kv get hello");
    let pages: Vec<String> = sim
        .cluster
        .replicas
        .iter()
        .map(|r| format!("http://{}/", r.http_address))
        .collect();
    println!(
        "Status pages (metrics on /metrics, probes on /healthz and /readyz): {}",
        pages.join("  ")
    );
    println!(
        "Report: {} (charts: timeline.svg, provisioning.svg, latency.svg; data: report.json)",
        dir.join("report.html").display()
    );
    println!("Data dirs and logs: {}", dir.join("cluster").display());
    let violations = report.violations();
    if violations > 0 {
        bail!("{violations} invariant violations; see the report");
    }
    if args.exit {
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    drop(sim);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}
