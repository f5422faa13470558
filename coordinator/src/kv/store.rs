//! The KV store and its history.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    Compare, CompareResult, CompareTarget, DeleteOp, Event, EventKind, KeyRange, KeyValue,
    KvCommand, KvError, KvReply, MAX_KEY_BYTES, MAX_LEASE_TTL, MAX_TXN_OPS, MAX_VALUE_BYTES,
    MIN_LEASE_TTL, Op, PutOp, RangeOp, RangeReply, SortOrder, SortTarget, TxnOp, Value, ValueStore,
};

/// Events kept for watches and historical reads; older revisions are compacted automatically.
pub const MAX_EVENTS: usize = 100_000;

/// A lease as replicated: its TTL and the keys it owns. When it expires is decided by the
/// leader (and replicated as a revoke), so it is not stored here.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// Keys attached.
    pub keys: BTreeSet<Vec<u8>>,
}

/// Keys, leases and the bounded event history.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    /// Stored as a list of key-values (JSON maps need string keys).
    #[serde(with = "keys_as_list")]
    keys: BTreeMap<Key, KeyValue>,
    leases: BTreeMap<i64, LeaseRecord>,
    events: VecDeque<Event>,
    /// Events at or below this revision are gone.
    compacted: u64,
    /// Where values longer than [`super::value::INLINE_MAX`] go; none keeps them on the heap.
    #[serde(skip)]
    values: Sink,
}

/// The value store of a [`KvStore`], if it has one. Not part of the state: two stores with
/// the same keys and history are equal wherever their values are.
#[derive(Clone, Default)]
struct Sink(Option<Arc<dyn ValueStore>>);

impl PartialEq for Sink {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Sink {}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "store" } else { "heap" })
    }
}

/// Feeds one key, length-prefixed so no two stores hash alike by shifting bytes between fields.
fn hash_key_value(hasher: &mut Sha256, kv: &KeyValue) {
    for bytes in [&kv.key[..], &kv.value.bytes()] {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    }
    for number in [kv.create_revision, kv.mod_revision, kv.version] {
        hasher.update(number.to_be_bytes());
    }
    hasher.update(kv.lease.to_be_bytes());
}

/// The first 32 bits of the digest: etcd's hash fields are 32-bit.
fn fold(hasher: Sha256) -> u32 {
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A stored key, shared by the map, its value and the history events naming it.
type Key = Arc<[u8]>;

/// Undo record of one key write inside a command.
type Journal = Vec<(Key, Option<KeyValue>)>;

fn bounds(range: &KeyRange) -> (Bound<&[u8]>, Bound<&[u8]>) {
    if range.is_single() {
        return (
            Bound::Included(range.key.as_slice()),
            Bound::Included(range.key.as_slice()),
        );
    }
    let end = if range.end == [0] {
        Bound::Unbounded
    } else {
        Bound::Excluded(range.end.as_slice())
    };
    (Bound::Included(range.key.as_slice()), end)
}

fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::TooLarge);
    }
    Ok(())
}

/// Checks what can be checked without the store: keys, sizes, op counts, duplicate writes.
fn check_ops(ops: &[Op], written: &mut Vec<KeyRange>) -> Result<(), KvError> {
    for op in ops {
        match op {
            Op::Range(r) => check_key(&r.range.key)?,
            Op::Put(p) => {
                check_key(&p.key)?;
                if p.value.len() > MAX_VALUE_BYTES {
                    return Err(KvError::TooLarge);
                }
                let single = KeyRange {
                    key: p.key.clone(),
                    end: Vec::new(),
                };
                if written.iter().any(|w| w.contains(&p.key)) {
                    return Err(KvError::DuplicateKey);
                }
                written.push(single);
            }
            Op::Delete(d) => {
                check_key(&d.range.key)?;
                if written
                    .iter()
                    .any(|w| w.is_single() && d.range.contains(&w.key))
                {
                    return Err(KvError::DuplicateKey);
                }
                written.push(d.range.clone());
            }
            Op::Txn(t) => check_txn(t)?,
        }
    }
    Ok(())
}

fn check_txn(txn: &TxnOp) -> Result<(), KvError> {
    if txn.compare.len() + txn.success.len().max(txn.failure.len()) > MAX_TXN_OPS {
        return Err(KvError::TooManyOps);
    }
    for c in &txn.compare {
        check_key(&c.range.key)?;
    }
    check_ops(&txn.success, &mut Vec::new())?;
    check_ops(&txn.failure, &mut Vec::new())
}

/// Validates a command's shape before it is proposed (the same checks run again at apply).
pub fn check_command(cmd: &KvCommand) -> Result<(), KvError> {
    match cmd {
        KvCommand::Put(p) => check_ops(&[Op::Put(p.clone())], &mut Vec::new()),
        KvCommand::Delete(d) => check_key(&d.range.key),
        KvCommand::Txn(t) => check_txn(t),
        KvCommand::Compact { .. } => Ok(()),
        KvCommand::LeaseGrant { id, ttl } => {
            if *id <= 0 {
                return Err(KvError::BadLeaseId);
            }
            if *ttl < 0 {
                return Err(KvError::LeaseTtlNegative);
            }
            if *ttl > MAX_LEASE_TTL {
                return Err(KvError::LeaseTtlTooLarge);
            }
            Ok(())
        }
        KvCommand::LeaseRevoke { .. } => Ok(()),
    }
}

impl KvStore {
    /// Applies a command at revision `next` (the revision it gets if it writes anything);
    /// `current` is the store's revision before it. Returns the reply and whether anything
    /// was written. A refusal leaves the store exactly as it was.
    pub fn apply(
        &mut self,
        cmd: &KvCommand,
        current: u64,
        next: u64,
    ) -> Result<(KvReply, bool), KvError> {
        check_command(cmd)?;
        let events_before = self.events.len();
        let mut journal = Journal::new();
        let result = self.exec(cmd, current, next, &mut journal);
        match result {
            Ok(reply) => {
                let wrote = self.events.len() > events_before;
                if wrote {
                    self.compact_to_bound();
                }
                Ok((reply, wrote))
            }
            Err(e) => {
                for (key, old) in journal.into_iter().rev() {
                    self.set_key(&key, old);
                }
                self.events.truncate(events_before);
                Err(e)
            }
        }
    }

    fn exec(
        &mut self,
        cmd: &KvCommand,
        current: u64,
        next: u64,
        journal: &mut Journal,
    ) -> Result<KvReply, KvError> {
        match cmd {
            KvCommand::Put(p) => self.put(p, next, journal),
            KvCommand::Delete(d) => Ok(self.delete(d, next, journal)),
            KvCommand::Txn(t) => self.txn(t, current, next, journal),
            KvCommand::Compact { revision } => {
                if *revision > current {
                    return Err(KvError::FutureRevision);
                }
                if *revision <= self.compacted {
                    return Err(KvError::Compacted {
                        compacted: self.compacted,
                    });
                }
                self.compact(*revision);
                Ok(KvReply::Compacted)
            }
            KvCommand::LeaseGrant { id, ttl } => {
                if self.leases.contains_key(id) {
                    return Err(KvError::LeaseExists);
                }
                let ttl = (*ttl).max(MIN_LEASE_TTL);
                self.leases.insert(
                    *id,
                    LeaseRecord {
                        ttl,
                        keys: BTreeSet::new(),
                    },
                );
                Ok(KvReply::LeaseGranted { id: *id, ttl })
            }
            KvCommand::LeaseRevoke { id } => {
                let Some(lease) = self.leases.get(id) else {
                    return Err(KvError::LeaseNotFound);
                };
                let keys: Vec<Vec<u8>> = lease.keys.iter().cloned().collect();
                for key in keys {
                    self.delete(
                        &DeleteOp {
                            range: KeyRange {
                                key,
                                end: Vec::new(),
                            },
                            prev_kv: false,
                        },
                        next,
                        journal,
                    );
                }
                // Not journaled: revoking cannot fail after this point.
                self.leases.remove(id);
                Ok(KvReply::LeaseRevoked)
            }
        }
    }

    /// Writes (or removes) a key, keeping lease attachments in step.
    fn set_key(&mut self, key: &[u8], value: Option<KeyValue>) {
        if let Some(old) = self.keys.get(key)
            && old.lease != 0
            && let Some(lease) = self.leases.get_mut(&old.lease)
        {
            lease.keys.remove(key);
        }
        match value {
            Some(kv) => {
                if kv.lease != 0
                    && let Some(lease) = self.leases.get_mut(&kv.lease)
                {
                    lease.keys.insert(key.to_vec());
                }
                self.keys.insert(kv.key.clone(), kv);
            }
            None => {
                self.keys.remove(key);
            }
        }
    }

    fn write(&mut self, key: &[u8], value: Option<KeyValue>, journal: &mut Journal) {
        journal.push((Key::from(key), self.keys.get(key).cloned()));
        self.set_key(key, value);
    }

    fn put(&mut self, p: &PutOp, next: u64, journal: &mut Journal) -> Result<KvReply, KvError> {
        let prev = self.keys.get(p.key.as_slice()).cloned();
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(KvError::KeyNotFound);
        }
        let lease = if p.ignore_lease {
            prev.as_ref().map(|k| k.lease).unwrap_or(0)
        } else {
            p.lease
        };
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(KvError::LeaseNotFound);
        }
        let kv = KeyValue {
            key: prev
                .as_ref()
                .map_or_else(|| Key::from(p.key.as_slice()), |k| k.key.clone()),
            value: if p.ignore_value {
                prev.as_ref().map(|k| k.value.clone()).unwrap_or_default()
            } else {
                Value::new(&p.value, self.values.0.as_ref())
            },
            create_revision: prev.as_ref().map(|k| k.create_revision).unwrap_or(next),
            mod_revision: next,
            version: prev.as_ref().map(|k| k.version).unwrap_or(0) + 1,
            lease,
        };
        self.write(&p.key, Some(kv.clone()), journal);
        self.events.push_back(Event {
            revision: next,
            kind: EventKind::Put,
            kv,
            prev: prev.clone(),
        });
        Ok(KvReply::Put {
            prev: if p.prev_kv { prev } else { None },
        })
    }

    fn delete(&mut self, d: &DeleteOp, next: u64, journal: &mut Journal) -> KvReply {
        let doomed: Vec<KeyValue> = self
            .keys
            .range::<[u8], _>(bounds(&d.range))
            .map(|(_, v)| v.clone())
            .collect();
        for old in &doomed {
            self.write(&old.key, None, journal);
            self.events.push_back(Event {
                revision: next,
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: old.key.clone(),
                    mod_revision: next,
                    ..KeyValue::default()
                },
                prev: Some(old.clone()),
            });
        }
        KvReply::Delete {
            deleted: doomed.len() as u64,
            prev: if d.prev_kv { doomed } else { Vec::new() },
        }
    }

    fn compare_holds(&self, c: &Compare) -> bool {
        let keys: Vec<Option<&KeyValue>> = if c.range.is_single() {
            vec![self.keys.get(c.range.key.as_slice())]
        } else {
            self.keys
                .range::<[u8], _>(bounds(&c.range))
                .map(|(_, v)| Some(v))
                .collect()
        };
        keys.into_iter().all(|kv| {
            let ordering = match (&c.target, kv) {
                (CompareTarget::Value(_), None) => return false,
                (CompareTarget::Value(v), Some(kv)) => (*kv.value.bytes()).cmp(v.as_slice()),
                (CompareTarget::Version(v), kv) => {
                    (kv.map(|k| k.version).unwrap_or(0) as i64).cmp(v)
                }
                (CompareTarget::Create(v), kv) => {
                    (kv.map(|k| k.create_revision).unwrap_or(0) as i64).cmp(v)
                }
                (CompareTarget::Mod(v), kv) => {
                    (kv.map(|k| k.mod_revision).unwrap_or(0) as i64).cmp(v)
                }
                (CompareTarget::Lease(v), kv) => kv.map(|k| k.lease).unwrap_or(0).cmp(v),
            };
            match c.result {
                CompareResult::Equal => ordering.is_eq(),
                CompareResult::NotEqual => ordering.is_ne(),
                CompareResult::Greater => ordering.is_gt(),
                CompareResult::Less => ordering.is_lt(),
            }
        })
    }

    fn txn(
        &mut self,
        t: &TxnOp,
        current: u64,
        next: u64,
        journal: &mut Journal,
    ) -> Result<KvReply, KvError> {
        let succeeded = t.compare.iter().all(|c| self.compare_holds(c));
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                Op::Range(r) => KvReply::Range(self.range(r, current)?),
                Op::Put(p) => self.put(p, next, journal)?,
                Op::Delete(d) => self.delete(d, next, journal),
                Op::Txn(inner) => self.txn(inner, current, next, journal)?,
            });
        }
        Ok(KvReply::Txn {
            succeeded,
            responses,
        })
    }

    /// Reads a range as of `op.revision` (0 = now); `current` is the store's revision.
    pub fn range(&self, op: &RangeOp, current: u64) -> Result<RangeReply, KvError> {
        check_key(&op.range.key)?;
        if op.revision > current {
            return Err(KvError::FutureRevision);
        }
        let historic = op.revision != 0 && op.revision < current;
        if historic && op.revision < self.compacted {
            return Err(KvError::Compacted {
                compacted: self.compacted,
            });
        }
        let mut found: BTreeMap<Key, KeyValue> = self
            .keys
            .range::<[u8], _>(bounds(&op.range))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if historic {
            // Undo, newest first, every change after the requested revision.
            for event in self.events.iter().rev() {
                if event.revision <= op.revision {
                    break;
                }
                if !op.range.contains(&event.kv.key) {
                    continue;
                }
                match &event.prev {
                    Some(prev) => found.insert(prev.key.clone(), prev.clone()),
                    None => found.remove(&*event.kv.key),
                };
            }
        }
        let mut kvs: Vec<KeyValue> = found
            .into_values()
            .filter(|kv| {
                (op.min_mod_revision == 0 || kv.mod_revision >= op.min_mod_revision)
                    && (op.max_mod_revision == 0 || kv.mod_revision <= op.max_mod_revision)
                    && (op.min_create_revision == 0 || kv.create_revision >= op.min_create_revision)
                    && (op.max_create_revision == 0 || kv.create_revision <= op.max_create_revision)
            })
            .collect();
        let count = kvs.len() as u64;
        match (op.sort_order, op.sort_target) {
            (SortOrder::None, _) | (SortOrder::Ascend, SortTarget::Key) => {}
            (order, target) => {
                kvs.sort_by(|a, b| {
                    let ordering = match target {
                        SortTarget::Key => a.key.cmp(&b.key),
                        SortTarget::Version => a.version.cmp(&b.version),
                        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                        SortTarget::Value => a.value.cmp(&b.value),
                    };
                    if order == SortOrder::Descend {
                        ordering.reverse()
                    } else {
                        ordering
                    }
                });
            }
        }
        if op.count_only {
            return Ok(RangeReply {
                kvs: Vec::new(),
                more: false,
                count,
            });
        }
        let more = op.limit > 0 && count > op.limit;
        if more {
            kvs.truncate(op.limit as usize);
        }
        if op.keys_only {
            for kv in &mut kvs {
                kv.value = Value::default();
            }
        }
        Ok(RangeReply { kvs, more, count })
    }

    fn compact(&mut self, revision: u64) {
        while self.events.front().is_some_and(|e| e.revision <= revision) {
            self.events.pop_front();
        }
        self.compacted = self.compacted.max(revision);
    }

    /// Keeps the history within [`MAX_EVENTS`], dropping whole revisions, oldest first.
    fn compact_to_bound(&mut self) {
        while self.events.len() > MAX_EVENTS {
            let Some(oldest) = self.events.front().map(|e| e.revision) else {
                break;
            };
            self.compact(oldest);
        }
    }

    /// Keeps values longer than [`super::value::INLINE_MAX`] in `store` from now on, and moves
    /// the ones on the heap there, each once: a decoded store holds a separate copy of a value
    /// in its key and in every event naming it, and they become one again here.
    pub fn store_values_in(&mut self, store: Arc<dyn ValueStore>) {
        let mut moved: std::collections::HashMap<(Key, u64), Value> =
            std::collections::HashMap::new();
        let mut one = |kv: &mut KeyValue| {
            kv.value = moved
                .entry((kv.key.clone(), kv.mod_revision))
                .or_insert_with(|| kv.value.stored_in(&store))
                .clone();
        };
        for kv in self.keys.values_mut() {
            one(kv);
        }
        for event in &mut self.events {
            if event.kind == EventKind::Put {
                one(&mut event.kv);
            }
            if let Some(prev) = &mut event.prev {
                one(prev);
            }
        }
        self.values = Sink(Some(store));
    }

    /// Makes the history events name their keys with the map's copy (a deleted key's events,
    /// with one copy among them), as they do while the store runs. Decoding gives every
    /// occurrence bytes of its own: after 100K puts to 100K keys a restarted replica held
    /// ~7 MB more heap than before the restart (issue #24).
    pub fn share_keys(&mut self) {
        let mut shared: std::collections::HashSet<Key> = self.keys.keys().cloned().collect();
        let mut one = |key: &mut Key| match shared.get(key) {
            Some(copy) => *key = copy.clone(),
            None => {
                shared.insert(key.clone());
            }
        };
        for event in &mut self.events {
            one(&mut event.kv.key);
            if let Some(prev) = &mut event.prev {
                one(&mut prev.key);
            }
        }
    }

    /// How many separate copies of key `name` the map and the history hold.
    #[cfg(test)]
    pub(crate) fn key_copies(&self, name: &[u8]) -> usize {
        self.keys
            .values()
            .chain(self.events.iter().map(|e| &e.kv))
            .chain(self.events.iter().filter_map(|e| e.prev.as_ref()))
            .filter(|kv| &kv.key[..] == name)
            .map(|kv| Arc::as_ptr(&kv.key) as *const u8)
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// Every key now, in key order.
    pub fn current(&self) -> impl Iterator<Item = &KeyValue> {
        self.keys.values()
    }

    /// A hash of every key as of `revision` (its value, revisions, version and lease), for
    /// comparing replicas (etcd's `HashKV`): two replicas at one revision hash alike unless
    /// their data diverged. `current` is the store's revision.
    pub fn hash_at(&self, revision: u64, current: u64) -> Result<u32, KvError> {
        let every_key = RangeOp {
            range: super::KeyRange {
                key: vec![0],
                end: vec![0],
            },
            revision,
            ..RangeOp::default()
        };
        let reply = self.range(&every_key, current)?;
        let mut hasher = Sha256::new();
        for kv in &reply.kvs {
            hash_key_value(&mut hasher, kv);
        }
        Ok(fold(hasher))
    }

    /// A hash of the whole store now: every key and every lease (etcd's `Hash`).
    pub fn hash(&self, current: u64) -> u32 {
        let mut hasher = Sha256::new();
        for kv in self.keys.values() {
            hash_key_value(&mut hasher, kv);
        }
        hasher.update(current.to_be_bytes());
        for (id, lease) in &self.leases {
            hasher.update(id.to_be_bytes());
            hasher.update(lease.ttl.to_be_bytes());
            for key in &lease.keys {
                hasher.update((key.len() as u64).to_be_bytes());
                hasher.update(key);
            }
        }
        fold(hasher)
    }

    /// Events after `revision`, oldest first; `Err(compacted)` when some are gone.
    pub fn events_after(&self, revision: u64) -> Result<Vec<&Event>, u64> {
        if revision < self.compacted {
            return Err(self.compacted);
        }
        let start = self.events.partition_point(|e| e.revision <= revision);
        Ok(self.events.range(start..).collect())
    }

    /// Highest compacted revision.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Lease ids.
    pub fn lease_ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// One lease.
    pub fn lease(&self, id: i64) -> Option<&LeaseRecord> {
        self.leases.get(&id)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Distinct stored values the state can reach: its keys' and its history's.
    #[cfg(test)]
    pub fn stored_values(&self) -> usize {
        let events = self
            .events
            .iter()
            .flat_map(|e| std::iter::once(&e.kv).chain(e.prev.as_ref()));
        self.keys
            .values()
            .chain(events)
            .filter_map(|kv| kv.value.stored_id())
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// Keys attached to leases that no longer exist (must be none).
    #[cfg(test)]
    pub fn dangling(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        for (id, lease) in &self.leases {
            for key in &lease.keys {
                if self.keys.get(key.as_slice()).map(|k| k.lease) != Some(*id) {
                    return 1;
                }
                seen.insert(key.clone());
            }
        }
        self.keys
            .values()
            .filter(|k| k.lease != 0 && !seen.contains(&k.key[..]))
            .count()
    }
}

mod keys_as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use crate::kv::KeyValue;

    pub fn serialize<S: Serializer>(
        keys: &BTreeMap<super::Key, KeyValue>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(keys.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<super::Key, KeyValue>, D::Error> {
        let list = Vec::<KeyValue>::deserialize(deserializer)?;
        Ok(list.into_iter().map(|kv| (kv.key.clone(), kv)).collect())
    }
}
