//! A table of fixed-size rows keyed by name, laid out for a replica's memory (issue #24).
//!
//! A B-tree of `Arc<str>` keys costs a 100M-machine fleet's 100K domains about 165 bytes each
//! (a heap block per name with its allocator header and rounding, B-tree nodes two-thirds
//! full, a second ordered set per shard). Here every name lives back to back in one byte
//! buffer, a row is a slot in one vector (its name's place in the buffer and its value), and
//! a hash index of slot numbers answers lookups: a domain costs its name's bytes plus about
//! 40 bytes. Slot numbers are stable for a row's life, so other indexes (a shard's domains)
//! hold 4-byte slots instead of names.
//!
//! Name order, which listings and snapshots need, is kept as a sorted vector of slots built
//! on the first ordered read after a name came or went. Changing a row's value (a domain
//! moving between shards, the bulk of a rebalance) keeps it.

use std::sync::OnceLock;

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};

/// A removed row's `len` (its slot waits on the free list).
const VACANT: u32 = u32::MAX;

/// Dead name bytes tolerated before the buffer is rewritten: compaction runs when they are
/// both over this and over half the buffer, so it costs at most one copy per byte written.
const COMPACT_AFTER: usize = 64 * 1024;

/// Makes room for `additional` more items, growing by an eighth rather than doubling: the
/// tables are long-lived and mostly full, so a doubled buffer would leave up to half of it
/// unused for good. Still amortized O(1) per item.
fn grow<T>(buffer: &mut Vec<T>, additional: usize) {
    if buffer.capacity() - buffer.len() < additional {
        buffer.reserve_exact(additional.max(buffer.len() / 8).max(64));
    }
}

/// A row: where its name is in the buffer, and its value.
#[derive(Clone, Debug)]
struct Slot<V> {
    start: u32,
    len: u32,
    value: V,
}

/// Rows of `V` keyed by name; see the module documentation.
#[derive(Clone)]
pub struct NameTable<V> {
    /// Every live name back to back, and the bytes of removed ones until compaction.
    text: Vec<u8>,
    /// Bytes of `text` no live row uses.
    dead: usize,
    slots: Vec<Slot<V>>,
    /// Vacant slots, reused before the vector grows.
    free: Vec<u32>,
    /// Slot of each live row, found by hashing its name.
    index: HashTable<u32>,
    hasher: ahash::RandomState,
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
            // Fixed seeds: the layout is private to this process, and equal inputs give equal
            // tables in tests. Hash flooding needs names an attacker can choose at scale;
            // only operators and the rebalancer name domains and clusters.
            hasher: ahash::RandomState::with_seeds(
                0x9e37_79b9_7f4a_7c15,
                0xbf58_476d_1ce4_e5b9,
                0x94d0_49bb_1331_11eb,
                0x2545_f491_4f6c_dd1d,
            ),
            order: OnceLock::new(),
            len: 0,
        }
    }
}

/// The name of `slot` in `text`.
fn name_in<'a, V>(text: &'a [u8], slots: &[Slot<V>], slot: u32) -> &'a str {
    let s = &slots[slot as usize];
    let bytes = &text[s.start as usize..(s.start + s.len) as usize];
    debug_assert!(
        std::str::from_utf8(bytes).is_ok(),
        "slot {slot} spans whole UTF-8"
    );
    // SAFETY: only whole `&str`s are copied into `text` (by `insert`, and moved whole by
    // compaction), and a slot's `start..start + len` is exactly where its name was copied:
    // these bytes are valid UTF-8. Validating here instead costs the sort that builds the
    // name order a pass over every name at each comparison.
    unsafe { std::str::from_utf8_unchecked(bytes) }
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

    fn hash(&self, name: &str) -> u64 {
        self.hasher.hash_one(name)
    }

    /// The slot of `name`'s row.
    pub fn slot_of(&self, name: &str) -> Option<u32> {
        let (text, slots) = (&self.text, &self.slots);
        self.index
            .find(self.hash(name), |&slot| name_in(text, slots, slot) == name)
            .copied()
    }

    /// The name of a live row's slot.
    ///
    /// # Panics
    /// If `slot` is not a live row's (a slot comes from this table and is dropped with it).
    pub fn name(&self, slot: u32) -> &str {
        assert_ne!(
            self.slots[slot as usize].len, VACANT,
            "slot {slot} is vacant"
        );
        name_in(&self.text, &self.slots, slot)
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
        if let Some(slot) = self.slot_of(name) {
            let old = std::mem::replace(self.value_mut(slot), value);
            return (slot, Some(old));
        }
        let start = u32::try_from(self.text.len()).expect("names fit in 4 GiB");
        let len = u32::try_from(name.len()).expect("a name fits in 4 GiB");
        assert!(len != VACANT, "a name fits in 4 GiB");
        grow(&mut self.text, name.len());
        self.text.extend_from_slice(name.as_bytes());
        let row = Slot { start, len, value };
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
        let hash = self.hash(name);
        let (text, slots, hasher) = (&self.text, &self.slots, &self.hasher);
        self.index
            .insert_unique(hash, slot, |&s| hasher.hash_one(name_in(text, slots, s)));
        self.len += 1;
        self.order = OnceLock::new();
        (slot, None)
    }

    /// Removes `name`'s row; returns its slot (now vacant, reused by a later insert) and value.
    pub fn remove(&mut self, name: &str) -> Option<(u32, V)>
    where
        V: Clone,
    {
        let hash = self.hash(name);
        let (text, slots) = (&self.text, &self.slots);
        let found = self
            .index
            .find_entry(hash, |&slot| name_in(text, slots, slot) == name)
            .ok()?;
        let (slot, _) = found.remove();
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
        let hash = self.hash(self.name(slot));
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
        let row = &mut self.slots[slot as usize];
        self.dead += row.len as usize;
        row.len = VACANT;
        let value = row.value.clone();
        self.free.push(slot);
        self.len -= 1;
        self.order = OnceLock::new();
        self.compact_if_mostly_dead();
        value
    }

    /// Rewrites the name buffer without removed names once they are most of it. Slots keep
    /// their numbers.
    fn compact_if_mostly_dead(&mut self) {
        if self.dead <= COMPACT_AFTER || self.dead * 2 <= self.text.len() {
            return;
        }
        let mut text = Vec::with_capacity(self.text.len() - self.dead);
        for row in self.slots.iter_mut().filter(|row| row.len != VACANT) {
            let start = text.len();
            text.extend_from_slice(&self.text[row.start as usize..(row.start + row.len) as usize]);
            row.start = start as u32;
        }
        self.text = text;
        self.dead = 0;
    }

    /// Live slots in name order.
    fn ordered(&self) -> &[u32] {
        self.order.get_or_init(|| {
            let mut order: Vec<u32> = (0..self.slots.len() as u32)
                .filter(|&slot| self.slots[slot as usize].len != VACANT)
                .collect();
            order.sort_unstable_by(|&a, &b| {
                name_in(&self.text, &self.slots, a).cmp(name_in(&self.text, &self.slots, b))
            });
            order
        })
    }

    /// Rows in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &V)> + '_ {
        self.ordered()
            .iter()
            .map(move |&slot| (self.name(slot), self.value(slot)))
    }

    /// Rows whose names sort after `after`, in name order (a listing's next page).
    pub fn iter_after<'a>(
        &'a self,
        after: &str,
    ) -> impl Iterator<Item = (&'a str, &'a V)> + use<'a, V> {
        let order = self.ordered();
        let from = order.partition_point(|&slot| self.name(slot) <= after);
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
        self.text.capacity()
            + self.slots.capacity() * std::mem::size_of::<Slot<V>>()
            + self.free.capacity() * 4
            // hashbrown: one 4-byte slot and one control byte per bucket, buckets 8/7 of
            // the capacity.
            + self.index.capacity() * 8 / 7 * 5
            + self.order.get().map_or(0, |o| o.capacity() * 4)
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
        for (name, value) in self.iter() {
            map.serialize_entry(name, value)?;
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
        assert_eq!(table.iter().last(), Some(("100", &100)));
    }

    #[test]
    fn a_domain_costs_its_name_and_about_forty_bytes() {
        let mut table = NameTable::new();
        let mut names = 0;
        for n in 0..100_000 {
            let name = format!("topology.kubernetes.io/zone=az-{}/rack=r{n:06}", n % 3);
            names += name.len();
            table.insert(&name, (n as u32 % 200, n as u64));
        }
        let _ = table.iter().count();
        let per_row = (table.heap_bytes() - names) / 100_000;
        assert!(
            per_row <= 64,
            "{per_row} bytes per row beyond the name ({} in all)",
            table.heap_bytes()
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

    proptest! {
        /// Any sequence of inserts and removes leaves the table equal to a BTreeMap given the
        /// same sequence: same lookups, same ordered listing, same pages.
        #[test]
        fn behaves_as_an_ordered_map(
            ops in proptest::collection::vec((any::<bool>(), 0u8..40, any::<u16>()), 0..400)
        ) {
            let mut table = NameTable::new();
            let mut model = BTreeMap::new();
            for (insert, key, value) in ops {
                // Long names so that removals pass the compaction threshold now and then.
                let name = format!("{key:02}-{}", "x".repeat(key as usize * 100));
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
                let name = format!("{key:02}-{}", "x".repeat(key as usize * 100));
                prop_assert_eq!(table.get(&name), model.get(&name));
                let page: Vec<&str> = table.iter_after(&name).map(|(n, _)| n).collect();
                let expected: Vec<&str> = model
                    .range::<str, _>((std::ops::Bound::Excluded(name.as_str()), std::ops::Bound::Unbounded))
                    .map(|(n, _)| n.as_str())
                    .collect();
                prop_assert_eq!(page, expected);
            }
        }
    }
}
