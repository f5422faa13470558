//! The running shard worker: keeps its assignments current through a resumable watch, renews
//! its lease with heartbeats, and serves its status. With every coordinator replica down it
//! keeps serving from its cache and retries quietly; it never gives away or grabs domains on
//! its own.

use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ballast_protocol::client::{BallastClient, ClientConfig};
use ballast_protocol::pb;
use ballast_protocol::pb::shard_worker_server::ShardWorkerServer;
use ballast_protocol::validate::{MAX_CLUSTER_REPORTS, MAX_QUOTA_REPORTS};
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use ballast_protocol::provider::Reason;
use ballast_protocol::providerpb::{Machine as ProvidedMachine, MachineState};

use crate::cache::{Assignments, Cache, CacheError};
use crate::engine::{Machine, MachineCounts, QuotaKey, Shortfall};
use crate::freshness::{ContactLapses, Freshness, Verdict};
use crate::placement::Placements;
use crate::provider::grpc::GrpcProvider;
use crate::provider::local::LocalProvider;
use crate::provider::{
    Actor, Grants, Provider, ProviderError, Providers, SimulatedConfig, resources_of,
};
use crate::provisioning::{Backoff, ShardState, Takeover};
use crate::security::Security;
use ballast_tls::TlsFiles;
use ballast_tls::identity::AuthLayer;

/// What one decision left for the heartbeat to report until the next.
#[derive(Clone, Debug, Default)]
pub struct CycleOutcome {
    /// Needs not fully served.
    pub shortfalls: Vec<Shortfall>,
    /// Of them, machines that found every slice full.
    pub quota_short: u64,
    /// Machines by state.
    pub counts: MachineCounts,
    /// Machines asked for by all demand.
    pub demand: u64,
    /// Per quota: machines held, provisions in flight, this shard's slice.
    pub quotas: Vec<(QuotaKey, (u64, u64, u64))>,
    /// Machines each cluster asks for.
    pub cluster_demand: Vec<(String, u64)>,
}

/// Which submitted demand the engine takes: demand is journaled in submission order, made
/// durable by a shared fsync, and handed to the engine only once durable — and only if it is
/// newer than what the engine took for the cluster, since fsyncs finish in any order. Per
/// cluster: the newest batch handed over and the submissions still on their way (the entry
/// goes once none is).
#[derive(Debug, Default)]
pub struct DemandOrder(HashMap<String, (u64, u32)>);

impl DemandOrder {
    /// A submission of `cluster`'s demand was journaled.
    pub fn journaled(&mut self, cluster: &str) {
        self.0.entry(cluster.to_string()).or_insert((0, 0)).1 += 1;
    }

    /// A submission of `cluster`'s demand in journal batch `batch` is durable (or its fsync
    /// failed): whether the engine takes it now.
    pub fn resolved(&mut self, cluster: &str, batch: u64, durable: bool) -> bool {
        let Some((taken, on_the_way)) = self.0.get_mut(cluster) else {
            return durable;
        };
        *on_the_way = on_the_way.saturating_sub(1);
        let take = durable && batch > *taken;
        if take {
            *taken = batch;
        }
        if *on_the_way == 0 {
            self.0.remove(cluster);
        }
        take
    }
}

/// Everything a shard worker needs to start.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Shard id.
    pub id: String,
    /// AZ of the shard.
    pub az: String,
    /// Coordinator client addresses.
    pub coordinators: Vec<String>,
    /// Data directory for the cache.
    pub data_dir: PathBuf,
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Address the coordinator records (defaults to the bound address).
    pub advertise: Option<String>,
    /// Lease length asked for.
    pub lease_ttl: Duration,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Engine decision interval.
    pub cycle: Duration,
    /// The providers the shard drives (at most one without a name: it takes every quota no
    /// named one claims).
    pub providers: Vec<ProviderSpec>,
    /// Deadline of every call to a provider over gRPC.
    pub provider_timeout: Duration,
    /// HTTP port for metrics and probes; none to serve no HTTP.
    pub http_listen: Option<SocketAddr>,
    /// Mutual TLS everywhere (`None`: plain text).
    pub tls: Option<TlsFiles>,
    /// With TLS, probes answer callers without a client certificate.
    pub http_open_probes: bool,
}

/// Which provider a shard drives.
#[derive(Clone, Debug)]
pub enum ProviderChoice {
    /// The simulated provider built into the shard (serves this shard alone).
    Sim(SimulatedConfig),
    /// A provider process over the contract: `grpc://HOST:PORT` or `https://HOST:PORT`.
    Grpc(String),
    /// Every provider in the coordinator's registry, by name, at its registered endpoint
    /// (`ballastctl provider set NAME --endpoint URL`), followed as it changes and cached so a
    /// restart without a coordinator finds them.
    Registry,
}

/// One provider of a shard: a name (the quota provider whose machines live there) or none.
#[derive(Clone, Debug)]
pub struct ProviderSpec {
    /// Quota provider name; `None` for the provider of every other quota.
    pub name: Option<String>,
    /// Which provider.
    pub choice: ProviderChoice,
}

impl ProviderSpec {
    /// `sim`, `URL`, `NAME=sim`, `NAME=URL` or `registry`.
    pub fn parse(text: &str) -> Result<ProviderSpec, String> {
        if text == "registry" {
            return Ok(ProviderSpec {
                name: None,
                choice: ProviderChoice::Registry,
            });
        }
        let (name, rest) = match text.split_once('=') {
            Some((name, rest)) => {
                ballast_protocol::validate::validate_id("provider name", name)
                    .map_err(|e| format!("--provider {text:?}: {e}"))?;
                (Some(name.to_string()), rest)
            }
            None => (None, text),
        };
        let choice = if rest == "sim" {
            ProviderChoice::Sim(SimulatedConfig::default())
        } else if ["grpc://", "http://", "https://"]
            .iter()
            .any(|scheme| rest.starts_with(scheme))
        {
            ProviderChoice::Grpc(rest.to_string())
        } else {
            return Err(format!(
                "--provider {text:?}: expected sim, grpc://HOST:PORT, https://HOST:PORT, NAME= before one of them, or registry"
            ));
        };
        Ok(ProviderSpec { name, choice })
    }
}

/// Why the shard stopped acting under one of its grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The grant refused: (restore epoch, revision).
    pub grant: (u64, u64),
    /// The provider's words.
    pub why: String,
}

/// Grants the provider refused as stale: the shard does not act under them until its watch
/// brings a newer grant (or takes the domain or slice away).
#[derive(Clone, Debug, Default)]
pub struct Fences {
    /// Domain → the refused grant.
    pub domains: BTreeMap<String, Fence>,
    /// Quota → the refused slice table.
    pub quotas: BTreeMap<QuotaKey, Fence>,
    /// Cluster → the refused cluster grant.
    pub clusters: BTreeMap<String, Fence>,
}

impl Fences {
    /// Lifts the fences the assignments have moved past: a domain or slice no longer held,
    /// or held under another grant than the one refused.
    fn lift(&mut self, held: &Assignments) {
        self.domains.retain(|domain, fence| {
            held.domain_grant(domain)
                .is_some_and(|grant| grant == fence.grant)
        });
        self.quotas.retain(|(provider, region), fence| {
            held.quota_grant(provider, region)
                .is_some_and(|(epoch, revision, _)| (epoch, revision) == fence.grant)
        });
        self.clusters.retain(|cluster, fence| {
            held.cluster_grant(cluster)
                .is_some_and(|grant| grant == fence.grant)
        });
    }

    /// The held domains the shard may act in.
    fn usable_domains(&self, held: &Assignments) -> std::collections::BTreeSet<String> {
        held.domains
            .iter()
            .filter(|d| !self.domains.contains_key(*d))
            .cloned()
            .collect()
    }

    fn blocked_quotas(&self) -> std::collections::BTreeSet<QuotaKey> {
        self.quotas.keys().cloned().collect()
    }
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Bad settings.
    #[error("configuration: {0}")]
    Config(String),
    /// The cache could not be used.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
}

/// State shared by the worker's tasks and its status service.
pub struct Worker {
    config: WorkerConfig,
    address: String,
    epoch: u64,
    cache: Cache,
    assignments: RwLock<Assignments>,
    reachable: AtomicBool,
    last_contact: Mutex<Option<Instant>>,
    /// Whether the assignments are fresh enough to act on (see [`crate::freshness`]).
    freshness: Mutex<Freshness>,
    /// Wakes the watch loop out of its back-off when contact comes back.
    wake_watch: tokio::sync::Notify,
    client: BallastClient,
    state: Mutex<ShardState>,
    shortfalls: Mutex<Vec<Shortfall>>,
    /// The heartbeat's summary, refreshed by every cycle.
    summary: Mutex<pb::ShardSummary>,
    cycles: AtomicU64,
    /// How long the last [`RECENT_CYCLES`] cycles took, oldest first. Pushed together with the
    /// increment of `cycles`, under this lock (taken alone, never with another held).
    recent_cycles: Mutex<VecDeque<Duration>>,
    sequence: AtomicU64,
    providers: Providers,
    /// Grants the provider refused as stale.
    fences: Mutex<Fences>,
    /// The grants of clusters the watch took away, for a machine still released under one.
    lost_grants: Mutex<HashMap<String, (u64, u64)>>,
    /// Domains and clusters being taken over.
    adopting: Mutex<HashSet<Takeover>>,
    /// Takeover calls a shard may have open at once, domain claims and cluster adoptions
    /// apart (see [`Worker::takeover_slot`]).
    claim_slots: tokio::sync::Semaphore,
    adopt_slots: tokio::sync::Semaphore,
    /// `CreateMachine` calls open at once (see [`Worker::create_slot`]).
    create_slots: tokio::sync::Semaphore,
    /// Orders demand submissions: journaled and handed to the engine under this lock, the
    /// engine taking a cluster's newest durable demand.
    demand: Mutex<DemandOrder>,
    /// Wakes the reconciliation with the provider (see [`Worker::provider_failed`]).
    reconcile_wake: tokio::sync::Notify,
    /// Which cluster each machine should serve at the provider, and what it confirmed.
    placements: Mutex<Placements>,
    placements_wake: tokio::sync::Notify,
    backoff: Backoff,
    /// Provider calls that failed since start (any call, any reason).
    provider_failures: AtomicU64,
    /// Times the lease may have run out at the coordinator (see [`ContactLapses`]).
    contact_lapses: Mutex<ContactLapses>,
    startup: Startup,
}

/// How long the last start took, by phase.
#[derive(Clone, Copy, Debug)]
pub struct Startup {
    /// Opening the cache (journal recovery included) and reading its assignments.
    pub cache_open: Duration,
    /// Streaming the ledger, demand and in-flight provisions into the engine.
    pub engine_load: Duration,
}

impl Worker {
    /// The assignments held now.
    pub fn assignments(&self) -> Assignments {
        self.assignments.read().clone()
    }

    /// Shard id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Restart epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Engine decision interval.
    pub fn cycle(&self) -> Duration {
        self.config.cycle
    }

    /// The durable cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The engine with its machine ledger and the provisions in flight (lock briefly).
    pub fn state(&self) -> parking_lot::MutexGuard<'_, ShardState> {
        self.state.lock()
    }

    /// The providers.
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// Who acts in the next provider call (a fresh sequence).
    pub fn actor(&self) -> Actor {
        Actor {
            shard: self.config.id.clone(),
            epoch: self.epoch,
            sequence: self.next_sequence(),
        }
    }

    /// The grants to act under in `domain` (and, for a create, under `quota`): `None` when the
    /// shard does not hold them now or the provider refused them.
    pub fn grants(&self, domain: &str, quota: Option<&QuotaKey>) -> Option<Grants> {
        let held = self.assignments.read();
        let fences = self.fences.lock();
        if fences.domains.contains_key(domain) {
            return None;
        }
        let (restore_epoch, revision) = held.domain_grant(domain)?;
        let quota = match quota {
            Some(key) => {
                if fences.quotas.contains_key(key) {
                    return None;
                }
                let (_, table, slice) = held.quota_grant(&key.0, &key.1)?;
                Some((key.0.clone(), key.1.clone(), table, slice))
            }
            None => None,
        };
        Some(Grants {
            restore_epoch,
            domain: Some((domain.to_string(), revision)),
            cluster: None,
            quota,
        })
    }

    /// The grants to configure a machine for `cluster` under: `None` when the shard does not
    /// serve it now or the provider refused its grant.
    pub fn cluster_grants(&self, cluster: &str) -> Option<Grants> {
        let held = self.assignments.read();
        if self.fences.lock().clusters.contains_key(cluster) {
            return None;
        }
        let (restore_epoch, revision) = held.cluster_grant(cluster)?;
        Some(Grants {
            restore_epoch,
            cluster: Some((cluster.to_string(), revision)),
            ..Grants::default()
        })
    }

    /// The grants to release or delete a machine serving `cluster` (or none) under: the
    /// cluster's grant if it is held, else the last one the shard held (a provider that has
    /// since accepted the new holder's refuses it), else the zero grant. An idle machine needs
    /// no grant. `None` while the cluster's grant is fenced.
    pub fn grants_for_serving(&self, cluster: Option<&str>) -> Option<Grants> {
        let held = self.assignments.read();
        let Some(cluster) = cluster else {
            return Some(Grants {
                restore_epoch: held.restore_epoch,
                ..Grants::default()
            });
        };
        if self.fences.lock().clusters.contains_key(cluster) {
            return None;
        }
        let (restore_epoch, revision) = held
            .cluster_grant(cluster)
            .or_else(|| self.lost_grants.lock().get(cluster).copied())
            .unwrap_or((held.restore_epoch, 0));
        Some(Grants {
            restore_epoch,
            cluster: Some((cluster.to_string(), revision)),
            ..Grants::default()
        })
    }

    /// The grants to return `machine` under: those of the cluster the provider says it serves.
    pub fn grants_for_machine(&self, machine: &str) -> Grants {
        let serving = self.placements.lock().confirmed_cluster(machine);
        self.grants_for_serving(serving.as_deref())
            .unwrap_or_else(|| Grants {
                restore_epoch: self.assignments.read().restore_epoch,
                ..Grants::default()
            })
    }

    /// Whether a `stale-grant` refusal refused a grant this shard has since replaced with a
    /// newer one of its own: it was given the cluster or domain again (moved away and back)
    /// and presented the old grant in a call sent before. What the call concerned may still
    /// be this shard's; the call is tried again under the grant held now, which the provider
    /// judges afresh. Not for a refusal of the grant held now: that one is final.
    pub fn holds_newer_than_refused(&self, error: &ProviderError) -> bool {
        let ProviderError::Refused {
            reason: Reason::StaleGrant,
            metadata,
            ..
        } = error
        else {
            return false;
        };
        let Some(presented) = metadata.get("presented").and_then(|g| parse_grant(g)) else {
            return false;
        };
        let held = self.assignments.read();
        let now = if let Some(cluster) = metadata.get("cluster") {
            held.cluster_grant(cluster)
        } else if let Some(domain) = metadata.get("domain") {
            held.domain_grant(domain)
        } else {
            None
        };
        now.is_some_and(|now| !refuses_held(now, Some(presented)))
    }

    /// Acts on a failed provider call: a stale grant fences what it names (the shard stops
    /// acting under it at once and waits for its watch); failures back provisioning off.
    pub fn provider_failed(&self, call: &'static str, error: &ProviderError) {
        crate::observe::provider_error(call, error.label());
        self.provider_failures.fetch_add(1, Ordering::Relaxed);
        match error {
            ProviderError::Refused {
                reason: Reason::StaleGrant,
                message,
                metadata,
            } => {
                // The grant the call presented: by the time the refusal is read the watch may
                // have brought a newer one, which the next call presents instead.
                let presented = metadata.get("presented").and_then(|g| parse_grant(g));
                if let Some(domain) = metadata.get("domain") {
                    self.fence_domain(domain, presented, message);
                } else if let Some(cluster) = metadata.get("cluster") {
                    self.fence_cluster(cluster, presented, message);
                } else if let Some((provider, region)) =
                    metadata.get("quota").and_then(|q| q.split_once('/'))
                {
                    self.fence_quota(
                        &(provider.to_string(), region.to_string()),
                        presented,
                        message,
                    );
                } else {
                    tracing::error!(%call, %message, "a stale-grant refusal that names no domain or quota");
                    self.backoff.failed();
                }
            }
            ProviderError::Refused {
                reason: Reason::NotOwner,
                message,
                metadata,
            } => {
                // The provider is the truth about machines: another shard's is not ours.
                if let Some(machine) = metadata.get("machine") {
                    tracing::warn!(%call, %machine, %message, "the provider says another shard owns this machine; forgetting it");
                    let mut state = self.state();
                    if let Err(e) = self.forget_locked(&mut state, std::slice::from_ref(machine)) {
                        tracing::error!(error = %e, %machine, "cannot forget a machine");
                    }
                }
            }
            ProviderError::Refused {
                reason: Reason::StaleEpoch,
                message,
                ..
            } => {
                tracing::error!(%call, %message, "the provider has seen a newer incarnation of this shard");
            }
            ProviderError::Refused {
                reason: Reason::OverSlice,
                ..
            } => {
                // The provider counts more of this shard's machines than its ledger: creates
                // that timed out were made after all. The provider is the truth about
                // machines, so the ledger is reconciled with its list (the made machines
                // join and go to work) instead of the shard staying short for ever.
                self.backoff.failed();
                self.reconcile_wake.notify_one();
            }
            _ => {
                self.backoff.failed();
            }
        }
    }

    fn fence_domain(&self, domain: &str, presented: Option<(u64, u64)>, why: &str) {
        let held = self.assignments.read();
        let Some(grant) = held.domain_grant(domain) else {
            return;
        };
        if !refuses_held(grant, presented) {
            return;
        }
        let mut fences = self.fences.lock();
        let fence = Fence {
            grant,
            why: why.to_string(),
        };
        if fences.domains.insert(domain.to_string(), fence).is_none() {
            tracing::error!(%domain, %why, "the provider accepted a newer grant for this domain: not acting in it until the watch catches up");
            crate::observe::fenced(&fences);
            self.state()
                .engine
                .set_domains(&fences.usable_domains(&held));
        }
    }

    /// A newer grant for `cluster` was accepted: its machines are the new holder's. The shard
    /// forgets them (releasing nothing) and stops configuring for the cluster until its watch
    /// catches up.
    fn fence_cluster(&self, cluster: &str, presented: Option<(u64, u64)>, why: &str) {
        let held = self.assignments.read();
        let Some(grant) = held.cluster_grant(cluster) else {
            return;
        };
        if !refuses_held(grant, presented) {
            return;
        }
        let fence = Fence {
            grant,
            why: why.to_string(),
        };
        if self
            .fences
            .lock()
            .clusters
            .insert(cluster.to_string(), fence)
            .is_some()
        {
            return;
        }
        crate::observe::fenced(&self.fences.lock());
        tracing::error!(%cluster, %why, "the provider accepted a newer grant for this cluster: its machines are handed over");
        drop(held);
        self.hand_over(cluster);
    }

    /// Forgets the machines serving `cluster` (in the ledger or at the provider), without a
    /// call: the shard that serves the cluster now adopts them in place. Machines at a
    /// provider no other shard uses (the built-in simulation) stay: they go idle with the
    /// cluster's demand and serve other work.
    fn hand_over(&self, cluster: &str) {
        let mut state = self.state();
        self.hand_over_locked(&mut state, cluster);
    }

    fn hand_over_locked(&self, state: &mut ShardState, cluster: &str) {
        let mut ids: std::collections::BTreeSet<String> = state
            .engine
            .allocations(cluster)
            .into_iter()
            .map(|m| m.id)
            .collect();
        ids.extend(self.placements.lock().serving(cluster));
        state.engine.set_demand(cluster, Vec::new());
        let shared = |id: &String| {
            state.engine.machine(id).is_some_and(|m| {
                let quota = m.quota.as_ref().map_or("", |q| q.0.as_str());
                self.providers.of(quota).is_ok_and(|p| p.shared())
            })
        };
        let ids: Vec<String> = ids.into_iter().filter(shared).collect();
        match self.forget_locked(state, &ids) {
            Ok(0) => {}
            Ok(n) => tracing::info!(%cluster, machines = n, "handed the cluster's machines over"),
            Err(e) => tracing::error!(error = %e, %cluster, "cannot forget handed-over machines"),
        }
    }

    fn fence_quota(&self, quota: &QuotaKey, presented: Option<(u64, u64)>, why: &str) {
        let held = self.assignments.read();
        let Some((epoch, revision, _)) = held.quota_grant(&quota.0, &quota.1) else {
            return;
        };
        if !refuses_held((epoch, revision), presented) {
            return;
        }
        let mut fences = self.fences.lock();
        let fence = Fence {
            grant: (epoch, revision),
            why: why.to_string(),
        };
        if fences.quotas.insert(quota.clone(), fence).is_none() {
            tracing::error!(provider = %quota.0, region = %quota.1, %why, "the provider accepted a newer slice table: no creates under this quota until the watch brings it");
            crate::observe::fenced(&fences);
            self.state().engine.block_quotas(&fences.blocked_quotas());
        }
    }

    /// The grants refused now.
    pub fn fences(&self) -> Fences {
        self.fences.lock().clone()
    }

    /// Puts machines the provider says are this shard's into the ledger: those it lacks join
    /// under the quota the provider counts them against (deleted or failed ones, and ones
    /// already known, are skipped) — idle, or claimed by the cluster they serve if the shard
    /// serves it (the engine gives them to that cluster's demand when it arrives). Returns how
    /// many joined.
    pub fn join_ledger(
        &self,
        machines: impl IntoIterator<Item = ProvidedMachine>,
    ) -> Result<usize, CacheError> {
        let serving = self.assignments.read().clusters.clone();
        let mut state = self.state();
        self.join_locked(&mut state, machines, &serving, &HashSet::new())
    }

    /// [`Worker::join_ledger`] for machines adopted with `cluster`, unless the shard lost the
    /// cluster while the adoption was on its way: they are then the new holder's to adopt, and
    /// joined here they would count against this shard's slice and could be given to its
    /// demand though the provider no longer lets it act on them. Checked under the
    /// assignments' lock, so a loss lands either before (nothing joins) or after (the handover
    /// forgets what joined).
    pub fn join_adopted(
        &self,
        cluster: &str,
        machines: impl IntoIterator<Item = ProvidedMachine>,
    ) -> Result<usize, CacheError> {
        let held = self.assignments.read();
        if !held.clusters.contains(cluster) {
            return Ok(0);
        }
        let mut state = self.state();
        self.join_locked(&mut state, machines, &held.clusters, &HashSet::new())
    }

    /// Makes the ledger what the provider listed as this shard's, in one step (no decision
    /// sees it half done): `missing` (ledger machines it did not list) are forgotten, `listed`
    /// machines the ledger lacks join — except those it held when the listing began
    /// (`held_at_listing`) and no longer does: the shard released or forgot them meanwhile, and
    /// joined from the older listing they would be machines the provider has deleted, counted
    /// as capacity for ever (found by the loaded full-scale simulator run). Returns (joined,
    /// forgotten).
    pub fn reconcile_ledger(
        &self,
        missing: &[String],
        listed: impl IntoIterator<Item = ProvidedMachine>,
        held_at_listing: &HashSet<String>,
    ) -> Result<(usize, usize), CacheError> {
        let serving = self.assignments.read().clusters.clone();
        let listed: Vec<ProvidedMachine> = listed.into_iter().collect();
        let ids: Vec<String> = listed.iter().map(|m| m.id.clone()).collect();
        let mut state = self.state();
        let forgotten = self.forget_locked(&mut state, missing)?;
        let joined = self.join_locked(&mut state, listed, &serving, held_at_listing)?;
        // Wishes the last process had not carried out died with it: the ledger says what each
        // machine serves, the listing what the provider has (just recorded); where they differ
        // the controller brings the provider in step.
        {
            let mut placements = self.placements.lock();
            for id in &ids {
                if let Some(machine) = state.engine.machine(id) {
                    let wanted = machine
                        .assigned_to
                        .as_deref()
                        .map(crate::placement::cluster_of);
                    placements.want(id, wanted);
                }
            }
        }
        self.placements_wake.notify_one();
        Ok((joined, forgotten))
    }

    fn join_locked(
        &self,
        state: &mut ShardState,
        machines: impl IntoIterator<Item = ProvidedMachine>,
        held: &std::collections::BTreeSet<String>,
        held_at_listing: &HashSet<String>,
    ) -> Result<usize, CacheError> {
        let mut joining = Vec::new();
        for machine in machines {
            let live = !matches!(
                MachineState::try_from(machine.state),
                Ok(MachineState::Deleted) | Ok(MachineState::Failed)
            );
            if !live || removed_since_listing(state, held_at_listing, &machine.id) {
                continue;
            }
            // What the provider says it serves, for every machine it lists as this shard's:
            // releases and hand-overs need it, and a restart starts without it.
            let serving = (!machine.cluster.is_empty()).then(|| machine.cluster.clone());
            self.placements.lock().listed(&machine.id, serving);
            if state.in_flight.contains_key(&machine.id) {
                continue;
            }
            // Made: a create of it that went unanswered is settled.
            state.unanswered.found(&machine.id);
            if state.engine.machine(&machine.id).is_some() {
                continue;
            }
            let resources = match resources_of(&machine) {
                Ok(resources) => resources,
                Err(e) => {
                    tracing::warn!(machine = %machine.id, error = %e, "skipping a machine the provider described badly");
                    continue;
                }
            };
            let claim = (!machine.cluster.is_empty() && held.contains(&machine.cluster))
                .then(|| format!("{}/", machine.cluster));
            joining.push(Machine {
                id: machine.id,
                domain: machine.domain,
                resources,
                quota: Some((machine.quota_provider, machine.region)),
                assigned_to: claim,
            });
        }
        if joining.is_empty() {
            return Ok(0);
        }
        let records: Vec<&Machine> = joining.iter().collect();
        self.cache.store_machines(&records, &[])?;
        for machine in &joining {
            state.engine.upsert_machine(machine);
        }
        Ok(joining.len())
    }

    /// Forgets machines the provider no longer counts as this shard's (deleted there, or
    /// handed to another shard), unless a call of this process is working on them.
    fn forget_locked(&self, state: &mut ShardState, ids: &[String]) -> Result<usize, CacheError> {
        let gone: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| {
                state.engine.machine(id).is_some()
                    && !state.in_flight.contains_key(*id)
                    && !state.releasing.contains(*id)
            })
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        self.cache.remove_machines(&gone)?;
        for id in &gone {
            state.engine.remove_machine(id);
            self.placements.lock().forget(id);
        }
        Ok(gone.len())
    }

    /// Forgets a machine the provider says it has not got, or has deleted or failed (the
    /// placement controller asked or called about it), unless a call of this process is
    /// working on it. Without this, a machine the ledger gained by mistake (the reconcile race
    /// the loaded full-scale simulator found) counted as capacity until a reconciliation
    /// happened to run, and the controller's configures kept failing on it.
    pub fn forget_gone(&self, id: &str) {
        let mut state = self.state();
        match self.forget_locked(&mut state, &[id.to_string()]) {
            Ok(0) => {}
            Ok(_) => {
                tracing::info!(machine = %id, "the provider has no live machine by this id; forgotten")
            }
            Err(e) => {
                tracing::error!(machine = %id, error = %e, "cannot forget a machine the provider does not have")
            }
        }
    }

    /// The placements at the provider (lock briefly; never while taking the engine's lock).
    pub fn placements(&self) -> parking_lot::MutexGuard<'_, Placements> {
        self.placements.lock()
    }

    /// Records that `machine` should serve `cluster` (or be idle) at the provider.
    pub fn place(&self, machine: &str, cluster: Option<String>) {
        self.placements.lock().want(machine, cluster);
        self.placements_wake.notify_one();
    }

    /// Resolves when a placement is wished.
    pub async fn placements_changed(&self) {
        self.placements_wake.notified().await
    }

    /// A slot for one takeover call. A shard is given hundreds of domains and clusters at once
    /// (at start, or by a burst of moves), and each is claimed or adopted at every provider:
    /// sent together, 200 shards' calls queued at the providers past their deadlines and the
    /// retries kept them there (1.6M timed-out takeovers in one full-scale run, and no machine
    /// made). Adoptions have their own slots, so the claims (which only fence) never hold
    /// back a cluster whose demand waits for its machines.
    pub async fn takeover_slot(&self, target: &Takeover) -> tokio::sync::SemaphorePermit<'_> {
        let slots = match target {
            Takeover::Domain(_) => &self.claim_slots,
            Takeover::Cluster(_) => &self.adopt_slots,
        };
        slots
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// Held while a cluster's demand is stored and handed to the engine (taken before the
    /// engine's lock, never after it).
    pub fn demand_lock(&self) -> parking_lot::MutexGuard<'_, DemandOrder> {
        self.demand.lock()
    }

    /// A slot for one `CreateMachine` call (at most [`MAX_CREATES_IN_FLIGHT`] at once).
    pub async fn create_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.create_slots
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// Resolves when the ledger should be reconciled with the provider again.
    pub async fn reconcile_wanted(&self) {
        self.reconcile_wake.notified().await
    }

    /// Marks a takeover finished (another may start when it is granted again); the cluster's
    /// needs are served again. `took` is the grant it took over under: if the shard holds a
    /// newer one now (the domain or cluster moved away and back while the takeover ran, and
    /// the watch could not start a second one beside it), the takeover is not finished and
    /// `false` says to go on under the new grant. `None` finishes it whatever is held.
    ///
    /// Checked and recorded under the assignments' lock, which [`Worker::apply`] holds while
    /// it starts takeovers: a grant arriving now either sees this one running (and it goes
    /// on) or sees it finished (and starts its own).
    pub fn finish_takeover(&self, target: &Takeover, took: Option<(u64, u64)>) -> bool {
        let held = self.assignments.read();
        if let Some(took) = took {
            let now = match target {
                Takeover::Domain(domain) => held.domain_grant(domain),
                Takeover::Cluster(cluster) => held.cluster_grant(cluster),
            };
            if now.is_some_and(|now| now != took) {
                return false;
            }
        }
        self.adopting.lock().remove(target);
        if let Takeover::Cluster(cluster) = target {
            self.state().engine.await_adoption(cluster, false);
        }
        true
    }

    /// Takeovers under way, sorted (`domain/NAME`, `cluster/NAME`).
    pub fn takeovers(&self) -> Vec<String> {
        let mut under_way: Vec<String> =
            self.adopting.lock().iter().map(|t| t.to_string()).collect();
        under_way.sort_unstable();
        under_way
    }

    /// Backoff of new provisions after provider failures.
    pub fn provider_backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Next fencing sequence number.
    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// How long this start took, by phase.
    pub fn startup(&self) -> Startup {
        self.startup
    }

    /// Provider calls that failed since start.
    pub fn provider_failures(&self) -> u64 {
        self.provider_failures.load(Ordering::Relaxed)
    }

    /// Times since start that the lease may have run out at the coordinator, one going on
    /// now included, and whether one is.
    pub fn contact_lapses(&self) -> (u64, bool) {
        self.contact_lapses
            .lock()
            .count(Instant::now(), self.config.lease_ttl)
    }

    /// Engine cycles completed since start.
    pub fn cycles(&self) -> u64 {
        self.cycles.load(Ordering::Relaxed)
    }

    /// Records the outcome of a cycle (what the heartbeat reports until the next one) and how
    /// long it took.
    pub fn finish_cycle(&self, outcome: CycleOutcome, elapsed: Duration) {
        let shortfall = outcome.shortfalls.iter().map(|s| s.missing as u64).sum();
        *self.shortfalls.lock() = outcome.shortfalls;
        // Bounded as the coordinator expects: the quotas with most use first.
        let mut quotas = outcome.quotas;
        if quotas.len() > MAX_QUOTA_REPORTS {
            quotas.sort_by_key(|(_, (held, in_flight, slice))| {
                std::cmp::Reverse((held + in_flight, *slice))
            });
            quotas.truncate(MAX_QUOTA_REPORTS);
        }
        let mut cluster_demand = outcome.cluster_demand;
        if cluster_demand.len() > MAX_CLUSTER_REPORTS {
            cluster_demand.sort_by_key(|(_, asked)| std::cmp::Reverse(*asked));
            cluster_demand.truncate(MAX_CLUSTER_REPORTS);
        }
        *self.summary.lock() = pb::ShardSummary {
            machines_by_state: by_state(outcome.counts).into_iter().collect(),
            demand: outcome.demand,
            shortfall,
            quotas: quotas
                .into_iter()
                .map(
                    |((provider, region), (held, in_flight, slice))| pb::QuotaUse {
                        provider,
                        region,
                        slice,
                        held,
                        in_flight,
                    },
                )
                .collect(),
            quota_shortfall: outcome.quota_short,
            cluster_demand: cluster_demand.into_iter().collect(),
        };
        let mut recent = self.recent_cycles.lock();
        if recent.len() == RECENT_CYCLES {
            recent.pop_front();
        }
        recent.push_back(elapsed);
        self.cycles.fetch_add(1, Ordering::Relaxed);
    }

    /// How long the last cycles took (up to [`RECENT_CYCLES`]), oldest first: from asking for
    /// the engine's lock to the decision made durable. The last one is cycle number
    /// [`Worker::cycles`] read under the same lock: a caller reading `cycles()` before and after
    /// and seeing the same number knows which cycle each entry is.
    pub fn recent_cycles(&self) -> Vec<Duration> {
        self.recent_cycles.lock().iter().copied().collect()
    }

    /// What the last cycle saw, for heartbeats: read without the engine's lock, which a cycle
    /// holds through its fsyncs (a heartbeat waiting on it could let the lease lapse).
    fn summary(&self) -> pb::ShardSummary {
        self.summary.lock().clone()
    }

    /// Machines by state: idle, assigned.
    pub fn machines_by_state(&self) -> BTreeMap<String, u64> {
        by_state(self.state().engine.counts())
    }

    /// Whether the last coordinator call succeeded.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Time since the coordinator last answered, if it ever did.
    pub fn since_contact(&self) -> Option<Duration> {
        self.last_contact.lock().map(|t| t.elapsed())
    }

    /// The shard's AZ.
    pub fn az(&self) -> &str {
        &self.config.az
    }

    /// What the last cycle could not serve, need by need.
    pub fn shortfalls(&self) -> parking_lot::MutexGuard<'_, Vec<Shortfall>> {
        self.shortfalls.lock()
    }

    /// Machines short of demand after the last cycle.
    pub fn shortfall(&self) -> u64 {
        self.shortfall_total()
    }

    fn shortfall_total(&self) -> u64 {
        self.shortfalls
            .lock()
            .iter()
            .map(|s| s.missing as u64)
            .sum()
    }

    fn touch(&self) {
        self.reachable.store(true, Ordering::Relaxed);
        *self.last_contact.lock() = Some(Instant::now());
    }

    /// Whether to decide and act this cycle (see [`crate::freshness`]).
    pub fn may_act(&self) -> Verdict {
        let held = self.assignments.read().revision;
        let mut freshness = self.freshness.lock();
        let was_holding = freshness.holding();
        let verdict = freshness.verdict(Instant::now(), held);
        match &verdict {
            Verdict::Hold(reason) if !was_holding => {
                tracing::info!(%reason, "holding decisions until the assignments are current")
            }
            Verdict::Act if was_holding => tracing::info!("assignments current; acting again"),
            _ => {}
        }
        crate::observe::holding(matches!(verdict, Verdict::Hold(_)));
        verdict
    }

    /// Applies an update if it is newer than what is held, making it durable first. Returns
    /// the domains and clusters granted by it (new, or under a newer grant), to take over;
    /// `None` for an update that was not newer. Clusters bound elsewhere are handed over.
    fn apply(&self, update: &pb::AssignmentUpdate) -> Result<Option<Vec<Takeover>>, CacheError> {
        let mut held = self.assignments.write();
        let mut next = held.clone();
        if !next.apply(update) {
            return Ok(None);
        }
        self.cache.store(&held, &next)?;
        let granted: Vec<Takeover> = next
            .domains
            .iter()
            .filter(|d| held.domain_grant(d) != next.domain_grant(d))
            .map(|d| Takeover::Domain(d.clone()))
            .chain(
                next.clusters
                    .iter()
                    .filter(|c| held.cluster_grant(c) != next.cluster_grant(c))
                    .map(|c| Takeover::Cluster(c.clone())),
            )
            .collect();
        let lost_clusters: Vec<String> =
            held.clusters.difference(&next.clusters).cloned().collect();
        // Demand waits for a cluster's adoption only where the cluster is new to this shard.
        // One it held all along under an older grant (a restore's new epoch) has its machines
        // in the ledger already: taking it over again only tells the providers the new grant,
        // and its demand goes on being served meanwhile. Waiting for that, after a restore on a
        // loaded box, left a shard with 1,345 idle machines short of three for over 30 s while
        // its adoptions of every cluster queued at the providers behind every other shard's.
        let waits: HashSet<String> = granted
            .iter()
            .filter_map(|t| match t {
                Takeover::Cluster(cluster) if !held.clusters.contains(cluster) => {
                    Some(cluster.clone())
                }
                _ => None,
            })
            .collect();
        {
            let mut lost = self.lost_grants.lock();
            for cluster in &lost_clusters {
                if let Some(grant) = held.cluster_grant(cluster) {
                    lost.insert(cluster.clone(), grant);
                }
            }
            for cluster in &next.clusters {
                lost.remove(cluster);
            }
        }
        {
            let mut fences = self.fences.lock();
            fences.lift(&next);
            crate::observe::fenced(&fences);
            let mut state = self.state();
            state.engine.set_domains(&fences.usable_domains(&next));
            state.engine.set_slices(&next.slices);
            state.engine.block_quotas(&fences.blocked_quotas());
            for cluster in &lost_clusters {
                self.hand_over_locked(&mut state, cluster);
            }
        }
        *held = next;
        let mut adopting = self.adopting.lock();
        let started: Vec<Takeover> = granted
            .into_iter()
            .filter(|t| adopting.insert(t.clone()))
            .collect();
        drop(adopting);
        let mut state = self.state();
        for target in &started {
            if let Takeover::Cluster(cluster) = target
                && waits.contains(cluster)
            {
                state.engine.await_adoption(cluster, true);
            }
        }
        Ok(Some(started))
    }

    fn remember_cluster(&self) {
        if let Some(id) = self.client.cluster_id()
            && self.cache.cluster_id().ok().flatten().as_deref() != Some(id.as_str())
            && let Err(e) = self.cache.set_cluster_id(&id)
        {
            tracing::warn!(error = %e, "could not persist the cluster id");
        }
    }
}

/// Whether a `stale-grant` refusal of the `presented` grant is about the grant the shard
/// `held` now. Not when the watch has brought a newer grant since the call went out: the next
/// call presents that one, and a fence set against it would never lift. A refusal that does
/// not name the grant it refused is taken to be about the held one.
fn refuses_held(held: (u64, u64), presented: Option<(u64, u64)>) -> bool {
    presented.is_none_or(|presented| presented == held)
}

/// A grant as a refusal names it: `restore_epoch/revision`.
fn parse_grant(text: &str) -> Option<(u64, u64)> {
    let (epoch, revision) = text.split_once('/')?;
    Some((epoch.parse().ok()?, revision.parse().ok()?))
}

/// Machine counts by state name, leaving out empty states.
fn by_state(counts: MachineCounts) -> BTreeMap<String, u64> {
    [("idle", counts.idle), ("assigned", counts.assigned)]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(state, n)| (state.to_string(), n))
        .collect()
}

/// A started worker.
pub struct RunningWorker {
    /// Shared state (for embedding and tests).
    pub worker: Arc<Worker>,
    /// Bound address.
    pub local_addr: SocketAddr,
    /// Bound HTTP address, if one was asked for.
    pub http_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningWorker {
    /// Stops all tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
    }
}

/// Opens the cache, bumps the epoch, starts serving and the coordinator loops. Works with
/// every coordinator down: the cache alone is enough to serve.
pub async fn start(config: WorkerConfig) -> Result<RunningWorker, WorkerError> {
    ballast_protocol::validate::validate_id("shard id", &config.id)
        .map_err(|e| WorkerError::Config(e.to_string()))?;
    ballast_protocol::validate::validate_id("az", &config.az)
        .map_err(|e| WorkerError::Config(e.to_string()))?;
    if config.coordinators.is_empty() {
        return Err(WorkerError::Config("--coordinators is empty".into()));
    }
    let security = match &config.tls {
        Some(files) => Some(Security::load(files, &config.id)?),
        None => None,
    };
    let (stop, stopped) = watch::channel(false);
    let loaded = crate::observe::Loaded::default();
    let http_addr = match config.http_listen {
        Some(addr) => {
            let listener = ballast_telemetry::bind(addr)
                .await
                .map_err(|source| WorkerError::Listen { addr, source })?;
            let bound = listener.local_addr().ok();
            let tls = security.as_ref().map(|s| ballast_telemetry::HttpTls {
                server: s.http.clone(),
                open_probes: config.http_open_probes,
            });
            crate::observe::serve(listener, loaded.clone(), tls, stopped.clone());
            bound
        }
        None => None,
    };
    let opening = Instant::now();
    let cache = Cache::open(&config.data_dir, &config.id)?;
    let epoch = cache.bump_epoch()?;
    let assignments = cache.load()?;
    let opened = opening.elapsed();
    let state = ShardState::load(&cache, &assignments)?;
    let startup = Startup {
        cache_open: opened,
        engine_load: opening.elapsed() - opened,
    };
    let mut client_config = ClientConfig::new(config.coordinators.clone());
    client_config.cluster_id = cache.cluster_id()?;
    client_config.retry_budget = Duration::from_secs(2);
    // A third of the lease at most: a replica that stopped answering (a paused leader keeps
    // its socket) must cost a heartbeat less than the lease, so the next one, sent elsewhere,
    // still lands in time.
    client_config.attempt_timeout =
        (config.lease_ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(3));
    client_config.tls = security.as_ref().map(|s| s.client.clone());
    let client =
        BallastClient::new(client_config).map_err(|e| WorkerError::Config(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| WorkerError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| WorkerError::Listen {
            addr: config.listen,
            source,
        })?;
    let address = config
        .advertise
        .clone()
        .unwrap_or_else(|| local_addr.to_string());
    tracing::info!(
        shard = %config.id, epoch, revision = assignments.revision,
        domains = assignments.domains.len(), machines = state.engine.counts().total(),
        cache_open_ms = startup.cache_open.as_millis() as u64,
        engine_load_ms = startup.engine_load.as_millis() as u64,
        "shard worker starting from its cache"
    );
    let mut named = BTreeMap::new();
    let mut fallback = None;
    let connect = provider_connector(security.as_ref(), config.provider_timeout);
    let mut registry = false;
    for spec in &config.providers {
        let provider: Arc<dyn Provider> = match &spec.choice {
            ProviderChoice::Sim(simulated) => Arc::new(LocalProvider::new(simulated.clone())),
            ProviderChoice::Grpc(endpoint) => connect(endpoint).map_err(WorkerError::Config)?,
            ProviderChoice::Registry => {
                registry = true;
                continue;
            }
        };
        let taken = match &spec.name {
            Some(name) => named.insert(name.clone(), provider).is_some(),
            None => fallback.replace(provider).is_some(),
        };
        if taken {
            return Err(WorkerError::Config(format!(
                "--provider names {} twice",
                spec.name
                    .as_deref()
                    .unwrap_or("the provider of every other quota")
            )));
        }
    }
    if named.is_empty() && fallback.is_none() && !registry {
        return Err(WorkerError::Config("no --provider".into()));
    }
    let providers = Providers::new(named, fallback);
    if registry {
        // What the registry said last, until the coordinator says more.
        let cached = cache.provider_registry()?;
        for change in providers.set_registered(&cached, &connect) {
            tracing::info!(%change, "provider from the cached registry");
        }
    }
    let freshness = Freshness::new(config.lease_ttl, HOLD_LIMIT);
    let worker = Arc::new(Worker {
        config,
        address,
        epoch,
        cache,
        assignments: RwLock::new(assignments),
        reachable: AtomicBool::new(false),
        last_contact: Mutex::new(None),
        freshness: Mutex::new(freshness),
        wake_watch: tokio::sync::Notify::new(),
        client,
        providers,
        fences: Mutex::new(Fences::default()),
        lost_grants: Mutex::new(HashMap::new()),
        adopting: Mutex::new(HashSet::new()),
        claim_slots: tokio::sync::Semaphore::new(TAKEOVER_CALLS),
        adopt_slots: tokio::sync::Semaphore::new(TAKEOVER_CALLS),
        create_slots: tokio::sync::Semaphore::new(MAX_CREATES_IN_FLIGHT),
        demand: Mutex::new(DemandOrder::default()),
        reconcile_wake: tokio::sync::Notify::new(),
        placements: Mutex::new(Placements::default()),
        placements_wake: tokio::sync::Notify::new(),
        state: Mutex::new(state),
        shortfalls: Mutex::new(Vec::new()),
        summary: Mutex::default(),
        cycles: AtomicU64::new(0),
        recent_cycles: Mutex::new(VecDeque::with_capacity(RECENT_CYCLES)),
        sequence: AtomicU64::new(0),
        backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)),
        provider_failures: AtomicU64::new(0),
        contact_lapses: Mutex::default(),
        startup,
    });
    let _ = loaded.set(worker.clone());
    tokio::spawn(watch_loop(worker.clone(), stopped.clone()));
    tokio::spawn(heartbeat_loop(worker.clone(), stopped.clone()));
    if registry {
        tokio::spawn(registry_loop(worker.clone(), connect, stopped.clone()));
    }
    tokio::spawn(crate::provisioning::engine_loop(
        worker.clone(),
        stopped.clone(),
    ));
    tokio::spawn(crate::provisioning::reconcile(
        worker.clone(),
        stopped.clone(),
    ));
    tokio::spawn(crate::placement::placement_loop(
        worker.clone(),
        stopped.clone(),
    ));
    let mut server_stop = stopped;
    let router = tonic::transport::Server::builder()
        .layer(
            tower::ServiceBuilder::new().option_layer(
                security
                    .as_ref()
                    .map(|_| AuthLayer::new(crate::security::ShardApiPolicy)),
            ),
        )
        .add_service(ShardWorkerServer::new(crate::service::StatusService {
            worker: worker.clone(),
        }));
    let shutdown = async move {
        let _ = server_stop.wait_for(|s| *s).await;
    };
    let server = match security {
        Some(security) => tokio::spawn(
            router.serve_with_incoming_shutdown(security.grpc.incoming(listener), shutdown),
        ),
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )),
    };
    Ok(RunningWorker {
        worker,
        local_addr,
        http_addr,
        stop,
        server,
    })
}

/// Cycle durations a worker keeps (see [`Worker::recent_cycles`]).
pub const RECENT_CYCLES: usize = 1024;

/// Longest a shard holds its decisions after a gap in contact waiting for its watch to catch
/// up: then it acts on its cache (static stability).
const HOLD_LIMIT: Duration = Duration::from_secs(2);

/// Follows the shard's assignments from its cached revision, reconnecting (to any replica)
/// whenever the stream breaks.
async fn watch_loop(worker: Arc<Worker>, mut stopped: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let held = worker.assignments();
        let opened = worker
            .client
            .watch_assignments(&worker.config.id, held.revision, held.restore_epoch)
            .await;
        match opened {
            Ok(mut stream) => {
                worker.touch();
                worker.remember_cluster();
                backoff = Duration::from_millis(100);
                loop {
                    let next = tokio::select! {
                        next = stream.message() => next,
                        _ = stopped.wait_for(|s| *s) => return,
                    };
                    match next {
                        Ok(Some(update)) => {
                            worker.touch();
                            match worker.apply(&update) {
                                Ok(Some(granted)) => {
                                    tracing::debug!(
                                        revision = update.revision,
                                        full = update.full,
                                        granted = granted.len(),
                                        "assignments updated"
                                    );
                                    for target in granted {
                                        tokio::spawn(crate::provisioning::take_over(
                                            worker.clone(),
                                            target,
                                        ));
                                    }
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot persist assignments; stopping the watch");
                                    return;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::warn!(%status, "assignment watch broke; resuming");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                worker.reachable.store(false, Ordering::Relaxed);
                tracing::debug!(error = %e, "no coordinator reachable; serving from the cache");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = worker.wake_watch.notified() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Renews the shard's lease (registering it on first contact). Heartbeats keep their cadence
/// from the start of each attempt, so a slow answer does not push the next one out, and a
/// failed one is tried again after a third of the interval: a lease of three heartbeats then
/// survives a coordinator slowed to several seconds per answer (as during a burst of moves on
/// a starved machine) instead of lapsing and handing the shard's clusters away.
async fn heartbeat_loop(worker: Arc<Worker>, mut stopped: watch::Receiver<bool>) {
    loop {
        let started = tokio::time::Instant::now();
        let request = pb::HeartbeatRequest {
            shard_id: worker.config.id.clone(),
            address: worker.address.clone(),
            az: worker.config.az.clone(),
            lease_ttl_ms: worker.config.lease_ttl.as_millis() as u64,
            epoch: worker.epoch,
            summary: Some(worker.summary()),
        };
        let answer = worker
            .client
            .assignments(|mut c, req| {
                let request = request.clone();
                async move { c.heartbeat(req.wrap(request)).await }
            })
            .await;
        let next = match answer {
            Ok(answer) => {
                let lapse = worker.contact_lapses.lock().answered(
                    started.into_std(),
                    Instant::now(),
                    worker.config.lease_ttl,
                );
                if let Some(gap) = lapse {
                    tracing::warn!(
                        gap_ms = gap.as_millis() as u64,
                        lease_ms = worker.config.lease_ttl.as_millis() as u64,
                        "no heartbeat answered for longer than the lease: the coordinator may have \
                         given this shard's work away"
                    );
                }
                worker.touch();
                worker.remember_cluster();
                let revision = answer.header.map_or(0, |h| h.revision);
                let returning = worker
                    .freshness
                    .lock()
                    .heartbeat_answered(Instant::now(), revision);
                if returning {
                    // Back in contact: resume the watch now rather than after its back-off.
                    worker.wake_watch.notify_one();
                }
                started + worker.config.heartbeat
            }
            Err(e) => {
                worker.freshness.lock().heartbeat_failed();
                worker.reachable.store(false, Ordering::Relaxed);
                tracing::debug!(error = %e, "heartbeat failed");
                started + worker.config.heartbeat / 3
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Builds the client of a provider process at `endpoint`, with the shard's TLS identity.
fn provider_connector(
    security: Option<&Security>,
    timeout: Duration,
) -> impl Fn(&str) -> Result<Arc<dyn Provider>, String> + Send + Sync + 'static {
    let tls = security.map(|s| s.client.clone());
    move |endpoint: &str| {
        GrpcProvider::new(endpoint, tls.as_ref(), timeout)
            .map(|p| Arc::new(p) as Arc<dyn Provider>)
            .map_err(|e| e.to_string())
    }
}

/// `CreateMachine` calls a shard has open at once; further provisions wait in the shard (still
/// counted in flight by the engine), not at the provider, where they would sit past their
/// deadline.
pub const MAX_CREATES_IN_FLIGHT: usize = 128;

/// Takeover calls of one kind a shard has open at once (per kind; see
/// [`Worker::takeover_slot`]).
const TAKEOVER_CALLS: usize = 8;

/// How often a shard driving `--provider registry` reads the coordinator's registry.
const REGISTRY_POLL: Duration = Duration::from_secs(5);

/// Follows the coordinator's provider registry: reads it every [`REGISTRY_POLL`], and when an
/// entry is added, moved to another endpoint or removed, caches the new list (durably, for a
/// restart without a coordinator) and switches the providers by name. An unreachable
/// coordinator changes nothing: the shard keeps the providers it has.
async fn registry_loop(
    worker: Arc<Worker>,
    connect: impl Fn(&str) -> Result<Arc<dyn Provider>, String>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut last = worker.cache.provider_registry().unwrap_or_default();
    loop {
        let read = worker
            .client
            .fleet(|mut c, req| async move {
                c.list_providers(req.wrap(pb::ListProvidersRequest { options: None }))
                    .await
            })
            .await;
        match read {
            Ok(answer) => {
                let entries: BTreeMap<String, String> = answer
                    .providers
                    .into_iter()
                    .map(|p| (p.name, p.endpoint))
                    .collect();
                if entries != last {
                    if let Err(e) = worker.cache.set_provider_registry(&entries) {
                        tracing::error!(error = %e, "cannot cache the provider registry");
                    }
                    for change in worker.providers.set_registered(&entries, &connect) {
                        tracing::info!(%change, "provider registry changed");
                    }
                    last = entries;
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the provider registry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REGISTRY_POLL) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Whether the ledger held `id` when a listing began and has dropped it since (released or
/// forgotten meanwhile): the listing is older than that, so it cannot bring the machine back.
fn removed_since_listing(state: &ShardState, held_at_listing: &HashSet<String>, id: &str) -> bool {
    held_at_listing.contains(id) && state.engine.machine(id).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Demand is handed to the engine once durable, newest first whatever order the fsyncs
    /// finish in: an older submission made durable after a newer one does not undo it, a
    /// failed fsync hands nothing over, and nothing is kept once no submission is on its way.
    #[test]
    fn the_engine_takes_only_a_clusters_newest_durable_demand() {
        let mut order = DemandOrder::default();
        order.journaled("c1"); // batch 1
        order.journaled("c1"); // batch 2
        order.journaled("c2"); // batch 3
        assert!(order.resolved("c1", 2, true), "the newest, durable first");
        assert!(
            !order.resolved("c1", 1, true),
            "older than what the engine took"
        );
        assert!(!order.resolved("c2", 3, false), "its fsync failed");
        assert!(order.0.is_empty(), "nothing on its way, nothing kept");
        order.journaled("c1"); // batch 4
        order.journaled("c1"); // batch 5
        assert!(order.resolved("c1", 4, true), "durable before 5");
        assert!(order.resolved("c1", 5, true), "then 5, newer");
        assert!(order.0.is_empty());
    }

    /// A machine released while a reconcile's listing was on its way is not joined back from
    /// that listing (it would be a machine the provider deleted, counted as capacity); one the
    /// ledger did not hold when the listing began joins, and one still held is just known.
    #[test]
    fn a_listing_older_than_a_release_cannot_bring_the_machine_back() {
        let mut state = ShardState {
            engine: crate::engine::Engine::default(),
            in_flight: BTreeMap::new(),
            releasing: HashSet::new(),
            unanswered: crate::provisioning::UnansweredCreates::default(),
        };
        let machine = |id: &str| crate::engine::Machine {
            id: id.into(),
            domain: "d1".into(),
            resources: crate::engine::Resources {
                cpu_millis: 1000,
                memory_mib: 1024,
                gpus: 0,
            },
            quota: Some(("p".into(), "r".into())),
            assigned_to: None,
        };
        state.engine.upsert_machine(&machine("released"));
        state.engine.upsert_machine(&machine("kept"));
        let held_at_listing: HashSet<String> = ["released".to_string(), "kept".to_string()].into();
        // The listing is on its way; the shard returns a machine and forgets it.
        state.engine.remove_machine("released");
        assert!(removed_since_listing(&state, &held_at_listing, "released"));
        assert!(!removed_since_listing(&state, &held_at_listing, "kept"));
        assert!(
            !removed_since_listing(&state, &held_at_listing, "made-late"),
            "a machine the ledger never held (a create answered too late) joins"
        );
    }

    #[test]
    fn a_refusal_fences_only_the_grant_it_refused() {
        assert_eq!(parse_grant("3/128"), Some((3, 128)));
        assert_eq!(parse_grant("3-128"), None);
        assert_eq!(parse_grant("x/1"), None);
        // The refused grant is the one held: fence it.
        assert!(refuses_held((0, 128), Some((0, 128))));
        // The watch brought table 169 while the call under 128 was out: no fence, the next
        // create presents 169 (a fence at 169 would never lift).
        assert!(!refuses_held((0, 169), Some((0, 128))));
        // A provider that does not say which grant it refused: the held one.
        assert!(refuses_held((0, 169), None));
    }

    #[test]
    fn fences_lift_once_the_grant_moves_on_or_goes() {
        let mut held = Assignments {
            restore_epoch: 1,
            domains: ["d1".to_string(), "d2".to_string()].into(),
            domain_grants: [("d1".to_string(), 5), ("d2".to_string(), 6)].into(),
            slices: [(("p".to_string(), "r".to_string()), 10)].into(),
            slice_grants: [(("p".to_string(), "r".to_string()), 7)].into(),
            ..Assignments::default()
        };
        let fence = |grant| Fence {
            grant,
            why: "older".into(),
        };
        let mut fences = Fences::default();
        fences.domains.insert("d1".into(), fence((1, 5)));
        fences.domains.insert("d2".into(), fence((1, 6)));
        fences
            .quotas
            .insert(("p".into(), "r".into()), fence((1, 7)));
        fences.lift(&held);
        assert_eq!(fences.domains.len(), 2, "nothing moved: the fences stay");
        assert_eq!(
            fences.usable_domains(&held),
            std::collections::BTreeSet::new()
        );
        // d1 granted again (newer), d2 taken away, the slice table renewed.
        held.domain_grants.insert("d1".into(), 9);
        held.domains.remove("d2");
        held.slice_grants.insert(("p".into(), "r".into()), 8);
        fences.lift(&held);
        assert!(
            fences.domains.is_empty() && fences.quotas.is_empty(),
            "{fences:?}"
        );
        assert_eq!(
            fences.usable_domains(&held),
            ["d1".to_string()].into_iter().collect()
        );
    }
}
