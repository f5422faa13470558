//! The fleet tables and the rules that guard them: the state ([`FleetState`]), how a command
//! applies (here: validation, request-id deduplication, the revision; [`exec`]: one file per
//! table; [`journal`]: the journaled writes and the net changes), the rows ([`records`]),
//! exactly-once memory ([`dedup`]), the stateless checks ([`syntax`]), reads and snapshots.

mod chunked;
mod dedup;
mod exec;
mod journal;
mod legacy;
mod records;
mod syntax;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use journal::Change;
pub use records::{
    Applied, BindingRow, DomainRow, FleetCounts, ProviderRecord, QuotaRecord, ShardRecord,
    ShardStatus,
};

use super::command::FleetCommand;
use super::error::FleetError;
use super::hash::{HashMap, HashSet};
use super::names::{Interner, Name};
use super::table::NameTable;
use dedup::{Dedup, DedupClock};
use legacy::{GrantedFleetState, LegacyFleetState};
use syntax::check_syntax;

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

/// First bytes of a binary snapshot (JSON snapshots of earlier versions start with `{`):
/// the state with its grants, then the request ids' clock, then etcd's users and roles.
pub const SNAPSHOT_MAGIC: &[u8] = b"BLSTSNP5";

/// First bytes of the binary snapshots before etcd auth: the state with its grants, then the
/// request ids' clock.
const SNAPSHOT_MAGIC_V4: &[u8] = b"BLSTSNP4";

/// First bytes of the binary snapshots before cluster grants: domains and slice tables with
/// their grants, bindings without, then the request ids' clock.
const SNAPSHOT_MAGIC_V3: &[u8] = b"BLSTSNP3";

/// First bytes of the binary snapshots before grants: the state without them, then the
/// request ids' clock.
const SNAPSHOT_MAGIC_V2: &[u8] = b"BLSTSNP2";

/// First bytes of the binary snapshots before request ids were timed: the state alone
/// (without grants).
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
    /// Domain → owning shard (the shard name shared through `names`) and its grant; encoded
    /// as the ordered map it replaced (issue #24: a row costs its name and ~40 bytes).
    domains: NameTable<DomainRow>,
    /// Cluster → serving shard (shared through `names`) and its grant.
    bindings: NameTable<BindingRow>,
    /// Provider → region → quota.
    quotas: BTreeMap<String, BTreeMap<String, QuotaRecord>>,
    providers: BTreeMap<String, ProviderRecord>,
    dedup: Dedup,
    /// Join tokens (hashes only).
    #[serde(default)]
    join_tokens: super::tokens::JoinTokens,
    /// etcd's users, roles and auth switch; encoded after the request ids' clock (a layout
    /// that older snapshots, without it, share up to there).
    #[serde(skip)]
    auth: crate::auth::AuthStore,
    /// Shard → its domains' slots in `domains`; derived, rebuilt after decoding.
    #[serde(skip)]
    domains_by_shard: DomainsByShard,
    /// Shard names in use; rebuilt after decoding.
    #[serde(skip)]
    names: Interner,
}

/// Shard → the slots of its domains in [`FleetState`]'s domain table. Slot numbers are the
/// table's own: a state built by commands and the same state decoded from a snapshot number
/// their rows differently. Two indexes are therefore equal when they give every shard as many
/// domains; which domains those are is the table's to say, and it is compared on its own.
#[derive(Clone, Debug, Default)]
struct DomainsByShard(HashMap<Name, HashSet<u32>>);

impl PartialEq for DomainsByShard {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .all(|(shard, slots)| other.0.get(shard).is_some_and(|o| o.len() == slots.len()))
    }
}

impl Eq for DomainsByShard {}

impl std::ops::Deref for DomainsByShard {
    type Target = HashMap<Name, HashSet<u32>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for DomainsByShard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
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

    /// Keeps the KV's longer values in `store` from now on, moving the ones it holds there
    /// (ADR 0019).
    pub fn store_kv_values_in(&mut self, store: std::sync::Arc<dyn crate::kv::ValueStore>) {
        self.kv.store_values_in(store);
    }

    /// The coordination KV.
    pub fn kv(&self) -> &crate::kv::KvStore {
        &self.kv
    }

    /// etcd's users, roles and auth switch.
    pub fn auth(&self) -> &crate::auth::AuthStore {
        &self.auth
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
        match cmd {
            FleetCommand::Kv(op) => return self.apply_kv(op),
            FleetCommand::KvAs { caller, command } => {
                self.auth.check_kv(caller.as_ref(), command, &self.kv)?;
                return self.apply_kv(command);
            }
            FleetCommand::Auth { caller, command } => {
                let changed = self.auth.apply(caller.as_ref(), command)?;
                return Ok((self.settle(changed, None), Vec::new()));
            }
            _ => {}
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
                self.keep_grants_of_round_trips(&journal);
                let applied = self.settle(!journal.is_empty(), None);
                return Ok((applied, self.changes_from(journal)));
            }
        };
        Ok((self.settle(changed, None), Vec::new()))
    }

    /// Applies a KV command at the next revision.
    fn apply_kv(
        &mut self,
        op: &crate::kv::KvCommand,
    ) -> Result<(Applied, Vec<Change>), FleetError> {
        let (reply, wrote) = self.kv.apply(op, self.revision, self.revision + 1)?;
        Ok((self.settle(wrote, Some(reply)), Vec::new()))
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
                        ids: self.dedup.len(),
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
    pub fn domains(&self) -> impl Iterator<Item = (Cow<'_, str>, &str)> {
        self.domains.iter().map(|(d, row)| (d, &*row.shard))
    }

    /// `(domain, shard)` pairs after `after` in domain order (a listing's next page).
    pub fn domains_after<'a>(
        &'a self,
        after: &str,
    ) -> impl Iterator<Item = (Cow<'a, str>, &'a str)> + use<'a> {
        self.domains
            .iter_after(after)
            .map(|(d, row)| (d, &*row.shard))
    }

    /// A shard's domains in order.
    pub fn domains_of(&self, shard: &str) -> Vec<Cow<'_, str>> {
        let mut domains: Vec<Cow<'_, str>> = self
            .domains_by_shard
            .get(shard)
            .map(|slots| slots.iter().map(|&slot| self.domains.name(slot)).collect())
            .unwrap_or_default();
        domains.sort_unstable();
        domains
    }

    /// How many domains a shard owns.
    pub fn domain_count_of(&self, shard: &str) -> usize {
        self.domains_by_shard.get(shard).map_or(0, HashSet::len)
    }

    /// Owner of a domain.
    pub fn domain_owner(&self, domain: &str) -> Option<&str> {
        self.domains.get(domain).map(|row| &*row.shard)
    }

    /// A domain's owner and the revision it was given to that owner at.
    pub fn domain_row(&self, domain: &str) -> Option<&DomainRow> {
        self.domains.get(domain)
    }

    /// `(cluster, shard)` pairs in cluster order.
    pub fn bindings(&self) -> impl Iterator<Item = (Cow<'_, str>, &str)> {
        self.bindings.iter().map(|(c, row)| (c, &*row.shard))
    }

    /// `(cluster, shard)` pairs after `after` in cluster order (a listing's next page).
    pub fn bindings_after<'a>(
        &'a self,
        after: &str,
    ) -> impl Iterator<Item = (Cow<'a, str>, &'a str)> + use<'a> {
        self.bindings
            .iter_after(after)
            .map(|(c, row)| (c, &*row.shard))
    }

    /// A cluster's shard.
    pub fn binding(&self, cluster: &str) -> Option<&str> {
        self.bindings.get(cluster).map(|row| &*row.shard)
    }

    /// A cluster's shard and the revision the cluster was bound to that shard at.
    pub fn binding_row(&self, cluster: &str) -> Option<&BindingRow> {
        self.bindings.get(cluster)
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
        let mut bytes = Vec::new();
        // Plain maps, strings, integers and byte strings into memory: postcard cannot fail on
        // them, and an empty snapshot would be far worse than stopping here.
        self.encode_to(&mut bytes)
            .expect("the fleet state always serializes");
        bytes
    }

    /// [`FleetState::encode`] into `out` as it goes (a snapshot file), never whole in memory.
    /// Fails only when `out` does, with its error.
    pub fn encode_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(SNAPSHOT_MAGIC)?;
        // A tuple is its fields back to back in postcard: the same bytes as three encodings.
        chunked::encode_into(&(self, &self.dedup.clock(), &self.auth), out)
    }

    /// Inverse of [`FleetState::encode`], also reading the JSON snapshots and archives of
    /// earlier versions; corrupt bytes give an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<FleetState, FleetError> {
        // The state, and the request ids' clock where the format has one.
        type Decoded = Result<(FleetState, Option<DedupClock>), String>;
        let decoded: Decoded = if let Some(binary) = bytes.strip_prefix(SNAPSHOT_MAGIC) {
            postcard::take_from_bytes::<FleetState>(binary)
                .and_then(|(mut state, rest)| {
                    let (clock, rest) = postcard::take_from_bytes(rest)?;
                    state.auth = postcard::from_bytes(rest)?;
                    Ok((state, Some(clock)))
                })
                .map_err(|e| e.to_string())
        } else if let Some(binary) = bytes.strip_prefix(SNAPSHOT_MAGIC_V4) {
            postcard::take_from_bytes::<FleetState>(binary)
                .and_then(|(state, rest)| Ok((state, Some(postcard::from_bytes(rest)?))))
                .map_err(|e| e.to_string())
        } else if let Some(binary) = bytes.strip_prefix(SNAPSHOT_MAGIC_V3) {
            postcard::take_from_bytes::<GrantedFleetState>(binary)
                .and_then(|(state, rest)| Ok((state.upgrade(), Some(postcard::from_bytes(rest)?))))
                .map_err(|e| e.to_string())
        } else if let Some(binary) = bytes.strip_prefix(SNAPSHOT_MAGIC_V2) {
            postcard::take_from_bytes::<LegacyFleetState>(binary)
                .and_then(|(state, rest)| Ok((state.upgrade(), Some(postcard::from_bytes(rest)?))))
                .map_err(|e| e.to_string())
        } else if let Some(binary) = bytes.strip_prefix(SNAPSHOT_MAGIC_V1) {
            postcard::from_bytes::<LegacyFleetState>(binary)
                .map(|state| (state.upgrade(), None))
                .map_err(|e| e.to_string())
        } else {
            serde_json::from_slice::<LegacyFleetState>(bytes)
                .map(|state| (state.upgrade(), None))
                .map_err(|e| e.to_string())
        };
        let (mut state, clock) = decoded.map_err(FleetError::CorruptSnapshot)?;
        if let Some(clock) = clock {
            state
                .dedup
                .set_clock(clock)
                .map_err(FleetError::CorruptSnapshot)?;
        }
        // Sequence numbers grow by one per remembered id; a snapshot claiming one near the top
        // of u64 cannot come from a real history and would overflow on the next write.
        if state.dedup.first_seq > u64::MAX / 2 {
            return Err(FleetError::CorruptSnapshot(format!(
                "request-id sequence {} is beyond any possible history",
                state.dedup.first_seq
            )));
        }
        state.rebuild_indexes();
        Ok(state)
    }

    /// Rebuilds derived indexes after decoding, and shares the shard names and KV keys that
    /// decoding allocated once per row.
    pub fn rebuild_indexes(&mut self) {
        self.kv.share_keys();
        let mut names = Interner::default();
        let mut by_shard: HashMap<Name, HashSet<u32>> = HashMap::default();
        let slots: Vec<u32> = self.domains.slots().collect();
        for slot in slots {
            let row = self.domains.value_mut(slot);
            row.shard = names.get(&row.shard);
            by_shard.entry(row.shard.clone()).or_default().insert(slot);
        }
        for row in self.bindings.values_mut() {
            row.shard = names.get(&row.shard);
        }
        self.domains_by_shard = DomainsByShard(by_shard);
        self.names = names;
    }
}
