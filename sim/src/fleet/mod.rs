//! `ballast-sim fleet`: the fleet-scale simulator. A real 3-replica coordinator (processes,
//! one per AZ) and real shard-worker processes with simulated providers carry a seeded fleet
//! whose clusters keep changing their demand, while scenarios break things on purpose: leader
//! SIGKILLs, a full coordinator outage with a shard restarted in the middle, the loss of a
//! whole AZ, a burst of domain moves and a DR restore. After every scenario the invariants are
//! checked against what the coordinator and every shard report; the run leaves `report.json`,
//! `report.html` and SVG charts.

mod checks;
mod churn;
mod evacuation;
pub mod model;
mod moves;
mod partition;
mod progress;
mod report;
mod scenarios;
mod shift;
mod starved;

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ballast_protocol::client::{BallastClient, ClientConfig};
use ballast_protocol::pb;
use ballast_protocol::pb::cluster_client::ClusterClient;
use ballast_protocol::pb::command::Command as Wire;
use ballast_protocol::pb::shard_worker_client::ShardWorkerClient;
use ballast_testkit::{ClusterOptions, ProviderProcess, Proxy, ShardProcess, TestCluster};
use futures::StreamExt;
use tonic::transport::Channel;

use model::{FleetModel, Scale};
pub use report::Report;

/// The scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Demand keeps changing; nothing breaks.
    Steady,
    /// SIGKILL the leader (`--leader-kills` times), measuring kill → next acknowledged write.
    LeaderKill,
    /// SIGKILL all three replicas for `--outage-secs`; demand surges; one shard is SIGKILLed
    /// and restarted from its cache in the middle.
    Outage,
    /// Lose az-c: its replica and all its shards. Their domains move to live shards after the
    /// lease; then the AZ comes back and its domains are moved home.
    AzLoss,
    /// Cut one shard off from the coordinator only (every replica stays healthy) for longer
    /// than its lease: it keeps serving, its domains and clusters move, it keeps trying to
    /// act and the providers refuse it; then the partition heals.
    Partition,
    /// SIGSTOP the leader for 1.5 shard leases, then every replica, while the shards keep
    /// working: no domain may move (the coordinator, not the shards, was down).
    StarvedCoordinator,
    /// A third of az-a's clusters triple their demand, all on its first shards: the
    /// coordinator moves slice capacity to them from what no shard holds and other shards'
    /// spare room, no more than the shift needs and never back and forth.
    DemandShift,
    /// Move `--burst-moves` domains between shards of the same AZ at once.
    Burst,
    /// Export an archive, keep writing, destroy every replica, restore, rejoin; shards follow.
    Dr,
}

impl Scenario {
    /// Whether the scenario leaves every coordinator replica running and unpaused (it may cut
    /// shards off, shift demand or move work, but it never kills, stops or restores a replica).
    pub fn leaves_the_coordinator_alone(self) -> bool {
        matches!(
            self,
            Scenario::Steady | Scenario::Partition | Scenario::DemandShift | Scenario::Burst
        )
    }
}

/// Flags of `ballast-sim fleet`.
#[derive(clap::Args, Debug)]
pub struct FleetArgs {
    /// `ci` (6 shards, 600 domains, 120 clusters; seconds) or `full` (200 shards, 100K
    /// domains, 20K clusters, 30 quotas: the 100M-machine fleet's coordinator state).
    #[arg(long, default_value = "ci", value_parser = ["ci", "full"])]
    pub scale: String,
    /// Seed of the fleet and its demand.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for the report, the charts, replica and shard logs and data (wiped first).
    #[arg(long, default_value = "target/fleet-sim")]
    pub out: PathBuf,
    /// Scenarios to run, comma-separated, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "steady,leader-kill,outage,az-loss,partition,starved-coordinator,demand-shift,burst,dr"
    )]
    pub scenarios: Vec<Scenario>,
    /// Length of the steady phase.
    #[arg(long, default_value_t = 4)]
    pub steady_secs: u64,
    /// Length of the full coordinator outage.
    #[arg(long, default_value_t = 6)]
    pub outage_secs: u64,
    /// Leader SIGKILLs in the leader-kill scenario.
    #[arg(long, default_value_t = 3)]
    pub leader_kills: usize,
    /// Domain moves in the burst (default: 30,000 or every domain, whichever is fewer).
    #[arg(long)]
    pub burst_moves: Option<usize>,
    /// Lease the shard workers ask for, in ms (a dead shard's domains move once it runs
    /// out). Default: 3,000 at CI scale; 10,000 at full scale, where 200 shard processes
    /// share the box and heartbeats can be late.
    #[arg(long)]
    pub shard_lease_ms: Option<u64>,
    /// Replica N listens on 127.0.0.1:(base-port + N - 1) instead of a free port.
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Extra flags for the coordinator replicas (repeatable), e.g.
    /// `--replica-flag=--election-max-ms=1000`. Default: none at CI scale; at full scale
    /// etcd-like timers (heartbeat 100 ms, election 500–1,000 ms), because replicas sharing
    /// two cores with 200 shard processes miss the default 150 ms vote deadlines and fall into
    /// election storms (docs/simulator.md).
    #[arg(long = "replica-flag", allow_hyphen_values = true)]
    pub replica_flags: Vec<String>,
    /// Run each quota provider as its own process (`ballast-sim provider`, durable) shared by
    /// every shard, instead of the simulated provider built into each shard: ownership is then
    /// fenced at the provider and moved domains are adopted there with their machines, and
    /// the provider's own record is checked after every scenario.
    #[arg(long)]
    pub provider_processes: bool,
}

impl FleetArgs {
    /// The flags' defaults (CI scale, every scenario) with `out` and `base_port`: the clap
    /// definitions above stay the one source of the defaults.
    pub fn ci(out: PathBuf, base_port: Option<u16>) -> FleetArgs {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: FleetArgs,
        }
        let mut args = <Defaults as clap::Parser>::parse_from(["fleet"]).args;
        args.out = out;
        args.base_port = base_port;
        args
    }
}

/// One sample of the whole system, taken every sampling interval.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    /// Milliseconds since the run started.
    pub t_ms: u64,
    /// Machines the clusters of live shards ask for.
    pub demand: u64,
    /// Machines serving a need, over live shards.
    pub assigned: u64,
    /// Machines held (idle, assigned, foreign), over live shards.
    pub held: u64,
    /// Missing machines reported by live shards.
    pub shortfall: u64,
    /// Shards that answered.
    pub shards_answering: usize,
    /// Shards that last reached a coordinator.
    pub shards_reaching_coordinator: usize,
    /// Leader as a replica reported it, if any answered as leader.
    pub leader: Option<u64>,
}

/// Something that happened, for the timeline.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    /// Milliseconds since the run started.
    pub t_ms: u64,
    /// What.
    pub what: String,
}

/// A stretch of time drawn shaded in the charts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Window {
    /// Label.
    pub label: String,
    /// Start, ms since the run started.
    pub from_ms: u64,
    /// End.
    pub to_ms: u64,
}

/// State shared by the scenario runner and its background tasks.
struct Shared {
    started: Instant,
    model: Mutex<FleetModel>,
    /// Per shard: the simulator believes it is running (not killed for the scenario).
    alive: Vec<AtomicBool>,
    samples: Mutex<Vec<Sample>>,
    events: Mutex<Vec<Event>>,
    /// Latency of every acknowledged background write, ms.
    write_latencies_ms: Mutex<Vec<f64>>,
    /// Background writes that failed (no acknowledgement).
    writes_failed: Mutex<u64>,
    /// Acknowledged background writes: cluster → shard bindings.
    acked_bindings: Mutex<Vec<(String, String)>>,
    /// The background writer is paused (the DR scenario decides what is written).
    writer_paused: AtomicBool,
    /// While above zero, demand holds still (a scenario measures how fast a given demand is
    /// met, or judges what an ownership move alone did): see [`Shared::hold_demand`].
    demand_holds: AtomicUsize,
    /// Held while demand is submitted; holds the clusters whose latest demand no shard has
    /// accepted yet (refused or unanswered), sent again when bindings are next followed.
    submitting: tokio::sync::Mutex<BTreeSet<usize>>,
    /// Shards whose state the running scenario changed (killed, restarted, cut off, their
    /// demand shifted) and when they were down: what the coordinator may move things off,
    /// and when it may not move things onto them.
    disturbed: Mutex<moves::Disturbed>,
    /// Revisions of the writes the simulator made as the operator (moves, slices cut again).
    operator_writes: Mutex<BTreeSet<u64>>,
    stop: AtomicBool,
}

/// Demand holds still while this lives (holds nest).
struct DemandHold(Arc<Shared>);

impl Drop for DemandHold {
    fn drop(&mut self) {
        self.0.demand_holds.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// Holds demand still until the returned guard is dropped.
    fn hold_demand(self: &Arc<Self>) -> DemandHold {
        self.demand_holds.fetch_add(1, Ordering::Relaxed);
        DemandHold(self.clone())
    }

    /// The running scenario changes `shard`'s state while it keeps running.
    fn disturb(&self, shard: usize) {
        self.disturbed.lock().changed(shard);
    }

    /// The running scenario takes `shard` down or cuts it off, from now.
    fn take_down(&self, shard: usize) {
        let now = self.now_ms();
        self.disturbed.lock().down(shard, now);
    }

    /// `shard` is back from now.
    fn bring_back(&self, shard: usize) {
        let now = self.now_ms();
        self.disturbed.lock().back(shard, now);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn event(&self, what: impl Into<String>) {
        let what = what.into();
        println!("    [{:>6.1}s] {what}", self.now_ms() as f64 / 1000.0);
        self.events.lock().push(Event {
            t_ms: self.now_ms(),
            what,
        });
    }
}

/// The running simulation: the cluster, the shard processes and what they share.
pub(crate) struct Sim {
    args: FleetArgs,
    scale: Scale,
    pub(crate) cluster: TestCluster,
    /// Provider processes by quota provider name (none: each shard's built-in provider).
    providers: Vec<(String, ProviderProcess)>,
    pub(crate) shards: Vec<ShardProcess>,
    shard_clients: Vec<ShardWorkerClient<Channel>>,
    /// The proxies between shard [`PARTITIONED`] and each replica (cut in `partition`).
    proxies: Vec<Proxy>,
    client: BallastClient,
    shared: Arc<Shared>,
    windows: Vec<Window>,
    /// Every shard's assignment watch, for the moves of each scenario (while scenarios run).
    recorder: Option<moves::Recorder>,
}

/// The shard the `partition` scenario cuts off (in az-b: the AZ loss does not touch it).
const PARTITIONED: usize = 1;

/// One provider process per quota provider of the model, serving its regions, durable.
fn start_providers(
    program: &std::path::Path,
    model: &FleetModel,
) -> Vec<(String, ProviderProcess)> {
    let mut regions: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for q in 0..model.scale.quotas {
        let (provider, region) = FleetModel::quota_key(q);
        regions.entry(provider).or_default().push(region);
    }
    regions
        .into_iter()
        .map(|(name, regions)| {
            let process = ProviderProcess::start(
                &format!("'{}' provider", program.display()),
                &format!("--name {name} --region {}", regions.join(",")),
            );
            println!(
                "    provider {name} ({}) at {}",
                regions.join(", "),
                process.endpoint
            );
            (name, process)
        })
        .collect()
}

fn command(inner: Wire) -> pb::Command {
    pb::Command {
        command: Some(inner),
    }
}

/// The resources every simulated machine has.
fn machine_resources() -> pb::ResourceSpec {
    pb::ResourceSpec {
        cpu_millis: 4000,
        memory_mib: 16_384,
        gpus: 0,
    }
}

/// Submits `clusters`' current demand to their shards (live ones only), 64 calls at a time,
/// retrying failed calls twice with the then-current demand; what still failed is remembered
/// as unsent. Submissions are serialized so an older demand can never land after a newer one.
/// Returns how many clusters were updated.
async fn submit_demand(
    shared: &Shared,
    shard_clients: &[ShardWorkerClient<Channel>],
    clusters: &[usize],
) -> usize {
    let mut unsent = shared.submitting.lock().await;
    let mut pending: Vec<usize> = clusters.to_vec();
    let mut updated = 0;
    for _attempt in 0..3 {
        let requests: Vec<(usize, usize, pb::SubmitDemandRequest)> = {
            let model = shared.model.lock();
            pending
                .iter()
                .map(|&n| (n, &model.clusters[n]))
                .filter(|(_, c)| shared.alive[c.shard].load(Ordering::Relaxed))
                .map(|(n, c)| {
                    (
                        n,
                        c.shard,
                        pb::SubmitDemandRequest {
                            cluster: c.id.clone(),
                            rows: vec![pb::DemandRow {
                                id: "main".into(),
                                count: c.demand,
                                resources: Some(machine_resources()),
                                ..Default::default()
                            }],
                        },
                    )
                })
                .collect()
        };
        let failed: Vec<usize> = futures::stream::iter(requests)
            .map(|(n, shard, request)| {
                let mut client = shard_clients[shard].clone();
                async move {
                    let ok =
                        tokio::time::timeout(Duration::from_secs(5), client.submit_demand(request))
                            .await
                            .is_ok_and(|r| r.is_ok());
                    (n, ok)
                }
            })
            .buffer_unordered(64)
            .filter_map(|(n, ok)| {
                if ok {
                    updated += 1;
                }
                std::future::ready((!ok).then_some(n))
            })
            .collect()
            .await;
        for n in &pending {
            unsent.remove(n);
        }
        unsent.extend(&failed);
        if failed.is_empty() {
            break;
        }
        pending = failed;
    }
    updated
}

/// A shard's own status, if it answers within `limit`.
async fn status_of(
    client: &ShardWorkerClient<Channel>,
    limit: Duration,
) -> Option<pb::ShardStatusResponse> {
    let mut client = client.clone();
    tokio::time::timeout(limit, client.status(pb::ShardStatusRequest {}))
        .await
        .ok()?
        .ok()
        .map(|r| r.into_inner())
}

/// Every second, about 5% of the clusters change their demand.
async fn drive_demand(shared: Arc<Shared>, shard_clients: Vec<ShardWorkerClient<Channel>>) {
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if shared.demand_holds.load(Ordering::Relaxed) > 0 {
            continue;
        }
        let changed = shared.model.lock().step_demand(0.05);
        submit_demand(&shared, &shard_clients, &changed).await;
    }
}

/// About ten fleet writes a second (new cluster bindings, the coordinator's steady load),
/// each with its own request id, recording latency and acknowledgement.
async fn write_steadily(shared: Arc<Shared>, client: BallastClient, shards: Vec<String>) {
    let mut n = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if shared.writer_paused.load(Ordering::Relaxed) {
            continue;
        }
        n += 1;
        let cluster = format!("sim-new-{n:07}");
        let shard = shards[n % shards.len()].clone();
        let started = Instant::now();
        let written = client
            .write(command(Wire::BindCluster(pb::BindCluster {
                cluster: cluster.clone(),
                shard: shard.clone(),
            })))
            .await;
        match written {
            Ok(_) => {
                shared
                    .write_latencies_ms
                    .lock()
                    .push(started.elapsed().as_secs_f64() * 1000.0);
                shared.acked_bindings.lock().push((cluster, shard));
            }
            Err(_) => *shared.writes_failed.lock() += 1,
        }
    }
}

/// Samples every live shard and the replicas every `interval`.
async fn sample(
    shared: Arc<Shared>,
    shard_clients: Vec<ShardWorkerClient<Channel>>,
    replicas: Vec<(u64, Channel)>,
    interval: Duration,
) {
    while !shared.stop.load(Ordering::Relaxed) {
        let t_ms = shared.now_ms();
        let live: Vec<usize> = (0..shard_clients.len())
            .filter(|&i| shared.alive[i].load(Ordering::Relaxed))
            .collect();
        let demand = {
            let model = shared.model.lock();
            live.iter().map(|&i| model.demand_of(i)).sum()
        };
        let statuses: Vec<pb::ShardStatusResponse> = futures::stream::iter(live)
            .map(|i| status_of(&shard_clients[i], Duration::from_millis(800)))
            .buffer_unordered(64)
            .filter_map(std::future::ready)
            .collect()
            .await;
        let mut leader = None;
        for (id, channel) in &replicas {
            let status = tokio::time::timeout(
                Duration::from_millis(300),
                ClusterClient::new(channel.clone()).status(pb::StatusRequest {
                    options: Some(pb::ReadOptions { stale: true }),
                }),
            )
            .await;
            if let Ok(Ok(status)) = status
                && status.get_ref().state == "leader"
            {
                leader = Some(*id);
                break;
            }
        }
        let state = |s: &pb::ShardStatusResponse, k: &str| -> u64 {
            s.machines_by_state.get(k).copied().unwrap_or(0)
        };
        shared.samples.lock().push(Sample {
            t_ms,
            demand,
            assigned: statuses.iter().map(|s| state(s, "assigned")).sum(),
            held: statuses
                .iter()
                .map(|s| s.machines_by_state.values().sum::<u64>())
                .sum(),
            shortfall: statuses.iter().map(|s| s.shortfall).sum(),
            shards_answering: statuses.len(),
            shards_reaching_coordinator: statuses
                .iter()
                .filter(|s| s.coordinator_reachable)
                .count(),
            leader,
        });
        tokio::time::sleep(
            interval.saturating_sub(Duration::from_millis(shared.now_ms().saturating_sub(t_ms))),
        )
        .await;
    }
}

impl Sim {
    /// Starts the replicas and the shards, loads the fleet and submits every cluster's demand.
    pub(crate) async fn start(mut args: FleetArgs) -> anyhow::Result<Sim> {
        let scale = Scale::named(&args.scale).context("unknown scale")?;
        let crowded = scale.shards > 20;
        let lease_ms = *args
            .shard_lease_ms
            .get_or_insert(if crowded { 10_000 } else { 3_000 });
        if crowded && args.replica_flags.is_empty() {
            args.replica_flags = [
                "--heartbeat-ms=100",
                "--election-min-ms=500",
                "--election-max-ms=1000",
            ]
            .map(String::from)
            .to_vec();
        }
        let program = std::env::current_exe().context("locating the ballast-sim binary")?;
        if args.out.exists() {
            std::fs::remove_dir_all(&args.out)
                .with_context(|| format!("clearing {}", args.out.display()))?;
        }
        std::fs::create_dir_all(&args.out)?;
        let model = FleetModel::new(scale, args.seed);
        let started = Instant::now();
        println!(
            "==> {} scale: 3 replicas, {} shard workers, {} domains, {} clusters, {} quotas",
            scale.name, scale.shards, scale.domains, scale.clusters, scale.quotas
        );
        println!(
            "    shard lease {lease_ms} ms; replica flags: {}",
            if args.replica_flags.is_empty() {
                "defaults".to_string()
            } else {
                args.replica_flags.join(" ")
            }
        );
        let cluster = TestCluster::start_with(
            ClusterOptions {
                program: program.clone(),
                leading_args: vec!["replica".into()],
                // A new leader gives every shard this long before judging it dead: the shards'
                // own lease, as an operator would configure it.
                extra: ["--shard-lease-ms".to_string(), lease_ms.to_string()]
                    .into_iter()
                    .chain(args.replica_flags.iter().cloned())
                    .collect(),
                dir: Some(args.out.join("cluster")),
                base_port: args.base_port,
                ..ClusterOptions::default()
            },
            3,
        )
        .await;
        let lease = lease_ms.to_string();
        let providers = if args.provider_processes {
            start_providers(&program, &model)
        } else {
            Vec::new()
        };
        let mut shard_flags: Vec<String> = ["--lease-ms", &lease, "--sim-latency-ms", "20"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !providers.is_empty() {
            let routes: Vec<String> = providers
                .iter()
                .map(|(name, p)| format!("{name}=grpc://{}", p.endpoint))
                .collect();
            shard_flags.extend(["--provider".to_string(), routes.join(",")]);
        }
        let shard_flags: Vec<&str> = shard_flags.iter().map(String::as_str).collect();
        // One shard reaches the coordinator through proxies, so its connection alone can be cut.
        let mut proxies = Vec::new();
        for endpoint in cluster.endpoints() {
            proxies.push(Proxy::start(&endpoint).await);
        }
        let shards: Vec<ShardProcess> = model
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i == PARTITIONED {
                    let via = proxies.iter().map(|p| p.address.clone()).collect();
                    cluster.spawn_shard_via(&program, &["shard"], &s.id, s.az, via, &shard_flags)
                } else {
                    cluster.spawn_shard(&program, &["shard"], &s.id, s.az, &shard_flags)
                }
            })
            .collect();
        let shard_clients = shards.iter().map(|s| s.client()).collect();
        let mut config = ClientConfig::new(cluster.endpoints());
        config.retry_budget = Duration::from_secs(30);
        let client = BallastClient::new(config)?;
        let shared = Arc::new(Shared {
            started,
            alive: (0..scale.shards).map(|_| AtomicBool::new(true)).collect(),
            model: Mutex::new(model),
            samples: Mutex::default(),
            events: Mutex::default(),
            write_latencies_ms: Mutex::default(),
            writes_failed: Mutex::default(),
            acked_bindings: Mutex::default(),
            writer_paused: AtomicBool::new(false),
            demand_holds: AtomicUsize::new(0),
            submitting: tokio::sync::Mutex::default(),
            disturbed: Mutex::default(),
            operator_writes: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let sim = Sim {
            args,
            scale,
            cluster,
            providers,
            shards,
            shard_clients,
            proxies,
            client,
            shared,
            windows: Vec::new(),
            recorder: None,
        };
        // 200 processes starting on two cores take a while: wait longer than tests do.
        sim.cluster
            .wait_for_shards_within(scale.shards, Duration::from_secs(180))
            .await;
        sim.shared
            .event(format!("{} shard workers registered", scale.shards));
        sim.load_fleet().await?;
        Ok(sim)
    }

    /// Writes the domains, bindings, providers and quotas, then every cluster's demand.
    async fn load_fleet(&self) -> anyhow::Result<()> {
        let (domains, clusters, slice, shard_ids) = {
            let model = self.shared.model.lock();
            let ids: Vec<String> = model.shards.iter().map(|s| s.id.clone()).collect();
            let domains: Vec<pb::DomainAssignment> = model
                .domains
                .iter()
                .map(|(domain, shard)| pb::DomainAssignment {
                    domain: domain.clone(),
                    shard: ids[*shard].clone(),
                })
                .collect();
            let clusters: Vec<pb::Command> = model
                .clusters
                .iter()
                .map(|c| {
                    command(Wire::BindCluster(pb::BindCluster {
                        cluster: c.id.clone(),
                        shard: ids[c.shard].clone(),
                    }))
                })
                .collect();
            (domains, clusters, model.slice_per_quota(), ids)
        };
        for chunk in domains.chunks(10_000) {
            self.client
                .write(command(Wire::AssignDomains(pb::AssignDomains {
                    assignments: chunk.to_vec(),
                    allow_move: false,
                })))
                .await
                .context("assigning domains")?;
        }
        for chunk in clusters.chunks(10_000) {
            self.client
                .write(command(Wire::Batch(pb::Batch {
                    commands: chunk.to_vec(),
                })))
                .await
                .context("binding clusters")?;
        }
        let mut commands = Vec::new();
        for q in 0..self.scale.quotas {
            let (provider, region) = FleetModel::quota_key(q);
            commands.push(command(Wire::SetProvider(pb::SetProvider {
                name: provider.clone(),
                endpoint: format!("https://{provider}.sim"),
                region: region.clone(),
                capacity_types: vec!["on-demand".into()],
            })));
            commands.push(command(Wire::SetQuota(pb::SetQuota {
                provider,
                region,
                // Room for a tenth more than the slices: slices, not the total, bind.
                total: slice * shard_ids.len() as u64 * 11 / 10,
                slices: shard_ids
                    .iter()
                    .map(|id| pb::QuotaSlice {
                        shard: id.clone(),
                        amount: slice,
                    })
                    .collect(),
            })));
        }
        let written = self
            .client
            .write(command(Wire::Batch(pb::Batch { commands })))
            .await
            .context("setting quotas")?;
        let revision = written.header.map(|h| h.revision).unwrap_or(0);
        self.shared.event(format!(
            "fleet loaded at revision {revision}: {} domains, {} bindings, {} quotas of {} slices",
            domains.len(),
            clusters.len(),
            self.scale.quotas,
            shard_ids.len()
        ));
        self.wait_for_shards_at(revision).await?;
        let all: Vec<usize> = (0..self.scale.clusters).collect();
        let submitted = submit_demand(&self.shared, &self.shard_clients, &all).await;
        self.shared
            .event(format!("demand submitted for {submitted} clusters"));
        Ok(())
    }

    /// Waits (up to a minute) until every live shard's cache reflects `revision`.
    async fn wait_for_shards_at(&self, revision: u64) -> anyhow::Result<Duration> {
        self.until_each(self.live_shards(), Duration::from_secs(60), |_, s| {
            s.revision >= revision
        })
        .await
        .map_err(|behind| {
            anyhow::anyhow!(
                "shards {:?} did not reach revision {revision} within a minute",
                behind
                    .iter()
                    .map(|&i| self.shards[i].id.as_str())
                    .collect::<Vec<_>>()
            )
        })
    }

    /// Polls `shards` (every 20 ms) until `done(shard, its status)` holds for each. How long
    /// that took, or the shards still waiting after `limit`.
    pub(super) async fn until_each(
        &self,
        mut shards: Vec<usize>,
        limit: Duration,
        done: impl Fn(usize, &pb::ShardStatusResponse) -> bool,
    ) -> Result<Duration, Vec<usize>> {
        let started = Instant::now();
        loop {
            let mut waiting = Vec::new();
            for &i in &shards {
                if !self.shard_status(i).await.is_some_and(|s| done(i, &s)) {
                    waiting.push(i);
                }
            }
            shards = waiting;
            if shards.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                return Err(shards);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shard_status(&self, shard: usize) -> Option<pb::ShardStatusResponse> {
        status_of(&self.shard_clients[shard], Duration::from_secs(2)).await
    }

    /// Each shard's count of its own contact lapses, with whether one is going on (`None`: no
    /// status from it).
    async fn contact_lapses(&self) -> Vec<Option<(u64, bool)>> {
        futures::future::join_all((0..self.shards.len()).map(|i| async move {
            // Asked twice: a starved shard may miss the first call's deadline.
            let status = match self.shard_status(i).await {
                Some(status) => Some(status),
                None => self.shard_status(i).await,
            };
            status.map(|s| (s.contact_lapses, s.contact_lapsing))
        }))
        .await
    }

    fn live_shards(&self) -> Vec<usize> {
        (0..self.shards.len())
            .filter(|&i| self.shared.alive[i].load(Ordering::Relaxed))
            .collect()
    }

    /// Starts the sampler, the demand driver and the background writer.
    fn start_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let interval = if self.scale.shards > 20 {
            Duration::from_millis(1000)
        } else {
            Duration::from_millis(200)
        };
        let replicas = self
            .cluster
            .replicas
            .iter()
            .map(|r| (r.id, self.cluster.channel(r.id)))
            .collect();
        let mut writer = ClientConfig::new(self.cluster.endpoints());
        writer.retry_budget = Duration::from_secs(2);
        let writer = BallastClient::new(writer).expect("endpoints are valid");
        let shard_ids = self.shards.iter().map(|s| s.id.clone()).collect();
        vec![
            tokio::spawn(sample(
                self.shared.clone(),
                self.shard_clients.clone(),
                replicas,
                interval,
            )),
            tokio::spawn(drive_demand(
                self.shared.clone(),
                self.shard_clients.clone(),
            )),
            tokio::spawn(write_steadily(self.shared.clone(), writer, shard_ids)),
        ]
    }
}

impl Sim {
    /// Runs every scenario with the background load, checks the invariants after each, and
    /// writes the report. The cluster and the shards keep running afterwards.
    pub(crate) async fn run_scenarios(&mut self) -> anyhow::Result<Report> {
        let background = self.start_background();
        self.recorder = Some(
            moves::Recorder::start(
                self.shared.clone(),
                self.shards.iter().map(|s| s.id.clone()).collect(),
                self.cluster
                    .replicas
                    .iter()
                    .map(|r| self.cluster.channel(r.id))
                    .collect(),
                Duration::from_secs(120),
            )
            .await?,
        );
        let mut results = Vec::new();
        for scenario in self.args.scenarios.clone() {
            println!("\n==> scenario {scenario:?}");
            let result = match self.run_scenario(scenario).await {
                Ok(result) => result,
                Err(error) => scenarios::failed(scenario, &self.shared, &error),
            };
            for check in &result.invariants {
                println!(
                    "    {} {}: {}",
                    if check.holds { "ok  " } else { "FAIL" },
                    check.name,
                    check.detail
                );
            }
            results.push(result);
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        for task in background {
            let _ = task.await;
        }
        if let Some(recorder) = self.recorder.take() {
            recorder.stop().await;
        }
        let rss = self
            .cluster
            .replicas
            .iter()
            .filter_map(|r| r.pid())
            .filter_map(ballast_testkit::rss_bytes)
            .sum();
        let report = Report::build(self, results, rss);
        let out = &self.args.out;
        report.write(out)?;
        println!("\n{}", report.summary());
        println!(
            "report: {}  charts: {}",
            out.join("report.html").display(),
            out.join("timeline.svg").display()
        );
        Ok(report)
    }
}

/// Runs the simulator: starts everything, runs the scenarios, writes the report. Fails when
/// an invariant was violated (after writing the report).
pub async fn run(args: FleetArgs) -> anyhow::Result<Report> {
    let out = args.out.clone();
    let mut sim = Sim::start(args).await?;
    let report = sim.run_scenarios().await?;
    let violations = report.violations();
    if violations > 0 {
        bail!("{violations} invariant violations (see {})", out.display());
    }
    Ok(report)
}
