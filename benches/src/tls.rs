//! `ballast-bench tls`: what mutual TLS costs. Two 3-replica groups in one run, one plain and
//! one with mutual TLS on every port (certificates from a throwaway CA), the same etcd-API puts
//! through one connection to each group's leader at 1, 32 and 128 in flight, alternating the
//! two at every level.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ballast_protocol::coordination::Coordinator;
use ballast_testkit::{ClusterOptions, TestCluster, TestPki};

use crate::kv::{puts, ready};
use crate::stats::ms;

/// Flags of `ballast-bench tls`.
#[derive(clap::Args, Debug)]
pub struct TlsBenchArgs {
    /// Seconds per concurrency level and group.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks-tls.md")]
    pub out: PathBuf,
}

async fn group(program: &std::path::Path, tls: Option<Arc<TestPki>>) -> TestCluster {
    TestCluster::start_with(
        ClusterOptions {
            program: program.to_path_buf(),
            leading_args: vec!["replica".into()],
            tls,
            ..ClusterOptions::default()
        },
        3,
    )
    .await
}

/// Runs the benchmark and writes the report.
pub async fn run(args: TlsBenchArgs) -> anyhow::Result<()> {
    let work = tempfile::tempdir().context("temp dir")?;
    let program = std::env::current_exe().context("locating ballast-bench")?;
    let pki = Arc::new(TestPki::new(work.path(), "bench"));
    let plain = group(&program, None).await;
    let secured = group(&program, Some(pki)).await;
    let leader_of = |cluster: &TestCluster, id: u64| cluster.replica(id).address.clone();
    let plain_client = Coordinator::new(&[leader_of(&plain, plain.leader().await)])?;
    let tls_client = Coordinator::with_tls(
        &[leader_of(&secured, secured.leader().await)],
        secured.client_tls.clone(),
    )?;
    ready(&plain_client).await?;
    ready(&tls_client).await?;
    let value = vec![b'x'; args.value_bytes];
    let mut out = String::new();
    writeln!(out, "# Mutual TLS: what it costs\n")?;
    writeln!(
        out,
        "`cargo run --release -p ballast-bench -- tls`: two 3-replica groups in the same run, one \
         plain and one with mutual TLS on every port (client and Raft traffic; ECDSA P-256 \
         certificates from a throwaway CA, rustls with aws-lc-rs). The same etcd-API client puts \
         {}-byte values under unique keys through one connection to each group's leader for {} s \
         per level, plain then TLS at each level. Machine: {}.\n",
        args.value_bytes,
        args.seconds,
        crate::stats::machine()
    )?;
    writeln!(
        out,
        "| in flight | plain puts/s | mTLS puts/s | mTLS / plain | plain p50 / p99 ms | mTLS p50 / p99 ms |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---|---|")?;
    for in_flight in [1usize, 32, 128] {
        eprintln!("{in_flight} in flight: plain");
        let p = puts(&plain_client, in_flight, args.seconds, &value).await;
        eprintln!("{in_flight} in flight: mutual TLS");
        let t = puts(&tls_client, in_flight, args.seconds, &value).await;
        eprintln!("  plain {:.0}/s, mTLS {:.0}/s", p.0, t.0);
        writeln!(
            out,
            "| {in_flight} | {:.0} | {:.0} | {:.2} | {} / {} | {} / {} |",
            p.0,
            t.0,
            t.0 / p.0.max(1.0),
            ms(p.1.p50),
            ms(p.1.p99),
            ms(t.1.p50),
            ms(t.1.p99)
        )?;
    }
    std::fs::write(&args.out, &out).with_context(|| format!("writing {}", args.out.display()))?;
    print!("{out}");
    Ok(())
}
