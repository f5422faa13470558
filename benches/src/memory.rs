//! Memory benchmark: the footprint of three `ballast-coord` replicas idle, with the coordinator
//! state of a 100M-machine fleet loaded, after a snapshot on every replica, after every replica
//! restarted from its data dir, and after a run of KV writes; and of a three-member etcd 3.4
//! holding the same fleet facts as keys and taking the same writes, in the same run.
//!
//! Per process: RSS, PSS (shared pages divided among the processes mapping them, so the three
//! replicas' common program pages count once), private memory, the live heap by the
//! allocator's own count (glibc's for Ballast, the Go runtime's for etcd) and the data dir.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ballast_protocol::coordination::Coordinator;
use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::pb;
use ballast_protocol::pb::cluster_client::ClusterClient;
use ballast_testkit::etcd::EtcdCluster;
use ballast_testkit::fleet::{FleetShape, domain_name, load_fleet, shard_id};
use ballast_testkit::{ClusterOptions, TestCluster, http_get, metric};

use crate::kv::ready;
use crate::stats::{dir_bytes, rss_bytes};

/// Flags of `ballast-bench memory`.
#[derive(clap::Args, Debug)]
pub struct MemoryBenchArgs {
    /// KV writes (etcd API puts) after the fleet steps.
    #[arg(long, default_value_t = 100_000)]
    kv_writes: usize,
    /// Distinct keys the writes go to, in turn (each written `kv_writes / kv_keys` times).
    #[arg(long, default_value_t = 100_000)]
    kv_keys: usize,
    /// Value size of the KV writes, bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Replica program: the `dist` build of `ballast-coord` (what operators ship; see
    /// docs/deployment.md) in this target directory, built with `cargo build --profile dist`
    /// when missing.
    #[arg(long)]
    replica_binary: Option<PathBuf>,
    /// Leave etcd out.
    #[arg(long)]
    no_etcd: bool,
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks-memory.md")]
    pub out: PathBuf,
}

/// Writes in flight while loading keys.
const IN_FLIGHT: usize = 64;

/// One process's memory and disk at one step, bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Footprint {
    rss: u64,
    pss: u64,
    private: u64,
    /// Live heap by the allocator's count; `None` when the process did not report it.
    heap: Option<u64>,
    disk: u64,
}

/// `kB` fields of `/proc/<pid>/smaps_rollup`, in bytes.
fn smaps_rollup(pid: u32, fields: &[&str]) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let mut sum = 0;
    for field in fields {
        let line = text.lines().find(|l| l.starts_with(field))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        sum += kb * 1024;
    }
    Some(sum)
}

/// The footprint of process `pid`, its heap read from the Prometheus `series` on
/// `metrics_address`, its data dir `dir`.
fn footprint(pid: Option<u32>, metrics_address: &str, series: &str, dir: &Path) -> Footprint {
    let Some(pid) = pid else {
        return Footprint::default();
    };
    Footprint {
        rss: rss_bytes(pid).unwrap_or(0),
        pss: smaps_rollup(pid, &["Pss:"]).unwrap_or(0),
        private: smaps_rollup(pid, &["Private_Clean:", "Private_Dirty:"]).unwrap_or(0),
        heap: http_get(metrics_address, "/metrics")
            .and_then(|(_, page)| metric(&page, series))
            .map(|v| v as u64),
        disk: dir_bytes(dir),
    }
}

fn ballast_footprints(cluster: &TestCluster) -> Vec<Footprint> {
    cluster
        .replicas
        .iter()
        .map(|r| {
            footprint(
                r.pid(),
                &r.http_address,
                "ballast_heap_live_bytes",
                &r.data_dir,
            )
        })
        .collect()
}

fn etcd_footprints(etcd: &EtcdCluster) -> Vec<Footprint> {
    let pids = etcd.pids();
    etcd.endpoints
        .iter()
        .zip(etcd.data_dirs())
        .enumerate()
        .map(|(i, (endpoint, dir))| {
            footprint(
                pids.get(i).copied(),
                endpoint,
                "go_memstats_heap_inuse_bytes",
                &dir,
            )
        })
        .collect()
}

/// Puts `count` keys through `client`, [`IN_FLIGHT`] at a time; `entry(n)` is the n-th key
/// and value. Fails on the first put refused after retries or after 15 minutes.
async fn put_all(
    client: &Coordinator,
    count: usize,
    entry: impl Fn(usize) -> (Vec<u8>, Vec<u8>) + Send + Sync + 'static,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(15 * 60);
    let next = Arc::new(AtomicUsize::new(0));
    let entry = Arc::new(entry);
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (client, next, entry) = (client.clone(), next.clone(), entry.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok(());
                }
                let (key, value) = entry(n);
                let mut attempts = 0;
                loop {
                    let mut kv = client.kv();
                    let put = kv.put(epb::PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        ..Default::default()
                    });
                    match put.await {
                        Ok(_) => break,
                        Err(e) if attempts >= 20 || Instant::now() > deadline => {
                            bail!("put {n} failed: {e}")
                        }
                        Err(_) => {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await.context("writer task")??;
    }
    Ok(started.elapsed())
}

/// Restarts every replica in turn from its data dir, each caught up to `revision` before the
/// next goes down.
async fn restart_all(cluster: &mut TestCluster, revision: u64) {
    let ids: Vec<u64> = cluster.replicas.iter().map(|r| r.id).collect();
    for id in ids {
        cluster.kill(id);
        cluster.restart(id);
        cluster.wait_for_revision(id, revision).await;
    }
}

/// Restarts every etcd member in turn, each back with a leader in view before the next goes
/// down.
async fn restart_etcd(etcd: &mut EtcdCluster) -> anyhow::Result<()> {
    for i in 0..etcd.endpoints.len() {
        etcd.kill(i);
        etcd.restart(i)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while etcd.leader().await.is_none() {
            if Instant::now() > deadline {
                bail!("etcd has no leader 60 s after member {i} restarted");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The replica program to measure: the `dist` build of `ballast-coord`.
fn replica_program(args: &MemoryBenchArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.replica_binary {
        // Replicas run in directories of their own: a relative path would not find it there.
        return std::fs::canonicalize(path)
            .with_context(|| format!("--replica-binary {}", path.display()));
    }
    let here = std::env::current_exe().context("locating ballast-bench")?;
    // target/<profile>/ballast-bench → target/dist/ballast-coord
    let target = here
        .parent()
        .and_then(Path::parent)
        .context("locating the target directory")?;
    let program = target.join("dist").join("ballast-coord");
    if !program.exists() {
        eprintln!("building {}", program.display());
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--profile",
                "dist",
                "-p",
                "ballast-coordinator",
                "--bin",
                "ballast-coord",
            ])
            .status()
            .context("running cargo build")?;
        if !status.success() || !program.exists() {
            bail!(
                "could not build {}; build it with `cargo build --profile dist -p ballast-coordinator`",
                program.display()
            );
        }
    }
    Ok(program)
}

/// The fleet's facts as etcd keys, the way a system keeping them in etcd would: one key per
/// shard, domain, binding and quota (its slices in the value).
fn fleet_as_keys(shape: FleetShape) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut keys = Vec::new();
    for i in 0..shape.shards {
        keys.push((
            format!("/fleet/shards/{}", shard_id(i)),
            format!(
                "{{\"address\":\"10.0.{}.{}:7800\",\"az\":\"{}\",\"status\":\"active\"}}",
                i / 250,
                i % 250,
                ballast_testkit::fleet::AZS[i % 3]
            ),
        ));
    }
    for n in 0..shape.domains {
        keys.push((
            format!("/fleet/domains/{}", domain_name(n)),
            shard_id(n % shape.shards),
        ));
    }
    for n in 0..shape.bindings {
        keys.push((
            format!("/fleet/bindings/cluster-{n:06}"),
            shard_id(n % shape.shards),
        ));
    }
    for q in 0..shape.quotas {
        let slices: Vec<String> = (0..shape.shards)
            .map(|s| format!("\"{}\":500000", shard_id(s)))
            .collect();
        keys.push((
            format!("/fleet/quotas/provider-{}/region-{}", q / 6, q % 6),
            format!("{{{}}}", slices.join(",")),
        ));
    }
    keys.into_iter()
        .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
        .collect()
}

/// The key and value of KV write `n`.
fn kv_entry(keys: usize, value_bytes: usize) -> impl Fn(usize) -> (Vec<u8>, Vec<u8>) {
    move |n| {
        (
            format!("bench/memory/{:08}", n % keys.max(1)).into_bytes(),
            vec![b'v'; value_bytes],
        )
    }
}

/// Megabytes (10^6 bytes, as the targets are written) with one decimal.
fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

/// One system's steps as a table.
fn table(out: &mut String, rows: &[(String, Vec<Footprint>)]) -> std::fmt::Result {
    writeln!(
        out,
        "| step | RSS each MB | RSS sum MB | PSS sum MB | private sum MB | live heap sum MB | data dir each MB |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---|")?;
    for (step, each) in rows {
        let sum = |f: fn(&Footprint) -> u64| each.iter().map(f).sum::<u64>();
        let heap = if each.iter().all(|f| f.heap.is_some()) {
            mb(each.iter().filter_map(|f| f.heap).sum())
        } else {
            "—".into()
        };
        let list = |f: fn(&Footprint) -> u64| {
            each.iter()
                .map(|x| mb(f(x)))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        writeln!(
            out,
            "| {step} | {} | {} | {} | {} | {heap} | {} |",
            list(|f| f.rss),
            mb(sum(|f| f.rss)),
            mb(sum(|f| f.pss)),
            mb(sum(|f| f.private)),
            list(|f| f.disk),
        )?;
    }
    Ok(())
}

/// How a measured figure stands against its target.
fn against(measured: u64, target: u64) -> String {
    if measured <= target {
        format!("**met** ({} MB of {} MB)", mb(measured), mb(target))
    } else {
        format!(
            "**missed** by {} MB ({} MB for {} MB)",
            mb(measured - target),
            mb(measured),
            mb(target)
        )
    }
}

/// Runs the benchmark and writes the report.
pub async fn run(args: MemoryBenchArgs) -> anyhow::Result<()> {
    let program = replica_program(&args)?;
    let work = tempfile::tempdir().context("temp dir")?;
    // What a quiet replica holds, not what it freed a moment ago: a replica releases its
    // log's memtable one to two quiet-log intervals after the last append (ADR 0017,
    // decision 8), and returns freed memory and refreshes its heap gauge every trim
    // interval. Two trim intervals after that.
    let quiet = ballast_coordinator::node::QUIET_LOG_FLUSH_AFTER * 2
        + ballast_telemetry::memory::TRIM_INTERVAL * 2;
    let settle = || tokio::time::sleep(quiet);
    let shape = FleetShape::HUNDRED_MILLION;

    let mut cluster = TestCluster::start_with(
        ClusterOptions {
            program: program.clone(),
            dir: Some(work.path().join("ballast")),
            ..ClusterOptions::default()
        },
        3,
    )
    .await;
    settle().await;
    let mut rows: Vec<(String, Vec<Footprint>)> =
        vec![("idle".into(), ballast_footprints(&cluster))];

    let client = cluster.client();
    eprintln!("ballast: loading {shape:?}");
    load_fleet(&client, shape)
        .await
        .context("loading the fleet")?;
    let revision = client.revision().await?;
    cluster.wait_until_converged(revision).await;
    settle().await;
    rows.push((
        "100M-fleet state loaded".into(),
        ballast_footprints(&cluster),
    ));

    let ids: Vec<u64> = cluster.replicas.iter().map(|r| r.id).collect();
    for id in &ids {
        ClusterClient::new(cluster.channel(*id))
            .snapshot(pb::SnapshotRequest {})
            .await
            .with_context(|| format!("snapshot on replica {id}"))?;
    }
    settle().await;
    rows.push((
        "after a snapshot on every replica".into(),
        ballast_footprints(&cluster),
    ));

    restart_all(&mut cluster, revision).await;
    settle().await;
    rows.push((
        "every replica restarted from its data dir".into(),
        ballast_footprints(&cluster),
    ));

    let kv_client = Coordinator::new(&cluster.endpoints())?;
    ready(&kv_client).await?;
    eprintln!("ballast: {} KV writes", args.kv_writes);
    let ballast_writes = put_all(
        &kv_client,
        args.kv_writes,
        kv_entry(args.kv_keys, args.value_bytes),
    )
    .await
    .context("ballast KV writes")?;
    let revision = cluster.client().revision().await?;
    cluster.wait_until_converged(revision).await;
    settle().await;
    let kv_step = format!(
        "after {} KV writes of {} B to {} keys",
        args.kv_writes, args.value_bytes, args.kv_keys
    );
    rows.push((kv_step.clone(), ballast_footprints(&cluster)));
    restart_all(&mut cluster, revision).await;
    settle().await;
    rows.push((
        "every replica restarted after the writes".into(),
        ballast_footprints(&cluster),
    ));
    drop(cluster);

    let mut etcd_rows: Vec<(String, Vec<Footprint>)> = Vec::new();
    let mut etcd_writes = None;
    if !args.no_etcd {
        let etcd_dir = work.path().join("etcd");
        std::fs::create_dir_all(&etcd_dir).context("etcd dir")?;
        let mut etcd = EtcdCluster::start(&etcd_dir, 3).context("starting etcd")?;
        let etcd_client = Coordinator::new(&etcd.endpoints)?;
        ready(&etcd_client).await?;
        settle().await;
        etcd_rows.push(("idle".into(), etcd_footprints(&etcd)));
        let facts = Arc::new(fleet_as_keys(shape));
        eprintln!("etcd: the fleet's facts as {} keys", facts.len());
        let count = facts.len();
        put_all(&etcd_client, count, move |n| facts[n].clone())
            .await
            .context("etcd fleet keys")?;
        settle().await;
        etcd_rows.push((
            format!("the 100M-fleet facts as {count} keys"),
            etcd_footprints(&etcd),
        ));
        restart_etcd(&mut etcd).await?;
        ready(&etcd_client).await?;
        settle().await;
        etcd_rows.push((
            "every member restarted from its data dir".into(),
            etcd_footprints(&etcd),
        ));
        eprintln!("etcd: {} KV writes", args.kv_writes);
        etcd_writes = Some(
            put_all(
                &etcd_client,
                args.kv_writes,
                kv_entry(args.kv_keys, args.value_bytes),
            )
            .await
            .context("etcd KV writes")?,
        );
        settle().await;
        etcd_rows.push((kv_step.clone(), etcd_footprints(&etcd)));
        restart_etcd(&mut etcd).await?;
        ready(&etcd_client).await?;
        settle().await;
        etcd_rows.push((
            "every member restarted after the writes".into(),
            etcd_footprints(&etcd),
        ));
    }

    let out = report(
        &args,
        shape,
        &program,
        quiet,
        &rows,
        &etcd_rows,
        ballast_writes,
        etcd_writes,
    )?;
    std::fs::write(&args.out, &out).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{out}");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &MemoryBenchArgs,
    shape: FleetShape,
    program: &Path,
    quiet: Duration,
    rows: &[(String, Vec<Footprint>)],
    etcd_rows: &[(String, Vec<Footprint>)],
    ballast_writes: Duration,
    etcd_writes: Option<Duration>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "# Memory: three replicas with a 100M-machine fleet's state\n"
    )?;
    let program_bytes = std::fs::metadata(program)
        .with_context(|| format!("reading {}", program.display()))?
        .len();
    // The directory under target/ names the build profile.
    let profile = program
        .parent()
        .and_then(Path::file_name)
        .map_or("?".into(), |p| p.to_string_lossy().to_string());
    let etcd_sentence = if args.no_etcd {
        String::new()
    } else {
        format!(
            " The same run then starts a three-member etcd {} (default flags) and gives it the \
             fleet's facts as keys and the same puts.",
            ballast_testkit::etcd::version()
        )
    };
    writeln!(
        out,
        "`cargo run --release -p ballast-bench -- memory`: three `ballast-coord` replicas \
         (`{profile}` build, {} MB program file) on loopback; the coordinator state of a \
         100M-machine fleet ({} shards, {} topology domains, {} cluster bindings, {} sliced \
         quotas) written through the API in batches of 10,000; then {} etcd-API puts of {} B \
         values to {} keys, {IN_FLIGHT} in flight.{etcd_sentence} \
         Figures read after {} s of quiet at each step (the 5-10 s after which a replica \
         releases its log's memtable, then two of its memory-trim intervals); MB are 10^6 \
         bytes. Machine: {}.\n",
        mb(program_bytes),
        shape.shards,
        shape.domains,
        shape.bindings,
        shape.quotas,
        args.kv_writes,
        args.value_bytes,
        args.kv_keys,
        quiet.as_secs(),
        crate::stats::machine()
    )?;
    writeln!(
        out,
        "RSS counts every resident page of a process, the program's code included, so the \
         three replicas' sum counts their common code three times; PSS divides each shared \
         page among the processes mapping it (the three replicas' PSS sum counts it once). \
         Private is what no other process shares (heap, stacks, written data). Live heap is \
         the allocator's own count of bytes in use (glibc's `mallinfo2` for Ballast, exported \
         as `ballast_heap_live_bytes`; the Go runtime's `go_memstats_heap_inuse_bytes` for \
         etcd).\n"
    )?;
    writeln!(out, "## Ballast\n")?;
    table(&mut out, rows)?;
    writeln!(
        out,
        "\n{} KV writes took {:.1} s on Ballast{}.\n",
        args.kv_writes,
        ballast_writes.as_secs_f64(),
        etcd_writes
            .map(|d| format!(" and {:.1} s on etcd", d.as_secs_f64()))
            .unwrap_or_default()
    )?;
    if !etcd_rows.is_empty() {
        writeln!(out, "## etcd\n")?;
        table(&mut out, etcd_rows)?;
        writeln!(out)?;
    }
    let rss_sum = |step: usize| rows[step].1.iter().map(|f| f.rss).sum::<u64>();
    let disk_max = |step: usize| rows[step].1.iter().map(|f| f.disk).max().unwrap_or(0);
    writeln!(out, "## Targets (issue #24)\n")?;
    writeln!(
        out,
        "- three replicas idle, RSS sum under 30 MB: {}",
        against(rss_sum(0), 30_000_000)
    )?;
    writeln!(
        out,
        "- three replicas with the 100M-fleet state, RSS sum under 50 MB: {}",
        against(rss_sum(1), 50_000_000)
    )?;
    writeln!(
        out,
        "- data dir per replica with the fleet state, under 30 MB: {}",
        against(disk_max(3), 30_000_000)
    )?;
    writeln!(
        out,
        "- after snapshots and after restarts, no more than 10% over loaded: {} and {}",
        against(rss_sum(2), rss_sum(1) * 11 / 10),
        against(rss_sum(3), rss_sum(1) * 11 / 10)
    )?;
    writeln!(
        out,
        "- data dir per replica after the KV writes and a restart (must stay bounded; no \
         target size): {} MB",
        mb(disk_max(5))
    )?;
    Ok(out)
}
