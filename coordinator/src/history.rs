//! Recent fleet changes by revision, kept in memory by every replica so that an assignment
//! watch can resume from a shard's cached revision instead of re-listing everything. Pure data
//! structure: the state machine appends, watch streams read.

use std::collections::{BTreeMap, VecDeque};

use crate::fleet::table::NameTable;
use crate::fleet::{Change, FleetState, Name, ShardStatus};

/// Revisions of history kept; older resumes get a full listing.
pub const HISTORY_REVISIONS: usize = 20_000;
/// Individual changes kept, so a few huge batches cannot hold memory hostage: half an AZ
/// evacuation of a 100M-machine fleet (~33K domain moves), ~1.1 MiB at ~72 bytes a domain
/// move (a 32-byte record and the domain's name, kept once under its shared prefix; shard
/// names are shared with the state). A shard further behind re-lists its own assignments
/// instead: a full update of tens of KB for a shard of a 100M-machine fleet (~500 domains,
/// ~100 clusters, ~30 slices), against the 8 MiB this history cost at 64K changes once names
/// were no longer shared with the tables (issue #24).
pub const HISTORY_CHANGES: usize = 16_384;

/// Changes of the most recent revisions.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<(u64, Vec<Kept>)>,
    /// Changes held in `entries`.
    changes: usize,
    /// Every change after this revision is in `entries`.
    floor: u64,
    /// The names of the domains the kept changes moved, each once with the number of kept
    /// changes naming it. Most of a change's memory was its domain's name in a heap block of
    /// its own (~80 bytes for a 45-byte name); here a name shares its prefix with the other
    /// domains of its rack's parent and costs its tail and ~20 bytes (issue #24).
    domains: NameTable<u32>,
}

/// A kept change: a domain move with its name in [`History::domains`], or any other change
/// as it came.
#[derive(Debug)]
enum Kept {
    Domain {
        /// The domain's row in [`History::domains`].
        slot: u32,
        /// Owner before.
        old: Option<Name>,
        /// Owner after.
        new: Option<Name>,
    },
    Other(Change),
}

impl History {
    /// An empty history starting at `revision` (after start-up or a snapshot install nothing
    /// earlier is known).
    pub fn starting_at(revision: u64) -> Self {
        Self {
            floor: revision,
            ..Self::default()
        }
    }

    /// The newest revision the history knows.
    pub fn latest(&self) -> u64 {
        self.entries.back().map(|(r, _)| *r).unwrap_or(self.floor)
    }

    /// Records the changes that produced `revision`.
    pub fn push(&mut self, revision: u64, changes: Vec<Change>) {
        // What would be evicted after the push goes first, so the name table never holds the
        // old names and the new at once (it keeps the capacity of its fullest moment).
        while !self.entries.is_empty()
            && (self.entries.len() >= HISTORY_REVISIONS
                || self.changes + changes.len() > HISTORY_CHANGES)
        {
            self.evict_oldest();
        }
        self.domains
            .reserve(changes.iter().filter_map(|change| match change {
                Change::Domain { domain, .. } => Some(domain.as_str()),
                _ => None,
            }));
        let mut kept: Vec<Kept> = changes
            .into_iter()
            .map(|change| match change {
                Change::Domain { domain, old, new } => {
                    // One lookup: a name already kept gets its count back, plus one.
                    let (slot, naming) = self.domains.insert(&domain, 1);
                    if let Some(naming) = naming {
                        *self.domains.value_mut(slot) = naming + 1;
                    }
                    Kept::Domain { slot, old, new }
                }
                other => Kept::Other(other),
            })
            .collect();
        // Kept for thousands of revisions: drop the slack the journal's vector grew with (the
        // collect reuses its allocation).
        kept.shrink_to_fit();
        self.changes += kept.len();
        self.entries.push_back((revision, kept));
        // A batch larger than the whole history is not kept either.
        if self.changes > HISTORY_CHANGES {
            self.evict_oldest();
        }
    }

    /// Drops the oldest revision's changes, and the names only they used.
    fn evict_oldest(&mut self) {
        let Some((evicted, dropped)) = self.entries.pop_front() else {
            return;
        };
        self.changes -= dropped.len();
        self.floor = evicted;
        let mut released = false;
        for kept in dropped {
            if let Kept::Domain { slot, .. } = kept {
                let naming = self.domains.value_mut(slot);
                *naming -= 1;
                if *naming == 0 {
                    self.domains.remove_slot(slot);
                    released = true;
                }
            }
        }
        // A table keeps the capacity of its fullest moment: once a burst of moves has left
        // the history, so does the room it took (a 10,000-domain batch's ~0.4 MB).
        if released && self.domains.is_empty() {
            self.domains = NameTable::new();
        }
    }

    /// The net change to `shard`'s assignments after revision `from`, or `None` when the
    /// history no longer reaches back that far.
    pub fn delta_since(&self, shard: &str, from: u64) -> Option<ShardDelta> {
        if from < self.floor {
            return None;
        }
        let mut delta = ShardDelta::default();
        for (revision, changes) in self.entries.iter().filter(|(r, _)| *r > from) {
            for change in changes {
                match change {
                    Kept::Domain { slot, old, new } => {
                        let had = old.as_deref() == Some(shard);
                        let has = new.as_deref() == Some(shard);
                        // A domain given (again) to this shard is granted at this change's
                        // revision.
                        if has || had {
                            let domain = self.domains.name(*slot).into_owned();
                            delta.domains.insert(domain, has.then_some(*revision));
                        }
                    }
                    Kept::Other(change) => delta.absorb(shard, *revision, change),
                }
            }
        }
        Some(delta)
    }

    /// Domain names the history holds (each once, however many kept changes name it).
    #[cfg(test)]
    fn domain_names(&self) -> usize {
        self.domains.len()
    }
}

/// Net change to one shard's assignments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ShardDelta {
    /// Domain → after the change: held since the revision it was granted at, or not held.
    pub domains: BTreeMap<String, Option<u64>>,
    /// Cluster → after the change: bound since the revision it was granted at, or not bound.
    pub clusters: BTreeMap<String, Option<u64>>,
    /// (provider, region) → slice after the change (0 = none) and the slice table's grant.
    pub slices: BTreeMap<(String, String), SliceGrant>,
    /// New status, if it changed ("active", "draining", "removed").
    pub status: Option<&'static str>,
}

/// A shard's slice of a quota, with the grant of the slice table it is part of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SliceGrant {
    /// Machines (0: no slice).
    pub amount: u64,
    /// Revision at which the quota's slice table last changed.
    pub granted: u64,
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

    fn absorb(&mut self, shard: &str, revision: u64, change: &Change) {
        match change {
            Change::Binding { cluster, old, new } => {
                let had = old.as_deref() == Some(shard);
                let has = new.as_deref() == Some(shard);
                // A binding changes only when its shard does: the grant is this revision.
                if has {
                    self.clusters.insert(cluster.to_string(), Some(revision));
                } else if had {
                    self.clusters.insert(cluster.to_string(), None);
                }
            }
            Change::Quota { old, new } => {
                let Some(quota) = new.as_deref().or(old.as_deref()) else {
                    return;
                };
                let before = old.as_ref().and_then(|q| q.slices.get(shard)).copied();
                let after = new.as_ref().and_then(|q| q.slices.get(shard)).copied();
                let granted = new.as_ref().map_or(0, |q| q.granted);
                // A holder hears of every new slice table, even when its own slice stayed:
                // providers refuse the table it holds once another holder acts under the new one.
                let table_moved = old.as_ref().map(|q| q.granted) != Some(granted);
                if before != after || (after.is_some() && table_moved) {
                    self.slices.insert(
                        (quota.provider.clone(), quota.region.clone()),
                        SliceGrant {
                            amount: after.unwrap_or(0),
                            granted,
                        },
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
            // Domain moves are kept apart ([`Kept::Domain`]) and read there.
            Change::Shard { .. } | Change::Provider { .. } | Change::Domain { .. } => {}
        }
    }
}

/// Everything `shard` holds in `state`, as a delta from nothing.
pub fn full_listing(state: &FleetState, shard: &str) -> ShardDelta {
    ShardDelta {
        domains: state
            .domains_of(shard)
            .into_iter()
            .map(|d| {
                let granted = state.domain_row(&d).map(|row| row.granted);
                (d.into_owned(), granted)
            })
            .collect(),
        clusters: state
            .bindings()
            .filter(|(_, s)| *s == shard)
            .map(|(c, _)| {
                let granted = state.binding_row(&c).map(|row| row.granted);
                (c.into_owned(), granted)
            })
            .collect(),
        slices: state
            .quotas()
            .filter_map(|q| {
                q.slices.get(shard).map(|amount| {
                    (
                        (q.provider.clone(), q.region.clone()),
                        SliceGrant {
                            amount: *amount,
                            granted: q.granted,
                        },
                    )
                })
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
        let moved = s.revision();
        let d1 = h.delta_since("s1", start).expect("in history");
        assert_eq!(
            d1.domains,
            BTreeMap::from([("z=1".into(), None), ("z=2".into(), Some(after_assign))])
        );
        let d1 = h.delta_since("s1", after_assign).expect("in history");
        assert_eq!(d1.domains, BTreeMap::from([("z=1".into(), None)]));
        let d2 = h.delta_since("s2", after_assign).expect("in history");
        assert_eq!(d2.domains, BTreeMap::from([("z=1".into(), Some(moved))]));
        assert!(h.delta_since("s1", start - 1).is_none(), "before the floor");
        let full = full_listing(&s, "s2");
        assert_eq!(full.domains, BTreeMap::from([("z=1".into(), Some(moved))]));
        assert_eq!(full.status, Some("active"));
        let full = full_listing(&s, "s1");
        assert_eq!(
            full.domains,
            BTreeMap::from([("z=2".into(), Some(after_assign))]),
            "a domain that stayed keeps the grant it was given at"
        );
    }

    #[test]
    fn a_domain_given_back_gets_a_new_grant_and_a_repeat_keeps_the_old() {
        let mut s = state_with_two_shards();
        let mut h = History::starting_at(s.revision());
        let assign = |shard: &str| FleetCommand::AssignDomains {
            assignments: vec![("z=1".into(), shard.into())],
            allow_move: true,
        };
        record(&mut s, &mut h, assign("s1"));
        let first = s.revision();
        // Assigning it to its owner again changes nothing, grant included.
        record(&mut s, &mut h, assign("s1"));
        assert_eq!(s.revision(), first);
        assert_eq!(s.domain_row("z=1").map(|r| r.granted), Some(first));
        record(&mut s, &mut h, assign("s2"));
        record(&mut s, &mut h, assign("s1"));
        let back = s.revision();
        assert!(back > first);
        let d1 = h.delta_since("s1", first).expect("in history");
        assert_eq!(d1.domains, BTreeMap::from([("z=1".into(), Some(back))]));
        assert_eq!(s.domain_row("z=1").map(|r| r.granted), Some(back));
    }

    #[test]
    fn a_cluster_is_granted_where_it_is_bound_and_a_round_trip_in_a_batch_keeps_its_grant() {
        let mut s = state_with_two_shards();
        let mut h = History::starting_at(s.revision());
        let bind = |shard: &str| FleetCommand::BindCluster {
            cluster: "c1".into(),
            shard: shard.into(),
        };
        let to = |shard: &str| FleetCommand::MoveCluster {
            cluster: "c1".into(),
            shard: shard.into(),
        };
        record(&mut s, &mut h, bind("s1"));
        let first = s.revision();
        assert_eq!(s.binding_row("c1").map(|r| r.granted), Some(first));
        // Away and back within one batch: never observably elsewhere, the grant stays.
        record(
            &mut s,
            &mut h,
            FleetCommand::Batch {
                commands: vec![to("s2"), to("s1")],
            },
        );
        assert_eq!(s.binding_row("c1").map(|r| r.granted), Some(first));
        record(&mut s, &mut h, to("s2"));
        let moved = s.revision();
        let d1 = h.delta_since("s1", first).expect("in history");
        assert_eq!(d1.clusters, BTreeMap::from([("c1".into(), None)]));
        let d2 = h.delta_since("s2", first).expect("in history");
        assert_eq!(d2.clusters, BTreeMap::from([("c1".into(), Some(moved))]));
        assert_eq!(
            full_listing(&s, "s2").clusters,
            BTreeMap::from([("c1".into(), Some(moved))])
        );
        assert!(full_listing(&s, "s1").clusters.is_empty());
    }

    #[test]
    fn every_slice_holder_hears_of_a_new_slice_table_and_a_new_total_alone_moves_nothing() {
        let mut s = state_with_two_shards();
        s.apply(&FleetCommand::RegisterShard {
            id: "s3".into(),
            address: "a:1".into(),
            az: "az-a".into(),
            now_ms: 0,
            lease_ttl_ms: 1,
        })
        .expect("register");
        s.apply(&FleetCommand::SetProvider {
            name: "p".into(),
            endpoint: "grpc://127.0.0.1:1".into(),
            region: "r".into(),
            capacity_types: vec![],
        })
        .expect("provider");
        let mut h = History::starting_at(s.revision());
        let slices = |pairs: &[(&str, u64)]| {
            pairs
                .iter()
                .map(|(shard, n)| (shard.to_string(), *n))
                .collect::<BTreeMap<_, _>>()
        };
        record(
            &mut s,
            &mut h,
            FleetCommand::SetQuota {
                provider: "p".into(),
                region: "r".into(),
                total: 100,
                slices: slices(&[("s1", 10), ("s2", 10)]),
            },
        );
        let table = s.revision();
        let key = ("p".to_string(), "r".to_string());
        assert_eq!(s.quota("p", "r").map(|q| q.granted), Some(table));
        // s2's slice grows; s1's stays 10 but its table is new: both hear of it.
        record(
            &mut s,
            &mut h,
            FleetCommand::SetQuotaSlices {
                provider: "p".into(),
                region: "r".into(),
                slices: slices(&[("s2", 20)]),
            },
        );
        let grown = s.revision();
        let d1 = h.delta_since("s1", table).expect("in history");
        assert_eq!(
            d1.slices.get(&key),
            Some(&SliceGrant {
                amount: 10,
                granted: grown
            })
        );
        let d2 = h.delta_since("s2", table).expect("in history");
        assert_eq!(
            d2.slices.get(&key),
            Some(&SliceGrant {
                amount: 20,
                granted: grown
            })
        );
        assert!(
            h.delta_since("s3", table).expect("in history").is_empty(),
            "a shard without a slice hears nothing"
        );
        // A new total with the same slices keeps the table's grant and tells nobody.
        record(
            &mut s,
            &mut h,
            FleetCommand::SetQuota {
                provider: "p".into(),
                region: "r".into(),
                total: 200,
                slices: slices(&[("s1", 10), ("s2", 20)]),
            },
        );
        assert_eq!(s.quota("p", "r").map(|q| q.granted), Some(grown));
        assert!(h.delta_since("s1", grown).expect("in history").is_empty());
        // A removed slice is sent as amount 0 with the new table.
        record(
            &mut s,
            &mut h,
            FleetCommand::SetQuotaSlices {
                provider: "p".into(),
                region: "r".into(),
                slices: slices(&[("s1", 0)]),
            },
        );
        let removed = s.revision();
        assert_eq!(
            h.delta_since("s1", grown)
                .expect("in history")
                .slices
                .get(&key),
            Some(&SliceGrant {
                amount: 0,
                granted: removed
            })
        );
        assert_eq!(
            full_listing(&s, "s2").slices.get(&key),
            Some(&SliceGrant {
                amount: 20,
                granted: removed
            })
        );
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
            std::mem::size_of::<Kept>() <= 32,
            "a kept change must stay one small slot"
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

    #[test]
    fn a_domain_name_is_kept_once_and_goes_with_the_last_change_naming_it() {
        let moved = |domain: &str, from: Option<&str>, to: &str| Change::Domain {
            domain: domain.into(),
            old: from.map(Name::from),
            new: Some(to.into()),
        };
        let bound = Change::Binding {
            cluster: "c1".into(),
            old: None,
            new: Some("s1".into()),
        };
        let mut h = History::starting_at(0);
        h.push(
            1,
            vec![
                moved("zone=az-a/rack=r1", None, "s1"),
                moved("zone=az-a/rack=r2", None, "s1"),
            ],
        );
        h.push(2, vec![moved("zone=az-a/rack=r1", Some("s1"), "s2")]);
        assert_eq!(h.domain_names(), 2, "r1 is named twice and kept once");
        assert_eq!(
            h.delta_since("s1", 0).expect("in history").domains,
            BTreeMap::from([
                ("zone=az-a/rack=r1".into(), None),
                ("zone=az-a/rack=r2".into(), Some(1)),
            ])
        );
        // Fills the history so that revision 1 alone goes.
        h.push(3, vec![bound.clone(); HISTORY_CHANGES - 1]);
        assert!(h.delta_since("s1", 0).is_none(), "revision 1 was evicted");
        assert_eq!(
            h.domain_names(),
            1,
            "r2 went with revision 1; r1 stays, named by revision 2"
        );
        assert_eq!(
            h.delta_since("s2", 1).expect("in history").domains,
            BTreeMap::from([("zone=az-a/rack=r1".into(), Some(2))])
        );
        h.push(4, vec![bound]);
        assert!(h.delta_since("s2", 1).is_none(), "revision 2 was evicted");
        assert_eq!(h.domain_names(), 0, "no kept change names a domain");
        assert_eq!(
            h.domains.heap_bytes(),
            NameTable::<u32>::new().heap_bytes(),
            "the names' table gave its room back with its last name"
        );
        // A batch larger than the whole history is not kept, nor are its names.
        h.push(
            5,
            vec![moved("zone=az-a/rack=r3", None, "s1"); HISTORY_CHANGES + 1],
        );
        assert!(h.delta_since("s1", 4).is_none(), "revision 5 is not kept");
        assert!(h.delta_since("s1", 5).is_some());
        assert_eq!(h.domain_names(), 0);
    }
}
