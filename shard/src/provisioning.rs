//! The engine's run loop: every cycle, let the live engine decide, make the decision durable,
//! and carry out provisions through the provider. It needs no coordinator: a shard keeps
//! serving demand from its cached allocation during an outage.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use ballast_protocol::provider::Reason;
use ballast_protocol::providerpb::{
    AdoptClusterRequest, ClaimDomainRequest, CreateMachineRequest, DeleteMachineRequest,
    ListMachinesRequest, Machine as ProvidedMachine, MachineState,
};

use crate::cache::{Assignments, Cache, CacheError};
use crate::engine::{Engine, Machine, Plan, Provision, QuotaKey, Resources};
use crate::placement::cluster_of;
use crate::provider::{ProviderError, resources_of, shape_for, token};
use crate::worker::{CycleOutcome, Worker};

/// What the run loop, the demand API and finishing provisions share: the live engine (which
/// holds the machine ledger and the demand) and the provisions in flight.
pub struct ShardState {
    /// The engine and its indexes.
    pub engine: Engine,
    /// Provisions started and not yet answered, by machine id (re-issued after a restart;
    /// the provider is idempotent by machine id).
    pub in_flight: BTreeMap<String, Provision>,
    /// Machines whose release the provider is working on.
    pub releasing: HashSet<String>,
    /// Creates that ended with no answer the shard could use (see [`ShardState::retry_id`]).
    pub unanswered: UnansweredCreates,
}

/// What a `CreateMachine` request is made of (the need is not part of it): domain, quota,
/// resources. Only the same request may reuse an unanswered create's idempotency key.
type Request = (String, QuotaKey, Resources);

fn request_of(provision: &Provision) -> Request {
    (
        provision.domain.clone(),
        provision.quota.clone(),
        provision.resources,
    )
}

/// Unanswered creates by machine id, with those not being retried indexed by request: a new
/// provision finds its id without a scan. A scan per provision, under the engine's lock, made
/// one cycle take 51.6 s at 100K machines when every create had timed out
/// (`ballast-bench worker-cycle`).
#[derive(Debug, Default)]
pub struct UnansweredCreates {
    by_id: BTreeMap<String, Unanswered>,
    waiting: HashMap<Request, BTreeSet<String>>,
}

impl UnansweredCreates {
    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn wait(&mut self, id: &str, request: Request) {
        self.waiting
            .entry(request)
            .or_default()
            .insert(id.to_string());
    }

    /// Forgets an unanswered create whose machine the shard found at the provider (a listing
    /// joined it): retried under its key, the create would be answered with the first
    /// outcome, a machine the ledger already has, and recorded again for another need. Not
    /// while an attempt is in flight again; its answer settles it.
    pub fn found(&mut self, id: &str) {
        let Some(entry) = self.by_id.get(id) else {
            return;
        };
        if entry.retrying {
            return;
        }
        let request = request_of(&entry.provision);
        self.unwait(id, &request);
        self.by_id.remove(id);
    }

    fn unwait(&mut self, id: &str, request: &Request) {
        if let Some(ids) = self.waiting.get_mut(request) {
            ids.remove(id);
            if ids.is_empty() {
                self.waiting.remove(request);
            }
        }
    }
}

/// A create that ended with no answer the shard could use: none came (the provider timed out
/// or the connection broke), or one the contract does not allow (another machine, another
/// domain, an empty record). The provider may have made the machine all the same.
#[derive(Clone, Debug)]
pub struct Unanswered {
    /// What the last attempt asked for.
    pub provision: Provision,
    /// Attempts so far.
    pub attempts: u32,
    /// Whether an attempt under this id is in flight again.
    pub retrying: bool,
}

/// Attempts after which an unanswered create's id is given up (a provider that keeps
/// answering one key with a record the contract does not allow would hold its request short
/// for ever). If the provider made the machine, the shard's next start joins it to the ledger
/// (see [`reconcile`]).
const MAX_ATTEMPTS: u32 = 20;

impl ShardState {
    /// Builds the engine from the cache: assignments, ledger, demand and provisions in flight.
    pub fn load(cache: &Cache, held: &Assignments) -> Result<ShardState, CacheError> {
        let mut engine = Engine::default();
        engine.set_domains(&held.domains);
        engine.set_slices(&held.slices);
        // Fences are not kept across restarts: the provider refuses a stale grant again.
        let ledger = cache.load_ledger()?;
        for provision in ledger.in_flight.values() {
            engine.provision_started(provision);
        }
        // Demand before machines, so each machine's claim resolves as it is loaded. Only
        // clusters still bound here: a cache written before unbinding dropped demand may hold
        // more.
        for (cluster, rows) in ledger.demand {
            if held.clusters.contains(&cluster) {
                engine.set_demand(&cluster, rows);
            }
        }
        // A sizing hint read from disk, bounded so a damaged count cannot ask for absurd memory.
        let expected = cache.machine_count().min(1 << 24) as usize;
        engine.bulk_load(expected, |upsert| cache.load_machines(upsert))?;
        for id in &ledger.returning {
            engine.set_aside(id);
        }
        Ok(ShardState {
            engine,
            in_flight: ledger.in_flight,
            releasing: HashSet::new(),
            unanswered: UnansweredCreates::default(),
        })
    }

    /// The id for a new provision: that of an unanswered create making the same request, if
    /// there is one not being retried, so the retry carries its idempotency key
    /// (`create/<id>`). A provider that made the machine then answers it (the contract
    /// replays the first outcome), where a fresh id would make a second machine and leave the
    /// first at the provider, unknown to the ledger and counted against the shard's slice
    /// there — found by `sim/tests/bad_provider.rs`, where such machines filled the slice
    /// and the shard could never meet its demand again.
    ///
    /// Never the id of a machine the ledger has: its create was made, and a retry would
    /// record it again for this provision, whatever it serves now (or after it was returned
    /// and deleted, as made). Under load, creates that timed out and were joined by a listing
    /// came back this way and left ledgers disagreeing with their providers.
    pub fn retry_id(&mut self, provision: &Provision) -> Option<String> {
        let request = request_of(provision);
        loop {
            let id = self.unanswered.waiting.get(&request)?.first().cloned()?;
            if self.engine.machine(&id).is_some() {
                self.unanswered.found(&id);
                continue;
            }
            self.unanswered.unwait(&id, &request);
            if let Some(entry) = self.unanswered.by_id.get_mut(&id) {
                entry.retrying = true;
            }
            return Some(id);
        }
    }

    /// Records how the create of `id` for `provision` ended: with no usable answer
    /// (`unknown`), kept to be retried under the same id up to [`MAX_ATTEMPTS`]; otherwise
    /// (made, refused, dropped) forgotten.
    fn create_ended(&mut self, id: &str, provision: &Provision, unknown: bool) {
        let creates = &mut self.unanswered;
        if let Some(before) = creates.by_id.get(id).map(|u| request_of(&u.provision)) {
            creates.unwait(id, &before);
        }
        if !unknown {
            creates.by_id.remove(id);
            return;
        }
        let entry = creates
            .by_id
            .entry(id.to_string())
            .or_insert_with(|| Unanswered {
                provision: provision.clone(),
                attempts: 0,
                retrying: false,
            });
        entry.provision = provision.clone();
        entry.attempts += 1;
        entry.retrying = false;
        if entry.attempts >= MAX_ATTEMPTS {
            tracing::warn!(machine = %id, attempts = entry.attempts, "giving up an unanswered create; if the provider made the machine, the shard's next start joins it");
            creates.by_id.remove(id);
            return;
        }
        creates.wait(id, request_of(provision));
    }
}

/// Runs decisions until stopped. Provisions left in flight by an earlier run of this shard
/// are re-issued first (the provider is idempotent by machine id, so none is made twice).
pub async fn engine_loop(worker: Arc<Worker>, mut stopped: watch::Receiver<bool>) {
    let pending: Vec<(String, Provision)> = worker
        .state()
        .in_flight
        .iter()
        .map(|(id, p)| (id.clone(), p.clone()))
        .collect();
    for (id, provision) in pending {
        tokio::spawn(provision_one(worker.clone(), id, provision));
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(worker.cycle()) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        if let crate::freshness::Verdict::Hold(_) = worker.may_act() {
            continue;
        }
        if let Err(e) = carry_out(&worker) {
            tracing::error!(error = %e, "cannot persist a decision; the engine stops");
            return;
        }
    }
}

/// Decides one cycle, makes the decision durable, then starts its provisions.
fn carry_out(worker: &Arc<Worker>) -> Result<(), CacheError> {
    let mut started = Vec::new();
    let releases;
    let cycle = std::time::Instant::now();
    let outcome = {
        let mut state = worker.state();
        let paused = worker.provider_backoff().is_paused();
        state.engine.pause_provisioning(paused);
        let plan: Plan = state.engine.decide();
        // The provider learns each machine's cluster after the decision is durable (below):
        // the placement controller carries the wishes out. One decision can release a machine
        // and then give it to another need (or preempt it after assigning it), so each wish is
        // what the machine serves once the decision is made, not the last step that moved it.
        let moved: BTreeSet<&str> = plan
            .assign
            .iter()
            .map(|(m, _)| m.as_str())
            .chain(plan.preempt.iter().map(|(m, _, _)| m.as_str()))
            .chain(plan.release.iter().map(String::as_str))
            .collect();
        for machine in moved {
            let serves = state
                .engine
                .machine(machine)
                .and_then(|m| m.assigned_to)
                .map(|need| cluster_of(&need));
            worker.place(machine, serves);
        }
        let mut touched: Vec<&str> = plan.release.iter().map(String::as_str).collect();
        touched.extend(plan.assign.iter().map(|(m, _)| m.as_str()));
        touched.extend(plan.preempt.iter().map(|(m, _, _)| m.as_str()));
        touched.sort_unstable();
        touched.dedup();
        if !touched.is_empty() {
            let records: Vec<Machine> = touched
                .iter()
                .filter_map(|id| state.engine.machine(id))
                .collect();
            let records: Vec<&Machine> = records.iter().collect();
            worker.cache().store_machines(&records, &[])?;
        }
        for provision in plan.provision {
            let id = state.retry_id(&provision).unwrap_or_else(|| {
                format!(
                    "{}-e{}-m{}",
                    worker.id(),
                    worker.epoch(),
                    worker.next_sequence()
                )
            });
            started.push((id, provision));
        }
        if !started.is_empty() {
            let records: Vec<(&str, &Provision)> =
                started.iter().map(|(id, p)| (id.as_str(), p)).collect();
            worker.cache().store_in_flight(&records)?;
            for (id, provision) in &started {
                state.in_flight.insert(id.clone(), provision.clone());
            }
        }
        // Surplus goes back at once: the operator or the rebalancer shrank the slice, and
        // nothing will want these machines before the slice grows again. Not while provider
        // failures back the shard off: every cycle lists the surplus again, and a provider
        // refusing returns would otherwise get each of them again every cycle.
        let surplus: Vec<String> = if worker.provider_backoff().is_paused() {
            Vec::new()
        } else {
            plan.surplus
                .into_iter()
                .filter(|id| !state.releasing.contains(id))
                .collect()
        };
        if !surplus.is_empty() {
            worker.cache().store_returning(&surplus)?;
        }
        for id in &surplus {
            state.releasing.insert(id.clone());
        }
        releases = surplus;
        CycleOutcome {
            shortfalls: plan.shortfalls,
            quota_short: plan.quota_short,
            counts: state.engine.counts(),
            demand: state.engine.demand_total(),
            quotas: state.engine.quota_uses(),
            cluster_demand: state.engine.cluster_demands(),
        }
    };
    let elapsed = cycle.elapsed();
    if worker.cycles() == 0 {
        let elapsed_ms = elapsed.as_millis() as u64;
        tracing::info!(elapsed_ms, "first decision made and persisted");
    }
    crate::observe::cycle_done(elapsed);
    worker.finish_cycle(outcome, elapsed);
    for (id, provision) in started {
        tokio::spawn(provision_one(worker.clone(), id, provision));
    }
    for id in releases {
        tokio::spawn(release_one(worker.clone(), id));
    }
    Ok(())
}

/// Returns a machine that is surplus to the shard's slice to the provider
/// (`DeleteMachine`), then forgets it. The provider goes first: a crash in between leaves a
/// ledger record of a machine the provider no longer has, which is returned again after the
/// restart (the call is idempotent by key); the other order could leak a machine nobody
/// records. A machine the provider says is gone, or now another shard's (its domain was handed
/// over), is forgotten without more ado: it is no longer this shard's to return. Not when the
/// refused grant is one this shard has since replaced (its cluster moved away and back while
/// the call was on its way): the machine is still its own, and forgetting it would leave it
/// counted against the slice at the provider with no ledger record to return it by.
async fn release_one(worker: Arc<Worker>, id: String) {
    let machine = worker.state().engine.machine(&id);
    let outcome = match machine {
        Some(machine) => {
            let grants = worker.grants_for_machine(&id);
            let request = DeleteMachineRequest {
                idempotency_key: format!("delete/{id}"),
                token: Some(token(&worker.actor(), &grants)),
                machine_id: id.clone(),
            };
            ballast_failpoints::hold("shard-delete-hold").await;
            let quota_provider = machine.quota.map(|q| q.0).unwrap_or_default();
            match worker.providers().of(&quota_provider) {
                Ok(provider) => provider.delete(request).await.map(|_| ()),
                Err(e) => Err(e),
            }
        }
        // Forgotten meanwhile (a domain handed over, a restart): nothing left to return.
        None => Ok(()),
    };
    let gone = match &outcome {
        Ok(()) => true,
        Err(e) => match e.reason() {
            Some(Reason::NotFound | Reason::NotOwner) => true,
            Some(Reason::StaleGrant) => !worker.holds_newer_than_refused(e),
            _ => false,
        },
    };
    if !gone && let Err(e) = &outcome {
        // Before the engine's lock: a stale grant fences, which takes it.
        worker.provider_failed("delete", e);
        tracing::warn!(machine = %id, error = %e, "returning a machine failed; retried later");
        worker.state().releasing.remove(&id);
        return;
    }
    let mut state = worker.state();
    state.releasing.remove(&id);
    if let Err(e) = &outcome {
        tracing::info!(machine = %id, reason = e.label(), "the provider no longer counts this machine as ours; forgetting it");
    }
    if let Err(e) = worker.cache().remove_machines(&[id.as_str()]) {
        tracing::error!(error = %e, machine = %id, "cannot record a returned machine");
        return;
    }
    state.engine.remove_machine(&id);
    worker.placements().forget(&id);
    crate::observe::provision_done("released");
}

/// Why a provision did not make a machine.
enum NotMade {
    /// The shard no longer holds the domain or the slice (or acts under neither now).
    NotHeld(String),
    /// The provider offers no shape with the resources asked for.
    NoShape(String),
    /// The provider refused or failed.
    Provider(ProviderError),
}

/// Asks the provider for one machine under the grants the shard holds now.
async fn create(worker: &Worker, id: &str, provision: &Provision) -> Result<Machine, NotMade> {
    let Some(grants) = worker.grants(&provision.domain, Some(&provision.quota)) else {
        return Err(NotMade::NotHeld(format!(
            "domain {} or the slice of {}/{} is no longer held",
            provision.domain, provision.quota.0, provision.quota.1
        )));
    };
    let shapes = worker
        .providers()
        .shapes(&provision.quota.0)
        .await
        .map_err(NotMade::Provider)?;
    let Some(shape) = shape_for(&shapes, &provision.resources) else {
        return Err(NotMade::NoShape(format!(
            "the provider offers no shape with {} millicores, {} MiB and {} GPUs",
            provision.resources.cpu_millis,
            provision.resources.memory_mib,
            provision.resources.gpus
        )));
    };
    let request = CreateMachineRequest {
        idempotency_key: format!("create/{id}"),
        token: Some(token(&worker.actor(), &grants)),
        machine_id: id.to_string(),
        domain: provision.domain.clone(),
        shape: shape.name.clone(),
        capacity_type: String::new(),
    };
    let made = worker
        .providers()
        .of(&provision.quota.0)
        .map_err(NotMade::Provider)?
        .create(request)
        .await
        .map_err(NotMade::Provider)?;
    let resources = resources_of(&made).map_err(NotMade::Provider)?;
    Ok(Machine {
        id: made.id,
        domain: made.domain,
        resources,
        quota: Some(provision.quota.clone()),
        assigned_to: Some(provision.need.clone()),
    })
}

/// Asks the provider for one machine and records the answer.
async fn provision_one(worker: Arc<Worker>, id: String, provision: Provision) {
    // A slot for the call only: a decision can start tens of thousands of provisions, and
    // sent together they queued at the provider past their deadlines (122,916 failed calls
    // provisioning 100K machines through the reference provider).
    let slot = worker.create_slot().await;
    let outcome = create(&worker, &id, &provision).await;
    drop(slot);
    let unknown = matches!(&outcome, Err(NotMade::Provider(e)) if e.outcome_unknown());
    let machine = match outcome {
        Ok(machine) => Some(machine),
        Err(NotMade::NotHeld(why)) => {
            crate::observe::provision_done("dropped");
            tracing::info!(machine = %id, %why, "provision dropped");
            None
        }
        Err(NotMade::NoShape(why)) => {
            crate::observe::provision_done("no_shape");
            let pause = worker.provider_backoff().failed();
            tracing::warn!(machine = %id, %why, pause_ms = pause.as_millis() as u64, "provision impossible");
            None
        }
        Err(NotMade::Provider(e)) => {
            crate::observe::provision_done(e.label());
            worker.provider_failed("create", &e);
            tracing::warn!(machine = %id, domain = %provision.domain, error = %e, "provisioning failed");
            None
        }
    };
    if machine.is_some() {
        crate::observe::provision_done("ok");
        worker.provider_backoff().succeeded();
    }
    // Durable before the engine hears of it, and outside the engine's lock: no decision
    // touches this machine before it joins the engine below, and cycles need not wait for
    // this fsync.
    let stored = match &machine {
        Some(m) => worker.cache().store_machines(&[m], &[id.as_str()]),
        None => worker.cache().store_machines(&[], &[id.as_str()]),
    };
    let mut state = worker.state();
    if let Err(e) = stored {
        tracing::error!(error = %e, machine = %id, "cannot record a provisioning outcome");
        return;
    }
    state.create_ended(&id, &provision, unknown);
    if state.in_flight.remove(&id).is_some() {
        state
            .engine
            .provision_finished(&provision, machine.as_ref());
        // Made idle at the provider; it serves its need's cluster once configured (wished
        // only now that the ledger has it, so the controller finds it there).
        if machine.is_some() {
            // A machine is made idle: known so, the placement controller configures it
            // without asking the provider first.
            worker.placements().known(&id, None);
            worker.place(&id, Some(cluster_of(&provision.need)));
        }
    }
}

/// What the shard was just given and takes over at every provider.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Takeover {
    /// A domain: `ClaimDomain`, so creates under older grants stop (no machine moves).
    Domain(String),
    /// A cluster: `AdoptCluster`, so the machines configured for it become this shard's, in
    /// place, with their cluster; they join the ledger idle and the engine puts them to work.
    Cluster(String),
}

impl std::fmt::Display for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Takeover::Domain(domain) => write!(f, "domain/{domain}"),
            Takeover::Cluster(cluster) => write!(f, "cluster/{cluster}"),
        }
    }
}

/// Takes over a domain or cluster the shard was just given, at every provider. Nothing is
/// released or created. Retried while it is held and a provider fails; a refusal of the grant
/// fences it.
pub async fn take_over(worker: Arc<Worker>, target: Takeover) {
    let mut pause = Duration::from_millis(100);
    let mut done: HashSet<String> = HashSet::new();
    let grants_now = |worker: &Worker| match &target {
        Takeover::Domain(domain) => worker.grants(domain, None),
        Takeover::Cluster(cluster) => worker.cluster_grants(cluster),
    };
    let mut took = None;
    loop {
        // One slot per round over the providers, taken before the grants are read: a round
        // that waited for its slot presents the grant held when it starts.
        let slot = worker.takeover_slot(&target).await;
        let Some(grants) = grants_now(&worker) else {
            // Lost or fenced meanwhile: nothing left to take over.
            worker.finish_takeover(&target, None);
            return;
        };
        let mut again = false;
        let revision = grants
            .domain
            .as_ref()
            .or(grants.cluster.as_ref())
            .map_or(0, |g| g.1);
        let grant = (grants.restore_epoch, revision);
        if took != Some(grant) {
            // A newer grant: every provider hears it, including those done under the old one.
            took = Some(grant);
            done.clear();
        }
        let key = format!("take/{target}/{}/{revision}", grants.restore_epoch);
        ballast_failpoints::hold("shard-takeover-hold").await;
        for (name, provider) in worker.providers().all() {
            if done.contains(&name) {
                continue;
            }
            let token = Some(token(&worker.actor(), &grants));
            let outcome = match &target {
                Takeover::Domain(_) => provider
                    .claim(ClaimDomainRequest {
                        idempotency_key: key.clone(),
                        token,
                    })
                    .await
                    .map(|()| Vec::new()),
                Takeover::Cluster(_) => {
                    provider
                        .adopt_cluster(AdoptClusterRequest {
                            idempotency_key: key.clone(),
                            token,
                        })
                        .await
                }
            };
            match outcome {
                Ok(machines) => {
                    done.insert(name.clone());
                    ballast_failpoints::hold("shard-adopted-hold").await;
                    // Only machines this provider is the shard's provider for (by quota).
                    let here = machines
                        .into_iter()
                        .filter(|m| worker.providers().serves(&name, &m.quota_provider));
                    let joined = match &target {
                        Takeover::Cluster(cluster) => worker.join_adopted(cluster, here),
                        Takeover::Domain(_) => worker.join_ledger(here),
                    };
                    match joined {
                        Ok(0) => {}
                        Ok(joined) => {
                            tracing::info!(%target, machines = joined, "adopted machines in place");
                            crate::observe::adopted(joined);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, %target, "cannot record adopted machines")
                        }
                    }
                }
                Err(e) if e.retryable() => {
                    again = true;
                    // Counted and at warn, not debug: until the takeover is done the cluster's
                    // demand waits (reported short), and a provider that hangs or is down
                    // would otherwise leave the operator nothing to see why.
                    crate::observe::provider_error("take-over", e.label());
                    tracing::warn!(%target, provider = %name, error = %e, "taking over failed; retrying");
                }
                // A provider that does not serve the domain has nothing there.
                Err(e) if e.reason() == Some(Reason::InvalidArgument) => {
                    done.insert(name.clone());
                    tracing::debug!(%target, provider = %name, error = %e, "the provider does not take this");
                }
                // Refused under a grant replaced meanwhile: the next round presents the new one.
                Err(e) if worker.holds_newer_than_refused(&e) => again = true,
                Err(e) => {
                    done.insert(name.clone());
                    worker.provider_failed("take-over", &e);
                    tracing::warn!(%target, error = %e, "taking over was refused");
                }
            }
        }
        drop(slot);
        if !again {
            if worker.finish_takeover(&target, took) {
                return;
            }
            continue;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// How a reconciliation with the provider ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// The provider does not keep machines across its own restarts (the built-in one): its
    /// list says nothing about what the shard's cache holds.
    NotDurable,
    /// Machines that joined the ledger and machines it forgot.
    Done {
        /// The provider's machines of this shard the ledger lacked.
        joined: usize,
        /// Ledger machines the provider no longer counts as this shard's.
        forgotten: usize,
    },
}

/// Most pages a listing may take before the provider is judged to be cycling.
const MAX_LIST_PAGES: usize = 100_000;

/// Makes the ledger agree with the provider about which machines are this shard's: the
/// provider is the truth about machines (the cache is the truth about grants). Machines it
/// lists as this shard's that the ledger lacks join it; ledger machines it does not list (gone,
/// or handed to another shard) are forgotten — only those the ledger held before the listing
/// began, so a machine made meanwhile is never mistaken for a missing one. Nor does a machine
/// the ledger held when the listing began join again from it: gone from the ledger since, it
/// was released or forgotten meanwhile, and the listing predates that.
pub async fn reconcile_once(worker: &Worker) -> Result<Reconciled, ProviderError> {
    let (mut joined, mut forgotten, mut durable) = (0, 0, false);
    for (name, provider) in worker.providers().all() {
        match reconcile_with(worker, &name, provider.as_ref()).await? {
            Reconciled::NotDurable => {}
            Reconciled::Done {
                joined: j,
                forgotten: f,
            } => {
                durable = true;
                joined += j;
                forgotten += f;
            }
        }
    }
    Ok(if durable {
        Reconciled::Done { joined, forgotten }
    } else {
        Reconciled::NotDurable
    })
}

/// [`reconcile_once`] with one provider (`name`; `""` is the provider of every other quota),
/// about the machines whose quota lives there.
async fn reconcile_with(
    worker: &Worker,
    name: &str,
    provider: &dyn crate::provider::Provider,
) -> Result<Reconciled, ProviderError> {
    if !provider.describe().await?.durable {
        return Ok(Reconciled::NotDurable);
    }
    let before: HashSet<String> = worker
        .state()
        .engine
        .allocations("")
        .into_iter()
        .filter(|m| {
            let quota_provider = m.quota.as_ref().map_or("", |q| q.0.as_str());
            worker.providers().serves(name, quota_provider)
        })
        .map(|m| m.id)
        .collect();
    let mut listed: HashMap<String, ProvidedMachine> = HashMap::new();
    let mut cursor = String::new();
    for _ in 0..MAX_LIST_PAGES {
        let page = provider
            .list(ListMachinesRequest {
                domain: String::new(),
                owner_shard: worker.id().to_string(),
                cursor: cursor.clone(),
                limit: 1000,
                ..Default::default()
            })
            .await?;
        for machine in page.machines {
            if machine.owner_shard != worker.id() {
                return Err(ProviderError::Contract(format!(
                    "listing the machines of shard {} answered machine {} of {:?}",
                    worker.id(),
                    machine.id,
                    machine.owner_shard
                )));
            }
            listed.insert(machine.id.clone(), machine);
        }
        if page.next_cursor.is_empty() {
            let live = |m: &ProvidedMachine| {
                !matches!(
                    MachineState::try_from(m.state),
                    Ok(MachineState::Deleted) | Ok(MachineState::Failed)
                )
            };
            let missing: Vec<String> = before
                .iter()
                .filter(|id| !listed.get(*id).is_some_and(live))
                .cloned()
                .collect();
            let here = listed
                .into_values()
                .filter(|m| worker.providers().serves(name, &m.quota_provider));
            let (joined, forgotten) = worker
                .reconcile_ledger(&missing, here, &before)
                .map_err(cache_failed)?;
            return Ok(Reconciled::Done { joined, forgotten });
        }
        if page.next_cursor == cursor {
            return Err(ProviderError::Contract(format!(
                "ListMachines answered the cursor it was given ({cursor:?})"
            )));
        }
        cursor = page.next_cursor;
    }
    Err(ProviderError::Contract(format!(
        "ListMachines did not end within {MAX_LIST_PAGES} pages"
    )))
}

fn cache_failed(e: CacheError) -> ProviderError {
    // Not the provider's fault, but the reconciliation cannot go on; the caller logs it.
    ProviderError::Unreachable(format!("the shard cache failed: {e}"))
}

/// Reconciles the ledger with the provider once it answers, retrying with backoff until it
/// does (the engine keeps serving from the cache meanwhile: static stability); then again
/// whenever the provider refuses a create over the slice (its count of the shard's machines
/// is above the ledger's), at most once per [`RECONCILE_AGAIN_AFTER`].
pub async fn reconcile(worker: Arc<Worker>, mut stopped: watch::Receiver<bool>) {
    if !reconcile_until_done(&worker, &mut stopped, "ledger reconciled with the provider").await {
        return;
    }
    loop {
        tokio::select! {
            _ = worker.reconcile_wanted() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        if !reconcile_until_done(
            &worker,
            &mut stopped,
            "ledger reconciled with the provider after it refused a create over the slice",
        )
        .await
        {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_AGAIN_AFTER) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// The least time between two reconciliations after the first.
const RECONCILE_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// One reconciliation, retried with backoff until the provider answers. False when there is
/// nothing more to do: the provider is not durable, or the shard stops.
async fn reconcile_until_done(
    worker: &Arc<Worker>,
    stopped: &mut watch::Receiver<bool>,
    done: &str,
) -> bool {
    let mut pause = Duration::from_millis(100);
    loop {
        match reconcile_once(worker).await {
            Ok(Reconciled::NotDurable) => {
                tracing::info!("the provider is not durable; the ledger is not reconciled with it");
                return false;
            }
            Ok(Reconciled::Done { joined, forgotten }) => {
                tracing::info!(joined, forgotten, "{done}");
                crate::observe::reconciled(joined, forgotten);
                return true;
            }
            Err(e) if e.retryable() => {
                tracing::debug!(error = %e, "cannot reconcile with the provider yet; retrying");
            }
            Err(e) => {
                worker.provider_failed("reconcile", &e);
                tracing::warn!(error = %e, "reconciling with the provider failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped.wait_for(|s| *s) => return false,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Exponential backoff for provisioning after provider failures: one failure pauses new
/// provisions briefly, each further failure in a row doubles the pause up to a ceiling, and a
/// success ends it. A shard whose provider is down retries steadily instead of hammering it
/// every cycle; idle machines are still assigned meanwhile.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    ceiling: Duration,
    state: Mutex<(u32, Option<Instant>)>,
}

impl Backoff {
    /// A backoff starting at `first` and doubling up to `ceiling`.
    pub fn new(first: Duration, ceiling: Duration) -> Backoff {
        Backoff {
            first,
            ceiling,
            state: Mutex::new((0, None)),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, (u32, Option<Instant>)> {
        self.state.lock()
    }

    /// Records a failure; returns the pause it starts.
    pub fn failed(&self) -> Duration {
        let mut state = self.lock();
        state.0 = state.0.saturating_add(1);
        let pause = self
            .first
            .saturating_mul(1 << (state.0 - 1).min(16))
            .min(self.ceiling);
        state.1 = Some(Instant::now() + pause);
        pause
    }

    /// Records a success: the pause ends.
    pub fn succeeded(&self) {
        *self.lock() = (0, None);
    }

    /// Whether new provisions should wait.
    pub fn is_paused(&self) -> bool {
        self.lock().1.is_some_and(|until| Instant::now() < until)
    }

    /// How long new provisions still wait (zero when they do not).
    pub fn remaining(&self) -> Duration {
        self.lock().1.map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(Instant::now())
        })
    }

    /// Failures in a row.
    pub fn failures(&self) -> u32 {
        self.lock().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_create_is_retried_under_its_id_by_the_same_request_only() {
        let mut state = ShardState {
            engine: Engine::default(),
            in_flight: BTreeMap::new(),
            releasing: HashSet::new(),
            unanswered: UnansweredCreates::default(),
        };
        let provision = |need: &str, domain: &str| Provision {
            need: need.into(),
            domain: domain.into(),
            quota: ("sim".into(), "local".into()),
            resources: crate::engine::Resources {
                cpu_millis: 1000,
                memory_mib: 1024,
                gpus: 0,
            },
        };
        let asked = provision("c1/web", "d1");
        // A refusal says nothing was made: a fresh id next time.
        state.create_ended("m1", &asked, false);
        assert_eq!(state.retry_id(&asked), None);
        state.create_ended("m1", &asked, true);
        // Another domain is another request; another need is the same one.
        assert_eq!(state.retry_id(&provision("c1/web", "d2")), None);
        assert_eq!(
            state.retry_id(&provision("c2/db", "d1")).as_deref(),
            Some("m1")
        );
        // Not twice at once.
        assert_eq!(state.retry_id(&asked), None);
        // Made at last: forgotten.
        state.create_ended("m1", &asked, false);
        assert!(state.unanswered.is_empty());
        // Joined by a listing meanwhile (the provider made it): never retried, whatever it
        // serves now.
        state.create_ended("m3", &asked, true);
        state.engine.upsert_machine(&crate::engine::Machine {
            id: "m3".into(),
            domain: "d1".into(),
            resources: asked.resources,
            quota: Some(asked.quota.clone()),
            assigned_to: None,
        });
        assert_eq!(state.retry_id(&asked), None, "a machine the ledger has");
        assert!(state.unanswered.is_empty());
        // Found by a listing before the ledger had it: forgotten too.
        state.create_ended("m4", &asked, true);
        state.unanswered.found("m4");
        assert!(state.unanswered.is_empty());
        assert_eq!(state.retry_id(&asked), None);
        // Given up after MAX_ATTEMPTS.
        for _ in 0..MAX_ATTEMPTS - 1 {
            state.create_ended("m2", &asked, true);
            assert_eq!(state.retry_id(&asked).as_deref(), Some("m2"));
        }
        state.create_ended("m2", &asked, true);
        assert_eq!(state.retry_id(&asked), None);
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_and_a_success_ends_it() {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        assert!(!backoff.is_paused());
        let pauses: Vec<u128> = (0..5).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(pauses, vec![50, 100, 200, 300, 300]);
        assert!(backoff.is_paused());
        assert_eq!(backoff.failures(), 5);
        backoff.succeeded();
        assert!(!backoff.is_paused());
        assert_eq!(backoff.failed().as_millis(), 50);
    }
}
