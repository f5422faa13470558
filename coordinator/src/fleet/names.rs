//! Shared shard names. A 100M-machine fleet names ~200 shards from ~120K rows (domain owners,
//! cluster bindings) and the change history names them again; holding each shard's name once,
//! behind a reference-counted pointer, keeps those mentions a pointer each instead of a
//! `String`. The pointer is a thin one ([`arcstr::ArcStr`], 8 bytes, its length beside the
//! count in the one allocation): an `Arc<str>` is 16, and there are 100K rows. (Domain and
//! cluster names, each mentioned by one row, live in the tables' name buffers:
//! [`crate::fleet::table`].)

use crate::fleet::hash::HashSet;

/// A name held once and shared by every row and history entry that mentions it.
pub type Name = arcstr::ArcStr;

/// The distinct shard names in use. A cache: equal whatever it holds, never serialized.
#[derive(Clone, Debug, Default)]
pub(crate) struct Interner(HashSet<Name>);

impl Interner {
    /// The shared copy of `name`, made on first use.
    pub(crate) fn get(&mut self, name: &str) -> Name {
        if let Some(shared) = self.0.get(name) {
            return shared.clone();
        }
        let shared = Name::from(name);
        self.0.insert(shared.clone());
        shared
    }

    /// Forgets names nothing else holds (after a shard is removed).
    pub(crate) fn prune(&mut self) {
        self.0
            .retain(|name| Name::strong_count(name).is_some_and(|holders| holders > 1));
    }
}

impl PartialEq for Interner {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Interner {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_allocation_per_name_and_unused_names_are_forgotten() {
        let mut names = Interner::default();
        let a = names.get("shard-001");
        let b = names.get("shard-001");
        assert!(Name::ptr_eq(&a, &b));
        drop(names.get("shard-002"));
        names.prune();
        assert_eq!(names.0.len(), 1, "shard-002 is held by nothing else");
        drop((a, b));
        names.prune();
        assert!(names.0.is_empty());
    }
}
