//! Memory benchmark: RSS of the three replicas idle, with the coordinator state of a
//! 100M-machine fleet loaded through the API, after a snapshot on every replica, and after
//! every replica restarted from its data dir (state rebuilt from the snapshot alone, so what
//! loading left behind in the allocator is gone).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use ballast_protocol::pb;
use ballast_protocol::pb::cluster_client::ClusterClient;
use ballast_testkit::fleet::{FleetShape, load_fleet};
use ballast_testkit::{ClusterOptions, TestCluster};

use crate::stats::{dir_bytes, mib, rss_bytes, rss_file_bytes};

/// Flags of `ballast-bench memory`.
#[derive(clap::Args, Debug)]
pub struct MemoryBenchArgs {
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks-memory.md")]
    pub out: PathBuf,
}

/// RSS of each replica and the file-backed part of it (program pages), bytes.
fn rss_each(cluster: &TestCluster) -> Vec<(u64, u64)> {
    cluster
        .replicas
        .iter()
        .map(|r| {
            let pid = r.pid();
            (
                pid.and_then(rss_bytes).unwrap_or(0),
                pid.and_then(rss_file_bytes).unwrap_or(0),
            )
        })
        .collect()
}

/// Runs the benchmark and writes the report.
pub async fn run(args: MemoryBenchArgs) -> anyhow::Result<()> {
    let work = tempfile::tempdir().context("temp dir")?;
    let mut cluster = TestCluster::start_with(
        ClusterOptions {
            program: std::env::current_exe().context("locating ballast-bench")?,
            leading_args: vec!["replica".into()],
            dir: Some(work.path().to_path_buf()),
            ..ClusterOptions::default()
        },
        3,
    )
    .await;
    // Two trim intervals: what a quiet replica holds, not what it freed a moment ago.
    let quiet = ballast_coordinator::memory::TRIM_INTERVAL * 2;
    let settle = || tokio::time::sleep(quiet);
    settle().await;
    let mut rows: Vec<(&str, Vec<(u64, u64)>)> = vec![("idle", rss_each(&cluster))];

    let shape = FleetShape::HUNDRED_MILLION;
    let client = cluster.client();
    eprintln!("loading {shape:?}");
    load_fleet(&client, shape)
        .await
        .context("loading the fleet")?;
    let revision = client.revision().await?;
    cluster.wait_until_converged(revision).await;
    settle().await;
    rows.push(("100M-fleet state loaded", rss_each(&cluster)));

    let ids: Vec<u64> = cluster.replicas.iter().map(|r| r.id).collect();
    for id in &ids {
        ClusterClient::new(cluster.channel(*id))
            .snapshot(pb::SnapshotRequest {})
            .await
            .with_context(|| format!("snapshot on replica {id}"))?;
    }
    settle().await;
    rows.push(("after a snapshot on every replica", rss_each(&cluster)));

    for id in &ids {
        cluster.kill(*id);
        cluster.restart(*id);
        cluster.wait_for_revision(*id, revision).await;
    }
    settle().await;
    rows.push((
        "every replica restarted from its data dir",
        rss_each(&cluster),
    ));
    let disk: u64 = cluster
        .replicas
        .iter()
        .map(|r| dir_bytes(&r.data_dir))
        .sum();

    let mut out = String::new();
    writeln!(
        out,
        "# Memory: three replicas with a 100M-machine fleet's state\n"
    )?;
    writeln!(
        out,
        "`cargo run --release -p ballast-bench -- memory`: three replicas on loopback; the \
         coordinator state of a 100M-machine fleet ({} shards, {} topology domains, {} cluster \
         bindings, {} sliced quotas) written through the API in batches of 10,000; RSS read \
         from /proc after {} s of quiet at each step (two of the replicas' memory-trim \
         intervals). Target: under 50 MB for the three together. Machine: {}.\n",
        shape.shards,
        shape.domains,
        shape.bindings,
        shape.quotas,
        quiet.as_secs(),
        crate::stats::machine()
    )?;
    writeln!(
        out,
        "| step | replica 1 MiB | replica 2 MiB | replica 3 MiB | total MiB | of which program pages MiB | total without them MiB |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|")?;
    for (step, each) in &rows {
        let cells: Vec<String> = each.iter().map(|(rss, _)| mib(*rss)).collect();
        let total: u64 = each.iter().map(|(rss, _)| rss).sum();
        let file: u64 = each.iter().map(|(_, file)| file).sum();
        writeln!(
            out,
            "| {step} | {} | {} | {} | {} |",
            cells.join(" | "),
            mib(total),
            mib(file),
            mib(total - file)
        )?;
    }
    writeln!(
        out,
        "\nProgram pages are the file-backed part of RSS (`RssFile`): the binary's code and \
         read-only data, the same physical pages for every process running it, which the kernel \
         drops and re-reads under memory pressure. The last column is the memory the replicas \
         hold of their own (heap, stacks)."
    )?;
    writeln!(
        out,
        "\nData dirs of the three after the restarts: {} MiB.",
        mib(disk)
    )?;
    std::fs::write(&args.out, &out).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{out}");
    Ok(())
}
