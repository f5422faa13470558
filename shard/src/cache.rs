//! The shard's durable cache (fjall): its assignments, the revision and highest coordinator
//! term they reflect, the cluster it belongs to and its restart epoch. This is what lets a
//! shard restart and keep provisioning while every coordinator replica is down.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ballast_protocol::pb;

use crate::engine::{Machine, MachineView, Need, Provision};
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
    /// Clusters bound.
    pub clusters: BTreeSet<String>,
    /// Quota slices by (provider, region).
    pub slices: BTreeMap<(String, String), u64>,
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
            self.clusters.clear();
            self.slices.clear();
        }
        for d in &update.domains_removed {
            self.domains.remove(d);
        }
        self.domains.extend(update.domains_added.iter().cloned());
        for c in &update.clusters_removed {
            self.clusters.remove(c);
        }
        self.clusters.extend(update.clusters_added.iter().cloned());
        for s in &update.slices {
            let key = (s.provider.clone(), s.region.clone());
            if s.amount == 0 {
                self.slices.remove(&key);
            } else {
                self.slices.insert(key, s.amount);
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
pub struct Cache {
    db: Database,
    items: Keyspace,
    meta: Keyspace,
    /// The machine ledger in [`LEDGER_PAGES`] pages (see [`ledger_page`]).
    ledger: Keyspace,
    /// Machines in the ledger (kept in `meta` beside the pages, so a restart can size the
    /// engine's tables before loading). Held from reading a ledger page until its rewrite is
    /// committed.
    ledger_writes: Mutex<u64>,
    demand: Keyspace,
    in_flight: Keyspace,
    returning: Keyspace,
    path: String,
}

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
        let options = || KeyspaceCreateOptions::default().max_memtable_size(4 * 1024 * 1024);
        let items = db.keyspace("assignments", options).map_err(wrap)?;
        let meta = db.keyspace("meta", options).map_err(wrap)?;
        let ledger = db.keyspace("ledger_pages", options).map_err(wrap)?;
        let demand = db.keyspace("demand", options).map_err(wrap)?;
        let in_flight = db.keyspace("in_flight", options).map_err(wrap)?;
        let returning = db.keyspace("returning", options).map_err(wrap)?;
        let cache = Cache {
            db,
            items,
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

    fn sync(&self) -> Result<(), CacheError> {
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
                a.domains.insert(domain.to_string());
            } else if let Some(cluster) = key.strip_prefix("c/") {
                a.clusters.insert(cluster.to_string());
            } else if let Some(rest) = key.strip_prefix("q/") {
                let (provider, region) = rest
                    .split_once('/')
                    .ok_or_else(|| self.corrupt(&key, "slice key without region"))?;
                let raw: [u8; 8] = value
                    .as_ref()
                    .try_into()
                    .map_err(|_| self.corrupt(&key, "slice amount is not 8 bytes"))?;
                a.slices.insert(
                    (provider.to_string(), region.to_string()),
                    u64::from_be_bytes(raw),
                );
            } else {
                return Err(self.corrupt(&key, "unknown record kind"));
            }
        }
        Ok(a)
    }

    /// Makes `next` (the result of applying `update` to `previous`) durable in one atomic,
    /// fsynced batch.
    pub fn store(&self, previous: &Assignments, next: &Assignments) -> Result<(), CacheError> {
        let mut batch = self.db.batch();
        for d in previous.domains.difference(&next.domains) {
            batch.remove(&self.items, domain_key(d));
        }
        for d in next.domains.difference(&previous.domains) {
            batch.insert(&self.items, domain_key(d), []);
        }
        for c in previous.clusters.difference(&next.clusters) {
            batch.remove(&self.items, cluster_key(c));
            // A cluster bound elsewhere is the other shard's to serve: its demand goes too.
            batch.remove(&self.demand, c.as_str());
        }
        for c in next.clusters.difference(&previous.clusters) {
            batch.insert(&self.items, cluster_key(c), []);
        }
        for (provider, region) in previous.slices.keys() {
            if !next
                .slices
                .contains_key(&(provider.clone(), region.clone()))
            {
                batch.remove(&self.items, slice_key(provider, region));
            }
        }
        for ((provider, region), amount) in &next.slices {
            if previous.slices.get(&(provider.clone(), region.clone())) != Some(amount) {
                batch.insert(
                    &self.items,
                    slice_key(provider, region),
                    amount.to_be_bytes(),
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

    /// Replaces a cluster's demand durably.
    pub fn store_demand(&self, cluster: &str, rows: &[Need]) -> Result<(), CacheError> {
        if rows.is_empty() {
            self.demand.remove(cluster).map_err(|e| self.err(e))?;
        } else {
            self.demand
                .insert(cluster, self.encode(cluster, &rows)?)
                .map_err(|e| self.err(e))?;
        }
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(revision: u64, full: bool, added: &[&str], removed: &[&str]) -> pb::AssignmentUpdate {
        pb::AssignmentUpdate {
            revision,
            term: 1,
            full,
            domains_added: added.iter().map(|s| s.to_string()).collect(),
            domains_removed: removed.iter().map(|s| s.to_string()).collect(),
            status: "active".into(),
            ..Default::default()
        }
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
            u.slices = vec![pb::QuotaSliceOf {
                provider: "aws".into(),
                region: "r1".into(),
                amount: 7,
            }];
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
