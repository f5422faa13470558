//! `ballast-shard`'s flags: the one configuration struct of the shard binary (also embedded by
//! `ballast-sim`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ballast_tls::TlsArgs;
use clap::Parser;

use crate::provider::SimulatedConfig;
use crate::worker::{self, ProviderChoice, ProviderSpec, WorkerConfig, WorkerError};

/// A Ballast shard worker.
#[derive(Parser, Debug, Clone)]
#[command(name = "ballast-shard", version)]
pub struct ShardArgs {
    /// TOML file with any of these settings, named like the flags (`data_dir = "..."` or
    /// `data-dir`); flags and BALLAST_* variables override it. Unknown keys are refused.
    #[arg(long, env = "BALLAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Shard id.
    #[arg(long, env = "BALLAST_SHARD_ID")]
    pub id: String,
    /// AZ of this shard.
    #[arg(long, env = "BALLAST_AZ")]
    pub az: String,
    /// Coordinator client addresses, comma-separated.
    #[arg(
        long,
        env = "BALLAST_COORDINATORS",
        value_delimiter = ',',
        required = true
    )]
    pub coordinators: Vec<String>,
    /// Data directory for the assignment cache.
    #[arg(long, env = "BALLAST_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address serving the shard's API.
    #[arg(long, env = "BALLAST_LISTEN", default_value = "127.0.0.1:7801")]
    pub listen: SocketAddr,
    /// Address recorded at the coordinator (defaults to the bound address).
    #[arg(long, env = "BALLAST_ADVERTISE")]
    pub advertise: Option<String>,
    /// Lease length asked for, in milliseconds.
    #[arg(long, env = "BALLAST_LEASE_MS", default_value_t = 10_000)]
    pub lease_ms: u64,
    /// Heartbeat interval in milliseconds (default: a third of the lease).
    #[arg(long, env = "BALLAST_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Engine decision interval in milliseconds.
    #[arg(long, env = "BALLAST_CYCLE_MS", default_value_t = 200)]
    pub cycle_ms: u64,
    /// The providers to drive (repeat or comma-separate): `sim` (the simulated provider built
    /// in, serving this shard alone), `grpc://HOST:PORT` (a provider process, e.g.
    /// `ballast-provider-sim`) or `https://HOST:PORT` (mutual TLS with the --tls-* flags),
    /// each optionally named `NAME=...` for the quota provider whose machines live there; the
    /// one without a name takes every other quota. `registry` adds every provider of the
    /// coordinator's registry (`ballastctl provider set`) by name at its endpoint, follows its
    /// changes and caches it for restarts without a coordinator; names given here win.
    #[arg(
        long,
        env = "BALLAST_PROVIDER",
        value_delimiter = ',',
        default_value = "sim"
    )]
    pub provider: Vec<String>,
    /// Deadline of every call to a provider over gRPC, in milliseconds.
    #[arg(long, env = "BALLAST_PROVIDER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub provider_timeout_ms: u64,
    /// Simulated provider: latency of every action, in milliseconds.
    #[arg(long, env = "BALLAST_SIM_LATENCY_MS", default_value_t = 20)]
    pub sim_latency_ms: u64,
    /// Simulated provider: probability (0 to 1) that an action fails.
    #[arg(long, env = "BALLAST_SIM_FAILURE_RATE", default_value_t = 0.0)]
    pub sim_failure_rate: f64,
    /// HTTP port for Prometheus metrics (`/metrics`) and probes (`/healthz`, `/readyz`:
    /// ready once the cache is loaded). Not served when absent.
    #[arg(long, env = "BALLAST_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Mutual TLS to the coordinators and on this worker's gRPC and HTTP ports. The
    /// certificate needs role ballast://role/shard/<--id>.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// With TLS on, let `/healthz` and `/readyz` answer callers without a client certificate.
    #[arg(long, env = "BALLAST_HTTP_OPEN_PROBES")]
    pub http_open_probes: bool,
}

impl ShardArgs {
    /// Checks the flags and builds the worker configuration.
    pub fn into_config(self) -> Result<WorkerConfig, WorkerError> {
        if self.lease_ms < 300 {
            return Err(WorkerError::Config(format!(
                "--lease-ms {} is below the minimum of 300",
                self.lease_ms
            )));
        }
        let heartbeat = self.heartbeat_ms.unwrap_or(self.lease_ms / 3);
        if heartbeat == 0 || heartbeat >= self.lease_ms {
            return Err(WorkerError::Config(format!(
                "--heartbeat-ms {heartbeat} must be above 0 and below --lease-ms {}",
                self.lease_ms
            )));
        }
        if self.cycle_ms == 0 {
            return Err(WorkerError::Config("--cycle-ms must be above 0".into()));
        }
        if !(0.0..=1.0).contains(&self.sim_failure_rate) {
            return Err(WorkerError::Config(format!(
                "--sim-failure-rate {} must be between 0 and 1",
                self.sim_failure_rate
            )));
        }
        Ok(WorkerConfig {
            id: self.id,
            az: self.az,
            coordinators: self.coordinators,
            data_dir: self.data_dir,
            listen: self.listen,
            advertise: self.advertise,
            lease_ttl: Duration::from_millis(self.lease_ms),
            heartbeat: Duration::from_millis(heartbeat),
            cycle: Duration::from_millis(self.cycle_ms),
            providers: self
                .provider
                .iter()
                .map(|text| {
                    let mut spec = ProviderSpec::parse(text).map_err(WorkerError::Config)?;
                    if let ProviderChoice::Sim(simulated) = &mut spec.choice {
                        *simulated = SimulatedConfig {
                            latency: Duration::from_millis(self.sim_latency_ms),
                            failure_rate: self.sim_failure_rate,
                            seed: 1,
                        };
                    }
                    Ok(spec)
                })
                .collect::<Result<Vec<_>, WorkerError>>()?,
            provider_timeout: Duration::from_millis(self.provider_timeout_ms),
            http_listen: self.http_listen,
            tls: self
                .tls
                .files()
                .map_err(|e| WorkerError::Config(e.to_string()))?,
            http_open_probes: self.http_open_probes,
        })
    }
}

/// Installs the log subscriber used by shard processes.
pub fn init_logging() {
    ballast_telemetry::init_logging("info,fjall=warn,lsm_tree=warn");
}

/// Runs a worker until SIGINT or SIGTERM.
pub async fn run_until_signal(args: ShardArgs) -> Result<(), WorkerError> {
    let running = worker::start(args.into_config()?).await?;
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| WorkerError::Config(format!("installing the SIGTERM handler: {e}")))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = terminate.recv() => tracing::info!("terminated; shutting down"),
    }
    running.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::worker::{ProviderChoice, ProviderSpec};

    #[test]
    fn provider_flags_name_their_quota_or_take_the_rest() {
        let parsed = |text: &str| ProviderSpec::parse(text).map(|s| (s.name, s.choice));
        assert!(matches!(parsed("sim"), Ok((None, ProviderChoice::Sim(_)))));
        assert!(matches!(
            parsed("aws=grpc://10.0.0.1:7400"),
            Ok((Some(name), ProviderChoice::Grpc(url))) if name == "aws" && url == "grpc://10.0.0.1:7400"
        ));
        assert!(matches!(
            parsed("https://p:7400"),
            Ok((None, ProviderChoice::Grpc(_)))
        ));
        assert!(matches!(
            parsed("lab=sim"),
            Ok((Some(_), ProviderChoice::Sim(_)))
        ));
        for bad in ["ftp://x:1", "Aws=sim", "=sim", "aws="] {
            assert!(ProviderSpec::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
