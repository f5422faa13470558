//! The reference provider's disk: every change a call makes, written to the journal in one
//! batch, made durable before the call is answered, and read back into a [`Book`] at start.
//! Machines survive the provider's own restart, and so do its fences and the answers it gave
//! per idempotency key.
//!
//! Durability is a group commit: calls write their batches to the journal in the order they
//! ran against the book, then wait until an fsync covers their batch. One fsync runs at a time,
//! outside the book's lock; the calls that wrote while it ran share the next one. Concurrent
//! shards therefore pay one fsync per round of calls instead of one each, and no answer (nor
//! anything a read shows) leaves before what it depends on is on disk.

use std::path::Path;

use ballast_group_commit::GroupCommit;
use ballast_protocol::providerpb::{Grant, Machine};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use prost::Message;

use crate::book::{Answer, Book, Changes, Mark};
use crate::config::Sync;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// fjall failed.
    #[error("provider data dir {path}: {source}")]
    Storage {
        /// Data dir.
        path: String,
        /// Cause.
        source: fjall::Error,
    },
    /// A record does not decode.
    #[error("provider data dir {path}: record {key:?} in {keyspace} is corrupt: {reason}")]
    Corrupt {
        /// Data dir.
        path: String,
        /// Keyspace.
        keyspace: &'static str,
        /// Key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Each keyspace's memtable limit.
const MEMTABLE_BYTES: u64 = 1024 * 1024;

/// The provider's data dir.
pub struct Store {
    db: Database,
    /// Batches written to the journal and how far an fsync has covered them.
    commit: GroupCommit,
    sync: Sync,
    machines: Keyspace,
    domains: Keyspace,
    clusters: Keyspace,
    quotas: Keyspace,
    epochs: Keyspace,
    answers: Keyspace,
    path: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct GrantRecord {
    restore_epoch: u64,
    revision: u64,
}

impl Store {
    /// Opens (or creates) the data dir.
    pub fn open(dir: &Path, sync: Sync) -> Result<Store, StoreError> {
        let path = dir.display().to_string();
        let wrap = |source| StoreError::Storage {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| wrap(fjall::Error::from(e)))?;
        let db = Database::builder(dir)
            .cache_size(2 * 1024 * 1024)
            .max_journaling_size(64 * 1024 * 1024)
            .worker_threads(1)
            .open()
            .map_err(wrap)?;
        // The book is the provider's memory; fjall is read only by `load`, at start. While
        // serving, a memtable is a write buffer and nothing else: its size only sets how often
        // it becomes a table on disk, and six of 4 MiB held ~16 MB of heap under one fleet
        // provider's load. (fjall records the limit when it creates a keyspace: data dirs
        // made before keep theirs.)
        let options = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        Ok(Store {
            machines: db.keyspace("machines", options).map_err(wrap)?,
            domains: db.keyspace("domains", options).map_err(wrap)?,
            clusters: db.keyspace("clusters", options).map_err(wrap)?,
            quotas: db.keyspace("quotas", options).map_err(wrap)?,
            epochs: db.keyspace("epochs", options).map_err(wrap)?,
            answers: db.keyspace("answers", options).map_err(wrap)?,
            commit: GroupCommit::new(db.clone()),
            db,
            sync,
            path,
        })
    }

    fn corrupt(&self, keyspace: &'static str, key: &[u8], reason: impl ToString) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            keyspace,
            key: String::from_utf8_lossy(key).to_string(),
            reason: reason.to_string(),
        }
    }

    fn each(
        &self,
        keyspace: &Keyspace,
        name: &'static str,
        mut put: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
    ) -> Result<(), StoreError> {
        for item in keyspace.iter() {
            let (key, value) = item.into_inner().map_err(|source| StoreError::Storage {
                path: self.path.clone(),
                source,
            })?;
            put(&key, &value).map_err(|reason| self.corrupt(name, &key, reason))?;
        }
        Ok(())
    }

    /// Reads everything back into `book`.
    pub fn load(&self, book: &mut Book) -> Result<(), StoreError> {
        self.each(&self.machines, "machines", |_, value| {
            let machine = Machine::decode(value).map_err(|e| e.to_string())?;
            book.restore_machine(machine);
            Ok(())
        })?;
        self.each(&self.domains, "domains", |key, value| {
            let mark: Mark = serde_json::from_slice(value).map_err(|e| e.to_string())?;
            book.restore_domain(String::from_utf8_lossy(key).to_string(), mark);
            Ok(())
        })?;
        self.each(&self.clusters, "clusters", |key, value| {
            let mark: Mark = serde_json::from_slice(value).map_err(|e| e.to_string())?;
            book.restore_cluster(String::from_utf8_lossy(key).to_string(), mark);
            Ok(())
        })?;
        self.each(&self.quotas, "quotas", |key, value| {
            let key = String::from_utf8_lossy(key).to_string();
            let (provider, region) = key.split_once('\0').ok_or("not provider\\0region")?;
            let grant: GrantRecord = serde_json::from_slice(value).map_err(|e| e.to_string())?;
            book.restore_quota(
                (provider.to_string(), region.to_string()),
                Grant {
                    restore_epoch: grant.restore_epoch,
                    revision: grant.revision,
                },
            );
            Ok(())
        })?;
        self.each(&self.epochs, "epochs", |key, value| {
            let epoch = u64::from_be_bytes(value.try_into().map_err(|_| "not 8 bytes")?);
            book.restore_epoch(String::from_utf8_lossy(key).to_string(), epoch);
            Ok(())
        })?;
        self.each(&self.answers, "answers", |key, value| {
            let answer: Answer = serde_json::from_slice(value).map_err(|e| e.to_string())?;
            book.restore_answer(String::from_utf8_lossy(key).to_string(), answer);
            Ok(())
        })
    }

    /// Writes what `changes` names, as `book` holds it now, to the journal in one batch (call
    /// it under the book's lock, so batches reach the journal in the order the calls ran).
    /// Returns the batch to wait for with [`Store::durable_through`] before answering: this
    /// one, or with nothing changed the last one written, which the answer may rest on.
    pub fn save(&self, book: &Book, changes: &Changes) -> Result<u64, StoreError> {
        if changes.is_empty() {
            return Ok(self.written());
        }
        let per_call = self.sync == Sync::PerCall;
        let mut batch = self
            .db
            .batch()
            .durability(per_call.then_some(PersistMode::SyncAll));
        for id in &changes.machines {
            if let Some(machine) = book.machine(id) {
                batch.insert(&self.machines, id.as_str(), machine.encode_to_vec());
            }
        }
        for domain in &changes.domains {
            if let Some(mark) = book.domain_mark(domain) {
                let value = serde_json::to_vec(mark).expect("plain fields serialize");
                batch.insert(&self.domains, domain.as_str(), value);
            }
        }
        for cluster in &changes.clusters {
            if let Some(mark) = book.cluster_mark(cluster) {
                let value = serde_json::to_vec(mark).expect("plain fields serialize");
                batch.insert(&self.clusters, cluster.as_str(), value);
            }
        }
        for quota in &changes.quotas {
            if let Some(grant) = book.quota_mark(quota) {
                let value = serde_json::to_vec(&GrantRecord {
                    restore_epoch: grant.restore_epoch,
                    revision: grant.revision,
                })
                .expect("plain fields serialize");
                batch.insert(&self.quotas, format!("{}\0{}", quota.0, quota.1), value);
            }
        }
        for shard in &changes.epochs {
            if let Some(epoch) = book.epoch(shard) {
                batch.insert(&self.epochs, shard.as_str(), epoch.to_be_bytes());
            }
        }
        for key in &changes.answers {
            if let Some(answer) = book.answer(key) {
                let value = serde_json::to_vec(answer).expect("plain fields serialize");
                batch.insert(&self.answers, key.as_str(), value);
            }
        }
        for key in &changes.forgotten {
            batch.remove(&self.answers, key.as_str());
        }
        batch.commit().map_err(|source| StoreError::Storage {
            path: self.path.clone(),
            source,
        })?;
        Ok(if per_call {
            self.commit.wrote_durably()
        } else {
            self.commit.wrote()
        })
    }

    /// The last batch written to the journal: what a read answered now may show.
    pub fn written(&self) -> u64 {
        self.commit.written()
    }

    /// Resolves once batch `sequence` (and every batch before it) is fsynced (see
    /// [`GroupCommit::durable_through`]).
    pub async fn durable_through(&self, sequence: u64) -> Result<(), StoreError> {
        self.commit
            .durable_through(sequence)
            .await
            .map_err(|source| StoreError::Storage {
                path: self.path.clone(),
                source,
            })
    }
}
