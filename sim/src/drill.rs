//! `ballast-sim drill dr`: the disaster-recovery drill. Loads a fleet (the 100M-machine fleet's
//! coordinator state by default) into a real 3-replica cluster, exports it (encrypted) to a
//! local directory and/or an S3-protocol server, keeps writing, destroys every replica and its
//! data, restores from the archive, rejoins the other replicas, and checks that the restored
//! state is exactly the exported one. Reports RTO (restore start → a serving cluster), RPO
//! (acknowledged writes lost since the export) and sizes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ballast_coordinator::log::member::ReplicaNode;
use ballast_coordinator::node::RESTORE_BUMP;
use ballast_coordinator::restore::{Archived, restore_into};
use ballast_dr::{ArchiveUrl, Key, NoProgress};
use ballast_protocol::client::BallastClient;
use ballast_protocol::pb;
use ballast_testkit::fleet::{FleetShape, list_fleet, load_fleet};
use ballast_testkit::{ClusterOptions, S3Server, TestCluster, assign_domain, rss_bytes};

/// Drills.
#[derive(clap::Subcommand, Debug)]
pub enum Drill {
    /// Export, destroy, restore, compare; report RTO, RPO and sizes.
    Dr(DrDrillArgs),
}

/// Flags of `ballast-sim drill dr`.
#[derive(clap::Args, Debug)]
pub struct DrDrillArgs {
    /// Object stores to drill against: local, s3 (moto on loopback) or both.
    #[arg(long, default_value = "both")]
    stores: String,
    /// Shards in the loaded fleet.
    #[arg(long, default_value_t = FleetShape::HUNDRED_MILLION.shards)]
    shards: usize,
    /// Topology domains.
    #[arg(long, default_value_t = FleetShape::HUNDRED_MILLION.domains)]
    domains: usize,
    /// Cluster bindings.
    #[arg(long, default_value_t = FleetShape::HUNDRED_MILLION.bindings)]
    bindings: usize,
    /// (provider, region) quotas, each sliced over every shard.
    #[arg(long, default_value_t = FleetShape::HUNDRED_MILLION.quotas)]
    quotas: usize,
    /// Writes acknowledged after the export (lost by the restore: the RPO).
    #[arg(long, default_value_t = 100)]
    writes_after_export: usize,
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks-dr.md")]
    out: PathBuf,
}

/// What one drill run measured.
struct Run {
    store: String,
    load: Duration,
    rss: u64,
    state_bytes: u64,
    archive_bytes: u64,
    export: Duration,
    lost_writes: usize,
    lost_window: Duration,
    download: Duration,
    rto: Duration,
    full_redundancy: Duration,
    identical: bool,
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

async fn drill_one(
    args: &DrDrillArgs,
    store: &str,
    url: &str,
    key_file: &Path,
) -> anyhow::Result<Run> {
    let program = std::env::current_exe().context("locating ballast-sim")?;
    let key_flag = key_file.display().to_string();
    let mut cluster = TestCluster::start_with(
        ClusterOptions {
            program,
            leading_args: vec!["replica".into()],
            extra: vec!["--dr-key-file".into(), key_flag],
            ..ClusterOptions::default()
        },
        3,
    )
    .await;
    let client = cluster.client();
    let shape = FleetShape {
        shards: args.shards,
        domains: args.domains,
        bindings: args.bindings,
        quotas: args.quotas,
    };
    println!("[{store}] loading {shape:?}");
    let started = Instant::now();
    load_fleet(&client, shape)
        .await
        .context("loading the fleet")?;
    let load = started.elapsed();
    let before = list_fleet(&client).await.context("listing the fleet")?;
    let rss: u64 = cluster
        .replicas
        .iter()
        .filter_map(|r| r.pid())
        .filter_map(rss_bytes)
        .sum();

    println!("[{store}] exporting to {url}");
    let started = Instant::now();
    let exported = client
        .cluster(|mut c, req| {
            let destination = url.to_string();
            async move { c.export(req.wrap(pb::ExportRequest { destination })).await }
        })
        .await
        .context("exporting")?;
    let export = started.elapsed();
    let exported_at = Instant::now();

    println!(
        "[{store}] {} writes after the export",
        args.writes_after_export
    );
    for n in 0..args.writes_after_export {
        assign_domain(
            &client,
            &format!("zone=az-a/rack=late{n:05}"),
            "shard-000",
            false,
        )
        .await;
    }
    println!("[{store}] destroying every replica and its data");
    let replicas: Vec<(u64, String, String, PathBuf)> = cluster
        .replicas
        .iter()
        .map(|r| (r.id, r.address.clone(), r.az.clone(), r.data_dir.clone()))
        .collect();
    for (id, _, _, dir) in &replicas {
        cluster.kill(*id);
        std::fs::remove_dir_all(dir).with_context(|| format!("deleting {}", dir.display()))?;
    }
    let lost_window = exported_at.elapsed();

    println!("[{store}] restoring {}", exported.archive_url);
    let started = Instant::now();
    let key = Key::from_file(key_file)?;
    let (manifest, download) = restore_replica(
        &mut cluster,
        replicas[0].0,
        &exported.archive_url,
        Some(&key),
    )
    .await?;
    serving(&client).await?;
    let rto = started.elapsed();
    for (id, ..) in &replicas[1..] {
        cluster.rejoin_fresh(*id).await;
    }
    let full_redundancy = started.elapsed();
    let after = list_fleet(&client)
        .await
        .context("listing the restored fleet")?;
    let identical = after == before;
    println!(
        "[{store}] restored: RTO {} ms, identical state: {identical}",
        ms(rto)
    );
    Ok(Run {
        store: store.to_string(),
        load,
        rss,
        state_bytes: manifest.plain_size,
        archive_bytes: manifest.size,
        export,
        lost_writes: args.writes_after_export,
        lost_window,
        download,
        rto,
        full_redundancy,
        identical,
    })
}

/// Waits until the cluster answers a linearizable read through its leader.
/// Downloads and verifies the archive at `url`, writes it into replica `id`'s (deleted) data
/// dir as a single-voter cluster with the restore bump, and starts the replica. Returns the
/// manifest and how long download and verification took.
pub(crate) async fn restore_replica(
    cluster: &mut TestCluster,
    id: u64,
    url: &str,
    key: Option<&Key>,
) -> anyhow::Result<(ballast_dr::Manifest, Duration)> {
    let started = Instant::now();
    let archive = ArchiveUrl::parse(url)?;
    let verified = ballast_dr::verify(&archive, key, true, &NoProgress).await?;
    let download = started.elapsed();
    let manifest = verified.manifest;
    let state = verified.data.context("the archive has no data")?;
    let archived = Archived::of(&manifest, &state)?;
    let replica = cluster.replica(id);
    restore_into(
        &replica.data_dir,
        id,
        ReplicaNode {
            address: replica.address.clone(),
            az: replica.az.clone(),
        },
        &archived,
        RESTORE_BUMP,
    )?;
    cluster.restart(id);
    Ok((manifest, download))
}

async fn serving(client: &BallastClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let read = client
            .fleet(|mut c, req| async move {
                c.list_providers(req.wrap(pb::ListProvidersRequest { options: None }))
                    .await
            })
            .await;
        if read.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the restored cluster did not serve within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs a drill.
pub async fn run(drill: Drill) -> anyhow::Result<()> {
    let Drill::Dr(args) = drill;
    let work = tempfile::tempdir().context("temp dir")?;
    let key_file = work.path().join("dr.key");
    let mut key = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut key[..]);
    std::fs::write(&key_file, key).context("writing the drill key")?;
    let (local, s3) = match args.stores.as_str() {
        "local" => (true, false),
        "s3" => (false, true),
        "both" => (true, true),
        other => bail!("--stores must be local, s3 or both, not {other:?}"),
    };
    let mut runs = Vec::new();
    if local {
        let url = work.path().join("archives").display().to_string();
        runs.push(drill_one(&args, "local directory", &url, &key_file).await?);
    }
    if s3 {
        S3Server::set_credentials();
        let server = S3Server::start("ballast-drill");
        let url = server.url("drill");
        runs.push(drill_one(&args, "S3 (moto on loopback)", &url, &key_file).await?);
    }
    let report = report(&args, &runs)?;
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(&args.out, &report)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("\n{report}");
    if runs.iter().any(|r| !r.identical) {
        bail!("the restored state differs from the exported state");
    }
    Ok(())
}

fn report(args: &DrDrillArgs, runs: &[Run]) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "# DR drill\n")?;
    writeln!(
        out,
        "`cargo run --release -p ballast-sim -- drill dr`: a real 3-replica cluster on loopback \
         loaded with {} shards, {} topology domains, {} cluster bindings and {} sliced quotas{}; \
         exported encrypted \
         (XChaCha20-Poly1305); {} writes acknowledged after the export; every replica SIGKILLed \
         and its data dir deleted; restored from the archive into replica 1, the others rejoined \
         with fresh data dirs; every table listed before the export and after the restore and \
         compared. Machine: {}.\n",
        args.shards,
        args.domains,
        args.bindings,
        args.quotas,
        if args.domains >= FleetShape::HUNDRED_MILLION.domains {
            " (the coordinator state of a 100M-machine fleet)"
        } else {
            ""
        },
        args.writes_after_export,
        machine()
    )?;
    writeln!(
        out,
        "| store | load ms | RSS of 3 replicas, loaded | state bytes | archive bytes | export ms | download + verify + decrypt ms | RTO ms (restore start → serving) | 3 voters again ms | RPO (writes lost / window) | state identical |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")?;
    for r in runs {
        writeln!(
            out,
            "| {} | {} | {:.1} MiB | {} | {} | {} | {} | {} | {} | {} writes / {:.1} s | {} |",
            r.store,
            ms(r.load),
            r.rss as f64 / (1024.0 * 1024.0),
            r.state_bytes,
            r.archive_bytes,
            ms(r.export),
            ms(r.download),
            ms(r.rto),
            ms(r.full_redundancy),
            r.lost_writes,
            r.lost_window.as_secs_f64(),
            if r.identical { "yes" } else { "NO" }
        )?;
    }
    writeln!(
        out,
        "\nRPO is what the drill wrote after its export: with scheduled exports it is at most one \
         `--dr-interval-secs` of writes. RTO covers downloading and checking the archive, \
         writing the data dir, starting the replica and its first election, up to the first \
         linearizable read. RSS is the three replicas' resident memory right after loading the \
         fleet (the design target for the 100M-fleet state is under 50 MB for the three)."
    )?;
    Ok(out)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, Linux, loopback, fsync on")
}
