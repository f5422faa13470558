//! KV benchmark: the same etcd-API workload against a 3-replica Ballast and 3-member etcd
//! clusters (Debian `etcd-server`, fsync on, all on loopback) started in the same run. At each
//! level the systems take turns, each right after a probe of the disk's fsync time, so drift in
//! disk speed shows and hits them alike; the report gives ratios.
//!
//! Each system has a cluster of its own: "etcd alone" and the etcd under "Ballast on etcd" are
//! separate, so neither carries the other's load. Failover kills leaders in Ballast, in etcd
//! with its defaults and in etcd with timers matched to Ballast's, taking turns.

mod failover;
pub mod profile;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ballast_protocol::coordination::Coordinator;
use ballast_protocol::etcdserverpb as epb;
use ballast_testkit::etcd::EtcdCluster;
use ballast_testkit::{ClusterOptions, TestCluster};

use self::failover::{Failover, Probing, Victim};
use self::report::{Measured, Report, System, Via};
use crate::stats::{LoadRun, Summary, closed_loop, rss_bytes};
use ballast_testkit::cpu_time;

/// etcd flags that match Ballast's default timers (heartbeat 50 ms, election 150–250 ms) as
/// closely as etcd's flags allow.
const MATCHED_ETCD_TIMERS: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "250"];

/// Clients in flight at each put level.
const PUT_LEVELS: [usize; 3] = [1, 32, 128];

/// Clients in flight at each read level.
const READ_LEVELS: [usize; 2] = [1, 32];

/// Flags of `ballast-bench kv`.
#[derive(clap::Args, Debug)]
pub struct KvBenchArgs {
    /// Seconds per level and system.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Value sizes in bytes; every put level runs at each.
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 1024])]
    value_bytes: Vec<usize>,
    /// Leader SIGKILLs per system (Ballast, etcd with its defaults, etcd with matched
    /// timers), taking turns.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Milliseconds between two failover probes.
    #[arg(long, default_value_t = 20)]
    probe_every_ms: u64,
    /// Milliseconds one failover probe may take.
    #[arg(long, default_value_t = 250)]
    probe_timeout_ms: u64,
    /// Extra flags for the Ballast replicas (e.g. `--replica-flag=--election-max-ms=150`);
    /// named in the report.
    #[arg(long = "replica-flag", allow_hyphen_values = true)]
    replica_flags: Vec<String>,
    /// Another build's `ballast-bench` (say, the previous commit's): its replicas run as a
    /// further system in the same rotation, so this build is compared with that one in one run.
    #[arg(long)]
    compare_with: Option<PathBuf>,
    /// Markdown report to write; the charts go next to it (`<name>-throughput.svg`,
    /// `<name>-failover.svg`).
    #[arg(long, default_value = "docs/benchmarks-kv.md")]
    pub out: PathBuf,
}

/// Puts for `seconds` with `in_flight` concurrent writers; latencies of acknowledged puts.
pub(crate) async fn puts(
    coordinator: &Coordinator,
    in_flight: usize,
    seconds: u64,
    value: &[u8],
) -> (f64, Summary, usize, Option<String>) {
    let value = Arc::new(value.to_vec());
    let coordinator = coordinator.clone();
    let size = value.len();
    let first_error = FirstError::default();
    let noted = first_error.clone();
    let run = closed_loop(in_flight, Duration::from_secs(seconds), move |worker, n| {
        let mut kv = coordinator.kv();
        let value = value.to_vec();
        let noted = noted.clone();
        async move {
            let put = kv
                .put(epb::PutRequest {
                    key: format!("bench/{size}/{in_flight}/{worker}/{n}").into_bytes(),
                    value,
                    ..Default::default()
                })
                .await;
            noted.ok(put)
        }
    })
    .await;
    first_error.level(run)
}

/// The first failure of a load run, shared by its workers.
#[derive(Clone, Default)]
struct FirstError(Arc<std::sync::Mutex<Option<String>>>);

impl FirstError {
    /// Whether `result` succeeded; notes its status if it is the run's first failure.
    fn ok<T>(&self, result: Result<T, tonic::Status>) -> bool {
        match result {
            Ok(_) => true,
            Err(status) => {
                let mut first = self.0.lock().expect("not poisoned");
                first.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                false
            }
        }
    }

    /// What a finished load run measured: (rate, latency, errors, first failure).
    fn level(&self, mut run: LoadRun) -> (f64, Summary, usize, Option<String>) {
        (
            run.rate(),
            Summary::of(&mut run.latencies),
            run.errors,
            self.0.lock().expect("not poisoned").take(),
        )
    }
}

/// The key the read levels read, and its value.
const READ_KEY: &[u8] = b"bench/read";
const READ_VALUE: &[u8] = b"value";

/// Linearizable reads of [`READ_KEY`] for `seconds` with `in_flight` concurrent readers.
async fn reads(
    coordinator: &Coordinator,
    in_flight: usize,
    seconds: u64,
) -> (f64, Summary, usize, Option<String>) {
    let coordinator = coordinator.clone();
    let first_error = FirstError::default();
    let noted = first_error.clone();
    let run = closed_loop(in_flight, Duration::from_secs(seconds), move |_, _| {
        let mut kv = coordinator.kv();
        let noted = noted.clone();
        async move {
            let read = kv
                .range(epb::RangeRequest {
                    key: READ_KEY.to_vec(),
                    ..Default::default()
                })
                .await
                .and_then(|r| match r.into_inner().kvs.len() {
                    1 => Ok(()),
                    n => Err(tonic::Status::data_loss(format!(
                        "the read found {n} values of the key written before the reads"
                    ))),
                });
            noted.ok(read)
        }
    })
    .await;
    first_error.level(run)
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

/// Median time of a 4 KiB write followed by `fdatasync`, over 16 rounds, in a file under `dir`:
/// how fast the disk syncs right now.
async fn fsync_probe(dir: &Path) -> anyhow::Result<Duration> {
    let path = dir.join("fsync-probe");
    tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        use std::os::unix::fs::FileExt;
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let block = [0x5a_u8; 4096];
        let mut took = Vec::with_capacity(16);
        for round in 0..16u64 {
            let started = Instant::now();
            file.write_all_at(&block, round * 4096)?;
            file.sync_data()?;
            took.push(started.elapsed());
        }
        drop(file);
        let _ = std::fs::remove_file(&path);
        Ok(Summary::of(&mut took).p50)
    })
    .await?
}

/// A system under test as the load levels see it.
struct Contender {
    system: System,
    /// Balanced over every member, as an etcd client is by default.
    balanced: Coordinator,
    /// Only the leader's endpoint (at the start of the run).
    leader: Option<Coordinator>,
    /// Only one follower's endpoint (at the start of the run).
    follower: Option<Coordinator>,
    /// The processes serving it, whose CPU time each level counts.
    servers: Vec<u32>,
}

impl Contender {
    /// A contender with balanced, leader-only and follower-only clients over `endpoints`.
    async fn with_roles(system: System, endpoints: &[String]) -> anyhow::Result<Contender> {
        let (leader, _) = failover::find_leader(endpoints).await?;
        let follower = (0..endpoints.len())
            .find(|i| *i != leader)
            .context("a cluster of one has no follower")?;
        Ok(Contender {
            system,
            balanced: Coordinator::new(endpoints)?,
            leader: Some(Coordinator::new(&[endpoints[leader].clone()])?),
            follower: Some(Coordinator::new(&[endpoints[follower].clone()])?),
            servers: Vec::new(),
        })
    }

    /// A contender measured only through the balanced client.
    fn balanced(system: System, endpoints: &[String]) -> anyhow::Result<Contender> {
        Ok(Contender {
            system,
            balanced: Coordinator::new(endpoints)?,
            leader: None,
            follower: None,
            servers: Vec::new(),
        })
    }

    /// The same contender, its CPU time counted over `servers`.
    fn served_by(self, servers: Vec<u32>) -> Contender {
        Contender { servers, ..self }
    }

    /// CPU time its servers have used so far.
    fn cpu(&self) -> Duration {
        self.servers.iter().filter_map(|&pid| cpu_time(pid)).sum()
    }

    fn client(&self, via: Via) -> Option<&Coordinator> {
        match via {
            Via::Balanced => Some(&self.balanced),
            Via::Leader => self.leader.as_ref(),
            Via::Follower => self.follower.as_ref(),
        }
    }
}

/// A Ballast cluster of `program`'s replicas with `extra` flags.
async fn ballast_cluster(program: &Path, extra: &[String]) -> TestCluster {
    TestCluster::start_with(
        ClusterOptions {
            program: program.to_path_buf(),
            leading_args: vec!["replica".into()],
            extra: extra.to_vec(),
            ..ClusterOptions::default()
        },
        3,
    )
    .await
}

/// Runs the benchmark and writes the report.
pub async fn run(args: KvBenchArgs) -> anyhow::Result<()> {
    let work = tempfile::tempdir().context("temp dir")?;
    let program = std::env::current_exe().context("locating ballast-bench")?;
    let mut ballast = ballast_cluster(&program, &args.replica_flags).await;
    let mut etcd = EtcdCluster::start(&work.path().join("etcd"), 3).context("starting etcd")?;
    // Ballast's etcd backend (ADR 0009) on an etcd of its own: its log goes through that
    // etcd's quorum, and "etcd alone" carries none of it.
    let etcd_under = EtcdCluster::start(&work.path().join("etcd-under"), 3)
        .context("starting the etcd under Ballast")?;
    // Ballast's etcd backend gives up at start on an etcd that is not listening yet.
    ready(&Coordinator::new(&etcd_under.endpoints)?)
        .await
        .context("the etcd under Ballast")?;
    let on_etcd = TestCluster::start_unformed(
        ClusterOptions {
            program: program.clone(),
            leading_args: vec!["replica".into()],
            extra: vec![
                "--backend".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                etcd_under.endpoints.join(","),
                "--etcd-prefix".into(),
                "/ballast/bench".into(),
            ],
            ..ClusterOptions::default()
        },
        3,
    )
    .await;
    let compared = match &args.compare_with {
        Some(other) => Some(ballast_cluster(other, &args.replica_flags).await),
        None => None,
    };
    let etcd_client = Coordinator::new(&etcd.endpoints)?;
    ready(&etcd_client).await?;
    let ballast_client = Coordinator::new(&ballast.endpoints())?;
    ready(&ballast_client).await?;
    let ballast_pids = |cluster: &TestCluster| -> Vec<u32> {
        cluster.replicas.iter().filter_map(|r| r.pid()).collect()
    };
    let mut contenders = vec![
        Contender::with_roles(System::Etcd, &etcd.endpoints)
            .await?
            .served_by(etcd.pids()),
        Contender::with_roles(System::Ballast, &ballast.endpoints())
            .await?
            .served_by(ballast_pids(&ballast)),
    ];
    if let Some(cluster) = &compared {
        // Roles known, so its reads can be compared too; its puts go balanced only.
        contenders.push(
            Contender::with_roles(System::Compared, &cluster.endpoints())
                .await?
                .served_by(ballast_pids(cluster)),
        );
    }
    // Ballast on etcd is served by its replicas and the etcd under them.
    let on_etcd_servers = ballast_pids(&on_etcd)
        .into_iter()
        .chain(etcd_under.pids())
        .collect();
    contenders.push(
        Contender::balanced(System::OnEtcd, &on_etcd.endpoints())?.served_by(on_etcd_servers),
    );
    for contender in &contenders {
        ready(&contender.balanced).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = |pids: Vec<u32>| -> u64 { pids.into_iter().filter_map(rss_bytes).sum() };
    let idle = (rss(ballast_pids(&ballast)), rss(etcd.pids()));

    let probe_dir = work.path();
    // One turn of puts: an fsync probe, then `in_flight` writers for the run's seconds.
    let turn = async |contender: &Contender, client: &Coordinator, level: (usize, usize, Via)| {
        let (value_bytes, in_flight, via) = level;
        let fsync = fsync_probe(probe_dir).await?;
        eprintln!(
            "{value_bytes} B × {in_flight} via {via:?}: {:?} (fsync {:.2} ms)",
            contender.system,
            fsync.as_secs_f64() * 1000.0
        );
        let cpu = contender.cpu();
        let run = puts(client, in_flight, args.seconds, &vec![b'x'; value_bytes]).await;
        let cpu = contender.cpu().saturating_sub(cpu);
        eprintln!("  {:.0}/s, p99 {:?}, server CPU {cpu:?}", run.0, run.1.p99);
        anyhow::Ok(
            Measured::of((contender.system, value_bytes, in_flight, via), run, fsync)
                .with_cpu(cpu, args.seconds),
        )
    };
    let mut measured = Vec::new();
    // The compared build's and this build's turns again, in the opposite order: a system's
    // place in the rotation moves its figures by a few percent (right after etcd's turn, its
    // background writes are still running), so the comparison of two builds takes both orders.
    let mut swapped = Vec::new();
    for &value_bytes in &args.value_bytes {
        for in_flight in PUT_LEVELS {
            // Balanced clients first, etcd leading; then through a follower. The compared
            // build takes the follower turns too (its table shows only the balanced ones), so
            // both builds carry the same data into the later levels.
            for via in [Via::Balanced, Via::Follower] {
                for contender in &contenders {
                    let Some(client) = contender.client(via) else {
                        continue;
                    };
                    measured.push(turn(contender, client, (value_bytes, in_flight, via)).await?);
                }
                if via != Via::Balanced {
                    continue;
                }
                for system in [System::Compared, System::Ballast] {
                    if let Some(contender) = compared
                        .as_ref()
                        .and_then(|_| contenders.iter().find(|c| c.system == system))
                    {
                        let level = (value_bytes, in_flight, via);
                        swapped.push(turn(contender, &contender.balanced, level).await?);
                    }
                }
            }
        }
    }

    // Lease reads on a cluster of their own, started only now so the put levels ran without
    // it; its reads follow the read-index cluster's at each level.
    let mut lease_flags = args.replica_flags.clone();
    lease_flags.extend(["--read-policy".to_string(), "lease".to_string()]);
    let lease = ballast_cluster(&program, &lease_flags).await;
    let ballast_at = contenders
        .iter()
        .position(|c| c.system == System::Ballast)
        .map_or(contenders.len(), |i| i + 1);
    contenders.insert(
        ballast_at,
        Contender::with_roles(System::BallastLease, &lease.endpoints())
            .await?
            .served_by(ballast_pids(&lease)),
    );
    let mut read_results = Vec::new();
    for contender in contenders.iter().filter(|c| c.leader.is_some()) {
        contender
            .balanced
            .kv()
            .put(epb::PutRequest {
                key: READ_KEY.to_vec(),
                value: READ_VALUE.to_vec(),
                ..Default::default()
            })
            .await
            .context("writing the key the reads read")?;
    }
    for in_flight in READ_LEVELS {
        for via in [Via::Leader, Via::Follower] {
            for contender in contenders.iter().filter(|c| c.leader.is_some()) {
                let Some(client) = contender.client(via) else {
                    continue;
                };
                let fsync = fsync_probe(probe_dir).await?;
                eprintln!("reads × {in_flight} via {via:?}: {:?}", contender.system);
                let cpu = contender.cpu();
                let run = reads(client, in_flight, args.seconds).await;
                let cpu = contender.cpu().saturating_sub(cpu);
                read_results.push(
                    Measured::of(
                        (contender.system, READ_VALUE.len(), in_flight, via),
                        run,
                        fsync,
                    )
                    .with_cpu(cpu, args.seconds),
                );
            }
        }
    }
    let loaded = (rss(ballast_pids(&ballast)), rss(etcd.pids()));
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
    // The throughput-only clusters go before the kills, which need none of them.
    drop(contenders);
    drop(lease);
    drop(compared);
    drop(on_etcd);
    drop(etcd_under);

    let mut matched =
        EtcdCluster::start_with(&work.path().join("etcd-matched"), 3, &MATCHED_ETCD_TIMERS)
            .context("starting etcd with matched timers")?;
    let matched_client = Coordinator::new(&matched.endpoints)?;
    ready(&matched_client).await?;
    let probing = Probing {
        every: Duration::from_millis(args.probe_every_ms),
        timeout: Duration::from_millis(args.probe_timeout_ms),
    };
    let mut kills: Vec<(System, Failover)> = Vec::new();
    for round in 0..args.kills {
        let e = failover::kill_leader(Victim::Etcd(&mut etcd), &etcd_client, probing, round)
            .await
            .context("etcd leader kill")?;
        let m = failover::kill_leader(Victim::Etcd(&mut matched), &matched_client, probing, round)
            .await
            .context("matched-timer etcd leader kill")?;
        let b = failover::kill_leader(
            Victim::Ballast(&mut ballast),
            &ballast_client,
            probing,
            round,
        )
        .await
        .context("Ballast leader kill")?;
        eprintln!(
            "kill {round}: to next put etcd {:?}, etcd matched {:?}, ballast {:?}",
            e.to_ack, m.to_ack, b.to_ack
        );
        kills.extend([
            (System::Etcd, e),
            (System::EtcdMatched, m),
            (System::Ballast, b),
        ]);
    }

    let report = Report {
        value_bytes: args.value_bytes.clone(),
        seconds: args.seconds,
        etcd_version: ballast_testkit::etcd::version(),
        machine: crate::stats::machine(),
        ballast_timers: if args.replica_flags.is_empty() {
            format!(
                "its default timers ({})",
                ballast_coordinator::config::default_timers()
            )
        } else {
            format!("`{}`", args.replica_flags.join(" "))
        },
        matched_etcd: MATCHED_ETCD_TIMERS.join(" "),
        compared_with: args.compare_with.clone(),
        probing,
        puts: measured,
        swapped_puts: swapped,
        reads: read_results,
        kills,
        rss_idle: idle,
        rss_loaded: loaded,
        disk,
    };
    let stem = args
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "benchmarks-kv".into());
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    for (suffix, svg) in report.charts() {
        let path = args.out.with_file_name(format!("{stem}-{suffix}.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    let text = report.render(&stem);
    std::fs::write(&args.out, &text).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{text}");
    drop(matched);
    drop(etcd);
    drop(ballast);
    Ok(())
}
