//! One hasher for every hash index of the fleet state: `ahash` under fixed seeds.
//!
//! Fixed, because the state machine holds no randomness: equal inputs give equal tables, in
//! tests too. Hash flooding needs names an attacker can choose at scale; only operators and
//! the rebalancer name domains, clusters and shards. `ahash` rather than the standard
//! library's SipHash because a same-run A/B of the state-machine benchmark showed it faster
//! for these tables (issue #24; figures in ADR 0017, decision 9).

use std::hash::BuildHasher;

const SEEDS: ahash::RandomState = ahash::RandomState::with_seeds(
    0x9e37_79b9_7f4a_7c15,
    0xbf58_476d_1ce4_e5b9,
    0x94d0_49bb_1331_11eb,
    0x2545_f491_4f6c_dd1d,
);

/// Builds `ahash` hashers under the fixed seeds; zero-sized, so a map pays nothing for it.
#[derive(Clone, Copy, Debug, Default)]
pub struct FixedState;

impl BuildHasher for FixedState {
    type Hasher = ahash::AHasher;

    fn build_hasher(&self) -> ahash::AHasher {
        SEEDS.build_hasher()
    }
}

/// A hash map of the fleet state.
pub type HashMap<K, V> = std::collections::HashMap<K, V, FixedState>;

/// A hash set of the fleet state.
pub type HashSet<K> = std::collections::HashSet<K, FixedState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_hash_alike_in_every_map() {
        assert_eq!(FixedState.hash_one("zone=a"), FixedState.hash_one("zone=a"));
        assert_ne!(FixedState.hash_one("zone=a"), FixedState.hash_one("zone=b"));
        assert_eq!(FixedState.hash_one(7u32), SEEDS.hash_one(7u32));
    }
}
