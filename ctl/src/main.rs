//! `ballastctl`: operate a Ballast coordinator cluster.
//!
//! Exit codes: 0 success; 1 the cluster refused the request (bad input, not found, conflict);
//! 2 usage error; 3 no coordinator reachable (or no leader) within the retry budget.

mod commands;
mod output;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ballast_tls::{ClientTls, TlsArgs};

use ballast_protocol::client::{BallastClient, ClientConfig, ClientError};
use clap::{Parser, Subcommand};

/// Operate a Ballast coordinator cluster.
#[derive(Parser, Debug)]
#[command(name = "ballastctl", version)]
struct Cli {
    /// Coordinator client addresses, comma-separated.
    #[arg(
        long,
        global = true,
        env = "BALLAST_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7701"
    )]
    endpoints: Vec<String>,
    /// Refuse to talk to any cluster but this one.
    #[arg(long, global = true, env = "BALLAST_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Serve reads from the replica reached, without confirming it is current.
    #[arg(long, global = true)]
    stale: bool,
    /// TOML file with any of the global settings (`endpoints = ["10.0.1.5:7701", ...]`,
    /// `cluster_id`, `timeout_secs`); flags and BALLAST_* variables override it.
    #[arg(long, global = true, env = "BALLAST_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Give up after this many seconds of retries.
    #[arg(long, global = true, default_value_t = 15)]
    timeout_secs: u64,
    /// etcd user for `kv` and `lease` once etcd auth is on, as `etcdctl --user`: `NAME` or
    /// `NAME:PASSWORD`.
    #[arg(long, global = true, env = "BALLAST_ETCD_USER")]
    user: Option<String>,
    /// Password of --user (when not given as `NAME:PASSWORD`).
    #[arg(
        long,
        global = true,
        env = "BALLAST_ETCD_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// Mutual TLS to the coordinators and shard workers (a certificate with role admin, or
    /// readonly for reads).
    #[command(flatten)]
    tls: TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Coordinator replicas: status, members, leader, membership and snapshots.
    #[command(subcommand)]
    Cluster(commands::cluster::ClusterCmd),
    /// Shard workers: list, show, drain, activate, register, remove.
    #[command(subcommand)]
    Shard(commands::shard::ShardCmd),
    /// Topology domains and the shard owning each.
    #[command(subcommand)]
    Domain(commands::domain::DomainCmd),
    /// Cluster → shard bindings.
    #[command(subcommand)]
    Binding(commands::binding::BindingCmd),
    /// Quotas per (provider, region) and their per-shard slices.
    #[command(subcommand)]
    Quota(commands::quota::QuotaCmd),
    /// Provider registry.
    #[command(subcommand)]
    Provider(commands::provider::ProviderCmd),
    /// Disaster recovery: export, list, verify and restore archives.
    #[command(subcommand)]
    Dr(commands::dr::DrCmd),
    /// The coordination KV (etcd API): put, get, del, watch, txn.
    #[command(subcommand)]
    Kv(commands::kv::KvCmd),
    /// KV leases: grant, keepalive, revoke, list.
    #[command(subcommand)]
    Lease(commands::kv::LeaseCmd),
}

/// Settings every command receives.
pub struct Context {
    /// Connected client.
    pub client: BallastClient,
    /// `--stale`.
    pub stale: bool,
    /// Mutual TLS of every connection (`None`: plain text).
    pub tls: Option<Arc<ClientTls>>,
}

impl Context {
    /// Read options for this invocation.
    pub fn read_options(&self) -> Option<ballast_protocol::pb::ReadOptions> {
        Some(ballast_protocol::pb::ReadOptions { stale: self.stale })
    }
}

async fn run(cli: Cli) -> anyhow::Result<output::Rendered> {
    let mut config = ClientConfig::new(cli.endpoints);
    config.cluster_id = cli.cluster_id;
    config.retry_budget = Duration::from_secs(cli.timeout_secs);
    config.tls = match cli
        .tls
        .files()
        .map_err(|e| ClientError::Config(e.to_string()))?
    {
        Some(files) => {
            Some(ClientTls::from_files(&files).map_err(|e| ClientError::Config(e.to_string()))?)
        }
        None => None,
    };
    let coordinator = ballast_protocol::coordination::Coordinator::with_tls(
        &config.endpoints,
        config.tls.clone(),
    )?;
    if matches!(cli.command, Command::Kv(_) | Command::Lease(_))
        && let Some(user) = &cli.user
    {
        let (name, password) = match (user.split_once(':'), &cli.password) {
            (Some((name, password)), _) => (name, password),
            (None, Some(password)) => (user.as_str(), password.as_str()),
            (None, None) => anyhow::bail!(
                "--user {user} needs a password: --user {user}:PASSWORD, --password or \
                 BALLAST_ETCD_PASSWORD"
            ),
        };
        coordinator
            .login(name, password)
            .await
            .map_err(|e| anyhow::anyhow!("logging in as {name}: {e}"))?;
    }
    let ctx = Context {
        tls: config.tls.clone(),
        client: BallastClient::new(config)?,
        stale: cli.stale,
    };
    match cli.command {
        Command::Cluster(c) => commands::cluster::run(&ctx, c).await,
        Command::Shard(c) => commands::shard::run(&ctx, c).await,
        Command::Domain(c) => commands::domain::run(&ctx, c).await,
        Command::Binding(c) => commands::binding::run(&ctx, c).await,
        Command::Quota(c) => commands::quota::run(&ctx, c).await,
        Command::Provider(c) => commands::provider::run(&ctx, c).await,
        Command::Dr(c) => commands::dr::run(&ctx, c).await,
        Command::Kv(c) => commands::kv::run_kv(&coordinator, c).await,
        Command::Lease(c) => commands::kv::run_lease(&coordinator, c).await,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = ballast_settings::parse_or_exit::<Cli>();
    let json = cli.json;
    match run(cli).await {
        Ok(rendered) => {
            if json {
                println!("{}", rendered.json);
            } else if !rendered.human.is_empty() {
                println!("{}", rendered.human);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            match error.downcast_ref::<ClientError>() {
                Some(ClientError::Unavailable { .. }) => ExitCode::from(3),
                Some(ClientError::Config(_)) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

fn one_line(error: &anyhow::Error) -> String {
    // KV and lease commands surface the raw gRPC status; print it like every other refusal.
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        return format!(
            "{}: {}",
            ballast_protocol::client::code_name(status.code()),
            status.message()
        )
        .replace('\n', " ");
    }
    format!("{error:#}").replace('\n', " ")
}
