//! The demo: a real 3-replica cluster on loopback with a small fleet and a leader failover.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ballast_protocol::client::BallastClient;
use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use ballast_testkit::{ClusterOptions, TestCluster};

/// Flags of `ballast-sim demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where replicas keep their data dirs and logs (wiped at start).
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

fn command(inner: Wire) -> pb::Command {
    pb::Command {
        command: Some(inner),
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

/// Writes the demo fleet: a provider, six shards (two per AZ), 600 domains, 120 cluster
/// bindings and a sliced quota — one batch per kind, as bulk changes should be.
async fn seed(client: &BallastClient) -> anyhow::Result<u64> {
    let azs = ["az-a", "az-b", "az-c"];
    let shards: Vec<(String, &str)> = (0..6).map(|i| (format!("shard-{i}"), azs[i % 3])).collect();
    let mut commands = vec![command(Wire::SetProvider(pb::SetProvider {
        name: "sim-cloud".into(),
        endpoint: "http://127.0.0.1:9900".into(),
        region: "local-1".into(),
        capacity_types: vec!["cpu-standard".into(), "gpu-a100".into()],
    }))];
    for (id, az) in &shards {
        commands.push(command(Wire::RegisterShard(pb::RegisterShard {
            id: id.clone(),
            address: format!("127.0.0.1:78{}", &id[6..]),
            az: (*az).into(),
            lease_ttl_ms: 0,
        })));
    }
    client
        .write(command(Wire::Batch(pb::Batch { commands })))
        .await?;
    let assignments = (0..600)
        .map(|n| {
            let (shard, az) = &shards[n % shards.len()];
            pb::DomainAssignment {
                domain: format!("topology.kubernetes.io/zone={az}/rack=r{n:03}"),
                shard: shard.clone(),
            }
        })
        .collect();
    client
        .write(command(Wire::AssignDomains(pb::AssignDomains {
            assignments,
            allow_move: false,
        })))
        .await?;
    let bindings = (0..120)
        .map(|n| {
            command(Wire::BindCluster(pb::BindCluster {
                cluster: format!("cluster-{n:03}"),
                shard: shards[n % shards.len()].0.clone(),
            }))
        })
        .collect();
    client
        .write(command(Wire::Batch(pb::Batch { commands: bindings })))
        .await?;
    let answer = client
        .write(command(Wire::SetQuota(pb::SetQuota {
            provider: "sim-cloud".into(),
            region: "local-1".into(),
            total: 1_000_000,
            slices: shards
                .iter()
                .map(|(id, _)| pb::QuotaSlice {
                    shard: id.clone(),
                    amount: 150_000,
                })
                .collect(),
        })))
        .await?;
    Ok(answer.header.map(|h| h.revision).unwrap_or(0))
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
    let program = std::env::current_exe().context("locating the ballast-sim binary")?;
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("clearing {}", args.dir.display()))?;
    }
    step("starting 3 coordinator replicas (az-a, az-b, az-c)");
    let started = Instant::now();
    let mut cluster = TestCluster::start_with(
        ClusterOptions {
            program,
            leading_args: vec!["replica".into()],
            extra: Vec::new(),
            dir: Some(args.dir.clone()),
            base_port: Some(args.base_port),
        },
        3,
    )
    .await;
    let endpoints = cluster.endpoints().join(",");
    let leader = cluster.leader().await;
    let status = cluster.status(leader).await.context("reading status")?;
    println!(
        "    cluster {} formed in {:.1}s",
        status
            .header
            .as_ref()
            .map(|h| h.cluster_id.as_str())
            .unwrap_or("?"),
        started.elapsed().as_secs_f64()
    );
    print_members(&status);

    step("loading a small fleet: 1 provider, 6 shards, 600 domains, 120 bindings, 1 quota");
    let client = cluster.client();
    let revision = seed(&client).await?;
    println!("    fleet written at revision {revision}");

    step(&format!(
        "SIGKILL the leader (replica {leader}) and keep writing"
    ));
    cluster.kill(leader);
    let killed_at = Instant::now();
    let answer = client
        .write(command(Wire::DrainShard(pb::DrainShard {
            id: "shard-5".into(),
        })))
        .await
        .context("writing after the leader kill")?;
    println!(
        "    first write acknowledged {} ms after the kill, revision {}",
        killed_at.elapsed().as_millis(),
        answer.header.map(|h| h.revision).unwrap_or(0)
    );
    let new_leader = cluster.leader().await;
    println!("    new leader: replica {new_leader}");

    step(&format!("restart replica {leader} from its data dir"));
    cluster.restart(leader);
    let revision = client.revision().await?;
    cluster.wait_for_revision(leader, revision).await;
    let status = cluster.status(leader).await.context("reading status")?;
    println!("    replica {leader} caught up to revision {revision}");
    print_members(&status);

    println!("\nThe cluster is serving. Try:");
    println!("    cargo run -p ballast-ctl -- --endpoints {endpoints} cluster status");
    println!("    cargo run -p ballast-ctl -- --endpoints {endpoints} shard list");
    println!("Data dirs and replica logs: {}", args.dir.display());
    if args.exit {
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    drop(cluster);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}
