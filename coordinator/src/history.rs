//! Recent fleet changes by revision, kept in memory by every replica so that an assignment
//! watch can resume from a shard's cached revision instead of re-listing everything. Pure data
//! structure: the state machine appends, watch streams read.

use std::collections::{BTreeMap, VecDeque};

use crate::fleet::{Change, FleetState, ShardStatus};

/// Revisions of history kept; older resumes get a full listing.
pub const HISTORY_REVISIONS: usize = 20_000;
/// Individual changes kept, so a few huge batches cannot hold memory hostage: about two
/// AZ evacuations of a 100M-machine fleet (~33K domain moves each), ~3.5 MiB at 56 bytes a
/// change (names are shared with the state). A shard further behind re-lists, a few MB.
pub const HISTORY_CHANGES: usize = 64_000;

/// Changes of the most recent revisions.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<(u64, Vec<Change>)>,
    /// Changes held in `entries`.
    changes: usize,
    /// Every change after this revision is in `entries`.
    floor: u64,
}

impl History {
    /// An empty history starting at `revision` (after start-up or a snapshot install nothing
    /// earlier is known).
    pub fn starting_at(revision: u64) -> Self {
        Self {
            entries: VecDeque::new(),
            changes: 0,
            floor: revision,
        }
    }

    /// The newest revision the history knows.
    pub fn latest(&self) -> u64 {
        self.entries.back().map(|(r, _)| *r).unwrap_or(self.floor)
    }

    /// Records the changes that produced `revision`.
    pub fn push(&mut self, revision: u64, mut changes: Vec<Change>) {
        // Kept for thousands of revisions: drop the slack the vector grew with.
        changes.shrink_to_fit();
        self.changes += changes.len();
        self.entries.push_back((revision, changes));
        while self.entries.len() > HISTORY_REVISIONS || self.changes > HISTORY_CHANGES {
            let Some((evicted, dropped)) = self.entries.pop_front() else {
                break;
            };
            self.changes -= dropped.len();
            self.floor = evicted;
        }
    }

    /// The net change to `shard`'s assignments after revision `from`, or `None` when the
    /// history no longer reaches back that far.
    pub fn delta_since(&self, shard: &str, from: u64) -> Option<ShardDelta> {
        if from < self.floor {
            return None;
        }
        let mut delta = ShardDelta::default();
        for (_, changes) in self.entries.iter().filter(|(r, _)| *r > from) {
            for change in changes {
                delta.absorb(shard, change);
            }
        }
        Some(delta)
    }
}

/// Net change to one shard's assignments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ShardDelta {
    /// Domain → held after the change.
    pub domains: BTreeMap<String, bool>,
    /// Cluster → bound after the change.
    pub clusters: BTreeMap<String, bool>,
    /// (provider, region) → slice after the change (0 = none).
    pub slices: BTreeMap<(String, String), u64>,
    /// New status, if it changed ("active", "draining", "removed").
    pub status: Option<&'static str>,
}

/// Wire name of a shard status.
pub fn status_name(status: Option<&ShardStatus>) -> &'static str {
    match status {
        Some(ShardStatus::Active) => "active",
        Some(ShardStatus::Draining) => "draining",
        None => "removed",
    }
}

impl ShardDelta {
    /// Whether nothing changed for the shard.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
            && self.clusters.is_empty()
            && self.slices.is_empty()
            && self.status.is_none()
    }

    fn absorb(&mut self, shard: &str, change: &Change) {
        match change {
            Change::Domain { domain, old, new } => {
                let had = old.as_deref() == Some(shard);
                let has = new.as_deref() == Some(shard);
                if had != has {
                    self.domains.insert(domain.to_string(), has);
                }
            }
            Change::Binding { cluster, old, new } => {
                let had = old.as_deref() == Some(shard);
                let has = new.as_deref() == Some(shard);
                if had != has {
                    self.clusters.insert(cluster.to_string(), has);
                }
            }
            Change::Quota {
                provider,
                region,
                old,
                new,
            } => {
                let before = old.as_ref().and_then(|q| q.slices.get(shard)).copied();
                let after = new.as_ref().and_then(|q| q.slices.get(shard)).copied();
                if before != after {
                    self.slices.insert(
                        (provider.to_string(), region.to_string()),
                        after.unwrap_or(0),
                    );
                }
            }
            Change::Shard { id, old, new } if **id == *shard => {
                let before = old.as_ref().map(|s| &s.status);
                let after = new.as_ref().map(|s| &s.status);
                if before != after {
                    self.status = Some(status_name(after));
                }
            }
            Change::Shard { .. } | Change::Provider { .. } => {}
        }
    }
}

/// Everything `shard` holds in `state`, as a delta from nothing.
pub fn full_listing(state: &FleetState, shard: &str) -> ShardDelta {
    ShardDelta {
        domains: state
            .domains_of(shard)
            .into_iter()
            .map(|d| (d.to_string(), true))
            .collect(),
        clusters: state
            .bindings()
            .filter(|(_, s)| *s == shard)
            .map(|(c, _)| (c.to_string(), true))
            .collect(),
        slices: state
            .quotas()
            .filter_map(|q| {
                q.slices
                    .get(shard)
                    .map(|a| ((q.provider.clone(), q.region.clone()), *a))
            })
            .collect(),
        status: Some(status_name(state.shard(shard).map(|s| &s.status))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetCommand;

    fn state_with_two_shards() -> FleetState {
        let mut s = FleetState::new();
        for id in ["s1", "s2"] {
            s.apply(&FleetCommand::RegisterShard {
                id: id.into(),
                address: "a:1".into(),
                az: "az-a".into(),
                now_ms: 0,
                lease_ttl_ms: 1,
            })
            .expect("register");
        }
        s
    }

    fn record(s: &mut FleetState, h: &mut History, cmd: FleetCommand) {
        let (applied, changes) = s.apply_tracked(&cmd).expect("apply");
        h.push(applied.revision, changes);
    }

    #[test]
    fn deltas_follow_moves_and_resume_points() {
        let mut s = state_with_two_shards();
        let mut h = History::starting_at(s.revision());
        let start = s.revision();
        record(
            &mut s,
            &mut h,
            FleetCommand::AssignDomains {
                assignments: vec![("z=1".into(), "s1".into()), ("z=2".into(), "s1".into())],
                allow_move: false,
            },
        );
        let after_assign = s.revision();
        record(
            &mut s,
            &mut h,
            FleetCommand::AssignDomains {
                assignments: vec![("z=1".into(), "s2".into())],
                allow_move: true,
            },
        );
        let d1 = h.delta_since("s1", start).expect("in history");
        assert_eq!(
            d1.domains,
            BTreeMap::from([("z=1".into(), false), ("z=2".into(), true)])
        );
        let d1 = h.delta_since("s1", after_assign).expect("in history");
        assert_eq!(d1.domains, BTreeMap::from([("z=1".into(), false)]));
        let d2 = h.delta_since("s2", after_assign).expect("in history");
        assert_eq!(d2.domains, BTreeMap::from([("z=1".into(), true)]));
        assert!(h.delta_since("s1", start - 1).is_none(), "before the floor");
        let full = full_listing(&s, "s2");
        assert_eq!(full.domains, BTreeMap::from([("z=1".into(), true)]));
        assert_eq!(full.status, Some("active"));
    }

    #[test]
    fn old_history_is_evicted() {
        let mut h = History::starting_at(0);
        for r in 1..=(HISTORY_REVISIONS as u64 + 5) {
            h.push(r, Vec::new());
        }
        assert!(h.delta_since("s1", 4).is_none());
        assert!(h.delta_since("s1", 5).is_some());
    }

    #[test]
    fn a_change_is_small_and_the_change_count_is_bounded() {
        assert!(
            std::mem::size_of::<Change>() <= 56,
            "a domain move must stay one small slot"
        );
        let mut h = History::starting_at(0);
        let moved = Change::Domain {
            domain: "z=1".into(),
            old: None,
            new: Some("s1".into()),
        };
        h.push(1, vec![moved.clone(); HISTORY_CHANGES - 1]);
        assert!(h.delta_since("s1", 0).is_some());
        h.push(2, vec![moved; 2]);
        assert!(h.delta_since("s1", 0).is_none(), "revision 1 was evicted");
        assert!(h.delta_since("s1", 1).is_some());
    }
}
