//! KV values, on the heap or in a replica's value store (ADR 0019). A value is shared by its
//! key and every history event naming it, as an `Arc`; the last holder to let go of a stored
//! value removes it from the store, so the store holds exactly the values the state can still
//! reach, with no collector and no bookkeeping of its own in the state machine.

use std::fmt;
use std::sync::Arc;

use serde::{Deserializer, Serializer};

/// Values this long or shorter stay on the heap: a stored value's handle costs about as much.
pub const INLINE_MAX: usize = 32;

/// Where a replica keeps KV values off the heap. Its ids are its own: the state machine never
/// persists them (snapshots carry the bytes), so a store starts empty with every process.
pub trait ValueStore: Send + Sync + 'static {
    /// Stores `bytes` under a new id, or `None` when the store cannot take them (a full
    /// disk): the value then stays on the heap, which costs memory and nothing else.
    fn put(&self, bytes: &[u8]) -> Option<u64>;
    /// The bytes stored under `id`. A value the state still holds is always there; failing to
    /// read it means the local disk failed, and the replica stops (as etcd does when its
    /// backend cannot be read): answering without it would diverge from the other replicas.
    fn get(&self, id: u64) -> Arc<[u8]>;
    /// Forgets `id` (its last holder let go).
    fn remove(&self, id: u64);
}

/// One value's bytes, wherever they are: 24 bytes in its holder, plus the bytes themselves on
/// the heap (one allocation, as an `Arc<[u8]>`) or a 48-byte handle to the store's copy.
#[derive(Clone)]
pub struct Value(Repr);

#[derive(Clone)]
enum Repr {
    Heap(Arc<[u8]>),
    Stored(Arc<Stored>),
}

impl Default for Value {
    fn default() -> Self {
        Value(Repr::Heap(Arc::default()))
    }
}

struct Stored {
    id: u64,
    len: u32,
    store: Arc<dyn ValueStore>,
}

impl Drop for Stored {
    fn drop(&mut self) {
        self.store.remove(self.id);
    }
}

impl Value {
    /// A value: in `store` when there is one, the value is longer than [`INLINE_MAX`] and the
    /// store takes it; otherwise on the heap.
    pub fn new(bytes: &[u8], store: Option<&Arc<dyn ValueStore>>) -> Self {
        match store {
            Some(store) if bytes.len() > INLINE_MAX => match store.put(bytes) {
                Some(id) => Value(Repr::Stored(Arc::new(Stored {
                    id,
                    // Values are at most MAX_VALUE_BYTES (1.5 MiB), far below u32::MAX.
                    len: bytes.len() as u32,
                    store: store.clone(),
                }))),
                None => Value(Repr::Heap(bytes.into())),
            },
            _ => Value(Repr::Heap(bytes.into())),
        }
    }

    /// The bytes (read from the store for a stored value).
    pub fn bytes(&self) -> Bytes<'_> {
        match &self.0 {
            Repr::Heap(bytes) => Bytes::Heap(bytes),
            Repr::Stored(stored) => Bytes::Stored(stored.store.get(stored.id)),
        }
    }

    /// Length in bytes, without reading a stored value.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Heap(bytes) => bytes.len(),
            Repr::Stored(stored) => stored.len as usize,
        }
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the bytes are in a store rather than on the heap.
    pub fn is_stored(&self) -> bool {
        matches!(self.0, Repr::Stored(_))
    }

    /// The same value moved into `store` if it belongs there and is on the heap; `self` (one
    /// more holder of the same value) otherwise. Callers re-share the result among the value's
    /// holders, so each value is stored once.
    pub fn stored_in(&self, store: &Arc<dyn ValueStore>) -> Value {
        match &self.0 {
            Repr::Heap(bytes) if bytes.len() > INLINE_MAX => Value::new(bytes, Some(store)),
            _ => self.clone(),
        }
    }

    /// The store's id of a stored value.
    #[cfg(test)]
    pub fn stored_id(&self) -> Option<u64> {
        match &self.0 {
            Repr::Heap(_) => None,
            Repr::Stored(stored) => Some(stored.id),
        }
    }

    /// Whether two handles share one value (not merely equal bytes).
    pub fn ptr_eq(a: &Value, b: &Value) -> bool {
        match (&a.0, &b.0) {
            (Repr::Heap(a), Repr::Heap(b)) => Arc::ptr_eq(a, b),
            (Repr::Stored(a), Repr::Stored(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Bytes of a value: borrowed from the heap or read from the store.
pub enum Bytes<'a> {
    /// On the heap.
    Heap(&'a [u8]),
    /// Read from the store.
    Stored(Arc<[u8]>),
}

impl std::ops::Deref for Bytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Heap(bytes) => bytes,
            Bytes::Stored(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Self {
        Value::new(bytes, None)
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        Value::ptr_eq(self, other) || (self.len() == other.len() && *self.bytes() == *other.bytes())
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes().cmp(&other.bytes())
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Heap(bytes) => write!(f, "{:?}", String::from_utf8_lossy(bytes)),
            Repr::Stored(stored) => write!(f, "stored #{} ({} B)", stored.id, stored.len),
        }
    }
}

/// Serializes the bytes as [`super::b64`] does (a stored value is read): snapshots and
/// archives carry values, never store ids.
pub fn serialize<S: Serializer>(value: &Value, serializer: S) -> Result<S::Ok, S::Error> {
    super::b64::serialize(&value.bytes(), serializer)
}

/// Deserializes onto the heap; [`super::KvStore::store_values_in`] moves them afterwards.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    super::b64::deserialize(deserializer).map(|bytes| Value(Repr::Heap(bytes.into())))
}

/// A store on the heap, counting what it holds: for tests of the holders' bookkeeping.
#[cfg(test)]
#[derive(Default)]
pub struct MemoryStore {
    next: std::sync::atomic::AtomicU64,
    held: parking_lot::Mutex<std::collections::HashMap<u64, Arc<[u8]>>>,
}

#[cfg(test)]
impl MemoryStore {
    /// Values held now.
    pub fn len(&self) -> usize {
        self.held.lock().len()
    }
}

#[cfg(test)]
impl ValueStore for MemoryStore {
    fn put(&self, bytes: &[u8]) -> Option<u64> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.held.lock().insert(id, bytes.into());
        Some(id)
    }

    fn get(&self, id: u64) -> Arc<[u8]> {
        self.held
            .lock()
            .get(&id)
            .cloned()
            .unwrap_or_else(|| panic!("value #{id} read after its last holder let go"))
    }

    fn remove(&self, id: u64) {
        assert!(
            self.held.lock().remove(&id).is_some(),
            "value #{id} removed twice"
        );
    }
}
