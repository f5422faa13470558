//! The demo: a real 3-replica cluster on loopback with a small fleet and a leader failover.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ballast_protocol::client::BallastClient;
use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use ballast_testkit::{ClusterOptions, ShardProcess, TestCluster, assigned_machines};

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

/// The demo's shard workers, two per AZ.
const SHARDS: [(&str, &str); 6] = [
    ("shard-0", "az-a"),
    ("shard-1", "az-b"),
    ("shard-2", "az-c"),
    ("shard-3", "az-a"),
    ("shard-4", "az-b"),
    ("shard-5", "az-c"),
];

fn command(inner: Wire) -> pb::Command {
    pb::Command {
        command: Some(inner),
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

/// Writes the demo fleet for the six registered shards (two per AZ): a provider, 600 domains,
/// 120 cluster bindings and a sliced quota — one batch per kind, as bulk changes should be.
async fn seed(client: &BallastClient) -> anyhow::Result<u64> {
    let azs = ["az-a", "az-b", "az-c"];
    let shards: Vec<(String, &str)> = (0..6).map(|i| (format!("shard-{i}"), azs[i % 3])).collect();
    let commands = vec![command(Wire::SetProvider(pb::SetProvider {
        name: "sim-cloud".into(),
        endpoint: "http://127.0.0.1:9900".into(),
        region: "local-1".into(),
        capacity_types: vec!["cpu-standard".into(), "gpu-a100".into()],
    }))];
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

/// Replaces cluster-000's demand on `worker` with one row of `count` machines.
async fn submit_demand(worker: &ShardProcess, count: u32) -> anyhow::Result<()> {
    let resources = pb::ResourceSpec {
        cpu_millis: 2000,
        memory_mib: 4096,
        gpus: 0,
    };
    Ok(worker
        .submit_demand("cluster-000", count, resources)
        .await?)
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
            program: program.clone(),
            leading_args: vec!["replica".into()],
            extra: Vec::new(),
            dir: Some(args.dir.clone()),
            base_port: Some(args.base_port),
            ..ClusterOptions::default()
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

    step("starting 6 shard workers (two per AZ); they register with their first heartbeat");
    let mut workers: Vec<ShardProcess> = SHARDS
        .iter()
        .map(|(id, az)| cluster.spawn_shard(&program, &["shard"], id, az, &["--lease-ms", "3000"]))
        .collect();
    let client = cluster.client();
    cluster.wait_for_shards(SHARDS.len()).await;

    step("loading a small fleet: 1 provider, 600 domains, 120 bindings, 1 sliced quota");
    let revision = seed(&client).await?;
    println!("    fleet written at revision {revision}");
    for worker in &workers {
        let status = worker
            .wait_until("its assignments", |st| st.revision >= revision)
            .await;
        println!(
            "    {} ({}) holds {} domains, {} clusters, {} quota slices (via its watch)",
            status.shard_id,
            status.az,
            status.domains.len(),
            status.clusters.len(),
            status.slices.len()
        );
    }

    step("cluster-000 asks shard-0 for 20 machines");
    submit_demand(&workers[0], 20).await?;
    let status = workers[0]
        .wait_until("20 machines assigned", |st| assigned_machines(st) >= 20)
        .await;
    println!("    shard-0 machines: {:?}", status.machines_by_state);

    step(&format!(
        "SIGKILL the leader (replica {leader}) and keep writing"
    ));
    cluster.kill(leader);
    let killed_at = Instant::now();
    let answer = client
        .write(command(Wire::AssignDomains(pb::AssignDomains {
            assignments: vec![pb::DomainAssignment {
                domain: "topology.kubernetes.io/zone=az-a/rack=r600".into(),
                shard: "shard-0".into(),
            }],
            allow_move: false,
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

    step("full coordinator outage: SIGKILL all three replicas");
    for id in cluster.replicas.iter().map(|r| r.id).collect::<Vec<_>>() {
        cluster.kill(id);
    }
    workers[0]
        .wait_until("noticing the outage", |st| !st.coordinator_reachable)
        .await;
    println!("    cluster-000 raises its demand to 40 machines; shard-0 serves it from its cache");
    submit_demand(&workers[0], 40).await?;
    let status = workers[0]
        .wait_until("40 machines assigned", |st| assigned_machines(st) >= 40)
        .await;
    println!(
        "    shard-0 machines: {:?}, coordinator reachable: {}",
        status.machines_by_state, status.coordinator_reachable
    );
    println!("    SIGKILL shard-0 during the outage and restart it from its cache");
    workers[0].kill();
    workers[0].restart();
    let status = workers[0]
        .wait_until("serving again", |st| {
            st.epoch >= 2 && assigned_machines(st) >= 40
        })
        .await;
    println!(
        "    shard-0 is back: epoch {}, {} domains, machines {:?}",
        status.epoch,
        status.domains.len(),
        status.machines_by_state
    );

    step("the coordinator returns; drain shard-5 and watch its domains move to its AZ peer");
    for id in cluster.replicas.iter().map(|r| r.id).collect::<Vec<_>>() {
        cluster.restart(id);
    }
    cluster.leader().await;
    client
        .write(command(Wire::DrainShard(pb::DrainShard {
            id: "shard-5".into(),
        })))
        .await
        .context("draining shard-5")?;
    workers[5]
        .wait_until("giving its domains up", |st| st.domains.is_empty())
        .await;
    let peer = workers[2]
        .wait_until("taking shard-5's domains", |st| st.domains.len() >= 200)
        .await;
    println!(
        "    shard-5 holds 0 domains; shard-2 (same AZ) now holds {}",
        peer.domains.len()
    );

    step("DR: export an archive of the fleet state and verify it");
    let archives = args.dir.join("archives");
    let exported = client
        .cluster(|mut c, req| {
            let destination = archives.display().to_string();
            async move { c.export(req.wrap(pb::ExportRequest { destination })).await }
        })
        .await
        .context("exporting an archive")?;
    let archive = ballast_dr::ArchiveUrl::parse(&exported.archive_url)?;
    let verified = ballast_dr::verify(&archive, None, true, &ballast_dr::NoProgress).await?;
    println!(
        "    archive {} (revision {}, {} bytes, {}) verified",
        exported.name,
        verified.manifest.revision,
        verified.manifest.size,
        verified.manifest.checksum
    );

    step("coordination KV (etcd API): two workers campaign; one leads until it resigns");
    let coordinator = ballast_protocol::coordination::Coordinator::new(&cluster.endpoints())?;
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

    println!("\nThe cluster is serving. Try:");
    println!("    cargo run -p ballast-ctl -- --endpoints {endpoints} cluster status");
    println!("    cargo run -p ballast-ctl -- --endpoints {endpoints} shard list");
    println!(
        "    cargo run -p ballast-ctl -- shard worker-status {}",
        workers[0].address
    );
    println!(
        "    cargo run -p ballast-ctl -- --endpoints {endpoints} dr list --from {}",
        archives.display()
    );
    println!("    ETCDCTL_API=3 etcdctl --endpoints={endpoints} put hello world");
    println!("    cargo run -p ballast-ctl -- --endpoints {endpoints} kv get hello");
    let pages: Vec<String> = cluster
        .replicas
        .iter()
        .map(|r| format!("http://{}/", r.http_address))
        .collect();
    println!(
        "Status pages (metrics on /metrics, probes on /healthz and /readyz): {}",
        pages.join("  ")
    );
    println!("Data dirs and replica logs: {}", args.dir.display());
    if args.exit {
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    drop(workers);
    drop(cluster);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}
