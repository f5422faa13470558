//! A table of fixed-size rows keyed by name, laid out for a replica's memory (issue #24).
//!
//! A B-tree of `Arc<str>` keys costs a 100M-machine fleet's 100K domains about 165 bytes each
//! (a heap block per name with its allocator header and rounding, B-tree nodes two-thirds
//! full, a second ordered set per shard). Here a row is a slot in one vector (its name's place
//! and its value), and a hash index of slot numbers answers lookups. Slot numbers are stable
//! for a row's life, so other indexes (a shard's domains) hold 4-byte slots instead of names.
//!
//! Names are hierarchical (`topology.kubernetes.io/zone=az-a/rack=r000042`), and most of a
//! name is the path to its parent, which thousands of rows share. A name is therefore kept in
//! two parts: its prefix through the last `/`, stored once for every row that shares it, and
//! its own tail, stored after the prefix's 4-byte id, back to back with the other rows' in
//! one byte buffer. A domain of the 100M-machine fleet then costs its tail's bytes plus about
//! 40 bytes.
//!
//! Name order, which listings and snapshots need, is kept as a sorted vector of slots built
//! on the first ordered read after a name came or went. Changing a row's value (a domain
//! moving between shards, the bulk of a rebalance) keeps it.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use hashbrown::HashTable;

use super::hash::FixedState;
use serde::{Deserialize, Serialize};

/// A removed row's `len` (its slot waits on the free list).
const VACANT: u32 = u32::MAX;

/// Set in a live row's `len` when its bytes begin with its prefix's id (4 bytes, little
/// endian). An id in the row's bytes costs 4 bytes where a field in every slot would cost 8
/// with its alignment, and names kept whole pay nothing.
const PREFIXED: u32 = 1 << 31;

/// Dead name bytes tolerated before the buffer is rewritten: compaction runs when they are
/// both over this and over half the buffer, so it costs at most one copy per byte written.
const COMPACT_AFTER: usize = 64 * 1024;

/// Prefixes shorter than this stay in the row's own bytes: sharing them would save less
/// than a shared prefix's own entry costs.
const MIN_PREFIX: usize = 8;

/// The prefix id of names kept whole.
const NO_PREFIX: u32 = 0;

/// Makes room for `additional` more items, growing by an eighth rather than doubling: the
/// tables are long-lived and mostly full, so a doubled buffer would leave up to half of it
/// unused for good. Still amortized O(1) per item.
fn grow<T>(buffer: &mut Vec<T>, additional: usize) {
    if buffer.capacity() - buffer.len() < additional {
        buffer.reserve_exact(additional.max(buffer.len() / 8).max(64));
    }
}

/// Splits `name` into its shared prefix (through its last `/`) and its own tail; a name
/// without a long enough prefix is all tail. A pure function of the name, so a lookup splits
/// the name it is given exactly as the row's name was split when it was stored.
fn split(name: &str) -> (&str, &str) {
    match name.rfind('/') {
        Some(at) if at + 1 >= MIN_PREFIX => name.split_at(at + 1),
        _ => ("", name),
    }
}

/// Compares the names `a.0 + a.1` and `b.0 + b.1` byte by byte, as `str`s compare, without
/// joining them.
fn cmp_joined(a: (&str, &str), b: (&str, &str)) -> Ordering {
    if a.0 == b.0 {
        return a.1.cmp(b.1);
    }
    let (mut x, mut x_next) = (a.0.as_bytes(), a.1.as_bytes());
    let (mut y, mut y_next) = (b.0.as_bytes(), b.1.as_bytes());
    loop {
        if x.is_empty() && !x_next.is_empty() {
            x = std::mem::take(&mut x_next);
        }
        if y.is_empty() && !y_next.is_empty() {
            y = std::mem::take(&mut y_next);
        }
        if x.is_empty() || y.is_empty() {
            // One side has run out (its second part too, or it would have been taken).
            return x.len().cmp(&y.len());
        }
        let common = x.len().min(y.len());
        match x[..common].cmp(&y[..common]) {
            Ordering::Equal => (x, y) = (&x[common..], &y[common..]),
            unequal => return unequal,
        }
    }
}

/// A row: where its bytes (its prefix's id, if any, and its name's tail) are in the buffer,
/// and its value.
#[derive(Clone, Debug)]
struct Slot<V> {
    start: u32,
    /// Bytes in the buffer, with [`PREFIXED`] set when they begin with a prefix id;
    /// [`VACANT`] for a removed row.
    len: u32,
    value: V,
}

impl<V> Slot<V> {
    /// Where a live row's bytes are in the buffer.
    fn stored(&self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start + (self.len & !PREFIXED) as usize
    }
}

/// A prefix some rows share, and how many live rows do.
#[derive(Clone, Debug, Default)]
struct Prefix {
    text: Box<str>,
    rows: u32,
}

/// Rows of `V` keyed by name; see the module documentation.
#[derive(Clone)]
pub struct NameTable<V> {
    /// Every live row's bytes (its prefix id, if any, and its tail) back to back, and the
    /// bytes of removed rows until compaction.
    text: Vec<u8>,
    /// Bytes of `text` no live row uses.
    dead: usize,
    slots: Vec<Slot<V>>,
    /// Vacant slots, reused before the vector grows.
    free: Vec<u32>,
    /// Slot of each live row, found by hashing its name's two parts.
    index: HashTable<u32>,
    /// Shared prefixes by id; id 0 is the empty prefix of names kept whole.
    prefixes: Vec<Prefix>,
    /// Id of each shared prefix, found by hashing its text.
    prefix_ids: HashTable<u32>,
    /// Ids of prefixes no row uses any more, reused first.
    free_prefixes: Vec<u32>,
    /// Live slots in name order, built on demand; reset when a name comes or goes.
    order: OnceLock<Vec<u32>>,
    len: usize,
}

impl<V> Default for NameTable<V> {
    fn default() -> Self {
        Self {
            text: Vec::new(),
            dead: 0,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            prefixes: vec![Prefix::default()],
            prefix_ids: HashTable::new(),
            free_prefixes: Vec::new(),
            order: OnceLock::new(),
            len: 0,
        }
    }
}

/// The prefix id and the tail of `slot`'s name.
fn row_in<'a, V>(text: &'a [u8], slots: &[Slot<V>], slot: u32) -> (u32, &'a str) {
    let s = &slots[slot as usize];
    let bytes = &text[s.stored()];
    let (prefix, bytes) = if s.len & PREFIXED != 0 {
        let (id, tail) = bytes.split_at(4);
        (u32::from_le_bytes(id.try_into().expect("4 bytes")), tail)
    } else {
        (NO_PREFIX, bytes)
    };
    debug_assert!(
        std::str::from_utf8(bytes).is_ok(),
        "slot {slot} spans whole UTF-8"
    );
    // SAFETY: a tail is a whole `&str` cut after a '/' (an ASCII byte, so on a character
    // boundary) and copied into `text` by `insert` (and moved whole by compaction) right
    // after the prefix id, if any, and a slot's bytes are exactly where they were copied:
    // these bytes are valid UTF-8. Validating here instead costs the sort that builds the name order a pass over
    // every name at each comparison.
    (prefix, unsafe { std::str::from_utf8_unchecked(bytes) })
}

impl<V> NameTable<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no row is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The two parts of a slot's name.
    fn parts(&self, slot: u32) -> (&str, &str) {
        let (prefix, tail) = row_in(&self.text, &self.slots, slot);
        (&self.prefixes[prefix as usize].text, tail)
    }

    /// The id of a shared prefix, if a row uses it.
    fn prefix_id(&self, prefix: &str) -> Option<u32> {
        if prefix.is_empty() {
            return Some(NO_PREFIX);
        }
        let prefixes = &self.prefixes;
        self.prefix_ids
            .find(FixedState.hash_one(prefix), |&id| {
                &*prefixes[id as usize].text == prefix
            })
            .copied()
    }

    /// The id of `prefix`, stored now if no row had it (one hash and one probe either way),
    /// and whether it was stored now: a name with a new prefix is a new name.
    fn find_or_add_prefix(&mut self, prefix: &str) -> (u32, bool) {
        if prefix.is_empty() {
            return (NO_PREFIX, false);
        }
        let prefixes = &self.prefixes;
        let entry = self.prefix_ids.entry(
            FixedState.hash_one(prefix),
            |&id| &*prefixes[id as usize].text == prefix,
            |&id| FixedState.hash_one(&*prefixes[id as usize].text),
        );
        let vacant = match entry {
            hashbrown::hash_table::Entry::Occupied(found) => return (*found.get(), false),
            hashbrown::hash_table::Entry::Vacant(vacant) => vacant,
        };
        let added = Prefix {
            text: prefix.into(),
            rows: 0,
        };
        let id = match self.free_prefixes.pop() {
            Some(id) => {
                self.prefixes[id as usize] = added;
                id
            }
            None => {
                self.prefixes.push(added);
                u32::try_from(self.prefixes.len() - 1).expect("under 4G prefixes")
            }
        };
        vacant.insert(id);
        (id, true)
    }

    /// Counts one row fewer on prefix `id`, and forgets the prefix when none is left.
    fn release_prefix(&mut self, id: u32) {
        if id == NO_PREFIX {
            return;
        }
        let prefix = &mut self.prefixes[id as usize];
        prefix.rows -= 1;
        if prefix.rows > 0 {
            return;
        }
        let text = std::mem::take(&mut prefix.text);
        self.prefix_ids
            .find_entry(FixedState.hash_one(&*text), |&p| p == id)
            .expect("a used prefix is indexed")
            .remove();
        self.free_prefixes.push(id);
    }

    /// The hash under which a row is indexed: its prefix's id and its tail, so the prefix's
    /// bytes, already hashed to find its id, are not hashed again.
    fn row_hash((prefix, tail): (u32, &str)) -> u64 {
        FixedState.hash_one((prefix, tail))
    }

    /// Bytes a row with these name parts takes in the buffer.
    fn stored_len(prefix: &str, tail: &str) -> usize {
        tail.len() + if prefix.is_empty() { 0 } else { 4 }
    }

    /// The slot of `name`'s row.
    pub fn slot_of(&self, name: &str) -> Option<u32> {
        let (prefix, tail) = split(name);
        let id = self.prefix_id(prefix)?;
        let (text, slots) = (&self.text, &self.slots);
        self.index
            .find(Self::row_hash((id, tail)), |&slot| {
                row_in(text, slots, slot) == (id, tail)
            })
            .copied()
    }

    /// The name of a live row's slot; borrowed when the name is kept whole.
    ///
    /// # Panics
    /// If `slot` is not a live row's (a slot comes from this table and is dropped with it).
    pub fn name(&self, slot: u32) -> Cow<'_, str> {
        assert_ne!(
            self.slots[slot as usize].len, VACANT,
            "slot {slot} is vacant"
        );
        match self.parts(slot) {
            ("", tail) => Cow::Borrowed(tail),
            (prefix, tail) => Cow::Owned([prefix, tail].concat()),
        }
    }

    /// The value of a live row's slot.
    pub fn value(&self, slot: u32) -> &V {
        &self.slots[slot as usize].value
    }

    /// The value of a live row's slot, to change it in place.
    pub fn value_mut(&mut self, slot: u32) -> &mut V {
        &mut self.slots[slot as usize].value
    }

    /// `name`'s value.
    pub fn get(&self, name: &str) -> Option<&V> {
        self.slot_of(name).map(|slot| self.value(slot))
    }

    /// `name`'s value, to change it in place (the name order stays).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        self.slot_of(name).map(|slot| self.value_mut(slot))
    }

    /// True when `name` has a row.
    pub fn contains(&self, name: &str) -> bool {
        self.slot_of(name).is_some()
    }

    /// Sets `name`'s value; returns its slot and the value it replaced, if it had one.
    ///
    /// # Panics
    /// If the names' bytes would pass 4 GiB (a replica's state is a few MB).
    pub fn insert(&mut self, name: &str, value: V) -> (u32, Option<V>) {
        // The prefix and the row are each hashed once and probed once: the lookup's entry is
        // where a new one goes.
        let (prefix_text, tail) = split(name);
        let (prefix, new_prefix) = self.find_or_add_prefix(prefix_text);
        let (text, slots) = (&self.text, &self.slots);
        let entry = self.index.entry(
            Self::row_hash((prefix, tail)),
            |&slot| !new_prefix && row_in(text, slots, slot) == (prefix, tail),
            |&slot| Self::row_hash(row_in(text, slots, slot)),
        );
        let vacant = match entry {
            hashbrown::hash_table::Entry::Occupied(found) => {
                let slot = *found.get();
                let old = std::mem::replace(&mut self.slots[slot as usize].value, value);
                return (slot, Some(old));
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => vacant,
        };
        self.prefixes[prefix as usize].rows += 1;
        let start = u32::try_from(self.text.len()).expect("names fit in 4 GiB");
        let stored = Self::stored_len(prefix_text, tail);
        let len = u32::try_from(stored)
            .ok()
            .filter(|len| len & PREFIXED == 0)
            .expect("a name fits in 2 GiB");
        grow(&mut self.text, stored);
        if prefix != NO_PREFIX {
            self.text.extend_from_slice(&prefix.to_le_bytes());
        }
        self.text.extend_from_slice(tail.as_bytes());
        let row = Slot {
            start,
            len: if prefix == NO_PREFIX {
                len
            } else {
                len | PREFIXED
            },
            value,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = row;
                slot
            }
            None => {
                grow(&mut self.slots, 1);
                self.slots.push(row);
                u32::try_from(self.slots.len() - 1).expect("under 4G rows")
            }
        };
        vacant.insert(slot);
        self.len += 1;
        self.order = OnceLock::new();
        (slot, None)
    }

    /// Makes room for rows named `names` (whether or not they are new): one allocation per
    /// buffer where inserting them one by one would grow each an eighth at a time.
    pub fn reserve<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let (mut rows, mut bytes) = (0usize, 0usize);
        for name in names {
            let (prefix, tail) = split(name);
            rows += 1;
            bytes += Self::stored_len(prefix, tail);
        }
        self.slots
            .reserve_exact(rows.saturating_sub(self.free.len()));
        self.text.reserve_exact(bytes);
        let (text, slots) = (&self.text, &self.slots);
        self.index
            .reserve(rows, |&s| Self::row_hash(row_in(text, slots, s)));
    }

    /// Removes `name`'s row; returns its slot (now vacant, reused by a later insert) and value.
    pub fn remove(&mut self, name: &str) -> Option<(u32, V)>
    where
        V: Clone,
    {
        // One hash and one probe: found and taken out of the index in the same step.
        let (prefix, tail) = split(name);
        let id = self.prefix_id(prefix)?;
        let (text, slots) = (&self.text, &self.slots);
        let (slot, _) = self
            .index
            .find_entry(Self::row_hash((id, tail)), |&slot| {
                row_in(text, slots, slot) == (id, tail)
            })
            .ok()?
            .remove();
        Some((slot, self.vacate(slot)))
    }

    /// Removes the live row in `slot` (a caller that kept the slot need not name it again);
    /// returns its value.
    ///
    /// # Panics
    /// If `slot` is not live.
    pub fn remove_slot(&mut self, slot: u32) -> V
    where
        V: Clone,
    {
        assert_ne!(
            self.slots[slot as usize].len, VACANT,
            "slot {slot} is vacant"
        );
        let hash = Self::row_hash(row_in(&self.text, &self.slots, slot));
        self.index
            .find_entry(hash, |&s| s == slot)
            .expect("a live slot is indexed")
            .remove();
        self.vacate(slot)
    }

    /// Frees `slot`, already out of the index; returns its value.
    fn vacate(&mut self, slot: u32) -> V
    where
        V: Clone,
    {
        let (prefix, _) = row_in(&self.text, &self.slots, slot);
        let row = &mut self.slots[slot as usize];
        self.dead += row.stored().len();
        row.len = VACANT;
        let value = row.value.clone();
        self.release_prefix(prefix);
        self.free.push(slot);
        self.len -= 1;
        self.order = OnceLock::new();
        self.compact_if_mostly_dead();
        value
    }

    /// Rewrites the tail buffer without removed tails once they are most of it. Slots keep
    /// their numbers.
    fn compact_if_mostly_dead(&mut self) {
        if self.dead <= COMPACT_AFTER || self.dead * 2 <= self.text.len() {
            return;
        }
        let mut text = Vec::with_capacity(self.text.len() - self.dead);
        for row in self.slots.iter_mut().filter(|row| row.len != VACANT) {
            let start = text.len();
            text.extend_from_slice(&self.text[row.stored()]);
            row.start = start as u32;
        }
        self.text = text;
        self.dead = 0;
    }

    /// Live slots in name order.
    fn ordered(&self) -> &[u32] {
        self.order.get_or_init(|| {
            let mut order: Vec<u32> = self.slots().collect();
            order.sort_unstable_by(|&a, &b| cmp_joined(self.parts(a), self.parts(b)));
            order
        })
    }

    /// Rows in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (Cow<'_, str>, &V)> + '_ {
        self.ordered()
            .iter()
            .map(move |&slot| (self.name(slot), self.value(slot)))
    }

    /// Rows whose names sort after `after`, in name order (a listing's next page).
    pub fn iter_after<'a>(
        &'a self,
        after: &str,
    ) -> impl Iterator<Item = (Cow<'a, str>, &'a V)> + use<'a, V> {
        let order = self.ordered();
        let from = order.partition_point(|&slot| cmp_joined(self.parts(slot), ("", after)).is_le());
        order[from..]
            .iter()
            .map(move |&slot| (self.name(slot), self.value(slot)))
    }

    /// Slots of the live rows, in no particular order.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.slots.len() as u32).filter(|&slot| self.slots[slot as usize].len != VACANT)
    }

    /// Every live row's value, to change in place (the name order stays).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.slots
            .iter_mut()
            .filter(|row| row.len != VACANT)
            .map(|row| &mut row.value)
    }

    /// Bytes this table holds on the heap (buffers at their capacity), for memory reports.
    pub fn heap_bytes(&self) -> usize {
        // hashbrown: one 4-byte slot and one control byte per bucket, buckets 8/7 of the
        // capacity.
        let hash_table = |capacity: usize| capacity * 8 / 7 * 5;
        self.text.capacity()
            + self.slots.capacity() * std::mem::size_of::<Slot<V>>()
            + self.free.capacity() * 4
            + hash_table(self.index.capacity())
            + self.order.get().map_or(0, |o| o.capacity() * 4)
            + self.prefixes.capacity() * std::mem::size_of::<Prefix>()
            + self.prefixes.iter().map(|p| p.text.len()).sum::<usize>()
            + hash_table(self.prefix_ids.capacity())
            + self.free_prefixes.capacity() * 4
    }
}

impl<V: PartialEq> PartialEq for NameTable<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<V: Eq> Eq for NameTable<V> {}

impl<V: std::fmt::Debug> std::fmt::Debug for NameTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: AsRef<str>, V> FromIterator<(K, V)> for NameTable<V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(rows: I) -> Self {
        let mut table = NameTable::new();
        for (name, value) in rows {
            table.insert(name.as_ref(), value);
        }
        table
    }
}

/// Written as a map in name order: the bytes a `BTreeMap<String, V>` of the same rows gives,
/// so snapshots keep their format.
impl<V: Serialize> Serialize for NameTable<V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.len))?;
        // One buffer for every joined name, not an allocation a row.
        let mut name = String::new();
        for &slot in self.ordered() {
            let (prefix, tail) = self.parts(slot);
            name.clear();
            name.push_str(prefix);
            name.push_str(tail);
            map.serialize_entry(name.as_str(), self.value(slot))?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for NameTable<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Rows<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Rows<V> {
            type Value = NameTable<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of names to rows")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut table = NameTable::new();
                // Owned names: postcard and JSON both hand out borrowed or owned strings.
                while let Some((name, value)) = map.next_entry::<String, V>()? {
                    table.insert(&name, value);
                }
                Ok(table)
            }
        }
        deserializer.deserialize_map(Rows(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn rows_are_found_by_name_and_listed_in_name_order() {
        let mut table = NameTable::new();
        assert_eq!(table.insert("rack-b", 2), (0, None));
        assert_eq!(table.insert("rack-a", 1), (1, None));
        assert_eq!(table.insert("rack-c", 3), (2, None));
        assert_eq!(
            table.insert("rack-b", 20),
            (0, Some(2)),
            "same slot, value replaced"
        );
        assert_eq!(table.get("rack-b"), Some(&20));
        assert_eq!(table.get("rack-d"), None);
        let listed: Vec<_> = table.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        assert_eq!(
            listed,
            [
                ("rack-a".into(), 1),
                ("rack-b".into(), 20),
                ("rack-c".into(), 3)
            ]
        );
        let page: Vec<_> = table.iter_after("rack-a").map(|(n, _)| n).collect();
        assert_eq!(page, ["rack-b", "rack-c"]);
        assert_eq!(table.iter_after("rack-c").count(), 0);
        assert_eq!(table.iter_after("").count(), 3);
    }

    #[test]
    fn a_removed_rows_slot_is_reused_and_other_slots_keep_their_numbers() {
        let mut table = NameTable::new();
        let (a, _) = table.insert("a", 1);
        let (b, _) = table.insert("b", 2);
        assert_eq!(table.remove("a"), Some((a, 1)));
        assert_eq!(table.remove("a"), None, "gone");
        let (c, _) = table.insert("c", 3);
        assert_eq!(c, a, "the vacant slot is taken first");
        assert_eq!(table.name(b), "b");
        assert_eq!(table.name(c), "c");
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn the_name_buffer_is_rewritten_once_removed_names_are_most_of_it() {
        let mut table = NameTable::new();
        let long = |n: usize| format!("topology.kubernetes.io/zone=az-a/rack=r{n:06}");
        for n in 0..10_000 {
            table.insert(&long(n), n);
        }
        let full = table.text.len();
        let keep = table.insert(&long(9_999), 9_999).0;
        for n in 0..9_000 {
            table.remove(&long(n));
        }
        assert!(
            table.text.len() < full / 2,
            "after removing 90% the buffer is {} of {full} bytes",
            table.text.len()
        );
        assert_eq!(table.name(keep), long(9_999), "slots survive the rewrite");
        assert_eq!(table.get(&long(9_500)), Some(&9_500));
        assert_eq!(table.iter().count(), 1_000);
    }

    #[test]
    fn changing_a_value_keeps_the_name_order_built() {
        let names: Vec<String> = (0..100).map(|n| format!("{n:03}")).collect();
        let mut table: NameTable<u32> = names.iter().map(|n| n.as_str()).zip(0..).collect();
        assert_eq!(table.iter().count(), 100);
        *table.get_mut("050").expect("present") = 7;
        assert!(
            table.order.get().is_some(),
            "a value change keeps the order"
        );
        table.insert("100", 100);
        assert!(table.order.get().is_none(), "a new name resets it");
        assert_eq!(table.iter().last(), Some(("100".into(), &100)));
    }

    #[test]
    fn a_domain_costs_its_own_tail_and_under_fifty_bytes() {
        let mut table = NameTable::new();
        let (mut names, mut tails) = (0, 0);
        for n in 0..100_000 {
            let name = format!("topology.kubernetes.io/zone=az-{}/rack=r{n:06}", n % 3);
            names += name.len();
            tails += split(&name).1.len();
            table.insert(&name, (n as u32 % 200, n as u64));
        }
        let _ = table.iter().count();
        let per_row = (table.heap_bytes() - tails) / 100_000;
        assert!(
            per_row < 50,
            "{per_row} bytes per row beyond its tail ({} in all, for {names} bytes of names)",
            table.heap_bytes()
        );
        eprintln!(
            "{} bytes a row for {} bytes of name",
            table.heap_bytes() / 100_000,
            names / 100_000
        );
    }

    #[test]
    fn encodes_as_the_ordered_map_of_the_same_rows() {
        let rows = [("rack-b", 2u64), ("rack-a", 1), ("rack-c", 3)];
        let table: NameTable<u64> = rows.iter().map(|(n, v)| (*n, *v)).collect();
        let map: BTreeMap<String, u64> = rows.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        let bytes = postcard::to_allocvec(&table).expect("encodes");
        assert_eq!(bytes, postcard::to_allocvec(&map).expect("encodes"));
        let back: NameTable<u64> = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, table);
        let json: NameTable<u64> =
            serde_json::from_str(&serde_json::to_string(&map).expect("json")).expect("decodes");
        assert_eq!(json, table);
    }

    /// A name of the property tests' small world: names kept whole, names under long shared
    /// prefixes (one prefix naming another's row, names that sort across prefix boundaries),
    /// short prefixes kept whole, and long tails so that removals pass the compaction
    /// threshold now and then.
    fn sample_name(key: u8) -> String {
        let long = "x".repeat(key as usize * 100);
        match key % 5 {
            0 => format!("{key:02}-{long}"),
            1 => format!("zone=az-{}/rack=r{key:02}{long}", key % 3),
            2 => format!("zone=az-{}", key % 3),
            3 => format!("zone=az-{}/rack=r{:02}/host=h{key}", key % 3, key % 7),
            _ => format!("a/{key:02}"),
        }
    }

    #[test]
    fn rows_reserved_for_go_in_without_growing_a_buffer() {
        let names: Vec<String> = (0..1_000)
            .map(|n| format!("topology.kubernetes.io/zone=az-a/rack=r{n:06}"))
            .chain((0..1_000).map(|n| format!("cluster-{n}")))
            .collect();
        let mut table = NameTable::new();
        table.insert("zone=az-b/rack=r1", 0u32);
        table.reserve(names.iter().map(String::as_str));
        let reserved = table.heap_bytes();
        for name in &names {
            table.insert(name, 1);
        }
        // The shared prefix's own entry is the only new allocation.
        let prefix = "topology.kubernetes.io/zone=az-a/".len() + std::mem::size_of::<Prefix>();
        assert!(
            table.heap_bytes() <= reserved + prefix + 64,
            "{} bytes after the inserts, {reserved} reserved",
            table.heap_bytes()
        );
    }

    #[test]
    fn names_under_a_shared_prefix_store_it_once_and_release_it_with_the_last_row() {
        let mut table = NameTable::new();
        for n in 0..1_000 {
            table.insert(
                &format!("topology.kubernetes.io/zone=az-{}/rack=r{n:06}", n % 2),
                n,
            );
        }
        assert_eq!(table.prefix_ids.len(), 2, "one entry a shared prefix");
        assert_eq!(
            table.text.len(),
            1_000 * (4 + "rack=r000000".len()),
            "a prefix id and a tail a row"
        );
        assert_eq!(
            table.name(7),
            "topology.kubernetes.io/zone=az-1/rack=r000007"
        );
        for n in (1..1_000).step_by(2) {
            table.remove(&format!("topology.kubernetes.io/zone=az-1/rack=r{n:06}"));
        }
        assert_eq!(
            table.prefix_ids.len(),
            1,
            "az-1's prefix went with its last row"
        );
        table.insert("topology.kubernetes.io/zone=az-2/rack=r000001", 1);
        assert_eq!(table.prefixes.len(), 3, "its id is reused");
        assert_eq!(
            table.get("topology.kubernetes.io/zone=az-2/rack=r000001"),
            Some(&1)
        );
        assert_eq!(
            table.get("topology.kubernetes.io/zone=az-1/rack=r000001"),
            None
        );
        assert_eq!(
            table.get("topology.kubernetes.io/zone=az-0/rack=r000000"),
            Some(&0)
        );
    }

    proptest! {
        /// Comparing two names by their parts agrees with comparing the joined names,
        /// wherever each is cut.
        #[test]
        fn comparing_parts_is_comparing_joined_names(
            a in "[a-c/]{0,6}", b in "[a-c/]{0,6}", cut_a in 0usize..7, cut_b in 0usize..7
        ) {
            let (cut_a, cut_b) = (cut_a.min(a.len()), cut_b.min(b.len()));
            prop_assert_eq!(
                cmp_joined(a.split_at(cut_a), b.split_at(cut_b)),
                a.cmp(&b)
            );
        }

        /// Any sequence of inserts and removes leaves the table equal to a BTreeMap given the
        /// same sequence: same lookups, same ordered listing, same pages.
        #[test]
        fn behaves_as_an_ordered_map(
            ops in proptest::collection::vec((any::<bool>(), 0u8..40, any::<u16>()), 0..400)
        ) {
            let mut table = NameTable::new();
            let mut model = BTreeMap::new();
            for (insert, key, value) in ops {
                let name = sample_name(key);
                if insert {
                    prop_assert_eq!(table.insert(&name, value).1, model.insert(name, value));
                } else {
                    prop_assert_eq!(table.remove(&name).map(|(_, v)| v), model.remove(&name));
                }
                prop_assert_eq!(table.len(), model.len());
            }
            let listed: Vec<(String, u16)> =
                table.iter().map(|(n, v)| (n.to_string(), *v)).collect();
            let expected: Vec<(String, u16)> = model.clone().into_iter().collect();
            prop_assert_eq!(listed, expected);
            for key in 0u8..40 {
                let name = sample_name(key);
                prop_assert_eq!(table.get(&name), model.get(&name));
                let page: Vec<String> =
                    table.iter_after(&name).map(|(n, _)| n.into_owned()).collect();
                let expected: Vec<&str> = model
                    .range::<str, _>((std::ops::Bound::Excluded(name.as_str()), std::ops::Bound::Unbounded))
                    .map(|(n, _)| n.as_str())
                    .collect();
                prop_assert_eq!(page, expected);
            }
            let live_prefixes: std::collections::BTreeSet<&str> =
                model.keys().map(|n| split(n).0).filter(|p| !p.is_empty()).collect();
            prop_assert_eq!(table.prefix_ids.len(), live_prefixes.len());
        }
    }
}
