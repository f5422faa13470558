//! The fleet tables and the rules that guard them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ballast_protocol::validate::{DomainKey, MAX_BATCH, validate_address, validate_id};
use serde::{Deserialize, Serialize};

use super::command::FleetCommand;
use super::error::FleetError;
use super::names::{Interner, Name};

/// Global revision: bumped once per successful change (a batch is one change).
pub type Revision = u64;

/// How long a request id is remembered for exactly-once retries, by the leaders' clocks: a
/// retry within this time of the first attempt is answered with the first outcome. Four times
/// the client library's retry budget (15 s).
pub const DEDUP_WINDOW_MS: u64 = 60_000;

/// Most request ids remembered at once (a memory bound: ~8,300 identified writes per second
/// sustained for the whole window). When this many ids fall inside the window, new identified
/// writes are refused with a retryable error instead of forgetting an id early, which could
/// let its retry apply twice.
pub const DEDUP_CAPACITY: usize = 500_000;

/// Most capacity types one provider may list.
const MAX_CAPACITY_TYPES: usize = 64;

/// Lifecycle of a shard.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ShardStatus {
    /// Takes new domains, clusters and quota.
    Active,
    /// Keeps what it has, takes nothing new.
    Draining,
}

/// A registered shard worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShardRecord {
    /// Shard id.
    pub id: String,
    /// Address it serves on.
    pub address: String,
    /// Its AZ.
    pub az: String,
    /// First registration (leader clock, ms since the epoch).
    pub registered_at_ms: u64,
    /// When its lease runs out unless renewed.
    pub lease_expires_at_ms: u64,
    /// Lifecycle status.
    pub status: ShardStatus,
}

/// Capacity of one provider in one region and its split across shards.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct QuotaRecord {
    /// Provider name.
    pub provider: String,
    /// Region.
    pub region: String,
    /// Total capacity.
    pub total: u64,
    /// Shard → slice; the sum never exceeds `total`.
    pub slices: BTreeMap<String, u64>,
}

/// A registered capacity provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProviderRecord {
    /// Name.
    pub name: String,
    /// API endpoint.
    pub endpoint: String,
    /// Region it serves.
    pub region: String,
    /// Capacity types offered.
    pub capacity_types: Vec<String>,
}

/// Outcome of a successful command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Revision after the command.
    pub revision: Revision,
    /// False when the command changed nothing (the revision did not move).
    pub changed: bool,
    /// What a KV command answered.
    // Always written: binary snapshots cannot skip fields. `default` reads older JSON.
    #[serde(default)]
    pub kv: Option<crate::kv::KvReply>,
}

/// Table sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Registered shards.
    pub shards: usize,
    /// Assigned domains.
    pub domains: usize,
    /// Cluster bindings.
    pub bindings: usize,
    /// Quotas.
    pub quotas: usize,
    /// Providers.
    pub providers: usize,
}

/// A remembered outcome, kept small because up to [`DEDUP_CAPACITY`] are held: nearly all are
/// fleet writes whose whole answer is a revision. Stored in snapshots as the full outcome, so
/// the snapshot format does not depend on this layout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    from = "Result<Applied, FleetError>",
    into = "Result<Applied, FleetError>"
)]
enum Remembered {
    Applied { revision: Revision, changed: bool },
    Other(Box<Result<Applied, FleetError>>),
}

impl From<Result<Applied, FleetError>> for Remembered {
    fn from(outcome: Result<Applied, FleetError>) -> Self {
        match outcome {
            Ok(Applied {
                revision,
                changed,
                kv: None,
            }) => Remembered::Applied { revision, changed },
            other => Remembered::Other(Box::new(other)),
        }
    }
}

impl From<Remembered> for Result<Applied, FleetError> {
    fn from(remembered: Remembered) -> Self {
        match remembered {
            Remembered::Applied { revision, changed } => Ok(Applied {
                revision,
                changed,
                kv: None,
            }),
            Remembered::Other(outcome) => *outcome,
        }
    }
}

/// Remembered outcomes of recent request ids, oldest first.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
struct Dedup {
    /// Each id is one allocation shared with `index`.
    entries: VecDeque<(Name, Remembered)>,
    /// Sequence number of `entries[0]`; with `index` it locates an entry without scanning.
    first_seq: u64,
    #[serde(skip)]
    index: HashMap<Name, u64>,
    /// When each entry was remembered. Written after the state in snapshots (see
    /// [`FleetState::encode`]), so the layout above stays the one older snapshots have.
    #[serde(skip)]
    clock: DedupClock,
}

/// The leaders' clock as the log tells it, and when each remembered id was remembered by it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
struct DedupClock {
    /// Latest leader clock (ms since the Unix epoch) carried by an applied entry; 0 until one.
    now_ms: u64,
    /// Per entry of `Dedup::entries`, in order; 0 for entries remembered before any clock was
    /// known (read from an older snapshot): they count from the first clock seen.
    times: VecDeque<u64>,
}

impl Dedup {
    fn get(&self, id: &str) -> Option<Result<Applied, FleetError>> {
        let seq = *self.index.get(id)?;
        self.entries
            .get(seq.checked_sub(self.first_seq)? as usize)
            .map(|(_, outcome)| outcome.clone().into())
    }

    /// Moves the clock forward to a leader's `now_ms` (never back: leaders' clocks differ).
    fn advance(&mut self, now_ms: u64) {
        if now_ms <= self.clock.now_ms {
            return;
        }
        if self.clock.now_ms == 0 {
            for time in self.clock.times.iter_mut().filter(|t| **t == 0) {
                *time = now_ms;
            }
        }
        self.clock.now_ms = now_ms;
        self.expire();
    }

    /// Forgets ids remembered longer than the window ago.
    fn expire(&mut self) {
        let now = self.clock.now_ms;
        while let Some(&time) = self.clock.times.front() {
            if time == 0 || now.saturating_sub(time) <= DEDUP_WINDOW_MS {
                break;
            }
            self.clock.times.pop_front();
            if let Some((old, _)) = self.entries.pop_front() {
                self.index.remove(&old);
            }
            self.first_seq += 1;
        }
    }

    /// Whether a new id can be remembered without forgetting one still inside the window.
    fn has_room(&self) -> bool {
        self.entries.len() < DEDUP_CAPACITY
    }

    fn remember(&mut self, id: &str, outcome: Result<Applied, FleetError>) {
        let seq = self.first_seq + self.entries.len() as u64;
        let id: Name = Arc::from(id);
        self.entries.push_back((id.clone(), outcome.into()));
        self.clock.times.push_back(self.clock.now_ms);
        self.index.insert(id, seq);
    }

    fn rebuild(&mut self) {
        self.index = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.clone(), self.first_seq + i as u64))
            .collect();
        if self.clock.times.len() != self.entries.len() {
            self.clock.times = self.entries.iter().map(|_| 0).collect();
        }
    }
}

/// Sets or removes `key` in `map`, returning the previous value.
fn put<V>(map: &mut BTreeMap<String, V>, key: &str, value: Option<V>) -> Option<V> {
    match value {
        Some(v) => map.insert(key.to_string(), v),
        None => map.remove(key),
    }
}

/// Sets or removes a name-keyed row, returning the previous value.
fn put_named<V>(map: &mut BTreeMap<Name, V>, key: Name, value: Option<V>) -> Option<V> {
    match value {
        Some(v) => map.insert(key, v),
        None => map.remove(&*key),
    }
}

/// The key of `map` equal to `key`, shared, or a new one: a row and the history entries about
/// it hold one copy of the name.
fn shared_key<V>(map: &BTreeMap<Name, V>, key: &str) -> Name {
    map.get_key_value(key)
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| Arc::from(key))
}

/// One net change made by a command, with the value before and after; assignment watches are
/// built from these. Replicas keep tens of thousands of changes in memory and most are domain
/// moves: names are shared with the state ([`Name`]) and large records boxed, so a domain move
/// costs one 56-byte slot and no allocation of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A shard record changed (registered, renewed, drained, activated, removed).
    Shard {
        /// Shard id.
        id: Box<str>,
        /// Before.
        old: Option<Box<ShardRecord>>,
        /// After.
        new: Option<Box<ShardRecord>>,
    },
    /// A domain changed owner.
    Domain {
        /// Domain.
        domain: Name,
        /// Owner before.
        old: Option<Name>,
        /// Owner after.
        new: Option<Name>,
    },
    /// A cluster binding changed.
    Binding {
        /// Cluster.
        cluster: Name,
        /// Shard before.
        old: Option<Name>,
        /// Shard after.
        new: Option<Name>,
    },
    /// A quota or its slices changed.
    Quota {
        /// Provider.
        provider: Box<str>,
        /// Region.
        region: Box<str>,
        /// Before.
        old: Option<Box<QuotaRecord>>,
        /// After.
        new: Option<Box<QuotaRecord>>,
    },
    /// A provider changed.
    Provider {
        /// Name.
        name: Box<str>,
        /// Before.
        old: Option<Box<ProviderRecord>>,
        /// After.
        new: Option<Box<ProviderRecord>>,
    },
}

/// One reversible mutation, recorded so a failed command (or batch) can be undone exactly.
enum Undo {
    Shard(String, Option<ShardRecord>),
    Domain(Name, Option<Name>),
    Binding(Name, Option<Name>),
    Quota(String, String, Option<QuotaRecord>),
    Provider(String, Option<ProviderRecord>),
}

/// First bytes of a binary snapshot (JSON snapshots of earlier versions start with `{`):
/// the state, then the request ids' clock.
pub const SNAPSHOT_MAGIC: &[u8] = b"BLSTSNP2";

/// First bytes of the binary snapshots before request ids were timed: the state alone.
const SNAPSHOT_MAGIC_V1: &[u8] = b"BLSTSNP1";

/// The replicated fleet state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetState {
    revision: Revision,
    /// Bumped by every restore from an archive and every forced new cluster; revisions are
    /// comparable only within one restore epoch.
    #[serde(default)]
    restore_epoch: u64,
    /// The coordination KV (etcd API).
    #[serde(default)]
    kv: crate::kv::KvStore,
    shards: BTreeMap<String, ShardRecord>,
    /// Domain → owning shard (the shard name shared through `names`).
    domains: BTreeMap<Name, Name>,
    /// Cluster → shard.
    bindings: BTreeMap<Name, Name>,
    /// Provider → region → quota.
    quotas: BTreeMap<String, BTreeMap<String, QuotaRecord>>,
    providers: BTreeMap<String, ProviderRecord>,
    dedup: Dedup,
    /// Join tokens (hashes only).
    #[serde(default)]
    join_tokens: super::tokens::JoinTokens,
    /// Shard → its domains; derived from `domains` (sharing its names), rebuilt after decoding.
    #[serde(skip)]
    domains_by_shard: HashMap<Name, BTreeSet<Name>>,
    /// Shard names in use; rebuilt after decoding.
    #[serde(skip)]
    names: Interner,
}

fn check_batch_size(what: &str, count: usize) -> Result<(), FleetError> {
    if count == 0 {
        return Err(FleetError::invalid(what, "must not be empty"));
    }
    if count > MAX_BATCH {
        return Err(FleetError::TooLarge {
            what: what.to_string(),
            count,
            limit: MAX_BATCH,
        });
    }
    Ok(())
}

fn check_quota_key(provider: &str, region: &str) -> Result<(), FleetError> {
    validate_id("provider", provider)?;
    validate_id("region", region)?;
    Ok(())
}

fn check_slices(slices: &BTreeMap<String, u64>) -> Result<(), FleetError> {
    if slices.len() > MAX_BATCH {
        return Err(FleetError::TooLarge {
            what: "slices".into(),
            count: slices.len(),
            limit: MAX_BATCH,
        });
    }
    for shard in slices.keys() {
        validate_id("slice shard", shard)?;
    }
    Ok(())
}

/// Every domain parses and appears once.
fn check_domains<'a>(
    field: &str,
    domains: impl Iterator<Item = &'a str>,
) -> Result<(), FleetError> {
    let mut seen = BTreeSet::new();
    for domain in domains {
        DomainKey::parse(domain)?;
        if !seen.insert(domain) {
            return Err(FleetError::invalid(
                field,
                format!("domain {domain:?} appears more than once"),
            ));
        }
    }
    Ok(())
}

/// Syntax checks that need no state; `depth` refuses nested batches.
fn check_syntax(cmd: &FleetCommand, nested: bool) -> Result<(), FleetError> {
    match cmd {
        FleetCommand::Kv(_) if nested => {
            return Err(FleetError::invalid(
                "command",
                "KV commands cannot be batched with fleet commands (use a KV transaction)",
            ));
        }
        FleetCommand::Kv(op) => crate::kv::check_command(op)?,
        FleetCommand::CreateJoinToken { .. } | FleetCommand::UseJoinToken { .. } if nested => {
            return Err(FleetError::invalid(
                "command",
                "join-token commands cannot be batched",
            ));
        }
        FleetCommand::CreateJoinToken { .. } | FleetCommand::UseJoinToken { .. } => {}
        FleetCommand::Nudge if nested => {
            return Err(FleetError::invalid(
                "command",
                "a nudge is internal to the replication log",
            ));
        }
        FleetCommand::Nudge => {}
        // Groups and timed requests are unpacked by the state machine before they reach here.
        FleetCommand::Group(_) => {
            return Err(FleetError::invalid(
                "command",
                "a request group is internal to the replication log",
            ));
        }
        FleetCommand::Timed { .. } => {
            return Err(FleetError::invalid(
                "command",
                "a timed request is internal to the replication log",
            ));
        }
        FleetCommand::RegisterShard {
            id,
            address,
            az,
            lease_ttl_ms,
            ..
        } => {
            validate_id("shard id", id)?;
            validate_address("shard address", address)?;
            validate_id("az", az)?;
            if *lease_ttl_ms == 0 {
                return Err(FleetError::invalid("lease_ttl_ms", "must be above 0"));
            }
        }
        FleetCommand::DrainShard { id }
        | FleetCommand::ActivateShard { id }
        | FleetCommand::RemoveShard { id } => validate_id("shard id", id)?,
        FleetCommand::AssignDomains { assignments, .. } => {
            check_batch_size("assignments", assignments.len())?;
            for (_, shard) in assignments {
                validate_id("shard id", shard)?;
            }
            check_domains("assignments", assignments.iter().map(|(d, _)| d.as_str()))?;
        }
        FleetCommand::UnassignDomains { domains } => {
            check_batch_size("domains", domains.len())?;
            check_domains("domains", domains.iter().map(String::as_str))?;
        }
        FleetCommand::BindCluster { cluster, shard }
        | FleetCommand::MoveCluster { cluster, shard } => {
            validate_id("cluster id", cluster)?;
            validate_id("shard id", shard)?;
        }
        FleetCommand::UnbindCluster { cluster } => validate_id("cluster id", cluster)?,
        FleetCommand::SetQuota {
            provider,
            region,
            slices,
            ..
        }
        | FleetCommand::SetQuotaSlices {
            provider,
            region,
            slices,
        } => {
            check_quota_key(provider, region)?;
            check_slices(slices)?;
        }
        FleetCommand::DeleteQuota { provider, region } => check_quota_key(provider, region)?,
        FleetCommand::SetProvider {
            name,
            endpoint,
            region,
            capacity_types,
        } => {
            validate_id("provider", name)?;
            validate_address("provider endpoint", endpoint)?;
            validate_id("region", region)?;
            if capacity_types.len() > MAX_CAPACITY_TYPES {
                return Err(FleetError::TooLarge {
                    what: "capacity_types".into(),
                    count: capacity_types.len(),
                    limit: MAX_CAPACITY_TYPES,
                });
            }
            for t in capacity_types {
                validate_id("capacity type", t)?;
            }
        }
        FleetCommand::RemoveProvider { name } => validate_id("provider", name)?,
        FleetCommand::Batch { commands } => {
            if nested {
                return Err(FleetError::invalid("batch", "batches cannot be nested"));
            }
            check_batch_size("batch", commands.len())?;
            for (index, inner) in commands.iter().enumerate() {
                check_syntax(inner, true).map_err(|e| FleetError::InBatch {
                    index,
                    source: Box::new(e),
                })?;
            }
        }
    }
    Ok(())
}

impl FleetState {
    /// An empty fleet at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Current revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The coordination KV.
    pub fn kv(&self) -> &crate::kv::KvStore {
        &self.kv
    }

    /// Restore epoch (0 until the first restore).
    pub fn restore_epoch(&self) -> u64 {
        self.restore_epoch
    }

    /// Marks this state as the start of a restored cluster: a new restore epoch, and the
    /// revision moved `bump` past the archived one, so it is above any revision a client of
    /// the old cluster could have seen after the archive was taken.
    pub fn mark_restored(&mut self, bump: u64) {
        self.restore_epoch += 1;
        self.revision = self.revision.saturating_add(bump);
    }

    /// Syntax-only validation (ids, domains, sizes), used before proposing to Raft so most bad
    /// input never reaches the log.
    pub fn validate_command(cmd: &FleetCommand) -> Result<(), FleetError> {
        check_syntax(cmd, false)
    }

    /// Applies one command. Success bumps the revision by one if anything changed; a refusal
    /// leaves the state exactly as it was.
    pub fn apply(&mut self, cmd: &FleetCommand) -> Result<Applied, FleetError> {
        self.apply_tracked(cmd).map(|(applied, _)| applied)
    }

    /// Like [`FleetState::apply`], also returning what changed (for assignment watches).
    pub fn apply_tracked(
        &mut self,
        cmd: &FleetCommand,
    ) -> Result<(Applied, Vec<Change>), FleetError> {
        if let FleetCommand::Kv(op) = cmd {
            let (reply, wrote) = self.kv.apply(op, self.revision, self.revision + 1)?;
            return Ok((self.settle(wrote, Some(reply)), Vec::new()));
        }
        check_syntax(cmd, false)?;
        // Join tokens are checked in full before anything changes, so they need no journal.
        let changed = match cmd {
            FleetCommand::CreateJoinToken {
                id,
                secret_sha256,
                now_ms,
                expires_at_ms,
            } => {
                self.join_tokens
                    .create(id, secret_sha256, *now_ms, *expires_at_ms)?;
                true
            }
            FleetCommand::UseJoinToken {
                id,
                secret_sha256,
                replica,
                now_ms,
            } => self
                .join_tokens
                .spend(id, secret_sha256, *replica, *now_ms)?,
            FleetCommand::Nudge => false,
            _ => {
                let mut journal = Vec::new();
                if let Err(e) = self.exec(cmd, &mut journal) {
                    self.rollback(journal);
                    return Err(e);
                }
                let applied = self.settle(!journal.is_empty(), None);
                return Ok((applied, self.changes_from(journal)));
            }
        };
        Ok((self.settle(changed, None), Vec::new()))
    }

    /// Moves the revision on by one if the command changed anything, and says so.
    fn settle(&mut self, changed: bool, kv: Option<crate::kv::KvReply>) -> Applied {
        if changed {
            self.revision += 1;
        }
        Applied {
            revision: self.revision,
            changed,
            kv,
        }
    }

    /// Applies one request as the log holds it — the one path both consensus backends and
    /// `--force-new-cluster` take: a group member by member, a timed request after moving the
    /// clock, anything else once per request id. One outcome (with its changes) per request:
    /// a group gives one per member.
    pub fn apply_logged(
        &mut self,
        request: &crate::fleet::FleetRequest,
    ) -> Vec<(Result<Applied, FleetError>, Vec<Change>)> {
        match &request.command {
            FleetCommand::Group(members) => members
                .iter()
                .map(|member| self.apply_logged_one(member))
                .collect(),
            _ => vec![self.apply_logged_one(request)],
        }
    }

    fn apply_logged_one(
        &mut self,
        request: &crate::fleet::FleetRequest,
    ) -> (Result<Applied, FleetError>, Vec<Change>) {
        let request = match &request.command {
            FleetCommand::Timed { now_ms, request } => {
                self.dedup.advance(*now_ms);
                // The replica wraps one plain request; anything else is not from Ballast.
                if matches!(
                    request.command,
                    FleetCommand::Timed { .. } | FleetCommand::Group(_)
                ) {
                    return (
                        Err(FleetError::invalid(
                            "command",
                            "a timed request holds one plain request",
                        )),
                        Vec::new(),
                    );
                }
                request
            }
            _ => request,
        };
        let id = (!request.request_id.is_empty()).then_some(request.request_id.as_str());
        self.apply_request_tracked(id, &request.command)
    }

    /// Moves the state's clock to a leader's `now_ms` (carried by [`FleetCommand::Timed`]
    /// entries): request ids older than [`DEDUP_WINDOW_MS`] by it are forgotten.
    pub fn advance_clock(&mut self, now_ms: u64) {
        self.dedup.advance(now_ms);
    }

    /// Applies a command at most once per non-empty `request_id`: a repeated id returns the
    /// first outcome (success or refusal) without applying again, for [`DEDUP_WINDOW_MS`] of
    /// the leaders' clock. With [`DEDUP_CAPACITY`] ids inside the window, a new id is refused
    /// (retryable) rather than applied.
    pub fn apply_request(
        &mut self,
        request_id: Option<&str>,
        cmd: &FleetCommand,
    ) -> Result<Applied, FleetError> {
        self.apply_request_tracked(request_id, cmd).0
    }

    /// Like [`FleetState::apply_request`], also returning what changed (nothing for a replay
    /// or a refusal).
    pub fn apply_request_tracked(
        &mut self,
        request_id: Option<&str>,
        cmd: &FleetCommand,
    ) -> (Result<Applied, FleetError>, Vec<Change>) {
        let id = request_id.filter(|id| !id.is_empty());
        if let Some(id) = id {
            if let Some(outcome) = self.dedup.get(id) {
                return (outcome, Vec::new());
            }
            if !self.dedup.has_room() {
                // Not remembered either: the retry this asks for must be able to succeed.
                return (
                    Err(FleetError::DedupFull {
                        ids: self.dedup.entries.len(),
                        window_secs: DEDUP_WINDOW_MS / 1000,
                    }),
                    Vec::new(),
                );
            }
        }
        let (outcome, changes) = match self.apply_tracked(cmd) {
            Ok((applied, changes)) => (Ok(applied), changes),
            Err(e) => (Err(e), Vec::new()),
        };
        if let Some(id) = id {
            self.dedup.remember(id, outcome.clone());
        }
        (outcome, changes)
    }

    /// Turns a journal into net changes: one per key, the old value from its first mutation,
    /// the new value from the state now; keys that ended where they started are left out.
    fn changes_from(&self, journal: Vec<Undo>) -> Vec<Change> {
        // Keyed by shared names: a domain or binding change costs no allocation here.
        let mut seen: HashSet<(&'static str, Name)> = HashSet::new();
        let mut changes = Vec::new();
        for undo in journal {
            let change = match undo {
                Undo::Shard(id, old) => {
                    let new = self.shards.get(&id).cloned();
                    (seen.insert(("shard", Name::from(id.as_str()))) && old != new).then(|| {
                        Change::Shard {
                            id: id.into(),
                            old: old.map(Box::new),
                            new: new.map(Box::new),
                        }
                    })
                }
                Undo::Domain(domain, old) => {
                    let new = self.domains.get(&domain).cloned();
                    (seen.insert(("domain", domain.clone())) && old != new)
                        .then_some(Change::Domain { domain, old, new })
                }
                Undo::Binding(cluster, old) => {
                    let new = self.bindings.get(&cluster).cloned();
                    (seen.insert(("binding", cluster.clone())) && old != new)
                        .then_some(Change::Binding { cluster, old, new })
                }
                Undo::Quota(provider, region, old) => {
                    let new = self.quota(&provider, &region).cloned();
                    let key = format!("{provider}/{region}");
                    (seen.insert(("quota", Name::from(key))) && old != new).then(|| Change::Quota {
                        provider: provider.into(),
                        region: region.into(),
                        old: old.map(Box::new),
                        new: new.map(Box::new),
                    })
                }
                Undo::Provider(name, old) => {
                    let new = self.providers.get(&name).cloned();
                    (seen.insert(("provider", Name::from(name.as_str()))) && old != new).then(
                        || Change::Provider {
                            name: name.into(),
                            old: old.map(Box::new),
                            new: new.map(Box::new),
                        },
                    )
                }
            };
            changes.extend(change);
        }
        changes
    }

    fn exec(&mut self, cmd: &FleetCommand, journal: &mut Vec<Undo>) -> Result<(), FleetError> {
        match cmd {
            // Applied before `exec` (KV commands journal themselves); only a batch gets here,
            // and `check_syntax` refuses KV commands in batches.
            FleetCommand::Kv(_)
            | FleetCommand::Group(_)
            | FleetCommand::Timed { .. }
            | FleetCommand::CreateJoinToken { .. }
            | FleetCommand::UseJoinToken { .. }
            | FleetCommand::Nudge => {
                return Err(FleetError::invalid(
                    "command",
                    "KV and join-token commands cannot be batched with fleet commands",
                ));
            }
            FleetCommand::RegisterShard {
                id,
                address,
                az,
                now_ms,
                lease_ttl_ms,
            } => {
                let existing = self.shards.get(id);
                let record = ShardRecord {
                    id: id.clone(),
                    address: address.clone(),
                    az: az.clone(),
                    registered_at_ms: existing.map(|s| s.registered_at_ms).unwrap_or(*now_ms),
                    lease_expires_at_ms: now_ms.saturating_add(*lease_ttl_ms),
                    status: existing
                        .map(|s| s.status.clone())
                        .unwrap_or(ShardStatus::Active),
                };
                self.set_shard(id, Some(record), journal);
            }
            FleetCommand::DrainShard { id } => {
                self.set_status(id, ShardStatus::Draining, journal)?
            }
            FleetCommand::ActivateShard { id } => {
                self.set_status(id, ShardStatus::Active, journal)?
            }
            FleetCommand::RemoveShard { id } => {
                self.require_shard(id)?;
                let owned: Vec<Name> = self
                    .domains_by_shard
                    .get(id.as_str())
                    .map(|set| set.iter().cloned().collect())
                    .unwrap_or_default();
                for domain in owned {
                    self.set_domain(&domain, None, journal);
                }
                let bound: Vec<Name> = self
                    .bindings
                    .iter()
                    .filter(|(_, s)| ***s == **id)
                    .map(|(c, _)| c.clone())
                    .collect();
                for cluster in bound {
                    self.set_binding(&cluster, None, journal);
                }
                let sliced: Vec<QuotaRecord> = self
                    .quotas()
                    .filter(|q| q.slices.contains_key(id))
                    .cloned()
                    .collect();
                for mut quota in sliced {
                    quota.slices.remove(id);
                    let (provider, region) = (quota.provider.clone(), quota.region.clone());
                    self.set_quota(&provider, &region, Some(quota), journal);
                }
                self.set_shard(id, None, journal);
                self.names.prune();
            }
            FleetCommand::AssignDomains {
                assignments,
                allow_move,
            } => {
                for (domain, shard) in assignments {
                    // Already so: a no-op success, even on a draining shard.
                    if self.domain_owner(domain) == Some(shard.as_str()) {
                        continue;
                    }
                    self.require_active(shard)?;
                    match self.domain_owner(domain) {
                        Some(owner) if !allow_move => {
                            return Err(FleetError::DomainOwned {
                                domain: domain.clone(),
                                owner: owner.to_string(),
                            });
                        }
                        _ => self.set_domain(domain, Some(shard), journal),
                    }
                }
            }
            FleetCommand::UnassignDomains { domains } => {
                for domain in domains {
                    if !self.domains.contains_key(domain.as_str()) {
                        return Err(FleetError::UnknownDomain(domain.clone()));
                    }
                    self.set_domain(domain, None, journal);
                }
            }
            FleetCommand::BindCluster { cluster, shard } => {
                match self.binding(cluster) {
                    // Already so: a no-op success, even on a draining shard.
                    Some(current) if current == shard => {}
                    Some(current) => {
                        return Err(FleetError::ClusterBound {
                            cluster: cluster.clone(),
                            shard: current.to_string(),
                        });
                    }
                    None => {
                        self.require_active(shard)?;
                        self.set_binding(cluster, Some(shard), journal);
                    }
                }
            }
            FleetCommand::MoveCluster { cluster, shard } => {
                let current = self
                    .binding(cluster)
                    .ok_or_else(|| FleetError::UnknownCluster(cluster.clone()))?;
                if current != shard {
                    self.require_active(shard)?;
                    self.set_binding(cluster, Some(shard), journal);
                }
            }
            FleetCommand::UnbindCluster { cluster } => {
                if !self.bindings.contains_key(cluster.as_str()) {
                    return Err(FleetError::UnknownCluster(cluster.clone()));
                }
                self.set_binding(cluster, None, journal);
            }
            FleetCommand::SetQuota {
                provider,
                region,
                total,
                slices,
            } => {
                if !self.providers.contains_key(provider) {
                    return Err(FleetError::UnknownProvider(provider.clone()));
                }
                let previous = self.quota(provider, region).map(|q| q.slices.clone());
                let slices: BTreeMap<String, u64> = slices
                    .iter()
                    .filter(|(_, amount)| **amount > 0)
                    .map(|(s, a)| (s.clone(), *a))
                    .collect();
                self.check_quota(provider, region, *total, &slices, previous.as_ref())?;
                let record = QuotaRecord {
                    provider: provider.clone(),
                    region: region.clone(),
                    total: *total,
                    slices,
                };
                self.set_quota(provider, region, Some(record), journal);
            }
            FleetCommand::SetQuotaSlices {
                provider,
                region,
                slices,
            } => {
                let existing = self.quota(provider, region).cloned().ok_or_else(|| {
                    FleetError::UnknownQuota {
                        provider: provider.clone(),
                        region: region.clone(),
                    }
                })?;
                let mut merged = existing.slices.clone();
                for (shard, amount) in slices {
                    if *amount == 0 {
                        merged.remove(shard);
                    } else {
                        merged.insert(shard.clone(), *amount);
                    }
                }
                self.check_quota(
                    provider,
                    region,
                    existing.total,
                    &merged,
                    Some(&existing.slices),
                )?;
                let record = QuotaRecord {
                    slices: merged,
                    ..existing
                };
                self.set_quota(provider, region, Some(record), journal);
            }
            FleetCommand::DeleteQuota { provider, region } => {
                if self.quota(provider, region).is_none() {
                    return Err(FleetError::UnknownQuota {
                        provider: provider.clone(),
                        region: region.clone(),
                    });
                }
                self.set_quota(provider, region, None, journal);
            }
            FleetCommand::SetProvider {
                name,
                endpoint,
                region,
                capacity_types,
            } => {
                let record = ProviderRecord {
                    name: name.clone(),
                    endpoint: endpoint.clone(),
                    region: region.clone(),
                    capacity_types: capacity_types.clone(),
                };
                self.set_provider(name, Some(record), journal);
            }
            FleetCommand::RemoveProvider { name } => {
                if !self.providers.contains_key(name) {
                    return Err(FleetError::UnknownProvider(name.clone()));
                }
                if let Some(regions) = self.quotas.get(name)
                    && !regions.is_empty()
                {
                    return Err(FleetError::ProviderInUse {
                        provider: name.clone(),
                        regions: regions.keys().cloned().collect(),
                    });
                }
                self.set_provider(name, None, journal);
            }
            FleetCommand::Batch { commands } => {
                for (index, inner) in commands.iter().enumerate() {
                    self.exec(inner, journal).map_err(|e| FleetError::InBatch {
                        index,
                        source: Box::new(e),
                    })?;
                }
            }
        }
        Ok(())
    }

    fn require_shard(&self, id: &str) -> Result<&ShardRecord, FleetError> {
        self.shards
            .get(id)
            .ok_or_else(|| FleetError::UnknownShard(id.to_string()))
    }

    fn require_active(&self, id: &str) -> Result<(), FleetError> {
        match self.require_shard(id)?.status {
            ShardStatus::Active => Ok(()),
            ShardStatus::Draining => Err(FleetError::ShardDraining(id.to_string())),
        }
    }

    fn set_status(
        &mut self,
        id: &str,
        status: ShardStatus,
        journal: &mut Vec<Undo>,
    ) -> Result<(), FleetError> {
        let record = self.require_shard(id)?;
        if record.status != status {
            let mut record = record.clone();
            record.status = status;
            self.set_shard(id, Some(record), journal);
        }
        Ok(())
    }

    /// Slices must name registered shards, may not grow on draining shards, and may not sum
    /// above the total.
    fn check_quota(
        &self,
        provider: &str,
        region: &str,
        total: u64,
        slices: &BTreeMap<String, u64>,
        previous: Option<&BTreeMap<String, u64>>,
    ) -> Result<(), FleetError> {
        for (shard, amount) in slices {
            let record = self.require_shard(shard)?;
            let before = previous.and_then(|p| p.get(shard)).copied().unwrap_or(0);
            if record.status == ShardStatus::Draining && *amount > before {
                return Err(FleetError::ShardDraining(shard.clone()));
            }
        }
        let sum: u128 = slices.values().map(|a| *a as u128).sum();
        if sum > total as u128 {
            return Err(FleetError::OverQuota {
                provider: provider.to_string(),
                region: region.to_string(),
                sum,
                total,
            });
        }
        Ok(())
    }

    // ---- primitive mutations: the only code that writes the tables, each journaled ----

    fn set_shard(&mut self, id: &str, value: Option<ShardRecord>, journal: &mut Vec<Undo>) {
        let old = put(&mut self.shards, id, value.clone());
        if old != value {
            journal.push(Undo::Shard(id.to_string(), old));
        }
    }

    fn set_domain(&mut self, domain: &str, owner: Option<&str>, journal: &mut Vec<Undo>) {
        let domain = shared_key(&self.domains, domain);
        let owner = owner.map(|shard| self.names.get(shard));
        let old = self.put_domain(domain.clone(), owner.clone());
        if old != owner {
            journal.push(Undo::Domain(domain, old));
        }
    }

    /// Writes a domain's owner and keeps the per-shard index in step.
    fn put_domain(&mut self, domain: Name, owner: Option<Name>) -> Option<Name> {
        let old = put_named(&mut self.domains, domain.clone(), owner.clone());
        if let Some(previous) = &old
            && let Some(set) = self.domains_by_shard.get_mut(previous)
        {
            set.remove(&*domain);
            if set.is_empty() {
                self.domains_by_shard.remove(previous);
            }
        }
        if let Some(shard) = owner {
            self.domains_by_shard
                .entry(shard)
                .or_default()
                .insert(domain);
        }
        old
    }

    fn set_binding(&mut self, cluster: &str, shard: Option<&str>, journal: &mut Vec<Undo>) {
        let cluster = shared_key(&self.bindings, cluster);
        let shard = shard.map(|shard| self.names.get(shard));
        let old = put_named(&mut self.bindings, cluster.clone(), shard.clone());
        if old != shard {
            journal.push(Undo::Binding(cluster, old));
        }
    }

    fn set_quota(
        &mut self,
        provider: &str,
        region: &str,
        value: Option<QuotaRecord>,
        journal: &mut Vec<Undo>,
    ) {
        let old = self.put_quota(provider, region, value.clone());
        if old != value {
            journal.push(Undo::Quota(provider.to_string(), region.to_string(), old));
        }
    }

    fn put_quota(
        &mut self,
        provider: &str,
        region: &str,
        value: Option<QuotaRecord>,
    ) -> Option<QuotaRecord> {
        match value {
            Some(v) => self
                .quotas
                .entry(provider.to_string())
                .or_default()
                .insert(region.to_string(), v),
            None => {
                let regions = self.quotas.get_mut(provider)?;
                let old = regions.remove(region);
                if regions.is_empty() {
                    self.quotas.remove(provider);
                }
                old
            }
        }
    }

    fn set_provider(&mut self, name: &str, value: Option<ProviderRecord>, journal: &mut Vec<Undo>) {
        let old = put(&mut self.providers, name, value.clone());
        if old != value {
            journal.push(Undo::Provider(name.to_string(), old));
        }
    }

    /// Undoes journaled mutations newest first, restoring the exact previous state.
    fn rollback(&mut self, journal: Vec<Undo>) {
        for undo in journal.into_iter().rev() {
            match undo {
                Undo::Shard(id, old) => {
                    put(&mut self.shards, &id, old);
                }
                Undo::Domain(domain, old) => {
                    self.put_domain(domain, old);
                }
                Undo::Binding(cluster, old) => {
                    put_named(&mut self.bindings, cluster, old);
                }
                Undo::Quota(provider, region, old) => {
                    self.put_quota(&provider, &region, old);
                }
                Undo::Provider(name, old) => {
                    put(&mut self.providers, &name, old);
                }
            }
        }
    }

    // ---- reads ----

    /// Registered shards in id order.
    pub fn shards(&self) -> impl Iterator<Item = &ShardRecord> {
        self.shards.values()
    }

    /// One shard.
    pub fn shard(&self, id: &str) -> Option<&ShardRecord> {
        self.shards.get(id)
    }

    /// `(domain, shard)` pairs in domain order.
    pub fn domains(&self) -> impl Iterator<Item = (&str, &str)> {
        self.domains.iter().map(|(d, s)| (&**d, &**s))
    }

    /// A shard's domains in order.
    pub fn domains_of(&self, shard: &str) -> Vec<&str> {
        self.domains_by_shard
            .get(shard)
            .map(|set| set.iter().map(|d| &**d).collect())
            .unwrap_or_default()
    }

    /// Owner of a domain.
    pub fn domain_owner(&self, domain: &str) -> Option<&str> {
        self.domains.get(domain).map(|s| &**s)
    }

    /// `(cluster, shard)` pairs in cluster order.
    pub fn bindings(&self) -> impl Iterator<Item = (&str, &str)> {
        self.bindings.iter().map(|(c, s)| (&**c, &**s))
    }

    /// A cluster's shard.
    pub fn binding(&self, cluster: &str) -> Option<&str> {
        self.bindings.get(cluster).map(|s| &**s)
    }

    /// Quotas in (provider, region) order.
    pub fn quotas(&self) -> impl Iterator<Item = &QuotaRecord> {
        self.quotas.values().flat_map(|regions| regions.values())
    }

    /// One quota.
    pub fn quota(&self, provider: &str, region: &str) -> Option<&QuotaRecord> {
        self.quotas.get(provider)?.get(region)
    }

    /// Providers in name order.
    pub fn providers(&self) -> impl Iterator<Item = &ProviderRecord> {
        self.providers.values()
    }

    /// Table sizes.
    pub fn counts(&self) -> FleetCounts {
        FleetCounts {
            shards: self.shards.len(),
            domains: self.domains.len(),
            bindings: self.bindings.len(),
            quotas: self.quotas.values().map(BTreeMap::len).sum(),
            providers: self.providers.len(),
        }
    }

    // ---- snapshots ----

    /// Serialized state (including remembered request ids) for snapshots and DR archives:
    /// [`SNAPSHOT_MAGIC`] followed by postcard. Binary because snapshots are rebuilt every
    /// few thousand writes: as JSON (KV bytes in base64) encoding them was the largest CPU
    /// cost of a write-heavy leader.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        // Plain maps, strings, integers and byte strings: postcard cannot fail on them, and
        // an empty snapshot would be far worse than stopping here.
        postcard::to_io(self, &mut bytes).expect("the fleet state always serializes");
        postcard::to_io(&self.dedup.clock, &mut bytes)
            .expect("the request-id clock always serializes");
        bytes
    }

    /// Inverse of [`FleetState::encode`], also reading the JSON snapshots and archives of
    /// earlier versions; corrupt bytes give an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<FleetState, FleetError> {
        let decoded = if let Some(binary) = bytes.strip_prefix(SNAPSHOT_MAGIC) {
            postcard::take_from_bytes::<FleetState>(binary)
                .and_then(|(mut state, rest)| {
                    state.dedup.clock = postcard::from_bytes(rest)?;
                    Ok(state)
                })
                .map_err(|e| e.to_string())
        } else if let Some(binary) = bytes.strip_prefix(SNAPSHOT_MAGIC_V1) {
            postcard::from_bytes(binary).map_err(|e| e.to_string())
        } else {
            serde_json::from_slice(bytes).map_err(|e| e.to_string())
        };
        let mut state: FleetState = decoded.map_err(FleetError::CorruptSnapshot)?;
        if !state.dedup.clock.times.is_empty()
            && state.dedup.clock.times.len() != state.dedup.entries.len()
        {
            return Err(FleetError::CorruptSnapshot(format!(
                "{} request-id times for {} remembered request ids",
                state.dedup.clock.times.len(),
                state.dedup.entries.len()
            )));
        }
        // Sequence numbers grow by one per remembered id; a snapshot claiming one near the top
        // of u64 cannot come from a real history and would overflow on the next write.
        if state.dedup.first_seq > u64::MAX / 2 {
            return Err(FleetError::CorruptSnapshot(format!(
                "request-id sequence {} is beyond any possible history",
                state.dedup.first_seq
            )));
        }
        if state.dedup.entries.len() > DEDUP_CAPACITY {
            return Err(FleetError::CorruptSnapshot(format!(
                "{} remembered request ids, above the capacity of {DEDUP_CAPACITY}",
                state.dedup.entries.len()
            )));
        }
        state.rebuild_indexes();
        Ok(state)
    }

    /// Rebuilds derived indexes after decoding, and shares the shard names that decoding
    /// allocated once per row.
    pub fn rebuild_indexes(&mut self) {
        let mut names = Interner::default();
        let mut by_shard: HashMap<Name, BTreeSet<Name>> = HashMap::new();
        for (domain, shard) in self.domains.iter_mut() {
            *shard = names.get(shard);
            by_shard
                .entry(shard.clone())
                .or_default()
                .insert(domain.clone());
        }
        for shard in self.bindings.values_mut() {
            *shard = names.get(shard);
        }
        self.domains_by_shard = by_shard;
        self.names = names;
        self.dedup.rebuild();
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    /// How `Dedup` was laid out in snapshots and archives before outcomes were compacted.
    #[derive(Serialize)]
    struct Before {
        entries: VecDeque<(String, Result<Applied, FleetError>)>,
        first_seq: u64,
    }

    #[test]
    fn a_full_window_refuses_new_ids_without_forgetting_any() {
        let mut s = FleetState::new();
        s.apply(&FleetCommand::RegisterShard {
            id: "s1".into(),
            address: "127.0.0.1:1".into(),
            az: "az-a".into(),
            now_ms: 0,
            lease_ttl_ms: 1_000,
        })
        .expect("register");
        s.advance_clock(5_000_000);
        for n in 0..DEDUP_CAPACITY {
            s.dedup.remember(
                &format!("id-{n}"),
                Ok(Applied {
                    revision: 1,
                    changed: true,
                    kv: None,
                }),
            );
        }
        let bind = FleetCommand::BindCluster {
            cluster: "c1".into(),
            shard: "s1".into(),
        };
        let revision = s.revision();
        let refused = s
            .apply_request(Some("new-id"), &bind)
            .expect_err("window full");
        assert_eq!(
            refused.kind(),
            super::super::ErrorKind::Unavailable,
            "{refused}"
        );
        assert_eq!(s.revision(), revision, "nothing applied");
        assert!(
            s.dedup.get("new-id").is_none(),
            "the refusal is not remembered: a retry may apply"
        );
        assert!(s.dedup.get("id-0").is_some(), "no id forgotten early");
        // Once the oldest ids leave the window, new ones are taken.
        s.advance_clock(5_000_000 + DEDUP_WINDOW_MS + 1);
        s.apply_request(Some("new-id"), &bind).expect("room again");
        assert_eq!(s.dedup.entries.len(), 1);
    }

    #[test]
    fn snapshots_of_the_untimed_format_still_decode() {
        let mut s = FleetState::new();
        s.dedup
            .remember("r1", Err(FleetError::UnknownCluster("c9".into())));
        let mut v1 = SNAPSHOT_MAGIC_V1.to_vec();
        postcard::to_io(&s, &mut v1).expect("postcard");
        let read = FleetState::decode(&v1).expect("a BLSTSNP1 snapshot decodes");
        assert_eq!(read.dedup.get("r1"), s.dedup.get("r1"));
        assert_eq!(
            read.dedup.clock.times,
            VecDeque::from([0]),
            "untimed until a clock"
        );
        // A v2 snapshot with times that do not match its ids is corrupt.
        let mut bad = SNAPSHOT_MAGIC.to_vec();
        postcard::to_io(&s, &mut bad).expect("postcard");
        postcard::to_io(
            &DedupClock {
                now_ms: 5,
                times: VecDeque::from([1, 2]),
            },
            &mut bad,
        )
        .expect("postcard");
        assert!(FleetState::decode(&bad).is_err());
    }

    #[test]
    fn compact_request_ids_keep_the_snapshot_format() {
        let outcomes: Vec<(&str, Result<Applied, FleetError>)> = vec![
            (
                "r1",
                Ok(Applied {
                    revision: 3,
                    changed: true,
                    kv: None,
                }),
            ),
            ("r2", Err(FleetError::UnknownCluster("c9".into()))),
        ];
        let mut dedup = Dedup {
            first_seq: 7,
            ..Dedup::default()
        };
        for (id, outcome) in &outcomes {
            dedup.remember(id, outcome.clone());
        }
        let before = Before {
            entries: outcomes
                .iter()
                .map(|(id, o)| (id.to_string(), o.clone()))
                .collect(),
            first_seq: 7,
        };
        let bytes = postcard::to_allocvec(&before).expect("postcard");
        assert_eq!(postcard::to_allocvec(&dedup).expect("postcard"), bytes);
        let json = serde_json::to_string(&before).expect("json");
        assert_eq!(serde_json::to_string(&dedup).expect("json"), json);
        let mut read: Dedup = postcard::from_bytes(&bytes).expect("old bytes decode");
        read.rebuild();
        assert_eq!(read, dedup);
        assert_eq!(read.get("r2"), Some(outcomes[1].1.clone()));
    }
}
