//! `ballast-bench provider-memory`: a provider process's memory under the load one provider of
//! the full-scale fleet simulation carries — 200 shards, each on its own gRPC connection,
//! claiming 500 topology domains each (100K, each under its own grant), adopting 100 clusters
//! each (20K), creating and configuring a few thousand machines, then handing every cluster to
//! the next shard (20K adoptions answered with their machines). It reads the provider's RSS
//! (`/proc/PID/status`) after every phase and the data dir's size, durable and in memory.
//! Every phase is bounded in time; all traffic is on loopback.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ballast_protocol::providerpb::{
    AdoptClusterRequest, ClaimDomainRequest, ConfigureMachineRequest, CreateMachineRequest,
};
use ballast_shard::provider::grpc::GrpcProvider;
use ballast_shard::provider::{Actor, Grants, Provider, token};
use ballast_testkit::ProviderProcess;

/// Flags of `ballast-bench provider-memory`.
#[derive(clap::Args, Debug)]
pub struct ProviderMemoryArgs {
    /// Shards, one gRPC connection each.
    #[arg(long, default_value_t = 200)]
    shards: usize,
    /// Domains each shard claims.
    #[arg(long, default_value_t = 500)]
    domains_per_shard: usize,
    /// Clusters each shard adopts.
    #[arg(long, default_value_t = 100)]
    clusters_per_shard: usize,
    /// Machines created (and configured for a cluster) in all.
    #[arg(long, default_value_t = 4000)]
    machines: usize,
    /// Calls each shard has in flight.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Most seconds a phase may take before the run fails.
    #[arg(long, default_value_t = 300)]
    phase_limit: u64,
    /// Seconds to wait idle after the load before the last reading.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// The provider command (a shell word list given `--listen` and `--data-dir`); default:
    /// this binary's `provider-serve`.
    #[arg(long)]
    program: Option<String>,
    /// Only the durable provider (skip the in-memory one).
    #[arg(long)]
    durable_only: bool,
    /// Load a provider already running at this address (say, under a heap profiler) instead
    /// of starting one; give its pid with `--pid` and its data dir, if any, with `--data-dir`.
    #[arg(long, requires = "pid")]
    endpoint: Option<String>,
    /// The pid of the provider at `--endpoint`.
    #[arg(long)]
    pid: Option<u32>,
    /// The data dir of the provider at `--endpoint`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The provider a run loads.
struct Target {
    endpoint: String,
    pid: u32,
    data_dir: Option<PathBuf>,
}

/// Memory of a process, from `/proc/PID/status`, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss: u64,
    anon: u64,
    peak: u64,
    threads: u64,
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        peak: field("VmHWM:"),
        threads: field("Threads:"),
    }
}

fn domain(n: usize) -> String {
    format!("topology.kubernetes.io/zone=az-{}/rack=r{n:06}", n % 3)
}

fn cluster(n: usize) -> String {
    format!("cluster-{n:06}")
}

fn shard(s: usize) -> String {
    format!("shard-{s:03}")
}

fn quota(revision: u64) -> Option<(String, String, u64, u64)> {
    Some(("provider-0".into(), "region-0".into(), revision, 1 << 40))
}

/// Runs `calls` calls for each shard (`call(shard, i)`), `in_flight` at a time per shard,
/// failing past `limit`.
async fn each_shard<F, Fut>(
    shards: &[Arc<GrpcProvider>],
    calls: usize,
    in_flight: usize,
    limit: Duration,
    call: F,
) -> anyhow::Result<Duration>
where
    F: Fn(Arc<GrpcProvider>, usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let started = Instant::now();
    let call = Arc::new(call);
    let mut tasks = tokio::task::JoinSet::new();
    for (s, provider) in shards.iter().enumerate() {
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..in_flight {
            let (provider, next, call) = (provider.clone(), next.clone(), call.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return anyhow::Ok(());
                    }
                    call(provider.clone(), s, i).await?;
                }
            });
        }
    }
    let all = async {
        while let Some(done) = tasks.join_next().await {
            done.context("a caller panicked")??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(limit, all)
        .await
        .map_err(|_| anyhow::anyhow!("a phase ran over {limit:?}"))??;
    Ok(started.elapsed())
}

/// One provider's run: the readings after each phase, as table rows.
async fn load(args: &ProviderMemoryArgs, provider: &Target) -> anyhow::Result<Vec<String>> {
    let pid = provider.pid;
    let durable = provider.data_dir.is_some();
    let limit = Duration::from_secs(args.phase_limit);
    let mut rows = Vec::new();
    let kind = if durable { "durable" } else { "in memory" };
    let mut reading = |phase: &str, took: Option<Duration>| {
        let m = memory(pid);
        let disk = match &provider.data_dir {
            Some(dir) => format!("{:.1}", crate::stats::dir_bytes(dir) as f64 / 1048576.0),
            None => "-".into(),
        };
        let row = format!(
            "| {kind} | {phase} | {} | {:.1} | {:.1} | {:.1} | {} | {disk} |",
            took.map_or("-".into(), |t| format!("{:.1}", t.as_secs_f64())),
            m.rss as f64 / 1024.0,
            m.anon as f64 / 1024.0,
            m.peak as f64 / 1024.0,
            m.threads,
        );
        eprintln!("{row}");
        rows.push(row);
    };
    reading("started", None);
    let endpoint = format!("grpc://{}", provider.endpoint);
    let shards: Vec<Arc<GrpcProvider>> = (0..args.shards)
        .map(|_| GrpcProvider::new(&endpoint, None, Duration::from_secs(30)).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let took = each_shard(&shards, 1, 1, limit, |p, _, _| async move {
        p.describe().await.map(|_| ()).map_err(anyhow::Error::from)
    })
    .await?;
    reading(&format!("{} connections", args.shards), Some(took));

    let per = args.domains_per_shard;
    let took = each_shard(&shards, per, args.in_flight, limit, move |p, s, i| {
        let domain = domain(s * per + i);
        let grants = Grants {
            restore_epoch: 1,
            domain: Some((domain.clone(), 1)),
            cluster: None,
            quota: quota(1),
        };
        async move {
            let actor = Actor {
                shard: shard(s),
                epoch: 1,
                sequence: i as u64,
            };
            p.claim(ClaimDomainRequest {
                idempotency_key: format!("take/domain/{domain}/1/1"),
                token: Some(token(&actor, &grants)),
            })
            .await
            .map_err(anyhow::Error::from)
        }
    })
    .await?;
    reading(
        &format!("{} domains claimed", args.shards * per),
        Some(took),
    );

    let per_cluster = args.clusters_per_shard;
    let adopt = move |revision: u64| {
        move |p: Arc<GrpcProvider>, s: usize, i: usize| {
            let cluster = cluster(s * per_cluster + i);
            // At revision 2 the cluster moves to the next shard (its own name: only the
            // provider sees it).
            let to = s + revision as usize - 1;
            let grants = Grants {
                restore_epoch: 1,
                domain: None,
                cluster: Some((cluster.clone(), revision)),
                quota: None,
            };
            async move {
                let actor = Actor {
                    shard: shard(to),
                    epoch: 1,
                    sequence: i as u64,
                };
                p.adopt_cluster(AdoptClusterRequest {
                    idempotency_key: format!("take/cluster/{cluster}/1/{revision}"),
                    token: Some(token(&actor, &grants)),
                })
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
            }
        }
    };
    let took = each_shard(&shards, per_cluster, args.in_flight, limit, adopt(1)).await?;
    reading(
        &format!("{} clusters adopted", args.shards * per_cluster),
        Some(took),
    );

    // Machines: each shard creates its share in its domains and configures each for one of its
    // clusters.
    let machines = args.machines.div_ceil(args.shards);
    let took = each_shard(&shards, machines, args.in_flight, limit, move |p, s, i| {
        let domain = domain(s * per + i % per);
        let cluster = cluster(s * per_cluster + i % per_cluster);
        let id = format!("m-{s:03}-{i:05}");
        async move {
            let actor = Actor {
                shard: shard(s),
                epoch: 1,
                sequence: i as u64,
            };
            let grants = Grants {
                restore_epoch: 1,
                domain: Some((domain.clone(), 1)),
                cluster: None,
                quota: quota(1),
            };
            p.create(CreateMachineRequest {
                idempotency_key: format!("create/{id}"),
                token: Some(token(&actor, &grants)),
                machine_id: id.clone(),
                domain,
                shape: "small".into(),
                capacity_type: String::new(),
            })
            .await?;
            let grants = Grants {
                restore_epoch: 1,
                domain: None,
                cluster: Some((cluster.clone(), 1)),
                quota: None,
            };
            p.configure(ConfigureMachineRequest {
                idempotency_key: format!("configure/{id}/{cluster}"),
                token: Some(token(&actor, &grants)),
                machine_id: id,
                cluster,
            })
            .await?;
            anyhow::Ok(())
        }
    })
    .await?;
    reading(
        &format!("{} machines created and configured", machines * args.shards),
        Some(took),
    );

    let took = each_shard(&shards, per_cluster, args.in_flight, limit, adopt(2)).await?;
    reading("every cluster handed to the next shard", Some(took));

    drop(shards);
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    reading(
        &format!("connections closed, {} s later", args.settle),
        None,
    );
    Ok(rows)
}

/// Runs the load against a durable and an in-memory provider; prints a markdown table.
pub async fn run(args: ProviderMemoryArgs) -> anyhow::Result<()> {
    let program = match &args.program {
        Some(program) => program.clone(),
        None => format!(
            "'{}' provider-serve",
            std::env::current_exe()
                .context("locating ballast-bench")?
                .display()
        ),
    };
    let serve = format!("{program} --name provider-0 --region region-0,region-1");
    let mut out = String::new();
    writeln!(
        out,
        "| provider | after | s | RSS MiB | anon MiB | peak MiB | threads | data dir MiB |\n\
         |---|---|---|---|---|---|---|---|"
    )?;
    let modes: &[bool] = if args.durable_only {
        &[true]
    } else {
        &[true, false]
    };
    if let (Some(endpoint), Some(pid)) = (&args.endpoint, args.pid) {
        let target = Target {
            endpoint: endpoint.clone(),
            pid,
            data_dir: args.data_dir.clone(),
        };
        for row in load(&args, &target).await? {
            writeln!(out, "{row}")?;
        }
        println!("{out}");
        return Ok(());
    }
    for &durable in modes {
        let provider = if durable {
            ProviderProcess::start(&serve, "")
        } else {
            ProviderProcess::start_in_memory(&serve, "")
        };
        let target = Target {
            endpoint: provider.endpoint.clone(),
            pid: provider.pid().context("the provider's pid")?,
            data_dir: durable.then(|| provider.data_dir()),
        };
        for row in load(&args, &target).await? {
            writeln!(out, "{row}")?;
        }
    }
    println!("{out}");
    Ok(())
}
