//! Key permissions as etcd defines them: a role grants read, write or both on one key, on a
//! prefix or on every key from one on; a user holds the union of its roles' grants, and a
//! request is allowed only if that union covers every key it could touch.

use serde::{Deserialize, Serialize};

/// What a permission allows (etcd's `authpb.Permission.Type`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Range reads and watches.
    Read,
    /// Puts and deletes.
    Write,
    /// Both.
    ReadWrite,
}

impl Access {
    /// Whether this grant allows `wanted` (which is `Read` or `Write`).
    pub fn allows(self, wanted: Access) -> bool {
        self == Access::ReadWrite || self == wanted
    }
}

/// One grant of a role: `access` on `key` alone (empty `range_end`), on `[key, range_end)`, or
/// on every key from `key` on (`range_end` = `[0]`), etcd's range conventions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range (see above).
    pub range_end: Vec<u8>,
    /// What it allows.
    pub access: Access,
}

/// A half-open key interval; `end` `None` runs past every key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// The keys a request or grant names with etcd's range conventions. A range whose end is
    /// not after its start is read as its first key alone: the request touches no key then,
    /// and asking for the first key's permission errs on the side of refusing.
    pub fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let single = || {
            let mut end = key.to_vec();
            end.push(0);
            Interval {
                start: key.to_vec(),
                end: Some(end),
            }
        };
        if range_end.is_empty() {
            single()
        } else if range_end == [0] {
            Interval {
                start: key.to_vec(),
                end: None,
            }
        } else if range_end <= key {
            single()
        } else {
            Interval {
                start: key.to_vec(),
                end: Some(range_end.to_vec()),
            }
        }
    }

    /// Whether `self` ends at or after `other` ends.
    fn ends_after(&self, other: &Interval) -> bool {
        match (&self.end, &other.end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a >= b,
        }
    }

    /// Whether `key` is before the end.
    fn reaches(&self, key: &[u8]) -> bool {
        self.end.as_deref().is_none_or(|end| key <= end)
    }
}

/// The union of grants of one kind, merged into disjoint, non-touching intervals in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    merged: Vec<Interval>,
}

impl Coverage {
    /// The union of `intervals`.
    pub fn of(mut intervals: Vec<Interval>) -> Coverage {
        intervals.sort_by(|a, b| a.start.cmp(&b.start));
        let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
        for interval in intervals {
            match merged.last_mut() {
                // Overlapping or touching: [a, b) and [b, c) cover [a, c).
                Some(last) if last.reaches(&interval.start) => {
                    if !last.ends_after(&interval) {
                        last.end = interval.end;
                    }
                }
                _ => merged.push(interval),
            }
        }
        Coverage { merged }
    }

    /// Whether every key of `wanted` is covered.
    pub fn covers(&self, wanted: &Interval) -> bool {
        // The last merged interval starting at or before the wanted start is the only one that
        // can hold it (they are disjoint and sorted).
        let at = self
            .merged
            .partition_point(|interval| interval.start <= wanted.start);
        at > 0 && {
            let candidate = &self.merged[at - 1];
            let holds_start = match &candidate.end {
                None => true,
                Some(end) => wanted.start < *end,
            };
            holds_start && candidate.ends_after(wanted)
        }
    }
}

/// What a user may read and write: the union of its roles' grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserAccess {
    read: Coverage,
    write: Coverage,
}

impl UserAccess {
    /// The union of `grants`.
    pub fn of<'a>(grants: impl Iterator<Item = &'a Permission>) -> UserAccess {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for grant in grants {
            let interval = Interval::of(&grant.key, &grant.range_end);
            if grant.access.allows(Access::Read) {
                read.push(interval.clone());
            }
            if grant.access.allows(Access::Write) {
                write.push(interval);
            }
        }
        UserAccess {
            read: Coverage::of(read),
            write: Coverage::of(write),
        }
    }

    /// Whether every key of `[key, range_end)` (etcd conventions) may be accessed so.
    pub fn allows(&self, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let wanted = Interval::of(key, range_end);
        match access {
            Access::Read => self.read.covers(&wanted),
            Access::Write => self.write.covers(&wanted),
            Access::ReadWrite => self.read.covers(&wanted) && self.write.covers(&wanted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_protocol::coordination::prefix_end;

    fn grant(access: Access, key: &str, range_end: &[u8]) -> Permission {
        Permission {
            key: key.as_bytes().to_vec(),
            range_end: range_end.to_vec(),
            access,
        }
    }

    fn prefix(access: Access, p: &str) -> Permission {
        grant(access, p, &prefix_end(p.as_bytes()))
    }

    #[test]
    fn a_prefix_grant_covers_its_prefix_and_nothing_beside_it() {
        let user = UserAccess::of([prefix(Access::Read, "/app/")].iter());
        assert!(user.allows(Access::Read, b"/app/a", b""));
        assert!(user.allows(Access::Read, b"/app/", &prefix_end(b"/app/")));
        assert!(user.allows(Access::Read, b"/app/x", b"/app/y"));
        // A sibling that shares the first letters is not inside the prefix.
        assert!(!user.allows(Access::Read, b"/app-secrets/a", b""));
        assert!(!user.allows(Access::Read, b"/app", b""));
        assert!(!user.allows(Access::Read, b"/app/", b"/app1"));
        assert!(!user.allows(Access::Read, b"/app/", &[0]));
        assert!(!user.allows(Access::Write, b"/app/a", b""));
    }

    #[test]
    fn touching_and_overlapping_grants_merge_and_gaps_do_not() {
        let user = UserAccess::of(
            [
                grant(Access::Write, "a", b"c"),
                grant(Access::ReadWrite, "c", b"e"),
                grant(Access::Write, "d", b"f"),
                grant(Access::Write, "g", b""),
            ]
            .iter(),
        );
        assert!(user.allows(Access::Write, b"a", b"f"));
        assert!(user.allows(Access::Write, b"g", b""));
        assert!(!user.allows(Access::Write, b"a", b"g"), "f..g is a gap");
        assert!(
            !user.allows(Access::Write, b"g", b"h"),
            "only the key g itself"
        );
        assert!(user.allows(Access::Read, b"c", b"e"));
        assert!(!user.allows(Access::Read, b"b", b"d"));
        assert!(user.allows(Access::ReadWrite, b"c", b"e"));
        assert!(!user.allows(Access::ReadWrite, b"a", b"c"));
    }

    #[test]
    fn from_key_grants_run_to_the_end_and_every_key_needs_one_from_the_start() {
        let from_m = UserAccess::of([grant(Access::Read, "m", &[0])].iter());
        assert!(from_m.allows(Access::Read, b"zzz", b""));
        assert!(from_m.allows(Access::Read, b"m", &[0]));
        assert!(!from_m.allows(Access::Read, b"a", b""));
        assert!(!from_m.allows(Access::Read, &[0], &[0]));
        let everything = UserAccess::of([prefix(Access::Read, "")].iter());
        assert_eq!(prefix_end(b""), vec![0]);
        assert!(everything.allows(Access::Read, &[0], &[0]));
        assert!(everything.allows(Access::Read, b"any", b""));
        assert!(!UserAccess::default().allows(Access::Read, b"k", b""));
    }

    #[test]
    fn a_backwards_range_asks_for_its_first_key() {
        let user = UserAccess::of([grant(Access::Read, "k", b"")].iter());
        assert!(user.allows(Access::Read, b"k", b"a"));
        assert!(!user.allows(Access::Read, b"j", b"a"));
    }
}
