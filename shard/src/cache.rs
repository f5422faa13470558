//! The shard's durable cache (fjall): its assignments, the revision and highest coordinator
//! term they reflect, the cluster it belongs to and its restart epoch. This is what lets a
//! shard restart and keep provisioning while every coordinator replica is down.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ballast_protocol::pb;

use crate::engine::{Machine, MachineView, Need, Provision};
use ballast_group_commit::GroupCommit;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};

/// Why the cache could not be used. Every variant names the data directory; a corrupt cache is
/// never silently reused or reset.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// fjall failed (I/O, corruption, locked by another process).
    #[error("shard cache at {path}: {source}")]
    Storage {
        /// Data directory.
        path: String,
        /// Underlying error.
        source: fjall::Error,
    },
    /// A record did not decode.
    #[error(
        "shard cache at {path} is corrupt: record {key:?}: {reason}; move the directory aside to start empty"
    )]
    Corrupt {
        /// Data directory.
        path: String,
        /// Key of the bad record.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The cache belongs to another shard or cluster.
    #[error("shard cache at {path} belongs to {found}, not {expected}")]
    Foreign {
        /// Data directory.
        path: String,
        /// What the cache holds.
        found: String,
        /// What this process is.
        expected: String,
    },
}

/// What a shard holds, as of `revision`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignments {
    /// Fleet revision these assignments reflect (0 = never heard from a coordinator).
    pub revision: u64,
    /// Highest coordinator term seen.
    pub term: u64,
    /// Restore epoch of `revision` (revisions compare only within one epoch).
    pub restore_epoch: u64,
    /// Topology domains owned.
    pub domains: BTreeSet<String>,
    /// For every domain in `domains`: the fleet revision at which the coordinator gave it to
    /// this shard (0 when the update that added it carried none: an older coordinator). With
    /// `restore_epoch` it is the domain grant presented to providers (ADR 0016).
    pub domain_grants: BTreeMap<String, u64>,
    /// Clusters bound.
    pub clusters: BTreeSet<String>,
    /// For every cluster in `clusters`: the fleet revision at which the coordinator bound it
    /// to this shard (0 when the update carried none). With `restore_epoch` it is the cluster
    /// grant presented to providers for the cluster's machines (ADR 0016).
    pub cluster_grants: BTreeMap<String, u64>,
    /// Quota slices by (provider, region).
    pub slices: BTreeMap<(String, String), u64>,
    /// For every slice in `slices`: the revision of the quota's slice table it was given in
    /// (0 when the update carried none). With `restore_epoch` it is the slice-table grant
    /// presented to providers with every create (ADR 0016).
    pub slice_grants: BTreeMap<(String, String), u64>,
    /// "active", "draining", "removed", or "" before the first update.
    pub status: String,
}

impl Assignments {
    /// Applies an update in memory if it is newer than what is held; returns whether it was.
    /// Fencing: updates are ordered by (restore epoch, revision). One at or below what is held
    /// is stale (a lagging replica, or a replay) and is ignored, so a shard never takes back a
    /// grant it already lost. An update from a newer restore epoch (the cluster was restored
    /// from an archive) must be a full listing: it replaces everything, so grants the restored
    /// state lacks are dropped even though its revision may be lower than the one held.
    pub fn apply(&mut self, update: &pb::AssignmentUpdate) -> bool {
        let newer_epoch = update.restore_epoch > self.restore_epoch;
        if update.restore_epoch < self.restore_epoch || (newer_epoch && !update.full) {
            return false;
        }
        if !newer_epoch && update.revision <= self.revision && !(update.full && self.revision == 0)
        {
            return false;
        }
        if update.full {
            self.domains.clear();
            self.domain_grants.clear();
            self.clusters.clear();
            self.cluster_grants.clear();
            self.slices.clear();
            self.slice_grants.clear();
        }
        for d in &update.domains_removed {
            self.domains.remove(d);
            self.domain_grants.remove(d);
        }
        // Every added domain takes the grant the update names for it (a domain given back
        // takes its new grant); entries for domains not added are not grants and are ignored.
        for d in &update.domains_added {
            let granted = update.domain_grants.get(d).copied().unwrap_or(0);
            self.domains.insert(d.clone());
            self.domain_grants.insert(d.clone(), granted);
        }
        for c in &update.clusters_removed {
            self.clusters.remove(c);
            self.cluster_grants.remove(c);
        }
        for c in &update.clusters_added {
            let granted = update.cluster_grants.get(c).copied().unwrap_or(0);
            self.clusters.insert(c.clone());
            self.cluster_grants.insert(c.clone(), granted);
        }
        // A slice is sent when its amount or its quota's slice table changed: either way it
        // carries the table's grant.
        for s in &update.slices {
            let key = (s.provider.clone(), s.region.clone());
            if s.amount == 0 {
                self.slices.remove(&key);
                self.slice_grants.remove(&key);
            } else {
                self.slices.insert(key.clone(), s.amount);
                self.slice_grants.insert(key, s.granted);
            }
        }
        if !update.status.is_empty() {
            self.status = update.status.clone();
        }
        self.revision = update.revision;
        self.restore_epoch = update.restore_epoch;
        self.term = self.term.max(update.term);
        true
    }

    /// The grant under which this shard holds `domain`, as `(restore_epoch, revision)`: what
    /// it presents to a provider for any call on a machine in that domain (ADR 0016). `None`
    /// when the domain is not held. Revision 0 means the coordinator that gave the domain did
    /// not stamp grants yet.
    pub fn domain_grant(&self, domain: &str) -> Option<(u64, u64)> {
        self.domains.contains(domain).then(|| {
            let revision = self.domain_grants.get(domain).copied().unwrap_or(0);
            (self.restore_epoch, revision)
        })
    }

    /// The grant under which this shard serves `cluster`, as `(restore_epoch, revision)`: what
    /// it presents to a provider for any call on a machine configured for the cluster
    /// (ADR 0016). `None` when the cluster is not bound here.
    pub fn cluster_grant(&self, cluster: &str) -> Option<(u64, u64)> {
        self.clusters.contains(cluster).then(|| {
            let revision = self.cluster_grants.get(cluster).copied().unwrap_or(0);
            (self.restore_epoch, revision)
        })
    }

    /// The grant of this shard's slice of quota `(provider, region)`, as
    /// `(restore_epoch, slice-table revision, slice amount)`: what it presents to the provider
    /// with every create and adoption under that quota (ADR 0016). `None` when the shard holds
    /// no slice of it. Revision 0 means the slice table was not stamped.
    pub fn quota_grant(&self, provider: &str, region: &str) -> Option<(u64, u64, u64)> {
        let key = (provider.to_string(), region.to_string());
        let amount = *self.slices.get(&key)?;
        let revision = self.slice_grants.get(&key).copied().unwrap_or(0);
        Some((self.restore_epoch, revision, amount))
    }
}

/// The work the shard has taken on, as kept on disk (machines stream through
/// [`Cache::load_machines`]).
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Each cluster's current demand rows (need ids are `cluster/row`).
    pub demand: BTreeMap<String, Vec<Need>>,
    /// Provisions started and not yet answered, by machine id (re-issued after a restart;
    /// the provider is idempotent by machine id).
    pub in_flight: BTreeMap<String, Provision>,
    /// Machines being returned to the provider as surplus to a slice (returned again after a
    /// restart, so none is put back to work after the provider took it).
    pub returning: BTreeSet<String>,
}

/// The on-disk cache.
///
/// Assignments live in the `assignments` keyspace, one record per item: `d/{domain}` holds the
/// domain's grant (8 bytes, big-endian; empty in caches written before grants, read as 0),
/// `c/{cluster}` the cluster's grant (8 bytes; empty before cluster grants, read as 0),
/// `q/{provider}/{region}` holds the slice amount (8 bytes). The slice
/// grants live apart, in `slice_grants` (see [`SLICE_GRANTS`]), so that a cache written by this
/// build still opens in a build from before grants (a rollback keeps the cache).
pub struct Cache {
    db: Database,
    items: Keyspace,
    /// `q/{provider}/{region}` → the slice amount and its slice-table grant (8 + 8 bytes,
    /// big-endian), written in the same batch as the slice.
    slice_grants: Keyspace,
    meta: Keyspace,
    /// The machine ledger in [`LEDGER_PAGES`] pages (see [`ledger_page`]).
    ledger: Keyspace,
    /// Machines in the ledger (kept in `meta` beside the pages, so a restart can size the
    /// engine's tables before loading). Held from reading a ledger page until its rewrite is
    /// committed.
    ledger_writes: Mutex<u64>,
    demand: Keyspace,
    /// Demand submissions journaled and how far an fsync has covered them: submissions
    /// share fsyncs instead of taking one each under the demand lock.
    demand_commit: GroupCommit,
    in_flight: Keyspace,
    returning: Keyspace,
    path: String,
}

/// Memtable limit of every keyspace of the cache.
const MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;

/// How many pages the machine ledger is split into. fjall replays every journal entry written
/// since its last journal rotation (every ~64 MB) when it opens, at about a microsecond each,
/// flushed or not. One entry per machine made that up to ~550K entries, 0.6 s of a restart;
/// a page holds the records of the machines whose ids hash to it (8 at 500K machines), so
/// the same journal holds ~8 times fewer entries. The price is that changing one machine
/// rewrites its page.
pub const LEDGER_PAGES: u32 = 1 << 16;

/// The page a machine's record lives in: FNV-1a of its id (stable across builds, unlike the
/// standard library's hasher, because pages are on disk).
pub fn ledger_page(id: &str) -> u32 {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % u64::from(LEDGER_PAGES)) as u32
}

/// The keyspace of slice-table grants. Apart from the slice records because a build from
/// before grants refuses a slice record that is not 8 bytes but never opens this keyspace.
/// A grant record counts only while its amount is the amount held: a build from before
/// grants may have changed the slice (and left the record behind), and a grant is only
/// presented with the amount it was given for.
const SLICE_GRANTS: &str = "slice_grants";

/// The ledger keyspace of caches written before the ledger was paged (one record per machine);
/// opening such a cache moves its records into pages.
const LEGACY_MACHINES: &str = "machines";

const META_REVISION: &str = "revision";
const META_TERM: &str = "term";
const META_RESTORE_EPOCH: &str = "restore_epoch";
const META_EPOCH: &str = "epoch";
const META_STATUS: &str = "status";
const META_SHARD: &str = "shard_id";
const META_CLUSTER: &str = "cluster_id";
const META_PROVIDER_REGISTRY: &str = "provider_registry";
const META_LEDGER_PAGES: &str = "ledger_pages";
const META_LEDGER_MACHINES: &str = "ledger_machines";

fn domain_key(d: &str) -> String {
    format!("d/{d}")
}
fn cluster_key(c: &str) -> String {
    format!("c/{c}")
}
fn slice_key(provider: &str, region: &str) -> String {
    format!("q/{provider}/{region}")
}
/// A [`SLICE_GRANTS`] record: the amount, then the slice-table grant, both big-endian.
fn slice_grant_record(amount: u64, granted: u64) -> [u8; 16] {
    ((u128::from(amount) << 64) | u128::from(granted)).to_be_bytes()
}
/// The amount and grant of a [`SLICE_GRANTS`] record.
fn split_slice_grant(record: [u8; 16]) -> (u64, u64) {
    let both = u128::from_be_bytes(record);
    ((both >> 64) as u64, both as u64)
}

impl Cache {
    /// Opens (or creates) the cache of shard `shard_id` in `dir`.
    pub fn open(dir: &Path, shard_id: &str) -> Result<Cache, CacheError> {
        let path = dir.display().to_string();
        let wrap = |source| CacheError::Storage {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| CacheError::Storage {
            path: path.clone(),
            source: fjall::Error::from(e),
        })?;
        let db = Database::builder(dir)
            .cache_size(2 * 1024 * 1024)
            // fjall's smallest journal budget (default 512 MiB). The meta and assignment
            // keyspaces take small writes and their memtables never fill, so they pin every
            // journal segment until the budget forces a flush; a restart then re-reads the
            // whole ledger's history from the journal before the first decision.
            .max_journaling_size(64 * 1024 * 1024)
            .worker_threads(1)
            .open()
            .map_err(wrap)?;
        let options = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        let items = db.keyspace("assignments", options).map_err(wrap)?;
        let slice_grants = db.keyspace(SLICE_GRANTS, options).map_err(wrap)?;
        let meta = db.keyspace("meta", options).map_err(wrap)?;
        let ledger = db.keyspace("ledger_pages", options).map_err(wrap)?;
        let demand = db.keyspace("demand", options).map_err(wrap)?;
        let in_flight = db.keyspace("in_flight", options).map_err(wrap)?;
        let returning = db.keyspace("returning", options).map_err(wrap)?;
        let cache = Cache {
            demand_commit: GroupCommit::new(db.clone()).with_hold_point("shard-demand-fsync"),
            db,
            items,
            slice_grants,
            meta,
            ledger,
            ledger_writes: Mutex::new(0),
            demand,
            in_flight,
            returning,
            path,
        };
        match cache.text(META_SHARD)? {
            Some(found) if found != shard_id => {
                return Err(CacheError::Foreign {
                    path: cache.path.clone(),
                    found: format!("shard {found}"),
                    expected: format!("shard {shard_id}"),
                });
            }
            Some(_) => {}
            None => {
                cache
                    .meta
                    .insert(META_SHARD, shard_id)
                    .map_err(|e| cache.err(e))?;
                cache.sync()?;
            }
        }
        match cache.number(META_LEDGER_PAGES)? {
            0 => {
                cache
                    .meta
                    .insert(META_LEDGER_PAGES, u64::from(LEDGER_PAGES).to_be_bytes())
                    .map_err(|e| cache.err(e))?;
                cache.sync()?;
            }
            pages if pages == u64::from(LEDGER_PAGES) => {}
            pages => {
                return Err(cache.corrupt(
                    META_LEDGER_PAGES,
                    format!("the ledger has {pages} pages; this build reads {LEDGER_PAGES}"),
                ));
            }
        }
        *cache.ledger_count() = cache.number(META_LEDGER_MACHINES)?;
        cache.page_legacy_ledger()?;
        Ok(cache)
    }

    /// Moves the records of a cache written before the ledger was paged into pages, then drops
    /// the old keyspace. A crash in between repeats the move, which rewrites the same pages.
    fn page_legacy_ledger(&self) -> Result<(), CacheError> {
        if !self.db.keyspace_exists(LEGACY_MACHINES) {
            return Ok(());
        }
        let legacy = self
            .db
            .keyspace(LEGACY_MACHINES, KeyspaceCreateOptions::default)
            .map_err(|e| self.err(e))?;
        let mut records = Vec::new();
        for item in legacy.iter() {
            let (key, value) = item.into_inner().map_err(|e| self.err(e))?;
            records.push((key, value));
        }
        let views = records
            .iter()
            .map(|(key, value)| {
                postcard::from_bytes::<MachineView<'_>>(value).map_err(|e| {
                    let key = String::from_utf8_lossy(key);
                    self.corrupt(&format!("{LEGACY_MACHINES}/{key}"), e.to_string())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut count = self.ledger_count();
        let mut batch = self.db.batch();
        let counted = self.edit_pages(&mut batch, *count, &views, &[])?;
        batch.commit().map_err(|e| self.err(e))?;
        self.sync()?;
        *count = counted;
        drop(count);
        tracing::info!(
            machines = views.len(),
            path = %self.path,
            "moved the machine ledger into pages"
        );
        self.db.delete_keyspace(legacy).map_err(|e| self.err(e))?;
        self.sync()
    }

    fn err(&self, source: fjall::Error) -> CacheError {
        CacheError::Storage {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, key: &str, reason: impl Into<String>) -> CacheError {
        CacheError::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// Rotates every keyspace's memtable past its limit on this thread
    /// ([`ballast_memtables::rotate_when_full`]: fjall's one worker can stall on its own queue
    /// under a burst of writes, and flushes then stop for good).
    fn rotate_full_memtables(&self) -> Result<(), CacheError> {
        for keyspace in [
            &self.items,
            &self.slice_grants,
            &self.meta,
            &self.ledger,
            &self.demand,
            &self.in_flight,
            &self.returning,
        ] {
            ballast_memtables::rotate_when_full(keyspace, MEMTABLE_BYTES)
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Makes everything written so far durable; every write but the demand's (group
    /// committed) ends here, so the full memtables are rotated here too.
    fn sync(&self) -> Result<(), CacheError> {
        self.rotate_full_memtables()?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.err(e))
    }

    fn text(&self, key: &str) -> Result<Option<String>, CacheError> {
        match self.meta.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes.to_vec())
                .map(Some)
                .map_err(|e| self.corrupt(key, e.to_string())),
        }
    }

    fn number(&self, key: &str) -> Result<u64, CacheError> {
        match self.meta.get(key).map_err(|e| self.err(e))? {
            None => Ok(0),
            Some(bytes) => {
                let raw: [u8; 8] = bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| self.corrupt(key, format!("{} bytes, expected 8", bytes.len())))?;
                Ok(u64::from_be_bytes(raw))
            }
        }
    }

    /// Increments and persists the restart epoch; returns the new epoch.
    pub fn bump_epoch(&self) -> Result<u64, CacheError> {
        let epoch = self.number(META_EPOCH)? + 1;
        self.meta
            .insert(META_EPOCH, epoch.to_be_bytes())
            .map_err(|e| self.err(e))?;
        self.sync()?;
        Ok(epoch)
    }

    /// The cluster id this shard was last served by, if any.
    pub fn cluster_id(&self) -> Result<Option<String>, CacheError> {
        self.text(META_CLUSTER)
    }

    /// Remembers the cluster id (first contact).
    pub fn set_cluster_id(&self, id: &str) -> Result<(), CacheError> {
        self.meta
            .insert(META_CLUSTER, id)
            .map_err(|e| self.err(e))?;
        self.sync()
    }

    /// The coordinator's provider registry as last read (name → endpoint; empty if never).
    pub fn provider_registry(
        &self,
    ) -> Result<std::collections::BTreeMap<String, String>, CacheError> {
        match self.text(META_PROVIDER_REGISTRY)? {
            None => Ok(Default::default()),
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| self.corrupt(META_PROVIDER_REGISTRY, e.to_string())),
        }
    }

    /// Remembers the provider registry (for a restart without a coordinator).
    pub fn set_provider_registry(
        &self,
        entries: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), CacheError> {
        let json = serde_json::to_string(entries).expect("strings serialize");
        self.meta
            .insert(META_PROVIDER_REGISTRY, json)
            .map_err(|e| self.err(e))?;
        self.sync()
    }

    /// Loads the cached assignments.
    pub fn load(&self) -> Result<Assignments, CacheError> {
        let mut a = Assignments {
            revision: self.number(META_REVISION)?,
            term: self.number(META_TERM)?,
            restore_epoch: self.number(META_RESTORE_EPOCH)?,
            status: self.text(META_STATUS)?.unwrap_or_default(),
            ..Assignments::default()
        };
        for item in self.items.iter() {
            let (key, value) = item.into_inner().map_err(|e| self.err(e))?;
            let key = String::from_utf8(key.to_vec())
                .map_err(|e| self.corrupt("<assignment key>", e.to_string()))?;
            if let Some(domain) = key.strip_prefix("d/") {
                // Empty: written before grants were kept, so the grant is 0.
                let granted = match value.len() {
                    0 => 0,
                    _ => self.be_u64(&key, &value, "domain grant")?,
                };
                a.domains.insert(domain.to_string());
                a.domain_grants.insert(domain.to_string(), granted);
            } else if let Some(cluster) = key.strip_prefix("c/") {
                // Empty: written before cluster grants were kept, so the grant is 0.
                let granted = match value.len() {
                    0 => 0,
                    _ => self.be_u64(&key, &value, "cluster grant")?,
                };
                a.clusters.insert(cluster.to_string());
                a.cluster_grants.insert(cluster.to_string(), granted);
            } else if let Some(rest) = key.strip_prefix("q/") {
                let (provider, region) = rest
                    .split_once('/')
                    .ok_or_else(|| self.corrupt(&key, "slice key without region"))?;
                let raw: [u8; 8] = value
                    .as_ref()
                    .try_into()
                    .map_err(|_| self.corrupt(&key, "slice amount is not 8 bytes"))?;
                let slice = (provider.to_string(), region.to_string());
                a.slices.insert(slice.clone(), u64::from_be_bytes(raw));
                a.slice_grants.insert(slice, 0);
            } else {
                return Err(self.corrupt(&key, "unknown record kind"));
            }
        }
        for item in self.slice_grants.iter() {
            let (key, value) = item.into_inner().map_err(|e| self.err(e))?;
            let key = String::from_utf8(key.to_vec())
                .map_err(|e| self.corrupt(&format!("<{SLICE_GRANTS} key>"), e.to_string()))?;
            let name = format!("{SLICE_GRANTS}/{key}");
            let (provider, region) = key
                .strip_prefix("q/")
                .and_then(|rest| rest.split_once('/'))
                .ok_or_else(|| self.corrupt(&name, "not a slice key"))?;
            let raw: [u8; 16] = value
                .as_ref()
                .try_into()
                .map_err(|_| self.corrupt(&name, format!("{} bytes, expected 16", value.len())))?;
            let (amount, granted) = split_slice_grant(raw);
            let slice = (provider.to_string(), region.to_string());
            // For another amount (a build that did not keep grants changed the slice) or a
            // slice no longer held: not the grant of what is held, which then reads as 0.
            if a.slices.get(&slice) == Some(&amount) {
                a.slice_grants.insert(slice, granted);
            }
        }
        Ok(a)
    }

    fn be_u64(&self, key: &str, value: &[u8], what: &str) -> Result<u64, CacheError> {
        let raw: [u8; 8] = value.try_into().map_err(|_| {
            self.corrupt(key, format!("{what} is {} bytes, expected 8", value.len()))
        })?;
        Ok(u64::from_be_bytes(raw))
    }

    /// Makes `next` (the result of applying `update` to `previous`) durable in one atomic,
    /// fsynced batch.
    pub fn store(&self, previous: &Assignments, next: &Assignments) -> Result<(), CacheError> {
        let mut batch = self.db.batch();
        for d in previous.domains.difference(&next.domains) {
            batch.remove(&self.items, domain_key(d));
        }
        let domain_grant = |a: &Assignments, d: &str| a.domain_grants.get(d).copied().unwrap_or(0);
        for d in &next.domains {
            let granted = domain_grant(next, d);
            if !previous.domains.contains(d) || domain_grant(previous, d) != granted {
                batch.insert(&self.items, domain_key(d), granted.to_be_bytes());
            }
        }
        for c in previous.clusters.difference(&next.clusters) {
            batch.remove(&self.items, cluster_key(c));
            // A cluster bound elsewhere is the other shard's to serve: its demand goes too.
            batch.remove(&self.demand, c.as_str());
        }
        let cluster_grant =
            |a: &Assignments, c: &str| a.cluster_grants.get(c).copied().unwrap_or(0);
        for c in &next.clusters {
            let granted = cluster_grant(next, c);
            if !previous.clusters.contains(c) || cluster_grant(previous, c) != granted {
                batch.insert(&self.items, cluster_key(c), granted.to_be_bytes());
            }
        }
        for (provider, region) in previous.slices.keys() {
            if !next
                .slices
                .contains_key(&(provider.clone(), region.clone()))
            {
                batch.remove(&self.items, slice_key(provider, region));
                batch.remove(&self.slice_grants, slice_key(provider, region));
            }
        }
        let slice_grant = |a: &Assignments, slice: &(String, String)| {
            let amount = a.slices.get(slice).copied();
            amount.map(|amount| (amount, a.slice_grants.get(slice).copied().unwrap_or(0)))
        };
        for (slice, &amount) in &next.slices {
            let (provider, region) = slice;
            if previous.slices.get(slice) != Some(&amount) {
                batch.insert(
                    &self.items,
                    slice_key(provider, region),
                    amount.to_be_bytes(),
                );
            }
            let granted = next.slice_grants.get(slice).copied().unwrap_or(0);
            if slice_grant(previous, slice) != Some((amount, granted)) {
                batch.insert(
                    &self.slice_grants,
                    slice_key(provider, region),
                    slice_grant_record(amount, granted),
                );
            }
        }
        batch.insert(&self.meta, META_REVISION, next.revision.to_be_bytes());
        batch.insert(&self.meta, META_TERM, next.term.to_be_bytes());
        batch.insert(
            &self.meta,
            META_RESTORE_EPOCH,
            next.restore_epoch.to_be_bytes(),
        );
        batch.insert(&self.meta, META_STATUS, next.status.as_bytes());
        batch.commit().map_err(|e| self.err(e))?;
        self.sync()
    }
}

impl Cache {
    fn decode_each<T: serde::de::DeserializeOwned>(
        &self,
        keyspace: &Keyspace,
        what: &str,
        mut each: impl FnMut(String, T),
    ) -> Result<(), CacheError> {
        for item in keyspace.iter() {
            let (key, value) = item.into_inner().map_err(|e| self.err(e))?;
            let key = String::from_utf8(key.to_vec())
                .map_err(|e| self.corrupt(&format!("<{what} key>"), e.to_string()))?;
            let record = postcard::from_bytes(&value)
                .map_err(|e| self.corrupt(&format!("{what}/{key}"), e.to_string()))?;
            each(key, record);
        }
        Ok(())
    }

    fn decode_all<T: serde::de::DeserializeOwned>(
        &self,
        keyspace: &Keyspace,
        what: &str,
    ) -> Result<BTreeMap<String, T>, CacheError> {
        let mut out = BTreeMap::new();
        self.decode_each(keyspace, what, |key, record| {
            out.insert(key, record);
        })?;
        Ok(out)
    }

    /// Ledger records use postcard, a compact binary encoding: a 500K-machine ledger loads
    /// (and its journal recovers) several times faster than as JSON.
    fn encode<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, CacheError> {
        postcard::to_allocvec(value).map_err(|e| self.corrupt(key, e.to_string()))
    }

    /// Loads the demand and the provisions in flight.
    pub fn load_ledger(&self) -> Result<Ledger, CacheError> {
        Ok(Ledger {
            demand: self.decode_all(&self.demand, "demand")?,
            in_flight: self.decode_all(&self.in_flight, "in_flight")?,
            returning: self
                .decode_all::<()>(&self.returning, "returning")?
                .into_keys()
                .collect(),
        })
    }

    /// Streams every machine record to `each`, borrowed from the stored pages (no copy of the
    /// whole ledger is built: a 500K-machine shard restarts straight into its engine).
    pub fn load_machines(&self, mut each: impl FnMut(MachineView<'_>)) -> Result<(), CacheError> {
        for item in self.ledger.iter() {
            let (key, value) = item.into_inner().map_err(|e| self.err(e))?;
            for machine in self.decode_page(&key, &value)? {
                each(machine);
            }
        }
        Ok(())
    }

    fn decode_page<'a>(
        &self,
        key: &[u8],
        value: &'a [u8],
    ) -> Result<Vec<MachineView<'a>>, CacheError> {
        postcard::from_bytes(value).map_err(|e| {
            let page = <[u8; 4]>::try_from(key).map_or_else(
                |_| format!("{key:?}"),
                |raw| u32::from_be_bytes(raw).to_string(),
            );
            self.corrupt(&format!("ledger page {page}"), e.to_string())
        })
    }

    fn ledger_count(&self) -> parking_lot::MutexGuard<'_, u64> {
        self.ledger_writes.lock()
    }

    /// Machines in the ledger.
    pub fn machine_count(&self) -> u64 {
        *self.ledger_count()
    }

    /// Adds to `batch` the rewrite of every ledger page that `upserts` or `removals` touch
    /// and the new machine count, which it returns (`count` is the count before). The caller
    /// holds `ledger_writes` until the batch is committed.
    fn edit_pages(
        &self,
        batch: &mut OwnedWriteBatch,
        mut count: u64,
        upserts: &[MachineView<'_>],
        removals: &[&str],
    ) -> Result<u64, CacheError> {
        // (page, edit): `Some` writes a record, `None` removes the id. Sorted by page, stable,
        // so edits of one machine keep their order and the last one wins.
        let mut edits: Vec<(u32, &str, Option<&MachineView<'_>>)> = upserts
            .iter()
            .map(|m| (ledger_page(m.id), m.id, Some(m)))
            .chain(removals.iter().map(|id| (ledger_page(id), *id, None)))
            .collect();
        edits.sort_by_key(|(page, _, _)| *page);
        for run in edits.chunk_by(|a, b| a.0 == b.0) {
            let page = run[0].0;
            let key = page.to_be_bytes();
            let stored = self.ledger.get(key).map_err(|e| self.err(e))?;
            let mut records = match &stored {
                Some(bytes) => self.decode_page(&key, bytes)?,
                None => Vec::with_capacity(run.len()),
            };
            // Saturating: a damaged count must not stop the ledger being written.
            count = count.saturating_sub(records.len() as u64);
            for (_, id, record) in run {
                records.retain(|r| r.id != *id);
                records.extend(record.copied());
            }
            count += records.len() as u64;
            if records.is_empty() {
                batch.remove(&self.ledger, key);
            } else {
                let size = stored.as_ref().map_or(0, |b| b.len()) + 160 * run.len();
                let bytes = postcard::to_extend(&records, Vec::with_capacity(size))
                    .map_err(|e| self.corrupt(&format!("ledger page {page}"), e.to_string()))?;
                batch.insert(&self.ledger, key, bytes);
            }
        }
        batch.insert(&self.meta, META_LEDGER_MACHINES, count.to_be_bytes());
        Ok(count)
    }

    /// Writes machine records (and removes in-flight entries they complete) durably.
    pub fn store_machines(
        &self,
        machines: &[&Machine],
        finished: &[&str],
    ) -> Result<(), CacheError> {
        let views: Vec<MachineView<'_>> = machines.iter().map(|m| m.view()).collect();
        let mut count = self.ledger_count();
        let mut batch = self.db.batch();
        let counted = self.edit_pages(&mut batch, *count, &views, &[])?;
        for id in finished {
            batch.remove(&self.in_flight, *id);
        }
        batch.commit().map_err(|e| self.err(e))?;
        self.sync()?;
        *count = counted;
        Ok(())
    }

    /// Forgets machines returned to the provider, durably.
    pub fn remove_machines(&self, ids: &[&str]) -> Result<(), CacheError> {
        let mut count = self.ledger_count();
        let mut batch = self.db.batch();
        let counted = self.edit_pages(&mut batch, *count, &[], ids)?;
        for id in ids {
            batch.remove(&self.returning, *id);
        }
        batch.commit().map_err(|e| self.err(e))?;
        self.sync()?;
        *count = counted;
        Ok(())
    }

    /// Records provisions about to be started, durably, before the provider is called.
    pub fn store_in_flight(&self, started: &[(&str, &Provision)]) -> Result<(), CacheError> {
        let mut batch = self.db.batch();
        for (id, provision) in started {
            batch.insert(&self.in_flight, *id, self.encode(id, provision)?);
        }
        batch.commit().map_err(|e| self.err(e))?;
        self.sync()
    }

    /// Records machines about to be returned to the provider as surplus, durably, before the
    /// provider is called.
    pub fn store_returning(&self, ids: &[String]) -> Result<(), CacheError> {
        let mut batch = self.db.batch();
        for id in ids {
            batch.insert(&self.returning, id.as_str(), self.encode(id, &())?);
        }
        batch.commit().map_err(|e| self.err(e))?;
        self.sync()
    }

    /// Replaces a cluster's demand in the journal, without an fsync: durable once
    /// [`Cache::demand_durable_through`] the returned batch number resolves.
    pub fn write_demand(&self, cluster: &str, rows: &[Need]) -> Result<u64, CacheError> {
        if rows.is_empty() {
            self.demand.remove(cluster).map_err(|e| self.err(e))?;
        } else {
            self.demand
                .insert(cluster, self.encode(cluster, &rows)?)
                .map_err(|e| self.err(e))?;
        }
        self.rotate_full_memtables()?;
        Ok(self.demand_commit.wrote())
    }

    /// Resolves once demand batch `batch` and every one before it is fsynced; one fsync,
    /// on a blocking thread, covers every batch written while it waited.
    pub async fn demand_durable_through(&self, batch: u64) -> Result<(), CacheError> {
        self.demand_commit
            .durable_through(batch)
            .await
            .map_err(|e| self.err(e))
    }

    /// Replaces a cluster's demand durably, waiting on the disk (benches and tests, which fill a
    /// cache without a running worker).
    pub fn store_demand(&self, cluster: &str, rows: &[Need]) -> Result<(), CacheError> {
        self.write_demand(cluster, rows)?;
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An update as a coordinator that stamps grants sends it: every added domain is granted
    /// at the update's revision.
    fn update(revision: u64, full: bool, added: &[&str], removed: &[&str]) -> pb::AssignmentUpdate {
        pb::AssignmentUpdate {
            revision,
            term: 1,
            full,
            domains_added: added.iter().map(|s| s.to_string()).collect(),
            domains_removed: removed.iter().map(|s| s.to_string()).collect(),
            domain_grants: added.iter().map(|s| (s.to_string(), revision)).collect(),
            status: "active".into(),
            ..Default::default()
        }
    }

    fn slice(provider: &str, region: &str, amount: u64, granted: u64) -> pb::QuotaSliceOf {
        pb::QuotaSliceOf {
            provider: provider.into(),
            region: region.into(),
            amount,
            granted,
        }
    }

    fn grants(a: &Assignments) -> Vec<(&str, u64)> {
        a.domain_grants
            .iter()
            .map(|(d, g)| (d.as_str(), *g))
            .collect()
    }

    #[test]
    fn domain_grants_follow_listings_and_deltas() {
        let mut a = Assignments::default();
        let mut full = update(5, true, &["z=1", "z=2"], &[]);
        full.restore_epoch = 2;
        full.domain_grants = [("z=1".to_string(), 3), ("z=2".to_string(), 5)].into();
        assert!(a.apply(&full));
        assert_eq!(grants(&a), [("z=1", 3), ("z=2", 5)]);
        assert_eq!(a.domain_grant("z=1"), Some((2, 3)));
        assert_eq!(a.domain_grant("z=2"), Some((2, 5)));
        assert_eq!(a.domain_grant("z=9"), None);

        // A delta adds z=3 with its grant and removes z=1, whose grant goes with it.
        let mut delta = update(6, false, &["z=3"], &["z=1"]);
        delta.restore_epoch = 2;
        assert!(a.apply(&delta));
        assert_eq!(grants(&a), [("z=2", 5), ("z=3", 6)]);
        assert_eq!(a.domain_grant("z=1"), None);

        // z=1 given back later: it takes the new grant, not the old one.
        let mut back = update(9, false, &["z=1"], &[]);
        back.restore_epoch = 2;
        assert!(a.apply(&back));
        assert_eq!(a.domain_grant("z=1"), Some((2, 9)));

        // Taken away and given back in one update: the new grant.
        let mut moved = update(11, false, &["z=2"], &["z=2"]);
        moved.restore_epoch = 2;
        assert!(a.apply(&moved));
        assert_eq!(grants(&a), [("z=1", 9), ("z=2", 11), ("z=3", 6)]);

        // A stale update (a lagging replica's older listing) changes no grant.
        let held = a.clone();
        let mut stale = update(10, true, &["z=1", "z=4"], &[]);
        stale.restore_epoch = 2;
        assert!(!a.apply(&stale));
        assert_eq!(a, held);
        // Nor does one from an older restore epoch, whatever its revision.
        let mut older = update(50, true, &["z=4"], &[]);
        older.restore_epoch = 1;
        assert!(!a.apply(&older));
        assert_eq!(a, held);

        // A full listing replaces the grants: z=3 is gone, z=1 takes the listing's grant.
        let mut relisted = update(12, true, &["z=1", "z=2"], &[]);
        relisted.restore_epoch = 2;
        relisted.domain_grants = [("z=1".to_string(), 12), ("z=2".to_string(), 11)].into();
        assert!(a.apply(&relisted));
        assert_eq!(grants(&a), [("z=1", 12), ("z=2", 11)]);

        // After a restore the listing (of a lower revision) replaces every grant, and the
        // grants carry the new restore epoch.
        let mut restored = update(4, true, &["z=2"], &[]);
        restored.restore_epoch = 3;
        assert!(a.apply(&restored));
        assert_eq!(grants(&a), [("z=2", 4)]);
        assert_eq!(a.domain_grant("z=2"), Some((3, 4)));
        assert_eq!(a.domain_grant("z=1"), None);
    }

    #[test]
    fn a_domain_without_a_grant_has_grant_zero() {
        let mut a = Assignments::default();
        // An older coordinator: no domain_grants at all.
        let mut old = update(5, true, &["z=1"], &[]);
        old.domain_grants.clear();
        assert!(a.apply(&old));
        assert_eq!(a.domain_grant("z=1"), Some((0, 0)));
        // A grant for a domain the update does not add is not a grant.
        let mut delta = update(6, false, &["z=2"], &[]);
        delta.domain_grants = [("z=1".to_string(), 6), ("z=9".to_string(), 6)].into();
        assert!(a.apply(&delta));
        assert_eq!(grants(&a), [("z=1", 0), ("z=2", 0)]);
        assert_eq!(a.domain_grant("z=9"), None);
    }

    #[test]
    fn slice_grants_follow_the_slice_table() {
        let mut a = Assignments::default();
        let mut full = update(5, true, &[], &[]);
        full.restore_epoch = 1;
        full.slices = vec![slice("aws", "r1", 7, 4), slice("gcp", "r2", 3, 5)];
        assert!(a.apply(&full));
        assert_eq!(a.quota_grant("aws", "r1"), Some((1, 4, 7)));
        assert_eq!(a.quota_grant("gcp", "r2"), Some((1, 5, 3)));
        assert_eq!(a.quota_grant("aws", "r2"), None);

        // Another shard's slice of aws/r1 changed: ours is resent with the same amount and
        // the table's new grant.
        let mut table = update(8, false, &[], &[]);
        table.restore_epoch = 1;
        table.slices = vec![slice("aws", "r1", 7, 8)];
        assert!(a.apply(&table));
        assert_eq!(a.quota_grant("aws", "r1"), Some((1, 8, 7)));
        assert_eq!(a.slices[&("aws".to_string(), "r1".to_string())], 7);
        assert_eq!(a.quota_grant("gcp", "r2"), Some((1, 5, 3)));

        // A new amount with its grant; then amount 0 removes the slice and its grant.
        let mut resized = update(9, false, &[], &[]);
        resized.restore_epoch = 1;
        resized.slices = vec![slice("aws", "r1", 10, 9), slice("gcp", "r2", 0, 9)];
        assert!(a.apply(&resized));
        assert_eq!(a.quota_grant("aws", "r1"), Some((1, 9, 10)));
        assert_eq!(a.quota_grant("gcp", "r2"), None);
        assert!(
            !a.slice_grants
                .contains_key(&("gcp".to_string(), "r2".to_string()))
        );

        // A stale update leaves the grants as they were.
        let held = a.clone();
        let mut stale = update(9, false, &[], &[]);
        stale.restore_epoch = 1;
        stale.slices = vec![slice("aws", "r1", 10, 20), slice("gcp", "r2", 3, 20)];
        assert!(!a.apply(&stale));
        assert_eq!(a, held);

        // A slice from an older coordinator has grant 0.
        let mut unstamped = update(10, false, &[], &[]);
        unstamped.restore_epoch = 1;
        unstamped.slices = vec![slice("gcp", "r2", 2, 0)];
        assert!(a.apply(&unstamped));
        assert_eq!(a.quota_grant("gcp", "r2"), Some((1, 0, 2)));

        // A full listing replaces the slices and their grants.
        let mut relisted = update(11, true, &[], &[]);
        relisted.restore_epoch = 1;
        relisted.slices = vec![slice("gcp", "r2", 2, 11)];
        assert!(a.apply(&relisted));
        assert_eq!(a.quota_grant("aws", "r1"), None);
        assert_eq!(a.quota_grant("gcp", "r2"), Some((1, 11, 2)));
        assert_eq!(a.slice_grants.len(), 1);
    }

    #[test]
    fn stale_updates_are_ignored() {
        let mut a = Assignments::default();
        assert!(a.apply(&update(5, true, &["z=1", "z=2"], &[])));
        assert!(a.apply(&update(6, false, &[], &["z=1"])));
        // A lagging replica replays an older full listing: it must not bring z=1 back.
        assert!(!a.apply(&update(5, true, &["z=1", "z=2"], &[])));
        assert_eq!(a.domains, BTreeSet::from(["z=2".to_string()]));
        assert_eq!(a.revision, 6);
    }

    #[test]
    fn the_cache_survives_reopening_and_counts_epochs() {
        let dir = tempfile::tempdir().expect("dir");
        let mut a = Assignments::default();
        {
            let cache = Cache::open(dir.path(), "s1").expect("open");
            assert_eq!(cache.bump_epoch().expect("epoch"), 1);
            let before = a.clone();
            let mut u = update(3, true, &["z=1", "z=2"], &[]);
            u.clusters_added = vec!["c1".into()];
            u.slices = vec![slice("aws", "r1", 7, 3)];
            a.apply(&u);
            cache.store(&before, &a).expect("store");
            let before = a.clone();
            a.apply(&update(4, false, &["z=3"], &["z=1"]));
            cache.store(&before, &a).expect("store");
        }
        let cache = Cache::open(dir.path(), "s1").expect("reopen");
        assert_eq!(cache.bump_epoch().expect("epoch"), 2);
        assert_eq!(cache.load().expect("load"), a);
        drop(cache);
        assert!(matches!(
            Cache::open(dir.path(), "s2"),
            Err(CacheError::Foreign { .. })
        ));
    }

    /// Applies `u` to `a` and stores the change, as the worker does.
    fn apply_and_store(cache: &Cache, a: &mut Assignments, u: &pb::AssignmentUpdate) {
        let before = a.clone();
        assert!(a.apply(u), "update {} applies", u.revision);
        cache.store(&before, a).expect("store");
    }

    #[test]
    fn grants_survive_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let mut a = Assignments::default();
        {
            let cache = Cache::open(dir.path(), "s1").expect("open");
            let mut full = update(3, true, &["z=1", "z=2", "z=3"], &[]);
            full.restore_epoch = 2;
            // z=1 comes without a grant: its 0 is stored too.
            full.domain_grants = [("z=2".to_string(), 3), ("z=3".to_string(), 2)].into();
            full.slices = vec![slice("aws", "r1", 7, 3), slice("gcp", "r2", 2, 1)];
            // c0 comes without a grant: its 0 is stored too.
            full.clusters_added = vec!["c0".into(), "c1".into(), "c2".into()];
            full.cluster_grants = [("c1".to_string(), 3), ("c2".to_string(), 2)].into();
            apply_and_store(&cache, &mut a, &full);
            // z=2 moved away and back in one update: only its grant changes.
            let mut moved = update(5, false, &["z=2", "z=4"], &["z=2", "z=3"]);
            moved.restore_epoch = 2;
            // The aws table changed elsewhere (same amount); gcp/r2 is removed.
            moved.slices = vec![slice("aws", "r1", 7, 5), slice("gcp", "r2", 0, 5)];
            // c2 leaves; c3 arrives with its grant.
            moved.clusters_removed = vec!["c2".into()];
            moved.clusters_added = vec!["c3".into()];
            moved.cluster_grants = [("c3".to_string(), 5)].into();
            apply_and_store(&cache, &mut a, &moved);
            let mut resized = update(6, false, &[], &[]);
            resized.restore_epoch = 2;
            resized.slices = vec![slice("gcp", "r3", 4, 6)];
            apply_and_store(&cache, &mut a, &resized);
        }
        let cache = Cache::open(dir.path(), "s1").expect("reopen");
        let loaded = cache.load().expect("load");
        assert_eq!(loaded, a);
        assert_eq!(grants(&loaded), [("z=1", 0), ("z=2", 5), ("z=4", 5)]);
        assert_eq!(loaded.domain_grant("z=2"), Some((2, 5)));
        assert_eq!(loaded.domain_grant("z=3"), None);
        assert_eq!(loaded.quota_grant("aws", "r1"), Some((2, 5, 7)));
        assert_eq!(loaded.quota_grant("gcp", "r2"), None);
        assert_eq!(loaded.quota_grant("gcp", "r3"), Some((2, 6, 4)));
        assert_eq!(loaded.cluster_grant("c0"), Some((2, 0)));
        assert_eq!(loaded.cluster_grant("c1"), Some((2, 3)));
        assert_eq!(loaded.cluster_grant("c2"), None);
        assert_eq!(loaded.cluster_grant("c3"), Some((2, 5)));
        // The removed slice's grant record is gone from disk, not only ignored.
        assert!(cache.slice_grants.get("q/gcp/r2").expect("get").is_none());
        // The records as laid out on disk: a domain's grant, a slice's amount then its grant.
        let record =
            |keyspace: &Keyspace, key: &str| keyspace.get(key).expect("get").expect(key).to_vec();
        assert_eq!(record(&cache.items, "d/z=2"), 5u64.to_be_bytes());
        assert_eq!(record(&cache.items, "c/c3"), 5u64.to_be_bytes());
        assert_eq!(record(&cache.items, "q/aws/r1"), 7u64.to_be_bytes());
        assert_eq!(
            record(&cache.slice_grants, "q/aws/r1"),
            [7u64.to_be_bytes(), 5u64.to_be_bytes()].concat()
        );

        // A full listing after the restart replaces grants on disk too.
        let mut a = loaded;
        let mut relisted = update(7, true, &["z=4"], &[]);
        relisted.restore_epoch = 2;
        relisted.domain_grants = [("z=4".to_string(), 7)].into();
        relisted.slices = vec![slice("aws", "r1", 7, 7)];
        apply_and_store(&cache, &mut a, &relisted);
        drop(cache);
        let loaded = Cache::open(dir.path(), "s1")
            .expect("reopen")
            .load()
            .expect("load");
        assert_eq!(loaded, a);
        assert_eq!(grants(&loaded), [("z=4", 7)]);
        assert_eq!(loaded.quota_grant("aws", "r1"), Some((2, 7, 7)));
        assert_eq!(loaded.slice_grants.len(), 1);
    }

    /// Writes assignments exactly as builds from before grants did: the `assignments` and
    /// `meta` keyspaces only, empty domain records, 8-byte slice records.
    fn write_cache_without_grants(dir: &Path) {
        let db = Database::builder(dir).open().expect("db");
        let options = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        let items = db.keyspace("assignments", options).expect("assignments");
        let meta = db.keyspace("meta", options).expect("meta");
        meta.insert("shard_id", "s1").expect("shard");
        meta.insert("ledger_pages", 65536u64.to_be_bytes())
            .expect("pages");
        meta.insert("revision", 40u64.to_be_bytes()).expect("rev");
        meta.insert("term", 3u64.to_be_bytes()).expect("term");
        meta.insert("restore_epoch", 1u64.to_be_bytes())
            .expect("restore epoch");
        meta.insert("status", "active").expect("status");
        items.insert("d/z=1", []).expect("z=1");
        items.insert("d/z=2", []).expect("z=2");
        items.insert("c/c1", []).expect("c1");
        items.insert("q/aws/r1", 7u64.to_be_bytes()).expect("slice");
        db.persist(PersistMode::SyncAll).expect("sync");
        assert!(!db.keyspace_exists(SLICE_GRANTS));
    }

    #[test]
    fn a_cache_from_before_grants_opens_with_grants_zero() {
        let dir = tempfile::tempdir().expect("dir");
        write_cache_without_grants(dir.path());
        let cache = Cache::open(dir.path(), "s1").expect("open an old cache");
        let mut a = cache.load().expect("load");
        assert_eq!(
            a,
            Assignments {
                revision: 40,
                term: 3,
                restore_epoch: 1,
                domains: BTreeSet::from(["z=1".to_string(), "z=2".to_string()]),
                domain_grants: BTreeMap::from([("z=1".to_string(), 0), ("z=2".to_string(), 0)]),
                clusters: BTreeSet::from(["c1".to_string()]),
                cluster_grants: BTreeMap::from([("c1".to_string(), 0)]),
                slices: BTreeMap::from([(("aws".to_string(), "r1".to_string()), 7)]),
                slice_grants: BTreeMap::from([(("aws".to_string(), "r1".to_string()), 0)]),
                status: "active".into(),
            }
        );
        assert_eq!(a.domain_grant("z=1"), Some((1, 0)));
        assert_eq!(a.quota_grant("aws", "r1"), Some((1, 0, 7)));
        assert_eq!(a.cluster_grant("c1"), Some((1, 0)));

        // The first stamped update takes; the untouched z=1 keeps its old (empty) record.
        let mut stamped = update(41, false, &["z=3"], &[]);
        stamped.restore_epoch = 1;
        stamped.slices = vec![slice("aws", "r1", 7, 41)];
        apply_and_store(&cache, &mut a, &stamped);
        assert_eq!(
            cache.items.get("d/z=1").expect("get").expect("z=1").len(),
            0
        );
        assert_eq!(
            cache
                .items
                .get("d/z=3")
                .expect("get")
                .expect("z=3")
                .as_ref(),
            41u64.to_be_bytes()
        );
        // The slice record keeps the 8 bytes a build from before grants reads.
        assert_eq!(
            cache
                .items
                .get("q/aws/r1")
                .expect("get")
                .expect("slice")
                .as_ref(),
            7u64.to_be_bytes()
        );
        drop(cache);
        let loaded = Cache::open(dir.path(), "s1")
            .expect("reopen")
            .load()
            .expect("load");
        assert_eq!(loaded, a);
        assert_eq!(grants(&loaded), [("z=1", 0), ("z=2", 0), ("z=3", 41)]);
        assert_eq!(loaded.quota_grant("aws", "r1"), Some((1, 41, 7)));
    }

    #[test]
    fn a_slice_grant_for_another_amount_is_not_used() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = Cache::open(dir.path(), "s1").expect("open");
        let mut a = Assignments::default();
        let mut full = update(3, true, &[], &[]);
        full.slices = vec![slice("aws", "r1", 7, 3), slice("gcp", "r2", 2, 3)];
        apply_and_store(&cache, &mut a, &full);
        // A rolled-back build (one that keeps no grants) resized aws/r1 and removed gcp/r2,
        // leaving their grant records behind.
        cache
            .items
            .insert("q/aws/r1", 9u64.to_be_bytes())
            .expect("raw");
        cache.items.remove("q/gcp/r2").expect("raw");
        cache.sync().expect("sync");
        let mut loaded = cache.load().expect("load");
        assert_eq!(loaded.quota_grant("aws", "r1"), Some((0, 0, 9)));
        assert_eq!(loaded.quota_grant("gcp", "r2"), None);
        assert!(
            !loaded
                .slice_grants
                .contains_key(&("gcp".to_string(), "r2".to_string()))
        );
        // The next update with a grant writes a record that counts again.
        let mut table = update(4, false, &[], &[]);
        table.slices = vec![slice("aws", "r1", 9, 4)];
        apply_and_store(&cache, &mut loaded, &table);
        assert_eq!(
            cache.load().expect("load").quota_grant("aws", "r1"),
            Some((0, 4, 9))
        );
    }

    #[test]
    fn a_corrupt_grant_is_an_error_naming_its_record() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = Cache::open(dir.path(), "s1").expect("open");
        cache.items.insert("d/z=1", b"abc").expect("raw insert");
        let text = cache.load().expect_err("corrupt domain grant").to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("d/z=1"), "{text}");
        cache.items.remove("d/z=1").expect("raw remove");
        cache
            .slice_grants
            .insert("q/aws/r1", 7u64.to_be_bytes())
            .expect("raw insert");
        let text = cache.load().expect_err("corrupt slice grant").to_string();
        assert!(text.contains("slice_grants/q/aws/r1"), "{text}");
    }

    fn machine(id: &str, domain: &str, assigned_to: Option<&str>) -> Machine {
        Machine {
            id: id.into(),
            domain: domain.into(),
            resources: crate::engine::Resources {
                cpu_millis: 1000,
                memory_mib: 1024,
                gpus: 0,
            },
            quota: Some(("aws".into(), "r1".into())),
            assigned_to: assigned_to.map(Into::into),
        }
    }

    fn ledger(cache: &Cache) -> BTreeMap<String, Machine> {
        let mut out = BTreeMap::new();
        cache
            .load_machines(|m| {
                let record = Machine {
                    id: m.id.into(),
                    domain: m.domain.into(),
                    resources: m.resources,
                    quota: m.quota.map(|(p, r)| (p.into(), r.into())),
                    assigned_to: m.assigned_to.map(Into::into),
                };
                assert!(
                    out.insert(m.id.to_string(), record).is_none(),
                    "{} twice",
                    m.id
                );
            })
            .expect("load machines");
        out
    }

    #[test]
    fn ledger_pages_keep_every_update_and_removal_across_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let mut expected = BTreeMap::new();
        {
            let cache = Cache::open(dir.path(), "s1").expect("open");
            // Enough machines that pages hold several each.
            let first: Vec<Machine> = (0..(3 * LEDGER_PAGES as usize))
                .map(|i| machine(&format!("m{i}"), "z=1", None))
                .collect();
            cache
                .store_machines(&first.iter().collect::<Vec<_>>(), &[])
                .expect("store");
            for m in &first {
                expected.insert(m.id.clone(), m.clone());
            }
            // Reassign some, name one twice in a call (the last record wins), remove others.
            let changed = machine("m7", "z=1", Some("c1/a"));
            let twice = [
                machine("m9", "z=2", None),
                machine("m9", "z=3", Some("c1/b")),
            ];
            cache
                .store_machines(&[&changed, &twice[0], &twice[1]], &[])
                .expect("update");
            expected.insert("m7".into(), changed.clone());
            expected.insert("m9".into(), twice[1].clone());
            let gone: Vec<String> = (100..5000).map(|i| format!("m{i}")).collect();
            cache
                .remove_machines(&gone.iter().map(String::as_str).collect::<Vec<_>>())
                .expect("remove");
            for id in &gone {
                expected.remove(id);
            }
            assert_eq!(ledger(&cache), expected);
            assert_eq!(cache.machine_count(), expected.len() as u64);
        }
        let cache = Cache::open(dir.path(), "s1").expect("reopen");
        assert_eq!(ledger(&cache), expected);
        assert_eq!(cache.machine_count(), expected.len() as u64);
        cache.remove_machines(&["m7", "unknown"]).expect("remove");
        expected.remove("m7");
        assert_eq!(ledger(&cache), expected);
        assert_eq!(cache.machine_count(), expected.len() as u64);
    }

    /// A burst of demand writes (no fsync between them, as a busy worker makes them) leaves
    /// the cache's memtables flushed rather than held on the heap.
    #[test]
    fn a_burst_of_demand_writes_is_flushed_out_of_memory() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = Cache::open(dir.path(), "s1").expect("open");
        let rows: Vec<Need> = (0..1)
            .map(|n| Need {
                id: format!("c/web-{n}"),
                cluster: "c".into(),
                count: 2,
                resources: crate::engine::Resources::default(),
                priority: 0,
                placement: crate::engine::Placement::Any,
            })
            .collect();
        for n in 0..400_000 {
            cache
                .write_demand(&format!("cluster-{n}"), &rows)
                .expect("write");
        }
        let held = ballast_memtables::wait_for_write_buffer(
            &cache.db,
            4 * MEMTABLE_BYTES,
            std::time::Duration::from_secs(60),
        );
        assert!(
            held <= 4 * MEMTABLE_BYTES,
            "{held} bytes of demand still in memtables 60 s after the burst: flushes stopped"
        );
    }

    #[test]
    fn an_unbound_cluster_loses_its_demand_and_returns_survive_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let need = |cluster: &str| Need {
            id: format!("{cluster}/web"),
            cluster: cluster.into(),
            count: 2,
            resources: crate::engine::Resources::default(),
            priority: 0,
            placement: crate::engine::Placement::Any,
        };
        {
            let cache = Cache::open(dir.path(), "s1").expect("open");
            let mut bound = update(1, true, &["z=1"], &[]);
            bound.clusters_added = vec!["c1".into(), "c2".into()];
            let (mut before, mut after) = (Assignments::default(), Assignments::default());
            assert!(after.apply(&bound));
            cache.store(&before, &after).expect("store");
            cache.store_demand("c1", &[need("c1")]).expect("c1");
            cache.store_demand("c2", &[need("c2")]).expect("c2");
            let mut moved = update(2, false, &[], &[]);
            moved.clusters_removed = vec!["c1".into()];
            before = after.clone();
            assert!(after.apply(&moved));
            cache.store(&before, &after).expect("store");
            let m = [machine("m1", "z=1", None), machine("m2", "z=1", None)];
            cache
                .store_machines(&[&m[0], &m[1]], &[])
                .expect("machines");
            cache
                .store_returning(&["m1".to_string(), "m2".to_string()])
                .expect("returning");
            cache.remove_machines(&["m2"]).expect("returned");
        }
        let cache = Cache::open(dir.path(), "s1").expect("reopen");
        let ledger = cache.load_ledger().expect("ledger");
        assert_eq!(ledger.demand.keys().collect::<Vec<_>>(), ["c2"]);
        assert_eq!(ledger.returning, BTreeSet::from(["m1".to_string()]));
    }

    #[test]
    fn a_cache_with_one_record_per_machine_is_moved_into_pages() {
        let dir = tempfile::tempdir().expect("dir");
        let machines = [machine("a", "z=1", Some("c1/x")), machine("b", "z=2", None)];
        {
            let cache = Cache::open(dir.path(), "s1").expect("open");
            let legacy = cache
                .db
                .keyspace(LEGACY_MACHINES, KeyspaceCreateOptions::default)
                .expect("legacy keyspace");
            for m in &machines {
                legacy
                    .insert(&m.id, postcard::to_allocvec(m).expect("encode"))
                    .expect("insert");
            }
            cache.sync().expect("sync");
        }
        let cache = Cache::open(dir.path(), "s1").expect("reopen");
        assert!(!cache.db.keyspace_exists(LEGACY_MACHINES));
        let expected: BTreeMap<String, Machine> =
            machines.iter().map(|m| (m.id.clone(), m.clone())).collect();
        assert_eq!(ledger(&cache), expected);
        assert_eq!(cache.machine_count(), 2);
        drop(cache);
        assert_eq!(
            ledger(&Cache::open(dir.path(), "s1").expect("again")),
            expected
        );
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_cache() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = Cache::open(dir.path(), "s1").expect("open");
        cache
            .ledger
            .insert(7u32.to_be_bytes(), b"not postcard")
            .expect("raw insert");
        let error = cache.load_machines(|_| {}).expect_err("corrupt ledger");
        let text = error.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("ledger page 7"), "{text}");
        // Writing to a corrupt page fails too, and leaves it as it was.
        let m = machine(&id_in_page(7), "z=1", None);
        assert!(cache.store_machines(&[&m], &[]).is_err());
        assert!(cache.load_machines(|_| {}).is_err());
        cache
            .meta
            .insert(META_REVISION, b"xyz")
            .expect("raw insert");
        assert!(
            cache
                .load()
                .expect_err("corrupt revision")
                .to_string()
                .contains("revision")
        );
    }

    fn id_in_page(page: u32) -> String {
        (0..)
            .map(|i| format!("m{i}"))
            .find(|id| ledger_page(id) == page)
            .expect("some id hashes to every page")
    }

    #[test]
    fn ledger_pages_are_fixed_on_disk() {
        // Pages are on disk: the hash must never change between builds.
        assert_eq!(ledger_page(""), (0xcbf2_9ce4_8422_2325_u64 % 65536) as u32);
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(ledger_page("a"), 0xec8c);
        let pages: BTreeSet<u32> = (0..1000).map(|i| ledger_page(&format!("m{i}"))).collect();
        assert!(pages.len() > 950, "ids spread over pages: {}", pages.len());
    }
}
