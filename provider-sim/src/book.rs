//! The reference provider's rules, as plain data and no I/O: its machines, the newest grant it
//! accepted per topology domain, per cluster and per quota, the newest epoch per shard, and the answers it
//! gave per idempotency key. Each call either changes the book and answers, or refuses with a
//! [`Reason`] and changes nothing; [`Book::take_changes`] tells the store what to persist.
//!
//! Idempotency keys are scoped to the calling shard and name an intent (the request without
//! its token): a repeat answers what the first call answered and changes nothing, as long as
//! the caller's token would still be accepted. Only successes are remembered — a refused call
//! changed nothing, so judging its retry afresh is safe — and only the newest
//! [`Catalog::idempotency_keys`] of them.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ballast_protocol::provider::{Reason, compare, describe};
use ballast_protocol::providerpb::{
    AdoptClusterRequest, ClaimDomainRequest, ClusterGrant, ConfigureMachineRequest,
    CreateMachineRequest, DeleteMachineRequest, DescribeResponse, DomainGrant, FencingToken, Grant,
    ListMachinesRequest, ListMachinesResponse, Machine, MachineState, QuotaGrant,
    ReleaseMachineRequest, Resources, Shape,
};
use prost::Message;
use serde::{Deserialize, Serialize};

/// Which machines a listing wants ("" for any).
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter<'a> {
    /// In this domain.
    pub domain: &'a str,
    /// Owned by this shard.
    pub owner: &'a str,
    /// Configured for this cluster.
    pub cluster: &'a str,
}

/// What the provider offers; fixed for the life of the process.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// The provider's name.
    pub name: String,
    /// The quota machines count against: provider name and regions. Empty counts any quota
    /// in any region (the simulation built into shard workers, which serves whatever quota the
    /// fleet gives).
    pub quota_provider: String,
    /// Regions.
    pub regions: Vec<String>,
    /// Zones, for `Describe`.
    pub zones: Vec<String>,
    /// Domains served; empty serves any domain.
    pub domains: BTreeSet<String>,
    /// Shapes by name.
    pub shapes: BTreeMap<String, (Resources, f64)>,
    /// Capacity types; the first is the default.
    pub capacity_types: Vec<String>,
    /// Most live machines at once (`None`: no limit).
    pub capacity: Option<u64>,
    /// How many answered idempotency keys are kept (the oldest are forgotten first).
    pub idempotency_keys: usize,
}

/// A refusal: why, in words, and the facts a caller may act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The contract's reason, as the wire names it.
    pub reason: String,
    /// For people.
    pub message: String,
    /// For programs (the grants compared, the slice, ...).
    pub metadata: Vec<(String, String)>,
}

impl Refusal {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason: reason.as_str().to_string(),
            message: message.into(),
            metadata: Vec::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.metadata.push((key.to_string(), value.into()));
        self
    }

    /// The contract's reason.
    pub fn reason(&self) -> Reason {
        Reason::parse(&self.reason).unwrap_or(Reason::InvalidArgument)
    }
}

/// The newest grant accepted for a domain or a cluster, and the shard it went to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Restore epoch of the grant.
    pub restore_epoch: u64,
    /// Revision of the grant.
    pub revision: u64,
    /// The shard it was given to.
    pub shard: String,
}

impl Mark {
    fn new(grant: Grant, shard: &str) -> Self {
        Self {
            restore_epoch: grant.restore_epoch,
            revision: grant.revision,
            shard: shard.to_string(),
        }
    }

    fn grant(&self) -> Grant {
        Grant {
            restore_epoch: self.restore_epoch,
            revision: self.revision,
        }
    }
}

/// A success answered under an idempotency key: the intent it answered (the request without
/// its token, which every attempt may renew) and the machines answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Digest of the request without its token.
    pub request: u64,
    /// Machines answered (encoded).
    pub machines: Vec<Vec<u8>>,
    /// Order of answering, to forget the oldest first.
    pub sequence: u64,
}

/// What changed in the last call, for the store to persist.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Machines written.
    pub machines: BTreeSet<String>,
    /// Domain marks written.
    pub domains: BTreeSet<String>,
    /// Cluster marks written.
    pub clusters: BTreeSet<String>,
    /// Quota marks written.
    pub quotas: BTreeSet<(String, String)>,
    /// Shard epochs written.
    pub epochs: BTreeSet<String>,
    /// Idempotency answers written.
    pub answers: BTreeSet<String>,
    /// Idempotency answers forgotten.
    pub forgotten: BTreeSet<String>,
}

impl Changes {
    /// Whether the call changed nothing to persist.
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
            && self.domains.is_empty()
            && self.clusters.is_empty()
            && self.quotas.is_empty()
            && self.epochs.is_empty()
            && self.answers.is_empty()
            && self.forgotten.is_empty()
    }
}

/// Deliberate contract breaches, for tests only: to show the conformance suite finds them
/// (`IgnoreFencing`, `NotIdempotent`, kept by the book's rules) and what a shard does facing
/// a provider that misbehaves (the rest, done by the gRPC service around a book that keeps
/// the rules: `sim/tests/bad_provider.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Breach {
    /// Keeps the contract.
    #[default]
    None,
    /// Accepts any token (never refuses `stale-grant`, `stale-epoch` or `over-slice`).
    IgnoreFencing,
    /// Forgets idempotency keys (a repeated create makes a second machine).
    NotIdempotent,
    /// Answers `CreateMachine` and `ConfigureMachine` with a machine of another id than the
    /// one asked for (the book still makes or configures the one asked for, as a buggy
    /// provider would).
    WrongId,
    /// Answers `CreateMachine` with the machine in another domain than the one asked for (the
    /// book keeps it where it was asked for).
    WrongDomain,
    /// Carries out every mutating call and never answers it, as if each answer were lost on
    /// the way; reads still answer.
    Hang,
    /// Answers `CreateMachine` with an empty machine: no id, no domain, no resources.
    Garbage,
    /// Refuses every `DeleteMachine` with `invalid-argument` (a provider that will not take
    /// machines back, or a bug in it); everything else keeps the contract.
    RefuseDeletes,
    /// Carries out every `ConfigureMachine` and never answers it (as [`Breach::Hang`], for
    /// configures only): the caller cannot tell whether the machine now serves the cluster.
    LoseConfigureAnswers,
}

/// The provider's state and rules.
#[derive(Debug, Default)]
pub struct Book {
    catalog: Catalog,
    breach: Breach,
    machines: BTreeMap<String, Machine>,
    domains: HashMap<String, Mark>,
    clusters: HashMap<String, Mark>,
    quotas: HashMap<(String, String), Grant>,
    epochs: HashMap<String, u64>,
    /// Answers by stored key. Up to [`Catalog::idempotency_keys`] of them (100K by default):
    /// the book's largest part, so each key is one allocation shared with `answer_order`, and
    /// a B-tree holds them: a hash table whose oldest entries keep being replaced runs at
    /// ~2.6 slots per answer (its deleted slots force a doubling).
    answers: BTreeMap<Arc<str>, Answer>,
    /// Answered keys by answer sequence, oldest first.
    answer_order: BTreeMap<u64, Arc<str>>,
    answer_sequence: u64,
    version: u64,
    changes: Changes,
    index: index::Index,
}

/// A mutating call's parts the rules look at.
struct Call<'a> {
    digest: u64,
    token: &'a FencingToken,
}

/// A mutating request: its idempotency key and fencing token, and the rest (its intent).
trait Mutation: Message + Clone {
    /// The call's name: part of the intent, since two calls' requests can encode alike (a
    /// release and a delete of one machine under one key).
    const CALL: &'static str;
    /// Whether the token's domain grant is what entitles the call (creates and claims); other
    /// calls ignore it, since a machine stays with its holder wherever its domain went.
    const BY_DOMAIN: bool;
    fn key(&self) -> &str;
    fn token(&self) -> Option<&FencingToken>;
    fn clear_token(&mut self);
}

macro_rules! mutation {
    ($($request:ty => $by_domain:expr),*) => {$(
        impl Mutation for $request {
            const CALL: &'static str = stringify!($request);
            const BY_DOMAIN: bool = $by_domain;
            fn key(&self) -> &str {
                &self.idempotency_key
            }
            fn token(&self) -> Option<&FencingToken> {
                self.token.as_ref()
            }
            fn clear_token(&mut self) {
                self.token = None;
            }
        }
    )*};
}

mutation!(
    CreateMachineRequest => true,
    ConfigureMachineRequest => false,
    ReleaseMachineRequest => false,
    DeleteMachineRequest => false,
    ClaimDomainRequest => true,
    AdoptClusterRequest => false
);

/// The intent of a request: the call and its bytes without the token, hashed.
fn digest<M: Mutation>(request: &M) -> u64 {
    let mut copy = request.clone();
    copy.clear_token();
    let bytes = copy.encode_to_vec();
    // FNV-1a: stable across processes and versions, unlike the std hasher.
    M::CALL
        .as_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(bytes.iter())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
}

fn live(machine: &Machine) -> bool {
    !matches!(
        MachineState::try_from(machine.state),
        Ok(MachineState::Deleted) | Ok(MachineState::Failed)
    )
}

fn check_id(what: &str, id: &str) -> Result<(), Refusal> {
    if id.is_empty() || id.len() > 253 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Refusal::new(
            Reason::InvalidArgument,
            format!("{what} {id:?} must be 1-253 characters without spaces or control characters"),
        ));
    }
    Ok(())
}

impl Book {
    /// An empty book for `catalog`.
    pub fn new(catalog: Catalog, breach: Breach) -> Self {
        Self {
            catalog,
            breach,
            ..Self::default()
        }
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The breach the book was made with.
    pub fn breach(&self) -> Breach {
        self.breach
    }

    /// What the last calls changed since the previous take.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    // ---- reads ----

    /// How many machines the book holds (deleted ones included until forgotten).
    pub fn machine_count(&self) -> usize {
        self.machines.len()
    }

    /// One machine.
    pub fn machine(&self, id: &str) -> Option<&Machine> {
        self.machines.get(id)
    }

    /// A domain's mark.
    pub fn domain_mark(&self, domain: &str) -> Option<&Mark> {
        self.domains.get(domain)
    }

    /// A cluster's mark.
    pub fn cluster_mark(&self, cluster: &str) -> Option<&Mark> {
        self.clusters.get(cluster)
    }

    /// A quota's mark.
    pub fn quota_mark(&self, quota: &(String, String)) -> Option<&Grant> {
        self.quotas.get(quota)
    }

    /// A shard's newest epoch.
    pub fn epoch(&self, shard: &str) -> Option<u64> {
        self.epochs.get(shard).copied()
    }

    /// An idempotency answer, by its stored key (see [`Book::answer_key`]).
    pub fn answer(&self, stored: &str) -> Option<&Answer> {
        self.answers.get(stored)
    }

    /// The stored key of `shard`'s idempotency key: keys are scoped to the shard.
    pub fn answer_key(shard: &str, key: &str) -> String {
        format!("{shard}\0{key}")
    }

    /// `Describe`'s answer.
    pub fn describe(&self, durable: bool) -> DescribeResponse {
        let catalog = &self.catalog;
        DescribeResponse {
            name: catalog.name.clone(),
            contract: ballast_protocol::provider::CONTRACT.to_string(),
            quota_provider: catalog.quota_provider.clone(),
            regions: catalog.regions.clone(),
            zones: catalog.zones.clone(),
            domains: catalog.domains.iter().cloned().collect(),
            shapes: catalog
                .shapes
                .iter()
                .map(|(name, (resources, price))| Shape {
                    name: name.clone(),
                    resources: Some(*resources),
                    price_per_hour: *price,
                })
                .collect(),
            capacity_types: catalog.capacity_types.clone(),
            durable,
        }
    }

    /// `ListMachines`: a limit above 1,000 is refused; 0 means 100.
    pub fn list_machines(
        &self,
        request: &ListMachinesRequest,
    ) -> Result<ListMachinesResponse, Refusal> {
        if request.limit > 1000 {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                format!("limit {} is above 1000", request.limit),
            ));
        }
        let limit = if request.limit == 0 {
            100
        } else {
            request.limit as usize
        };
        let (machines, next_cursor) = self.list(
            &Filter {
                domain: &request.domain,
                owner: &request.owner_shard,
                cluster: &request.cluster,
            },
            &request.cursor,
            limit,
        );
        Ok(ListMachinesResponse {
            machines,
            next_cursor,
        })
    }

    /// A page of machines after `cursor` (a machine id), matching `filter`; the next cursor,
    /// "" after the last page.
    pub fn list(&self, filter: &Filter<'_>, cursor: &str, limit: usize) -> (Vec<Machine>, String) {
        let Filter {
            domain,
            owner,
            cluster,
        } = *filter;
        let limit = limit.clamp(1, 1000);
        let after = if cursor.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(cursor)
        };
        let matches = |m: &&Machine| {
            (domain.is_empty() || m.domain == domain)
                && (owner.is_empty() || m.owner_shard == owner)
                && (cluster.is_empty() || m.cluster == cluster)
        };
        // The narrowest index that holds every match, walked in id order from the cursor.
        let ids = if !cluster.is_empty() {
            Some(self.index.of_cluster(cluster))
        } else if !owner.is_empty() {
            Some(self.index.of_owner(owner))
        } else if !domain.is_empty() {
            Some(self.index.in_domain(domain))
        } else {
            None
        };
        let mut page: Vec<Machine> = match ids {
            Some(ids) => ids
                .into_iter()
                .flat_map(|ids| ids.range::<str, _>((after, std::ops::Bound::Unbounded)))
                .filter_map(|id| self.machines.get(id))
                .filter(matches)
                .take(limit + 1)
                .cloned()
                .collect(),
            None => self
                .machines
                .range::<str, _>((after, std::ops::Bound::Unbounded))
                .map(|(_, m)| m)
                .filter(matches)
                .take(limit + 1)
                .cloned()
                .collect(),
        };
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|m| m.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        (page, next)
    }

    // ---- restoring from the store ----

    /// Puts back a persisted machine.
    pub fn restore_machine(&mut self, machine: Machine) {
        self.version = self.version.max(machine.version);
        self.index.added(&machine);
        if let Some(old) = self.machines.insert(machine.id.clone(), machine) {
            self.index.removed(&old);
        }
    }

    /// Puts back a persisted domain mark.
    pub fn restore_domain(&mut self, domain: String, mark: Mark) {
        self.domains.insert(domain, mark);
    }

    /// Puts back a persisted cluster mark.
    pub fn restore_cluster(&mut self, cluster: String, mark: Mark) {
        self.clusters.insert(cluster, mark);
    }

    /// Puts back a persisted quota mark.
    pub fn restore_quota(&mut self, quota: (String, String), grant: Grant) {
        self.quotas.insert(quota, grant);
    }

    /// Puts back a persisted epoch.
    pub fn restore_epoch(&mut self, shard: String, epoch: u64) {
        self.epochs.insert(shard, epoch);
    }

    /// Puts back a persisted answer.
    pub fn restore_answer(&mut self, stored: String, answer: Answer) {
        self.answer_sequence = self.answer_sequence.max(answer.sequence);
        let stored: Arc<str> = stored.into();
        self.answer_order.insert(answer.sequence, stored.clone());
        self.answers.insert(stored, answer);
    }

    // ---- calls ----

    /// `CreateMachine`.
    pub fn create(&mut self, request: &CreateMachineRequest) -> Result<Machine, Refusal> {
        self.call(request, |book, call| {
            book.do_create(call.token, request).map(|m| vec![m])
        })
        .map(|mut machines| machines.remove(0))
    }

    /// `ConfigureMachine`: under the grant of the cluster it configures the machine for.
    pub fn configure(&mut self, request: &ConfigureMachineRequest) -> Result<Machine, Refusal> {
        self.call(request, |book, call| {
            check_id("cluster", &request.cluster)?;
            check_id("machine_id", &request.machine_id)?;
            book.existing(&request.machine_id)?;
            book.fence_cluster_of(call.token, &request.cluster)?;
            let machine = book.owned_machine(call.token, &request.machine_id)?;
            match (
                MachineState::try_from(machine.state),
                machine.cluster.as_str(),
            ) {
                (Ok(MachineState::Configured), cluster) if cluster == request.cluster => {}
                (Ok(MachineState::Idle), _) => {}
                (state, cluster) => {
                    return Err(Refusal::new(
                        Reason::InvalidState,
                        format!(
                            "machine {} is {state:?} for cluster {cluster:?}; release it first",
                            request.machine_id
                        ),
                    ));
                }
            }
            book.update(&request.machine_id, |machine| {
                machine.state = MachineState::Configured as i32;
                machine.cluster = request.cluster.clone();
            });
            Ok(vec![book.touch(&request.machine_id)])
        })
        .map(|mut machines| machines.remove(0))
    }

    /// `ReleaseMachine`.
    pub fn release(&mut self, request: &ReleaseMachineRequest) -> Result<Machine, Refusal> {
        self.call(request, |book, call| {
            let machine = book.held_machine(call.token, &request.machine_id)?;
            match MachineState::try_from(machine.state) {
                Ok(MachineState::Idle) => {}
                Ok(MachineState::Configured) => {
                    book.update(&request.machine_id, |machine| {
                        machine.state = MachineState::Idle as i32;
                        machine.cluster.clear();
                    });
                }
                state => {
                    return Err(Refusal::new(
                        Reason::InvalidState,
                        format!("machine {} is {state:?}", request.machine_id),
                    ));
                }
            }
            Ok(vec![book.touch(&request.machine_id)])
        })
        .map(|mut machines| machines.remove(0))
    }

    /// `DeleteMachine`.
    pub fn delete(&mut self, request: &DeleteMachineRequest) -> Result<Machine, Refusal> {
        if self.breach == Breach::RefuseDeletes {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                "this provider takes no machine back (test breach refuse-deletes)",
            ));
        }
        self.call(request, |book, call| {
            if live(book.held_machine(call.token, &request.machine_id)?) {
                book.update(&request.machine_id, |machine| {
                    machine.state = MachineState::Deleted as i32;
                    machine.cluster.clear();
                });
            }
            Ok(vec![book.touch(&request.machine_id)])
        })
        .map(|mut machines| machines.remove(0))
    }

    /// `ClaimDomain`: records the token's domain grant (and slice table), so creates under
    /// older grants stop now; no machine changes hands.
    pub fn claim(&mut self, request: &ClaimDomainRequest) -> Result<(), Refusal> {
        self.call(request, |book, call| {
            let domain = book.domain_grant(call.token)?.domain.clone();
            book.serves(&domain)?;
            if let Some(quota) = &call.token.quota {
                book.counts_against(quota)?;
                book.quota_verdict(quota)?;
            }
            book.fence_domain(call.token)?;
            if let Some(quota) = &call.token.quota {
                book.fence_quota(quota)?;
            }
            Ok(Vec::new())
        })
        .map(|_| ())
    }

    /// `AdoptCluster`: the cluster in the token, with every live machine configured for it,
    /// becomes the caller's under a newer grant; answers those machines.
    pub fn adopt_cluster(
        &mut self,
        request: &AdoptClusterRequest,
    ) -> Result<Vec<Machine>, Refusal> {
        self.call(request, |book, call| {
            let cluster = book.cluster_grant(call.token)?.cluster.clone();
            check_id("cluster", &cluster)?;
            book.fence_cluster(call.token)?;
            Ok(book
                .index
                .of_cluster(&cluster)
                .into_iter()
                .flatten()
                .filter_map(|id| book.machines.get(id))
                .filter(|m| live(m))
                .cloned()
                .collect())
        })
    }

    /// The shared frame of a mutating call: the key and token must be well formed; a
    /// repeated key answers what it answered if the intent is the same and the token would
    /// still be accepted (and is refused `idempotency-conflict` if the intent differs);
    /// otherwise the token's epoch is fenced and `act` runs. A refusal changes nothing, and
    /// only successes are remembered.
    fn call<M: Mutation>(
        &mut self,
        request: &M,
        act: impl FnOnce(&mut Self, &Call<'_>) -> Result<Vec<Machine>, Refusal>,
    ) -> Result<Vec<Machine>, Refusal> {
        let key = request.key();
        if key.is_empty() || key.len() > 200 {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                "idempotency_key must be 1-200 characters",
            ));
        }
        let Some(token) = request.token() else {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                "a fencing token is required",
            ));
        };
        check_id("shard_id", &token.shard_id)?;
        let call = Call {
            digest: digest(request),
            token,
        };
        let stored = Self::answer_key(&token.shard_id, key);
        if self.breach != Breach::NotIdempotent
            && let Some(answer) = self.answers.get(stored.as_str())
        {
            if answer.request != call.digest {
                return Err(Refusal::new(
                    Reason::IdempotencyConflict,
                    format!(
                        "idempotency key {key:?} of shard {} was used for another request",
                        token.shard_id
                    ),
                )
                .with("key", key));
            }
            self.epoch_verdict(token)?;
            // A replay acts on nothing, so only ownership matters: the slice table it was
            // counted under is history.
            if M::BY_DOMAIN && token.domain.is_some() {
                self.domain_verdict(token)?;
            }
            if token.cluster.is_some() {
                self.cluster_verdict(token)?;
            }
            return Ok(answer
                .machines
                .iter()
                .filter_map(|bytes| Machine::decode(bytes.as_slice()).ok())
                .collect());
        }
        // Every refusal below comes before the change it would refuse; what a call changed
        // before a later refusal (a shard's newer epoch, a cluster handed over under a newer
        // grant) is valid on its own and stays.
        let machines = self.fence_epoch(token).and_then(|()| act(self, &call))?;
        self.remember(stored, call.digest, &machines);
        Ok(machines)
    }

    fn remember(&mut self, stored: String, digest: u64, machines: &[Machine]) {
        self.answer_sequence += 1;
        let sequence = self.answer_sequence;
        let key: Arc<str> = stored.as_str().into();
        if let Some(old) = self.answers.insert(
            key.clone(),
            Answer {
                request: digest,
                machines: machines.iter().map(Message::encode_to_vec).collect(),
                sequence,
            },
        ) {
            self.answer_order.remove(&old.sequence);
        }
        self.answer_order.insert(sequence, key);
        self.changes.forgotten.remove(&stored);
        self.changes.answers.insert(stored);
        while self.answers.len() > self.catalog.idempotency_keys.max(1) {
            let Some((_, oldest)) = self.answer_order.pop_first() else {
                break;
            };
            self.answers.remove(&oldest);
            self.changes.answers.remove(&*oldest);
            self.changes.forgotten.insert(oldest.to_string());
        }
    }

    fn epoch_verdict(&self, token: &FencingToken) -> Result<(), Refusal> {
        let seen = self.epochs.get(&token.shard_id).copied().unwrap_or(0);
        if token.shard_epoch < seen && self.breach != Breach::IgnoreFencing {
            return Err(Refusal::new(
                Reason::StaleEpoch,
                format!(
                    "shard {} restarted: epoch {} is older than {seen}",
                    token.shard_id, token.shard_epoch
                ),
            )
            .with("seen", seen.to_string()));
        }
        Ok(())
    }

    fn fence_epoch(&mut self, token: &FencingToken) -> Result<(), Refusal> {
        self.epoch_verdict(token)?;
        let seen = self.epochs.get(&token.shard_id).copied().unwrap_or(0);
        if token.shard_epoch > seen || !self.epochs.contains_key(&token.shard_id) {
            self.epochs
                .insert(token.shard_id.clone(), token.shard_epoch);
            self.changes.epochs.insert(token.shard_id.clone());
        }
        Ok(())
    }

    fn domain_grant<'t>(&self, token: &'t FencingToken) -> Result<&'t DomainGrant, Refusal> {
        token
            .domain
            .as_ref()
            .filter(|d| !d.domain.is_empty() && d.grant.is_some())
            .ok_or_else(|| Refusal::new(Reason::InvalidArgument, "the token needs a domain grant"))
    }

    /// Refuses a quota grant for a quota this provider's machines do not count against.
    fn counts_against(&self, quota: &QuotaGrant) -> Result<(), Refusal> {
        if self.catalog.quota_provider.is_empty() {
            check_id("quota provider", &quota.quota_provider)?;
            return check_id("region", &quota.region);
        }
        if quota.quota_provider != self.catalog.quota_provider
            || !self.catalog.regions.contains(&quota.region)
        {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                format!(
                    "machines here count against quota {}/{:?}, not {}/{}",
                    self.catalog.quota_provider,
                    self.catalog.regions,
                    quota.quota_provider,
                    quota.region
                ),
            ));
        }
        Ok(())
    }

    fn serves(&self, domain: &str) -> Result<(), Refusal> {
        check_id("domain", domain)?;
        if !self.catalog.domains.is_empty() && !self.catalog.domains.contains(domain) {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                format!(
                    "provider {} does not serve domain {domain:?}",
                    self.catalog.name
                ),
            ));
        }
        Ok(())
    }

    /// Whether the token's domain grant may act: refused if older than the newest accepted
    /// (or equal but given to another shard); `true` if it is newer (to be recorded).
    fn domain_verdict(&self, token: &FencingToken) -> Result<bool, Refusal> {
        let grant = self.domain_grant(token)?;
        self.verdict(
            "domain",
            &grant.domain,
            grant.grant.as_ref(),
            self.domains.get(&grant.domain),
            &token.shard_id,
        )
    }

    /// Whether the token's cluster grant may act, as [`Book::domain_verdict`] for a cluster.
    fn cluster_verdict(&self, token: &FencingToken) -> Result<bool, Refusal> {
        let grant = self.cluster_grant(token)?;
        self.verdict(
            "cluster",
            &grant.cluster,
            grant.grant.as_ref(),
            self.clusters.get(&grant.cluster),
            &token.shard_id,
        )
    }

    /// The rule of both marks: a presented grant older than the mark, or equal to it but from
    /// another shard, is `stale-grant` naming `kind` = `name` and both grants.
    fn verdict(
        &self,
        kind: &str,
        name: &str,
        presented: Option<&Grant>,
        mark: Option<&Mark>,
        shard: &str,
    ) -> Result<bool, Refusal> {
        let newest = mark.map(Mark::grant);
        let order = compare(presented, newest.as_ref());
        let stale = match (order, mark) {
            (Ordering::Less, _) => true,
            (Ordering::Equal, Some(mark)) => mark.shard != shard,
            _ => false,
        };
        if stale && self.breach != Breach::IgnoreFencing {
            return Err(Refusal::new(
                Reason::StaleGrant,
                format!(
                    "{kind} {name}: grant {} of shard {shard} is older than grant {} accepted for shard {}",
                    describe(presented),
                    describe(newest.as_ref()),
                    mark.map_or("", |m| m.shard.as_str())
                ),
            )
            .with(kind, name)
            .with("presented", describe(presented))
            .with("accepted", describe(newest.as_ref())));
        }
        Ok(order == Ordering::Greater || mark.is_none())
    }

    /// Accepts the token's domain grant (see [`Book::domain_verdict`]), recording a newer one:
    /// creates under older grants are refused from now on. No machine changes hands.
    fn fence_domain(&mut self, token: &FencingToken) -> Result<(), Refusal> {
        if !self.domain_verdict(token)? {
            return Ok(());
        }
        let grant = self.domain_grant(token)?.clone();
        let g = grant.grant.unwrap_or_default();
        self.domains
            .insert(grant.domain.clone(), Mark::new(g, &token.shard_id));
        self.changes.domains.insert(grant.domain);
        Ok(())
    }

    fn cluster_grant<'t>(&self, token: &'t FencingToken) -> Result<&'t ClusterGrant, Refusal> {
        token
            .cluster
            .as_ref()
            .filter(|c| !c.cluster.is_empty() && c.grant.is_some())
            .ok_or_else(|| Refusal::new(Reason::InvalidArgument, "the token needs a cluster grant"))
    }

    /// Accepts the token's cluster grant (see [`Book::cluster_verdict`]); a newer one hands
    /// the cluster, with every live machine configured for it, to the token's shard, in place.
    fn fence_cluster(&mut self, token: &FencingToken) -> Result<(), Refusal> {
        if !self.cluster_verdict(token)? {
            return Ok(());
        }
        let grant = self.cluster_grant(token)?.clone();
        let cluster = grant.cluster;
        let g = grant.grant.unwrap_or_default();
        self.clusters
            .insert(cluster.clone(), Mark::new(g, &token.shard_id));
        self.changes.clusters.insert(cluster.clone());
        let adopted: Vec<String> = self
            .index
            .of_cluster(&cluster)
            .into_iter()
            .flatten()
            .filter_map(|id| self.machines.get(id))
            .filter(|m| live(m) && (m.owner_shard != token.shard_id || m.owner_grant != Some(g)))
            .map(|m| m.id.clone())
            .collect();
        for id in adopted {
            self.update(&id, |machine| {
                machine.owner_shard = token.shard_id.clone();
                machine.owner_grant = Some(g);
            });
            self.touch(&id);
        }
        Ok(())
    }

    /// Fences the grant of `cluster`, which the token must carry: the cluster a machine is
    /// configured for, or is being configured for.
    fn fence_cluster_of(&mut self, token: &FencingToken, cluster: &str) -> Result<(), Refusal> {
        let grant = self.cluster_grant(token).map_err(|_| {
            Refusal::new(
                Reason::InvalidArgument,
                format!("the token needs the grant of cluster {cluster}"),
            )
        })?;
        if grant.cluster != cluster {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                format!(
                    "the call concerns cluster {cluster}, the token's grant is for cluster {}",
                    grant.cluster
                ),
            ));
        }
        self.fence_cluster(token)
    }

    /// Whether a quota grant may act: refused if its slice table is older than the newest
    /// accepted.
    fn quota_verdict(&self, quota: &QuotaGrant) -> Result<(), Refusal> {
        let key = (quota.quota_provider.clone(), quota.region.clone());
        let newest = self.quotas.get(&key).copied();
        if compare(quota.grant.as_ref(), newest.as_ref()) == Ordering::Less
            && self.breach != Breach::IgnoreFencing
        {
            return Err(Refusal::new(
                Reason::StaleGrant,
                format!(
                    "quota {}/{}: slice table {} is older than {} already accepted",
                    quota.quota_provider,
                    quota.region,
                    describe(quota.grant.as_ref()),
                    describe(newest.as_ref())
                ),
            )
            .with(
                "quota",
                format!("{}/{}", quota.quota_provider, quota.region),
            )
            .with("presented", describe(quota.grant.as_ref()))
            .with("accepted", describe(newest.as_ref())));
        }
        Ok(())
    }

    /// Accepts a quota grant (see [`Book::quota_verdict`]), recording a newer slice table.
    fn fence_quota(&mut self, quota: &QuotaGrant) -> Result<(), Refusal> {
        self.quota_verdict(quota)?;
        let key = (quota.quota_provider.clone(), quota.region.clone());
        if compare(quota.grant.as_ref(), self.quotas.get(&key)) == Ordering::Greater {
            self.quotas
                .insert(key.clone(), quota.grant.unwrap_or_default());
            self.changes.quotas.insert(key);
        }
        Ok(())
    }

    /// Refuses an unknown machine id.
    fn existing(&self, id: &str) -> Result<&Machine, Refusal> {
        self.machines.get(id).ok_or_else(|| {
            Refusal::new(Reason::NotFound, format!("no machine {id}")).with("machine", id)
        })
    }

    /// The machine a call acts on, which must be the caller's (`not-owner` otherwise).
    fn owned_machine(&mut self, token: &FencingToken, id: &str) -> Result<&mut Machine, Refusal> {
        let owner = &self.existing(id)?.owner_shard;
        if *owner != token.shard_id && self.breach != Breach::IgnoreFencing {
            return Err(Refusal::new(
                Reason::NotOwner,
                format!(
                    "machine {id} belongs to shard {owner}, not {}",
                    token.shard_id
                ),
            )
            .with("machine", id)
            .with("owner", owner.clone()));
        }
        Ok(self.machines.get_mut(id).expect("checked above"))
    }

    /// The machine a release or delete acts on: one serving a cluster under the grant of that
    /// cluster (fenced first, which may hand the cluster over), then the caller's.
    fn held_machine(&mut self, token: &FencingToken, id: &str) -> Result<&mut Machine, Refusal> {
        check_id("machine_id", id)?;
        let cluster = self.existing(id)?.cluster.clone();
        if !cluster.is_empty() {
            self.fence_cluster_of(token, &cluster)?;
        }
        self.owned_machine(token, id)
    }

    fn do_create(
        &mut self,
        token: &FencingToken,
        request: &CreateMachineRequest,
    ) -> Result<Machine, Refusal> {
        check_id("machine_id", &request.machine_id)?;
        self.serves(&request.domain)?;
        let Some((resources, _)) = self.catalog.shapes.get(&request.shape).cloned() else {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                format!(
                    "unknown shape {:?}; Describe lists the shapes",
                    request.shape
                ),
            ));
        };
        let capacity_type = if request.capacity_type.is_empty() {
            self.catalog
                .capacity_types
                .first()
                .cloned()
                .unwrap_or_default()
        } else if self.catalog.capacity_types.contains(&request.capacity_type) {
            request.capacity_type.clone()
        } else {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                format!("unknown capacity type {:?}", request.capacity_type),
            ));
        };
        let grant = self.domain_grant(token)?;
        if grant.domain != request.domain {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                format!(
                    "the token's grant is for domain {}, the machine is for {}",
                    grant.domain, request.domain
                ),
            ));
        }
        let Some(quota) = token.quota.clone().filter(|q| q.grant.is_some()) else {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                "a create needs a quota grant",
            ));
        };
        self.counts_against(&quota)?;
        if self.machines.contains_key(&request.machine_id) {
            return Err(Refusal::new(
                Reason::AlreadyExists,
                format!("machine id {} is taken", request.machine_id),
            ));
        }
        self.domain_verdict(token)?;
        self.quota_verdict(&quota)?;
        let held = self
            .index
            .held(&token.shard_id, &quota.quota_provider, &quota.region);
        if held + 1 > quota.slice && self.breach != Breach::IgnoreFencing {
            return Err(Refusal::new(
                Reason::OverSlice,
                format!(
                    "shard {} holds {held} machines of quota {}/{}; its slice is {}",
                    token.shard_id, quota.quota_provider, quota.region, quota.slice
                ),
            )
            .with("held", held.to_string())
            .with("slice", quota.slice.to_string()));
        }
        if let Some(capacity) = self.catalog.capacity {
            let used = self.index.live();
            if used >= capacity {
                return Err(Refusal::new(
                    Reason::InsufficientCapacity,
                    format!("all {capacity} machines are in use"),
                ));
            }
        }
        self.fence_domain(token)?;
        self.fence_quota(&quota)?;
        let machine = Machine {
            id: request.machine_id.clone(),
            domain: request.domain.clone(),
            shape: request.shape.clone(),
            resources: Some(resources),
            capacity_type,
            state: MachineState::Idle as i32,
            cluster: String::new(),
            owner_shard: token.shard_id.clone(),
            owner_grant: grant.grant,
            quota_provider: quota.quota_provider.clone(),
            region: quota.region.clone(),
            last_error: String::new(),
            version: 0,
        };
        self.index.added(&machine);
        self.machines.insert(machine.id.clone(), machine);
        Ok(self.touch(&request.machine_id))
    }

    /// Changes a machine through `change`, keeping the indexes in step.
    fn update(&mut self, id: &str, change: impl FnOnce(&mut Machine)) {
        if let Some(machine) = self.machines.get_mut(id) {
            self.index.removed(machine);
            change(machine);
            self.index.added(machine);
        }
    }

    /// Bumps a machine's version and notes it changed; returns it.
    fn touch(&mut self, id: &str) -> Machine {
        self.version += 1;
        let machine = self
            .machines
            .get_mut(id)
            .expect("a machine the call just looked up");
        machine.version = self.version;
        self.changes.machines.insert(id.to_string());
        machine.clone()
    }
}

mod index;

#[cfg(test)]
mod tests;
