//! `ballast-provider-check`: the conformance suite for Ballast's provider contract
//! (`protocol/proto/ballast/provider/v1/provider.proto`), in the spirit of CSI's sanity suite.
//! Point it at any provider — the reference one, the Python example, yours — and it holds the
//! implementation to what shards rely on, in 21 checks: idempotency by key, fencing by domain
//! grant (creates), cluster grant (machines at work, which move with their cluster, in place),
//! ownership (idle machines), slice table and shard epoch, list/get consistency after every
//! call, paging with resumable cursors and combined filters, a precise code and reason for
//! every bad input, concurrent callers, and durability across a restart when the provider
//! claims it.
//!
//! - [`harness`]: the client, unique names and grants, and the expectations checks are written in;
//! - [`checks`]: the checks themselves;
//! - [`report`]: the human and JSON reports.

pub mod checks;
pub mod harness;
pub mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_tls::{ClientTls, TlsArgs};
use tonic::transport::Endpoint;

use crate::checks::{Context, Outcome};
use crate::harness::{Harness, Limits};
use crate::report::{Report, Row};

/// The suite's flags (the binary's one configuration struct).
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "ballast-provider-check",
    version,
    about = "Checks a provider against Ballast's provider contract (ballast.provider.v1)."
)]
pub struct CheckArgs {
    /// The provider: `host:port`, `http://host:port`, `grpc://host:port` (plain) or
    /// `https://host:port` (TLS; needs the --tls-* flags).
    #[arg(long, env = "BALLAST_PROVIDER_ENDPOINT")]
    pub endpoint: String,
    /// Print the report as JSON (one object) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run only the checks whose name starts with one of these (comma-separated, e.g.
    /// `fencing,idempotency/create`).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Deadline of every call, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub call_timeout_ms: u64,
    /// How long a machine may stay in a transitional state (CREATING, DRAINING, ...), in ms.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub settle_timeout_ms: u64,
    /// A shell command that restarts the provider with its data kept, at the same address.
    /// With it, a provider that says it is durable is checked across the restart.
    #[arg(long)]
    pub restart_command: Option<String>,
    /// How long the provider may take to answer again after --restart-command, in ms.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub restart_timeout_ms: u64,
    /// TLS towards the provider (mutual; the certificate should carry the admin role, since
    /// the suite acts as many shards).
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Why the suite could not run at all (as opposed to a provider failing checks).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The endpoint is not a usable address.
    #[error("--endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// As given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS flags or files are unusable.
    #[error("{0}")]
    Tls(String),
    /// `--only` names no check.
    #[error("--only {0:?} matches no check; the checks are: {1}")]
    NoChecks(String, String),
    /// The provider did not answer `Describe`.
    #[error("cannot reach the provider at {endpoint}: {reason}")]
    Unreachable {
        /// Where.
        endpoint: String,
        /// The status of the failed `Describe`.
        reason: String,
    },
}

/// The endpoint as a URI tonic can dial, and whether it asks for TLS.
pub fn endpoint_uri(endpoint: &str) -> Result<(String, bool), CheckError> {
    let bad = |reason: &str| CheckError::Endpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let (rest, tls) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (rest, true)
    } else if let Some(rest) = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("grpc://"))
    {
        (rest, false)
    } else if endpoint.contains("://") {
        return Err(bad("the scheme must be http://, grpc:// or https://"));
    } else {
        (endpoint, false)
    };
    let rest = rest.trim_end_matches('/');
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(bad("expected host:port"));
    };
    if host.is_empty() || rest.contains('/') {
        return Err(bad("expected host:port"));
    }
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad("the port must be a number from 1 to 65535"));
    }
    let scheme = if tls { "https" } else { "http" };
    Ok((format!("{scheme}://{rest}"), tls))
}

/// Connects, runs the selected checks in order and reports each.
pub async fn run(args: &CheckArgs) -> Result<Report, CheckError> {
    let (uri, wants_tls) = endpoint_uri(&args.endpoint)?;
    let files = args
        .tls
        .files()
        .map_err(|e| CheckError::Tls(e.to_string()))?;
    let tls: Option<Arc<ClientTls>> = match (&files, wants_tls) {
        (Some(files), _) => {
            Some(ClientTls::from_files(files).map_err(|e| CheckError::Tls(e.to_string()))?)
        }
        (None, true) => {
            return Err(CheckError::Tls(
                "an https:// endpoint needs --tls-ca, --tls-cert and --tls-key".into(),
            ));
        }
        (None, false) => None,
    };
    // TLS is made by the connector (`ballast_tls`), over an http:// URI: tonic given https://
    // wants its own TLS and refuses to connect.
    let plain = uri.replacen("https://", "http://", 1);
    let endpoint = Endpoint::from_shared(plain).map_err(|e| CheckError::Endpoint {
        endpoint: args.endpoint.clone(),
        reason: e.to_string(),
    })?;
    let endpoint = endpoint.connect_timeout(Duration::from_millis(args.call_timeout_ms));
    let channel = ballast_tls::client::lazy_channel(endpoint, tls.as_ref());

    let selected: Vec<checks::Check> = checks::all()
        .into_iter()
        .filter(|check| {
            args.only.is_empty()
                || args
                    .only
                    .iter()
                    .any(|prefix| check.name.starts_with(prefix.as_str()))
        })
        .collect();
    if selected.is_empty() {
        let names: Vec<&str> = checks::all().iter().map(|c| c.name).collect();
        return Err(CheckError::NoChecks(args.only.join(","), names.join(", ")));
    }

    let limits = Limits {
        call: Duration::from_millis(args.call_timeout_ms),
        settle: Duration::from_millis(args.settle_timeout_ms),
    };
    let harness =
        Harness::connect(channel, limits)
            .await
            .map_err(|status| CheckError::Unreachable {
                endpoint: args.endpoint.clone(),
                reason: harness::show_status(&status),
            })?;
    let context = Context {
        harness: &harness,
        restart_command: args.restart_command.as_deref(),
        restart_timeout: Duration::from_millis(args.restart_timeout_ms),
    };
    let mut rows = Vec::with_capacity(selected.len());
    for check in &selected {
        let started = Instant::now();
        let outcome = (check.body)(&context).await;
        rows.push(Row {
            name: check.name.to_string(),
            about: check.about.to_string(),
            outcome,
            elapsed: started.elapsed(),
        });
    }
    Ok(Report {
        endpoint: args.endpoint.clone(),
        provider: harness.describe.name.clone(),
        contract: harness.describe.contract.clone(),
        rows,
    })
}

impl Report {
    /// Whether every check that ran passed.
    pub fn passed(&self) -> bool {
        !self
            .rows
            .iter()
            .any(|row| matches!(row.outcome, Outcome::Fail(_)))
    }
}

/// Runs the suite, prints the report (table or JSON) on stdout and returns the exit status:
/// 0 when every check that ran passed, 1 when any failed, 2 when the suite could not run (bad
/// flags, provider unreachable; the reason goes to stderr).
pub async fn run_and_print(args: &CheckArgs) -> i32 {
    match run(args).await {
        Ok(report) => {
            if args.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            if report.passed() { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("ballast-provider-check: {e}");
            2
        }
    }
}
