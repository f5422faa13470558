//! `ballast-coord`'s flags: the one configuration struct of the replica binary (also embedded
//! by `ballast-sim`, which runs replicas as child processes of itself).

use ballast_dr::{Destination, Key, Retention};
use ballast_tls::TlsArgs;

use crate::dr::DrConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::log::etcd::EtcdBackendConfig;
use crate::log::raft::read_lease::ReadPolicy;
use crate::node::{Backend, NodeConfig, NodeError};

/// Default leader heartbeat interval (ms).
pub const DEFAULT_HEARTBEAT_MS: u64 = 50;
/// Default lower bound of the election timeout (ms).
pub const DEFAULT_ELECTION_MIN_MS: u64 = 150;
/// Default upper bound of the election timeout and leader lease (ms).
pub const DEFAULT_ELECTION_MAX_MS: u64 = 250;

/// The default Raft timers in words, for reports: "heartbeat 50 ms, election 150–250 ms".
pub fn default_timers() -> String {
    format!(
        "heartbeat {DEFAULT_HEARTBEAT_MS} ms, election {DEFAULT_ELECTION_MIN_MS}–{DEFAULT_ELECTION_MAX_MS} ms"
    )
}

/// A Ballast coordinator replica (Raft over gRPC, state on fjall).
///
/// Start the first replica with --bootstrap, the others with --join. A restarted replica needs
/// only --id, --az, --listen and --data-dir: membership and cluster id are on disk.
#[derive(Parser, Debug, Clone)]
#[command(name = "ballast-coord", version)]
pub struct CoordArgs {
    /// TOML file with any of these settings, named like the flags (`data_dir = "..."` or
    /// `data-dir`); flags and BALLAST_* variables override it. Unknown keys are refused.
    #[arg(long, env = "BALLAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Replica id (>= 1), unique within the cluster.
    #[arg(long, env = "BALLAST_ID")]
    pub id: u64,
    /// Availability-zone label of this replica.
    #[arg(long, env = "BALLAST_AZ")]
    pub az: String,
    /// Address serving the client API and Raft traffic.
    #[arg(long, env = "BALLAST_LISTEN", default_value = "127.0.0.1:7701")]
    pub listen: SocketAddr,
    /// Address others use to reach this replica (defaults to --listen).
    #[arg(long, env = "BALLAST_ADVERTISE")]
    pub advertise: Option<String>,
    /// Data directory (Raft log, metadata, snapshots).
    #[arg(long, env = "BALLAST_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Create a new cluster with this replica as its first voter (ignored once initialised).
    #[arg(long, env = "BALLAST_BOOTSTRAP", conflicts_with = "join")]
    pub bootstrap: bool,
    /// Comma-separated addresses of existing members to join through.
    #[arg(long, env = "BALLAST_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Single-use token that lets this replica join (`ballastctl cluster token create`);
    /// needed with --join unless the replica is already a member at its address.
    #[arg(
        long,
        env = "BALLAST_JOIN_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub join_token: String,
    /// Join as a non-voting learner and stay one until promoted (`ballastctl cluster promote
    /// ID`, `etcdctl member promote ID`): it receives the log and serves serializable reads.
    #[arg(long, env = "BALLAST_LEARNER", requires = "join")]
    pub learner: bool,
    /// Leader heartbeat interval in milliseconds.
    #[arg(long, env = "BALLAST_HEARTBEAT_MS", default_value_t = DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout in milliseconds.
    #[arg(long, env = "BALLAST_ELECTION_MIN_MS", default_value_t = DEFAULT_ELECTION_MIN_MS)]
    pub election_min_ms: u64,
    /// Upper bound of the election timeout in milliseconds. It is also the leader lease. A
    /// leader whose process dies is replaced when the lease runs out (its closed connections
    /// tell the voters); one that goes quiet with its connections open, after lease + a
    /// random election timeout.
    #[arg(long, env = "BALLAST_ELECTION_MAX_MS", default_value_t = DEFAULT_ELECTION_MAX_MS)]
    pub election_max_ms: u64,
    /// How the leader makes a linearizable read: `read-index` (as etcd: confirm leadership
    /// with a majority, one heartbeat round shared by the reads that arrive together) or
    /// `lease` (answer from its own state while a majority accepted its appends within nine
    /// tenths of --election-max-ms; needs the same --election-max-ms on every replica and
    /// clocks whose rates differ by under 5%). Followers ask the leader either way. ADR 0020.
    #[arg(long, env = "BALLAST_READ_POLICY", value_enum, default_value_t = ReadPolicy::ReadIndex)]
    pub read_policy: ReadPolicy,
    /// Snapshot after this many log entries since the last snapshot (or after 64 MiB of log,
    /// whichever comes first).
    #[arg(long, env = "BALLAST_SNAPSHOT_ENTRIES", default_value_t = 10_000)]
    pub snapshot_entries: u64,
    /// Snapshot at least this often (seconds) when anything changed.
    #[arg(long, env = "BALLAST_SNAPSHOT_INTERVAL_SECS", default_value_t = 300)]
    pub snapshot_interval_secs: u64,
    /// Log entries kept behind a snapshot for slightly lagging followers.
    #[arg(long, env = "BALLAST_LOGS_TO_KEEP", default_value_t = 1_000)]
    pub logs_to_keep: u64,
    /// Lease given to shards that register without naming one, in milliseconds.
    #[arg(long, env = "BALLAST_SHARD_LEASE_MS", default_value_t = 10_000)]
    pub shard_lease_ms: u64,
    /// How often (ms) the leader moves work off draining or expired shards; 0 disables it.
    #[arg(long, env = "BALLAST_REBALANCE_INTERVAL_MS", default_value_t = 500)]
    pub rebalance_interval_ms: u64,
    /// Share of shards (per AZ, and fleet-wide) whose leases lapse within one lease beyond
    /// which the leader takes the coordinator side, not the shards, as the cause: evacuation
    /// slows to --slow-evacuation-every-ms, and stops when every AZ is hit (0 < x <= 1).
    #[arg(long, env = "BALLAST_DISRUPTION_THRESHOLD", default_value_t = 0.55)]
    pub disruption_threshold: f64,
    /// At the slow evacuation rate, one more lapsed shard is evacuated this often (ms).
    #[arg(
        long,
        env = "BALLAST_SLOW_EVACUATION_EVERY_MS",
        default_value_t = 60_000
    )]
    pub slow_evacuation_every_ms: u64,
    /// Most domain moves in one proposal of an evacuation. A round proposes as many as it
    /// takes to empty the shards it evacuates, one after another (1..=50,000).
    #[arg(
        long,
        env = "BALLAST_EVACUATION_BATCH_DOMAINS",
        default_value_t = crate::disruption::EvacuationPolicy::default().batch_domains
    )]
    pub evacuation_batch_domains: usize,
    /// Most of a quota's total the leader moves between live shards in one rebalancing round,
    /// to the shards whose demand found their slices full (0 <= x <= 1; 0 leaves slices where
    /// the operator put them).
    #[arg(long, env = "BALLAST_SLICE_MAX_MOVE", default_value_t = 0.05)]
    pub slice_max_move: f64,
    /// Share of what it uses a shard keeps free in its slice when slices move by demand
    /// (0 <= x <= 1; at least 2 machines' worth): the dead band that keeps slices from
    /// swinging back and forth.
    #[arg(long, env = "BALLAST_SLICE_HEADROOM", default_value_t = 0.1)]
    pub slice_headroom: f64,
    /// Where the leader exports archives: a directory, file:///dir, or
    /// s3://bucket/prefix[?endpoint=URL&allow_http=true&region=R] (AWS_* variables for
    /// credentials). Unset: exports only on demand with an explicit destination.
    #[arg(long, env = "BALLAST_DR_DESTINATION")]
    pub dr_destination: Option<String>,
    /// Seconds between scheduled exports to --dr-destination; 0 disables the schedule.
    #[arg(long, env = "BALLAST_DR_INTERVAL_SECS", default_value_t = 900)]
    pub dr_interval_secs: u64,
    /// Archives to keep at the destination after each export (0 = no count limit).
    #[arg(long, env = "BALLAST_DR_KEEP_LAST", default_value_t = 48)]
    pub dr_keep_last: usize,
    /// Delete archives older than this many seconds after each export (0 = no age limit).
    #[arg(long, env = "BALLAST_DR_MAX_AGE_SECS", default_value_t = 0)]
    pub dr_max_age_secs: u64,
    /// Encrypt archives with the 32-byte key in this file (64 hex digits or raw bytes).
    #[arg(long, env = "BALLAST_DR_KEY_FILE", conflicts_with = "dr_key_env")]
    pub dr_key_file: Option<PathBuf>,
    /// Encrypt archives with the key (64 hex digits) in this environment variable.
    #[arg(long, env = "BALLAST_DR_KEY_ENV")]
    pub dr_key_env: Option<String>,
    /// Quorum loss without an archive: turn this replica's data dir into a new single-voter
    /// cluster (same cluster id, new restore epoch, revision moved past anything clients saw),
    /// then start. The other replicas rejoin with fresh data dirs. Run it on one replica only.
    #[arg(long, env = "BALLAST_FORCE_NEW_CLUSTER", conflicts_with_all = ["bootstrap", "join"])]
    pub force_new_cluster: bool,
    /// Where the replicated log lives: `raft` (Ballast's own Raft group, the default) or
    /// `etcd` (an existing etcd cluster; every ballast-coord pointed at the same
    /// `--etcd-prefix` serves the same state, one of them leads). See ADR 0009.
    #[arg(long, env = "BALLAST_BACKEND", value_enum, default_value_t = BackendKind::Raft)]
    pub backend: BackendKind,
    /// etcd endpoints for `--backend etcd` (comma-separated `host:port` or URLs).
    #[arg(long, env = "BALLAST_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix holding this group in etcd; several groups can share one etcd.
    #[arg(long, env = "BALLAST_ETCD_PREFIX", default_value = "/ballast")]
    pub etcd_prefix: String,
    /// TTL of each replica's etcd session: how long leadership outlives a dead leader.
    #[arg(long, env = "BALLAST_ETCD_SESSION_TTL_SECS", default_value_t = 3)]
    pub etcd_session_ttl_secs: u64,
    /// HTTP port for Prometheus metrics (`/metrics`), probes (`/healthz`, `/readyz`) and the
    /// status page (`/`). Not served when absent.
    #[arg(long, env = "BALLAST_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// A member that has not answered the leader for this long is reported unreachable.
    #[arg(
        long,
        env = "BALLAST_AUTOPILOT_UNHEALTHY_AFTER_MS",
        default_value_t = 2_000
    )]
    pub autopilot_unhealthy_after_ms: u64,
    /// Remove a voter that stayed unreachable this long (0: never remove automatically).
    /// Removal happens only while the rest keep a healthy majority and --autopilot-min-voters.
    #[arg(
        long,
        env = "BALLAST_AUTOPILOT_REMOVE_DEAD_AFTER_SECS",
        default_value_t = 0
    )]
    pub autopilot_remove_dead_after_secs: u64,
    /// Autopilot never shrinks the voters below this many (a 3-voter group keeps its dead
    /// member until it is replaced, unless this is lowered to 2).
    #[arg(long, env = "BALLAST_AUTOPILOT_MIN_VOTERS", default_value_t = 3)]
    pub autopilot_min_voters: usize,
    /// Mutual TLS for the gRPC port (client API and Raft), the HTTP port and connections to
    /// other replicas. The certificate is used both ways and needs role ballast://role/peer.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// With TLS on, let `/healthz` and `/readyz` answer callers that present no client
    /// certificate (Kubernetes HTTPS probes); metrics and the status page still need one.
    #[arg(long, env = "BALLAST_HTTP_OPEN_PROBES")]
    pub http_open_probes: bool,
    /// Test-only: network fault rules applied to messages to peers (see `faults.rs`).
    #[arg(long, hide = true)]
    pub fault_rules: Option<PathBuf>,
}

/// Values of `--backend`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Ballast's own Raft group.
    Raft,
    /// An existing etcd cluster.
    Etcd,
}

impl CoordArgs {
    /// Checks flag combinations and builds the node configuration.
    pub fn into_config(self) -> Result<NodeConfig, NodeError> {
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= self.election_min_ms {
            return Err(NodeError::Config(format!(
                "--heartbeat-ms ({}) must be above 0 and below --election-min-ms ({})",
                self.heartbeat_ms, self.election_min_ms
            )));
        }
        if self.election_min_ms >= self.election_max_ms {
            return Err(NodeError::Config(format!(
                "--election-min-ms ({}) must be below --election-max-ms ({})",
                self.election_min_ms, self.election_max_ms
            )));
        }
        if !(self.disruption_threshold > 0.0 && self.disruption_threshold <= 1.0) {
            return Err(NodeError::Config(format!(
                "--disruption-threshold ({}) must be above 0 and at most 1",
                self.disruption_threshold
            )));
        }
        if !(1..=ballast_protocol::validate::MAX_BATCH).contains(&self.evacuation_batch_domains) {
            return Err(NodeError::Config(format!(
                "--evacuation-batch-domains ({}) must be between 1 and {}",
                self.evacuation_batch_domains,
                ballast_protocol::validate::MAX_BATCH
            )));
        }
        for (flag, value) in [
            ("--slice-max-move", self.slice_max_move),
            ("--slice-headroom", self.slice_headroom),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(NodeError::Config(format!(
                    "{flag} ({value}) must be between 0 and 1"
                )));
            }
        }
        let key = match (&self.dr_key_file, &self.dr_key_env) {
            (Some(path), _) => {
                Some(Key::from_file(path).map_err(|e| NodeError::Config(e.to_string()))?)
            }
            (None, Some(var)) => {
                Some(Key::from_env(var).map_err(|e| NodeError::Config(e.to_string()))?)
            }
            (None, None) => None,
        };
        if let Some(url) = &self.dr_destination {
            Destination::parse(url)
                .map_err(|e| NodeError::Config(format!("--dr-destination: {e}")))?;
        }
        if self.snapshot_entries == 0 || self.snapshot_interval_secs == 0 {
            return Err(NodeError::Config(
                "--snapshot-entries and --snapshot-interval-secs must be above 0".into(),
            ));
        }
        let backend = match self.backend {
            BackendKind::Raft => {
                if !self.etcd_endpoints.is_empty() {
                    return Err(NodeError::Config(
                        "--etcd-endpoints needs --backend etcd".into(),
                    ));
                }
                Backend::Raft
            }
            BackendKind::Etcd => {
                if self.etcd_endpoints.is_empty() {
                    return Err(NodeError::Config(
                        "--backend etcd needs --etcd-endpoints HOST:PORT[,...]".into(),
                    ));
                }
                if self.read_policy == ReadPolicy::Lease {
                    return Err(NodeError::Config(
                        "--read-policy lease is a Raft-backend flag: with --backend etcd every \
                         linearizable read asks etcd for its revision"
                            .into(),
                    ));
                }
                if self.bootstrap || !self.join.is_empty() || self.force_new_cluster {
                    return Err(NodeError::Config(
                        "--bootstrap, --join and --force-new-cluster are Raft-backend flags: with \
                         --backend etcd the group is whatever --etcd-prefix holds (created on \
                         first start) and etcd keeps quorum"
                            .into(),
                    ));
                }
                let prefix = self.etcd_prefix.trim_end_matches('/');
                if !prefix.starts_with('/') || prefix.len() < 2 || prefix.contains("//") {
                    return Err(NodeError::Config(format!(
                        "--etcd-prefix {:?} must be an absolute key path such as /ballast or /teams/fleet-a",
                        self.etcd_prefix
                    )));
                }
                if !(1..=60).contains(&self.etcd_session_ttl_secs) {
                    return Err(NodeError::Config(format!(
                        "--etcd-session-ttl-secs ({}) must be between 1 and 60",
                        self.etcd_session_ttl_secs
                    )));
                }
                Backend::Etcd(EtcdBackendConfig {
                    endpoints: self.etcd_endpoints.clone(),
                    prefix: prefix.to_string(),
                    session_ttl: Duration::from_secs(self.etcd_session_ttl_secs),
                    snapshot_entries: self.snapshot_entries,
                    snapshot_interval: Duration::from_secs(self.snapshot_interval_secs),
                    logs_to_keep: self.logs_to_keep,
                })
            }
        };
        Ok(NodeConfig {
            id: self.id,
            az: self.az,
            listen: self.listen,
            advertise: self.advertise,
            data_dir: self.data_dir,
            bootstrap: self.bootstrap,
            join: self.join,
            join_token: self.join_token,
            learner: self.learner,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            election_timeout: (
                Duration::from_millis(self.election_min_ms),
                Duration::from_millis(self.election_max_ms),
            ),
            read_policy: self.read_policy,
            snapshot_entries: self.snapshot_entries,
            snapshot_interval: Duration::from_secs(self.snapshot_interval_secs),
            logs_to_keep: self.logs_to_keep,
            default_shard_lease: Duration::from_millis(self.shard_lease_ms),
            rebalance_interval: (self.rebalance_interval_ms > 0)
                .then(|| Duration::from_millis(self.rebalance_interval_ms)),
            evacuation: crate::disruption::EvacuationPolicy {
                threshold: self.disruption_threshold,
                slow_every: Duration::from_millis(self.slow_evacuation_every_ms),
                batch_domains: self.evacuation_batch_domains,
            },
            slices: (self.slice_max_move > 0.0).then(|| crate::slice_placement::SlicePolicy {
                headroom: self.slice_headroom,
                max_move: self.slice_max_move,
                ..Default::default()
            }),
            dr: DrConfig {
                destination: self.dr_destination,
                interval: (self.dr_interval_secs > 0)
                    .then(|| Duration::from_secs(self.dr_interval_secs)),
                retention: Retention {
                    keep_last: (self.dr_keep_last > 0).then_some(self.dr_keep_last),
                    max_age: (self.dr_max_age_secs > 0)
                        .then(|| Duration::from_secs(self.dr_max_age_secs)),
                },
                key,
            },
            force_new_cluster: self.force_new_cluster,
            backend,
            http_listen: self.http_listen,
            tls: self
                .tls
                .files()
                .map_err(|e| NodeError::Config(e.to_string()))?,
            http_open_probes: self.http_open_probes,
            fault_rules: self.fault_rules,
            autopilot: crate::autopilot::AutopilotConfig {
                unhealthy_after: Duration::from_millis(self.autopilot_unhealthy_after_ms.max(1)),
                remove_dead_after: (self.autopilot_remove_dead_after_secs > 0)
                    .then(|| Duration::from_secs(self.autopilot_remove_dead_after_secs)),
                min_voters: self.autopilot_min_voters.max(1),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<NodeConfig, NodeError> {
        let args = [
            "ballast-coord",
            "--id",
            "1",
            "--az",
            "az-a",
            "--data-dir",
            "/tmp/unused",
        ]
        .into_iter()
        .chain(extra.iter().copied());
        CoordArgs::try_parse_from(args)
            .expect("flags parse")
            .into_config()
    }

    #[test]
    fn slice_placement_flags_are_fractions_and_zero_turns_it_off() {
        let config = parse(&[]).expect("defaults");
        assert_eq!(
            config.slices,
            Some(crate::slice_placement::SlicePolicy::default())
        );
        assert!(parse(&["--slice-max-move", "0"]).unwrap().slices.is_none());
        for (flag, bad) in [
            ("--slice-max-move", "--slice-max-move=1.5"),
            ("--slice-headroom", "--slice-headroom=-0.1"),
            ("--slice-headroom", "--slice-headroom=NaN"),
        ] {
            let error = parse(&[bad]).expect_err("refused").to_string();
            assert!(error.contains(flag), "{error}");
        }
    }
}
