//! Exactly-once: the outcomes of recent request ids, remembered for a window of the leaders'
//! clock (carried by timed log entries), kept in snapshots.
//!
//! Up to [`DEDUP_CAPACITY`] ids are held, so each is a fixed-size record (issue #24): its id's
//! bytes back to back with the others' in a [`NameTable`], 24 bytes of outcome and time, and
//! a 4-byte slot in the queue that expires them in order. Nearly every outcome is a fleet
//! write's revision; the rare other one (an error, a KV answer) is kept whole beside.

use std::collections::{HashMap, VecDeque};

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

use super::records::Applied;
use super::{DEDUP_CAPACITY, DEDUP_WINDOW_MS, Revision};
use crate::fleet::FleetError;
use crate::fleet::table::NameTable;
use std::borrow::Cow;

/// What an outcome is, in a byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kept {
    /// `Ok(Applied { revision, changed, kv: None })`.
    Revision { changed: bool },
    /// Anything else, in [`Dedup::others`] under the id's slot.
    Other,
}

/// One remembered id's outcome and when it was remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    revision: Revision,
    /// Leader clock when remembered; 0 for ids remembered before any clock was known (read
    /// from an older snapshot): they count from the first clock seen.
    time: u64,
    kept: Kept,
}

/// Remembered outcomes of recent request ids, oldest first. Encoded as the list of (id,
/// outcome) pairs it always was, so the snapshot format does not depend on this layout.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "DedupWire")]
pub(super) struct Dedup {
    ids: NameTable<Record>,
    /// Slots of `ids`, oldest first.
    order: VecDeque<u32>,
    /// Outcomes that are not a plain revision, by slot.
    others: HashMap<u32, Box<Result<Applied, FleetError>>>,
    /// Sequence number of the oldest id (it only grows: an id's place in the history of ids).
    pub(super) first_seq: u64,
    /// Latest leader clock (ms since the Unix epoch) carried by an applied entry; 0 until one.
    now_ms: u64,
}

/// The request ids' clock as snapshots carry it, after the state (see
/// [`FleetState::encode`](super::FleetState::encode)), so the layout before it stays the one
/// older snapshots have.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct DedupClock {
    /// Latest leader clock.
    pub(super) now_ms: u64,
    /// When each remembered id was remembered, oldest first; empty in snapshots from before
    /// ids were timed.
    pub(super) times: VecDeque<u64>,
}

impl Dedup {
    /// Remembered ids.
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    pub(super) fn get(&self, id: &str) -> Option<Result<Applied, FleetError>> {
        let slot = self.ids.slot_of(id)?;
        Some(self.outcome(slot))
    }

    fn outcome(&self, slot: u32) -> Result<Applied, FleetError> {
        let record = self.ids.value(slot);
        match record.kept {
            Kept::Revision { changed } => Ok(Applied {
                revision: record.revision,
                changed,
                kv: None,
            }),
            Kept::Other => self
                .others
                .get(&slot)
                .map(|outcome| (**outcome).clone())
                .expect("every Other record has its outcome"),
        }
    }

    /// Moves the clock forward to a leader's `now_ms` (never back: leaders' clocks differ).
    pub(super) fn advance(&mut self, now_ms: u64) {
        if now_ms <= self.now_ms {
            return;
        }
        if self.now_ms == 0 {
            for record in self.ids.values_mut().filter(|r| r.time == 0) {
                record.time = now_ms;
            }
        }
        self.now_ms = now_ms;
        self.expire();
    }

    /// Forgets ids remembered longer than the window ago.
    fn expire(&mut self) {
        while let Some(&slot) = self.order.front() {
            let time = self.ids.value(slot).time;
            if time == 0 || self.now_ms.saturating_sub(time) <= DEDUP_WINDOW_MS {
                break;
            }
            self.order.pop_front();
            self.ids.remove_slot(slot);
            self.others.remove(&slot);
            self.first_seq += 1;
        }
    }

    /// Whether a new id can be remembered without forgetting one still inside the window.
    pub(super) fn has_room(&self) -> bool {
        self.len() < DEDUP_CAPACITY
    }

    pub(super) fn remember(&mut self, id: &str, outcome: Result<Applied, FleetError>) {
        self.remember_at(id, outcome, self.now_ms);
    }

    fn remember_at(&mut self, id: &str, outcome: Result<Applied, FleetError>, time: u64) {
        let (record, other) = match outcome {
            Ok(Applied {
                revision,
                changed,
                kv: None,
            }) => (
                Record {
                    revision,
                    time,
                    kept: Kept::Revision { changed },
                },
                None,
            ),
            other => (
                Record {
                    revision: 0,
                    time,
                    kept: Kept::Other,
                },
                Some(Box::new(other)),
            ),
        };
        let (slot, replaced) = self.ids.insert(id, record);
        if replaced.is_none() {
            self.order.push_back(slot);
        }
        match other {
            Some(outcome) => {
                self.others.insert(slot, outcome);
            }
            None => {
                self.others.remove(&slot);
            }
        }
    }

    /// Every remembered id with its record, oldest first.
    fn entries(&self) -> impl ExactSizeIterator<Item = (u32, Cow<'_, str>, &Record)> + '_ {
        self.order
            .iter()
            .map(|&slot| (slot, self.ids.name(slot), self.ids.value(slot)))
    }

    /// The clock as snapshots carry it.
    pub(super) fn clock(&self) -> impl Serialize + '_ {
        ClockOf(self)
    }

    /// Takes the clock a snapshot carried; `times` is empty (untimed, from an older format)
    /// or has one time per remembered id.
    pub(super) fn set_clock(&mut self, clock: DedupClock) -> Result<(), String> {
        if !clock.times.is_empty() && clock.times.len() != self.len() {
            return Err(format!(
                "{} request-id times for {} remembered request ids",
                clock.times.len(),
                self.len()
            ));
        }
        self.now_ms = clock.now_ms;
        let times = clock.times.into_iter().chain(std::iter::repeat(0));
        for (&slot, time) in self.order.iter().zip(times) {
            self.ids.value_mut(slot).time = time;
        }
        Ok(())
    }

    /// When each remembered id was remembered, oldest first.
    #[cfg(test)]
    pub(super) fn times(&self) -> Vec<u64> {
        self.entries().map(|(_, _, record)| record.time).collect()
    }
}

impl PartialEq for Dedup {
    fn eq(&self, other: &Self) -> bool {
        self.first_seq == other.first_seq
            && self.now_ms == other.now_ms
            && self.len() == other.len()
            && self.entries().zip(other.entries()).all(|(a, b)| {
                a.1 == b.1 && a.2.time == b.2.time && self.outcome(a.0) == other.outcome(b.0)
            })
    }
}

impl Eq for Dedup {}

/// Streams the (id, outcome) pairs without building them all.
struct EntriesOf<'a>(&'a Dedup);

impl Serialize for EntriesOf<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for (slot, id, _) in self.0.entries() {
            seq.serialize_element(&(id, self.0.outcome(slot)))?;
        }
        seq.end()
    }
}

impl Serialize for Dedup {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("Dedup", 2)?;
        state.serialize_field("entries", &EntriesOf(self))?;
        state.serialize_field("first_seq", &self.first_seq)?;
        state.end()
    }
}

/// The clock of [`DedupClock`]'s layout, streamed from the records.
struct ClockOf<'a>(&'a Dedup);

impl Serialize for ClockOf<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Times<'a>(&'a Dedup);
        impl Serialize for Times<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.entries().map(|(_, _, record)| record.time))
            }
        }
        let mut state = serializer.serialize_struct("DedupClock", 2)?;
        state.serialize_field("now_ms", &self.0.now_ms)?;
        state.serialize_field("times", &Times(self.0))?;
        state.end()
    }
}

/// The encoded layout, read straight into the records (no list of owned pairs in between).
#[derive(Deserialize)]
struct DedupWire {
    entries: Remembering,
    first_seq: u64,
}

/// Ids and outcomes read from a snapshot, untimed until [`Dedup::set_clock`].
struct Remembering(Dedup);

impl<'de> Deserialize<'de> for Remembering {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Remembering;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of (request id, outcome) pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Remembering, A::Error> {
                let mut dedup = Dedup::default();
                while let Some((id, outcome)) =
                    seq.next_element::<(String, Result<Applied, FleetError>)>()?
                {
                    if dedup.len() >= DEDUP_CAPACITY {
                        return Err(serde::de::Error::custom(format!(
                            "more remembered request ids than the capacity of {DEDUP_CAPACITY}"
                        )));
                    }
                    dedup.remember_at(&id, outcome, 0);
                }
                Ok(Remembering(dedup))
            }
        }
        deserializer.deserialize_seq(Pairs)
    }
}

impl From<DedupWire> for Dedup {
    fn from(wire: DedupWire) -> Dedup {
        Dedup {
            first_seq: wire.first_seq,
            ..wire.entries.0
        }
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use crate::fleet::FleetCommand;
    use crate::fleet::state::legacy::LegacyFleetState;
    use crate::fleet::state::{FleetState, SNAPSHOT_MAGIC, SNAPSHOT_MAGIC_V1};

    /// How `Dedup` was laid out in snapshots and archives before outcomes were compacted.
    #[derive(Serialize)]
    struct Before {
        entries: VecDeque<(String, Result<Applied, FleetError>)>,
        first_seq: u64,
    }

    #[test]
    fn a_full_window_refuses_new_ids_without_forgetting_any() {
        let mut s = FleetState::new();
        s.apply(&FleetCommand::RegisterShard {
            id: "s1".into(),
            address: "127.0.0.1:1".into(),
            az: "az-a".into(),
            now_ms: 0,
            lease_ttl_ms: 1_000,
        })
        .expect("register");
        s.advance_clock(5_000_000);
        for n in 0..DEDUP_CAPACITY {
            s.dedup.remember(
                &format!("id-{n}"),
                Ok(Applied {
                    revision: 1,
                    changed: true,
                    kv: None,
                }),
            );
        }
        let bind = FleetCommand::BindCluster {
            cluster: "c1".into(),
            shard: "s1".into(),
        };
        let revision = s.revision();
        let refused = s
            .apply_request(Some("new-id"), &bind)
            .expect_err("window full");
        assert_eq!(
            refused.kind(),
            crate::fleet::ErrorKind::Unavailable,
            "{refused}"
        );
        assert_eq!(s.revision(), revision, "nothing applied");
        assert!(
            s.dedup.get("new-id").is_none(),
            "the refusal is not remembered: a retry may apply"
        );
        assert!(s.dedup.get("id-0").is_some(), "no id forgotten early");
        // Once the oldest ids leave the window, new ones are taken.
        s.advance_clock(5_000_000 + DEDUP_WINDOW_MS + 1);
        s.apply_request(Some("new-id"), &bind).expect("room again");
        assert_eq!(s.dedup.len(), 1);
    }

    #[test]
    fn snapshots_of_the_untimed_format_still_decode() {
        let mut s = FleetState::new();
        s.dedup
            .remember("r1", Err(FleetError::UnknownCluster("c9".into())));
        let mut v1 = SNAPSHOT_MAGIC_V1.to_vec();
        postcard::to_io(&LegacyFleetState::without_grants(&s), &mut v1).expect("postcard");
        let read = FleetState::decode(&v1).expect("a BLSTSNP1 snapshot decodes");
        assert_eq!(read.dedup.get("r1"), s.dedup.get("r1"));
        assert_eq!(read.dedup.times(), [0], "untimed until a clock");
        // A v2 snapshot with times that do not match its ids is corrupt.
        let mut bad = SNAPSHOT_MAGIC.to_vec();
        postcard::to_io(&s, &mut bad).expect("postcard");
        postcard::to_io(
            &DedupClock {
                now_ms: 5,
                times: VecDeque::from([1, 2]),
            },
            &mut bad,
        )
        .expect("postcard");
        postcard::to_io(&s.auth, &mut bad).expect("postcard");
        let error = FleetState::decode(&bad).expect_err("mismatched times");
        assert!(error.to_string().contains("request-id times"), "{error}");
    }

    #[test]
    fn forgotten_ids_leave_nothing_behind_and_their_room_is_reused() {
        let mut dedup = Dedup::default();
        dedup.advance(1_000);
        let error = Err(FleetError::UnknownCluster("c9".into()));
        dedup.remember("old-error", error.clone());
        dedup.remember(
            "old-write",
            Ok(Applied {
                revision: 4,
                changed: false,
                kv: None,
            }),
        );
        dedup.advance(1_000 + DEDUP_WINDOW_MS / 2);
        dedup.remember(
            "young",
            Ok(Applied {
                revision: 5,
                changed: true,
                kv: None,
            }),
        );
        assert_eq!(dedup.get("old-error"), Some(error.clone()));
        assert_eq!(
            dedup.get("old-write").map(|o| o.map(|a| a.changed)),
            Some(Ok(false))
        );
        dedup.advance(1_000 + DEDUP_WINDOW_MS + 1);
        assert_eq!(
            (dedup.get("old-error"), dedup.get("old-write")),
            (None, None)
        );
        assert!(dedup.others.is_empty(), "the kept error went with its id");
        assert_eq!((dedup.len(), dedup.first_seq), (1, 2));
        // A new id takes a forgotten one's slot; the young one keeps its outcome.
        dedup.remember("new-error", error.clone());
        assert_eq!(dedup.get("new-error"), Some(error));
        assert_eq!(
            dedup.get("young").map(|o| o.map(|a| a.revision)),
            Some(Ok(5))
        );
        assert_eq!(
            dedup.ids.slots().max(),
            Some(2),
            "three slots served four ids: the new one took a forgotten one's"
        );
        assert_eq!(
            dedup.times(),
            [1_000 + DEDUP_WINDOW_MS / 2, 1_000 + DEDUP_WINDOW_MS + 1]
        );
    }

    /// Heap bytes per remembered id: 100K ids of a UUID's length, each a fleet write's
    /// outcome. A measurement, not a check (issue #24):
    /// `cargo test --release -p ballast-coordinator --lib request_id_bytes -- --ignored --nocapture --test-threads 1`.
    #[test]
    #[ignore = "a measurement: run alone with --ignored --nocapture --test-threads 1"]
    fn request_id_bytes() {
        let heap = || {
            ballast_telemetry::memory::heap()
                .expect("glibc reports its heap")
                .live_bytes as i64
        };
        let ids: Vec<String> = (0..100_000)
            .map(|n| format!("{n:08x}-0000-4000-8000-{:012x}", n * 7919))
            .collect();
        let start = heap();
        let mut s = FleetState::new();
        s.advance_clock(5_000_000);
        for (n, id) in ids.iter().enumerate() {
            s.dedup.remember(
                id,
                Ok(Applied {
                    revision: n as u64,
                    changed: true,
                    kv: None,
                }),
            );
        }
        let used = heap() - start;
        println!(
            "request ids: {:.0} B each ({} ids of {} bytes; {:.1} MiB)",
            used as f64 / ids.len() as f64,
            ids.len(),
            ids[0].len(),
            used as f64 / (1 << 20) as f64
        );
        assert!(s.dedup.get(&ids[0]).is_some());
    }

    #[test]
    fn compact_request_ids_keep_the_snapshot_format() {
        let outcomes: Vec<(&str, Result<Applied, FleetError>)> = vec![
            (
                "r1",
                Ok(Applied {
                    revision: 3,
                    changed: true,
                    kv: None,
                }),
            ),
            ("r2", Err(FleetError::UnknownCluster("c9".into()))),
        ];
        let mut dedup = Dedup {
            first_seq: 7,
            ..Dedup::default()
        };
        for (id, outcome) in &outcomes {
            dedup.remember(id, outcome.clone());
        }
        let before = Before {
            entries: outcomes
                .iter()
                .map(|(id, o)| (id.to_string(), o.clone()))
                .collect(),
            first_seq: 7,
        };
        let bytes = postcard::to_allocvec(&before).expect("postcard");
        assert_eq!(postcard::to_allocvec(&dedup).expect("postcard"), bytes);
        let json = serde_json::to_string(&before).expect("json");
        assert_eq!(serde_json::to_string(&dedup).expect("json"), json);
        let read: Dedup = postcard::from_bytes(&bytes).expect("old bytes decode");
        assert_eq!(read, dedup);
        assert_eq!(read.get("r2"), Some(outcomes[1].1.clone()));
    }
}
