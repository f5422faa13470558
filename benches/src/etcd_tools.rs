//! The tools etcd operators run, timed against a 3-replica Ballast and a 3-member etcd
//! (Debian's `etcd-server` 3.4, fsync on, both on loopback) started in the same run and taken
//! in turns: `etcdctl check perf` (its own load, verdict and figures), and puts through the
//! HTTP/JSON gateway (`POST /v3/kv/put`) over kept-alive HTTP/1.1 connections.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ballast_testkit::etcd::EtcdCluster;
use ballast_testkit::{ClusterOptions, TestCluster};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use crate::stats::{Summary, closed_loop, ms};

/// Flags of `ballast-bench etcd-tools`.
#[derive(clap::Args, Debug)]
pub struct EtcdToolsArgs {
    /// `etcdctl check perf` workload: s, m, l or xl.
    #[arg(long, default_value = "m")]
    load: String,
    /// `check perf` runs per system (taken in turns, the first system alternating).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Seconds of gateway puts per system and concurrency level.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks-etcd-tools.md")]
    pub out: PathBuf,
}

/// What `etcdctl check perf` printed.
#[derive(Debug, Default)]
struct CheckPerf {
    passed: bool,
    errors: bool,
    writes_per_sec: Option<u64>,
    slowest_s: Option<f64>,
    stddev_s: Option<f64>,
}

/// The number after `marker` in `text` (up to the next character that cannot be in one).
fn number_after(text: &str, marker: &str) -> Option<f64> {
    let start = text.find(marker)? + marker.len();
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().ok()
}

fn parse_check_perf(stdout: &str) -> CheckPerf {
    let first = |markers: &[&str]| markers.iter().find_map(|m| number_after(stdout, m));
    CheckPerf {
        passed: stdout.lines().any(|l| l.trim() == "PASS"),
        errors: stdout.contains("FAIL: too many errors"),
        writes_per_sec: first(&["Throughput is ", "Throughput too low: "]).map(|n| n as u64),
        slowest_s: first(&["Slowest request took too long: ", "Slowest request took "]),
        stddev_s: first(&["Stddev is ", "Stddev too high: "]),
    }
}

fn check_perf(etcdctl: &Path, endpoints: &[String], load: &str) -> anyhow::Result<CheckPerf> {
    let out = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["check", "perf", &format!("--load={load}")])
        .output()
        .context("running etcdctl check perf")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let result = parse_check_perf(&stdout);
    if result.writes_per_sec.is_none() {
        bail!(
            "etcdctl check perf gave no verdict: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(result)
}

/// One kept-alive HTTP/1.1 connection: just enough client for `POST` with a JSON body.
struct Http {
    stream: BufStream<TcpStream>,
    host: String,
}

impl Http {
    async fn connect(address: &str) -> std::io::Result<Http> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream: BufStream::new(stream),
            host: address.to_string(),
        })
    }

    /// The status and body of `POST path` with `body`.
    async fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await?;
        self.stream.write_all(body).await?;
        self.stream.flush().await?;
        let bad = |what: &str| std::io::Error::other(format!("bad HTTP answer: {what}"));
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&line))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(bad("closed in the headers"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse::<usize>().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut answer = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim(), 16).map_err(|_| bad(&line))?;
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
                answer.extend_from_slice(&chunk[..size]);
            }
        } else {
            answer.resize(length.ok_or_else(|| bad("no length"))?, 0);
            self.stream.read_exact(&mut answer).await?;
        }
        Ok((status, answer))
    }
}

/// Gateway puts for `seconds` from `in_flight` connections to `addresses` (spread over them).
async fn gateway_puts(
    addresses: &[String],
    in_flight: usize,
    seconds: u64,
    tag: &str,
) -> (f64, Summary, usize) {
    let connections: Arc<Vec<tokio::sync::Mutex<Option<Http>>>> = Arc::new(
        (0..in_flight)
            .map(|_| tokio::sync::Mutex::new(None))
            .collect(),
    );
    let addresses = Arc::new(addresses.to_vec());
    let value = STANDARD.encode(vec![b'v'; 256]);
    let tag = tag.to_string();
    let mut run = closed_loop(in_flight, Duration::from_secs(seconds), move |worker, n| {
        let (connections, addresses) = (connections.clone(), addresses.clone());
        let body = format!(
            r#"{{"key": "{}", "value": "{value}"}}"#,
            STANDARD.encode(format!("gw/{tag}/{in_flight}/{worker}/{n}"))
        );
        async move {
            let mut slot = connections[worker].lock().await;
            if slot.is_none() {
                *slot = Http::connect(&addresses[worker % addresses.len()])
                    .await
                    .ok();
            }
            let Some(http) = slot.as_mut() else {
                return false;
            };
            match http.post("/v3/kv/put", body.as_bytes()).await {
                Ok((200, _)) => true,
                _ => {
                    *slot = None;
                    false
                }
            }
        }
    })
    .await;
    (run.rate(), Summary::of(&mut run.latencies), run.errors)
}

fn seconds_ms(s: Option<f64>) -> String {
    s.map_or("—".into(), |s| format!("{:.1}", s * 1000.0))
}

/// Runs the benchmark and writes the report.
pub async fn run(args: EtcdToolsArgs) -> anyhow::Result<()> {
    let work = tempfile::tempdir().context("temp dir")?;
    let program = std::env::current_exe().context("locating ballast-bench")?;
    let etcdctl = ballast_testkit::etcd::install();
    let ballast = TestCluster::start_with(
        ClusterOptions {
            program,
            leading_args: vec!["replica".into()],
            ..ClusterOptions::default()
        },
        3,
    )
    .await;
    let etcd = EtcdCluster::start(work.path(), 3).context("starting etcd")?;
    let systems = [
        ("Ballast", ballast.endpoints()),
        ("etcd 3.4", etcd.endpoints.clone()),
    ];
    for (name, endpoints) in &systems {
        crate::kv::ready(&ballast_protocol::coordination::Coordinator::new(
            endpoints,
        )?)
        .await
        .with_context(|| format!("{name} accepting writes"))?;
    }

    let mut text = String::new();
    writeln!(
        text,
        "# Benchmarks: the tools etcd operators run\n\n{} on {}; Ballast and etcd 3.4 \
         (3 members each, fsync on, loopback) started in the same run and taken in turns. \
         `cargo run --release -p ballast-bench -- etcd-tools --load {} --rounds {} --seconds {}`.\n",
        crate::report::today(),
        crate::stats::machine(),
        args.load,
        args.rounds,
        args.seconds
    )?;

    writeln!(
        text,
        "## `etcdctl check perf --load={}`\n\n| round | system | verdict | writes/s | slowest (ms) | stddev (ms) |\n|---:|---|---|---:|---:|---:|",
        args.load
    )?;
    for round in 0..args.rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1]
        } else {
            vec![1, 0]
        };
        for i in order {
            let (name, endpoints) = &systems[i];
            eprintln!(
                "check perf --load={} on {name} (round {})",
                args.load,
                round + 1
            );
            let result = check_perf(&etcdctl, endpoints, &args.load)?;
            writeln!(
                text,
                "| {} | {name} | {}{} | {} | {} | {} |",
                round + 1,
                if result.passed { "PASS" } else { "FAIL" },
                if result.errors { " (errors)" } else { "" },
                result.writes_per_sec.unwrap_or(0),
                seconds_ms(result.slowest_s),
                seconds_ms(result.stddev_s),
            )?;
        }
    }

    writeln!(
        text,
        "\n## Puts through the JSON gateway (`POST /v3/kv/put`, 256 B values)\n\nKept-alive HTTP/1.1 \
         connections spread over the three members, {} s per system and level.\n\n| in flight | system | puts/s | p50 (ms) | p99 (ms) | errors |\n|---:|---|---:|---:|---:|---:|",
        args.seconds
    )?;
    let mut ratios = Vec::new();
    for (level, in_flight) in [1usize, 32].into_iter().enumerate() {
        let order: Vec<usize> = if level % 2 == 0 {
            vec![0, 1]
        } else {
            vec![1, 0]
        };
        let mut rates = [0.0; 2];
        let mut p99 = [Duration::ZERO; 2];
        for i in order {
            let (name, endpoints) = &systems[i];
            eprintln!("gateway puts at {in_flight} in flight on {name}");
            let (rate, summary, errors) =
                gateway_puts(endpoints, in_flight, args.seconds, &format!("{i}")).await;
            rates[i] = rate;
            p99[i] = summary.p99;
            writeln!(
                text,
                "| {in_flight} | {name} | {rate:.0} | {} | {} | {errors} |",
                ms(summary.p50),
                ms(summary.p99)
            )?;
        }
        ratios.push((in_flight, rates[0] / rates[1].max(1e-9), p99[0], p99[1]));
    }
    writeln!(
        text,
        "\nBallast ÷ etcd, puts/s: {}.",
        ratios
            .iter()
            .map(|(level, ratio, _, _)| format!("{ratio:.2}× at {level} in flight"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    crate::report::write_keeping(&args.out, &text, &[])?;
    eprintln!("{text}");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_perf_output_parses_both_verdicts() {
        let pass = "60 / 60 Booooo 100.00% 1m0s\nPASS: Throughput is 150 writes/s\nPASS: Slowest request took 0.087000s\nPASS: Stddev is 0.004000s\nPASS\n";
        let result = parse_check_perf(pass);
        assert!(result.passed && !result.errors);
        assert_eq!(result.writes_per_sec, Some(150));
        assert_eq!(result.slowest_s, Some(0.087));
        assert_eq!(result.stddev_s, Some(0.004));
        let fail = "FAIL: Throughput too low: 120 writes/s\nSlowest request took too long: 0.700000s\nStddev too high: 0.200000s\nFAIL\n";
        let result = parse_check_perf(fail);
        assert!(!result.passed);
        assert_eq!(result.writes_per_sec, Some(120));
        assert_eq!(result.slowest_s, Some(0.7));
        assert_eq!(result.stddev_s, Some(0.2));
    }
}
