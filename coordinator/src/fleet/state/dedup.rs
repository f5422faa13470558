//! Exactly-once: the outcomes of recent request ids, remembered for a window of the leaders'
//! clock (carried by timed log entries), kept in snapshots.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::records::Applied;
use super::{DEDUP_CAPACITY, DEDUP_WINDOW_MS, Revision};
use crate::fleet::FleetError;
use crate::fleet::names::Name;

/// A remembered outcome, kept small because up to [`DEDUP_CAPACITY`] are held: nearly all are
/// fleet writes whose whole answer is a revision. Stored in snapshots as the full outcome, so
/// the snapshot format does not depend on this layout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    from = "Result<Applied, FleetError>",
    into = "Result<Applied, FleetError>"
)]
pub(super) enum Remembered {
    Applied { revision: Revision, changed: bool },
    Other(Box<Result<Applied, FleetError>>),
}

impl From<Result<Applied, FleetError>> for Remembered {
    fn from(outcome: Result<Applied, FleetError>) -> Self {
        match outcome {
            Ok(Applied {
                revision,
                changed,
                kv: None,
            }) => Remembered::Applied { revision, changed },
            other => Remembered::Other(Box::new(other)),
        }
    }
}

impl From<Remembered> for Result<Applied, FleetError> {
    fn from(remembered: Remembered) -> Self {
        match remembered {
            Remembered::Applied { revision, changed } => Ok(Applied {
                revision,
                changed,
                kv: None,
            }),
            Remembered::Other(outcome) => *outcome,
        }
    }
}

/// Remembered outcomes of recent request ids, oldest first.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Dedup {
    /// Each id is one allocation shared with `index`.
    pub(super) entries: VecDeque<(Name, Remembered)>,
    /// Sequence number of `entries[0]`; with `index` it locates an entry without scanning.
    pub(super) first_seq: u64,
    #[serde(skip)]
    index: HashMap<Name, u64>,
    /// When each entry was remembered. Written after the state in snapshots (see
    /// [`FleetState::encode`]), so the layout above stays the one older snapshots have.
    #[serde(skip)]
    pub(super) clock: DedupClock,
}

/// The leaders' clock as the log tells it, and when each remembered id was remembered by it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct DedupClock {
    /// Latest leader clock (ms since the Unix epoch) carried by an applied entry; 0 until one.
    pub(super) now_ms: u64,
    /// Per entry of `Dedup::entries`, in order; 0 for entries remembered before any clock was
    /// known (read from an older snapshot): they count from the first clock seen.
    pub(super) times: VecDeque<u64>,
}

impl Dedup {
    pub(super) fn get(&self, id: &str) -> Option<Result<Applied, FleetError>> {
        let seq = *self.index.get(id)?;
        self.entries
            .get(seq.checked_sub(self.first_seq)? as usize)
            .map(|(_, outcome)| outcome.clone().into())
    }

    /// Moves the clock forward to a leader's `now_ms` (never back: leaders' clocks differ).
    pub(super) fn advance(&mut self, now_ms: u64) {
        if now_ms <= self.clock.now_ms {
            return;
        }
        if self.clock.now_ms == 0 {
            for time in self.clock.times.iter_mut().filter(|t| **t == 0) {
                *time = now_ms;
            }
        }
        self.clock.now_ms = now_ms;
        self.expire();
    }

    /// Forgets ids remembered longer than the window ago.
    fn expire(&mut self) {
        let now = self.clock.now_ms;
        while let Some(&time) = self.clock.times.front() {
            if time == 0 || now.saturating_sub(time) <= DEDUP_WINDOW_MS {
                break;
            }
            self.clock.times.pop_front();
            if let Some((old, _)) = self.entries.pop_front() {
                self.index.remove(&old);
            }
            self.first_seq += 1;
        }
    }

    /// Whether a new id can be remembered without forgetting one still inside the window.
    pub(super) fn has_room(&self) -> bool {
        self.entries.len() < DEDUP_CAPACITY
    }

    pub(super) fn remember(&mut self, id: &str, outcome: Result<Applied, FleetError>) {
        let seq = self.first_seq + self.entries.len() as u64;
        let id: Name = Arc::from(id);
        self.entries.push_back((id.clone(), outcome.into()));
        self.clock.times.push_back(self.clock.now_ms);
        self.index.insert(id, seq);
    }

    pub(super) fn rebuild(&mut self) {
        self.index = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.clone(), self.first_seq + i as u64))
            .collect();
        if self.clock.times.len() != self.entries.len() {
            self.clock.times = self.entries.iter().map(|_| 0).collect();
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
        assert_eq!(s.dedup.entries.len(), 1);
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
        assert_eq!(
            read.dedup.clock.times,
            VecDeque::from([0]),
            "untimed until a clock"
        );
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
        let mut read: Dedup = postcard::from_bytes(&bytes).expect("old bytes decode");
        read.rebuild();
        assert_eq!(read, dedup);
        assert_eq!(read.get("r2"), Some(outcomes[1].1.clone()));
    }
}
