//! Moves per scenario: every domain, cluster binding and quota slice the coordinator handed
//! from one shard to another, as the shards' own assignment watches deliver them.
//!
//! The simulator opens the same `Assignments.Watch` every shard opens, once per shard, for the
//! whole run. A domain or cluster given to a shard carries its grant (the fleet revision of
//! the command that gave it), so a hand-off is one (name, shard, grant) however the watch
//! coalesced it, and its order among the others is the grant's. A slice is followed per
//! (shard, quota) as the amounts its shard is told. A hand-off whose grant is the revision of
//! a write the simulator made as the operator (a burst, a move home, slices cut again) is the
//! operator's; every other one is the coordinator's own (evacuation, slice placement).
//!
//! The judgement, per scenario: the coordinator moves domains and clusters only off a shard
//! whose state the scenario changed (killed, cut off, restarted), so nothing moves twice
//! unless its shard's state did; it moves nothing onto a shard while that one is down or cut
//! off (a domain handed to a shard going down with its AZ has to move again; once the shard
//! is back it may take work like any other); and no slice moves back and forth (its
//! automatic changes never reverse direction) unless its shard's state changed. An
//! operator's write starts a thing's count afresh: it changed the state on purpose.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ballast_protocol::pb;
use ballast_protocol::pb::assignments_client::AssignmentsClient;
use futures::StreamExt;
use parking_lot::Mutex;
use tonic::transport::Channel;

use super::Shared;
use super::checks::Check;

/// Shards whose state the running scenario changed, and when they were down.
#[derive(Default)]
pub(super) struct Disturbed {
    /// Killed, restarted, cut off or their demand shifted, at some point of the scenario.
    changed: BTreeSet<usize>,
    /// Per shard, the stretches (ms since the run started) it was down or cut off; an open
    /// end means it still is.
    down: BTreeMap<usize, Vec<(u64, Option<u64>)>>,
    /// Shards whose lease may have run out although the scenario did nothing to them: by their
    /// own count, no heartbeat was answered for longer than the lease (a starved machine).
    lapsed: BTreeSet<usize>,
}

impl Disturbed {
    /// `shard` lost contact with the coordinator for longer than its lease on its own.
    pub(super) fn lapsed(&mut self, shard: usize) {
        self.lapsed.insert(shard);
    }

    /// Whether `shard`'s state held through the scenario: nothing done to it, no lapse.
    fn held(&self, shard: usize) -> bool {
        !self.changed.contains(&shard) && !self.lapsed.contains(&shard)
    }

    /// `shard`'s state changes (its demand shifts, say) while it keeps running.
    pub(super) fn changed(&mut self, shard: usize) {
        self.changed.insert(shard);
    }

    /// `shard` goes down (or is cut off) at `at_ms`.
    pub(super) fn down(&mut self, shard: usize, at_ms: u64) {
        self.changed.insert(shard);
        self.down.entry(shard).or_default().push((at_ms, None));
    }

    /// `shard` is back at `at_ms`.
    pub(super) fn back(&mut self, shard: usize, at_ms: u64) {
        if let Some((_, end @ None)) = self.down.get_mut(&shard).and_then(|w| w.last_mut()) {
            *end = Some(at_ms);
        }
    }

    fn was_down(&self, shard: usize, at_ms: u64) -> bool {
        self.down.get(&shard).is_some_and(|windows| {
            windows
                .iter()
                .any(|&(from, to)| from <= at_ms && to.is_none_or(|to| at_ms <= to))
        })
    }
}

/// What moves between shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Domain,
    Cluster,
}

impl Kind {
    fn singular(self) -> &'static str {
        match self {
            Kind::Domain => "domain",
            Kind::Cluster => "cluster",
        }
    }
}

/// A domain or cluster given to a shard.
#[derive(Clone, Debug)]
struct Handoff {
    kind: Kind,
    name: String,
    to: usize,
    grant: u64,
    at_ms: u64,
}

/// A slice's amount as its shard was told it.
#[derive(Clone, Debug)]
struct SliceStep {
    shard: usize,
    quota: (String, String),
    amount: u64,
    grant: u64,
    at_ms: u64,
}

/// What one shard's watch has said so far.
#[derive(Default)]
struct Stream {
    /// Revision reached (with its restore epoch).
    at: (u64, u64),
    /// Quota → the slice amount last told.
    slices: BTreeMap<(String, String), u64>,
    /// The first full listing arrived.
    listed: bool,
}

/// Every hand-off the watches delivered, kept in arrival order. Pure: fed updates, asked for
/// a scenario's moves.
#[derive(Default)]
pub(super) struct Ledger {
    streams: Vec<Stream>,
    /// (kind, name, shard, grant) seen once: a watch resumed or listed in full says it again.
    seen: HashSet<(Kind, String, usize, u64)>,
    /// Who held each domain and cluster when its shard's watch first listed it.
    baseline: HashMap<(Kind, String), (usize, u64)>,
    handoffs: Vec<Handoff>,
    /// Each (shard, quota) slice's amount when its shard's watch first listed it.
    slice_baseline: HashMap<(usize, (String, String)), u64>,
    slice_steps: Vec<SliceStep>,
}

/// One scenario's moves, judged.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Moves {
    /// Per kind: moved by the coordinator, moved by the operator, created (first given).
    pub domains: (usize, usize),
    pub clusters: (usize, usize),
    pub clusters_created: usize,
    /// Slice amount changes by the coordinator, by the operator; distinct slices changed;
    /// machines' worth of slice the coordinator added to shards.
    pub slice_changes: (usize, usize),
    pub slices_changed: usize,
    pub slice_added: u64,
    /// Most coordinator moves of one domain or cluster, and most changes of one slice.
    pub most_moves_of_one: usize,
    pub most_changes_of_one_slice: usize,
    /// The slice changed most often by the coordinator: its shard, quota, amounts and whether
    /// the scenario changed that shard's state (a shard given slice or tapped for it says so).
    pub most_changed_slice: Option<String>,
    /// Coordinator moves off a shard whose state the scenario did not change.
    pub off_undisturbed: Vec<String>,
    /// Coordinator moves off shards the scenario left alone but whose lease ran out on its own
    /// (judged right: the shard did not renew in time), and those shards.
    pub off_lapsed: usize,
    pub lapsed_shards: Vec<String>,
    /// Coordinator moves onto a shard while it was down or cut off (one going down with its
    /// AZ, say): the thing will have to move again.
    pub onto_down: Vec<String>,
    /// Slices whose coordinator changes reversed direction at a shard whose state the
    /// scenario did not change.
    pub swung: Vec<String>,
    /// Slices the coordinator changed more than once at a shard whose state the scenario did
    /// not change (a donor giving its spare in several steps, say).
    pub repeated_at_held: Vec<String>,
}

impl Ledger {
    /// A ledger for `shards` watches.
    pub(super) fn new(shards: usize) -> Ledger {
        Ledger {
            streams: (0..shards).map(|_| Stream::default()).collect(),
            ..Ledger::default()
        }
    }

    /// Every watch has delivered its first listing.
    pub(super) fn listed(&self) -> bool {
        self.streams.iter().all(|s| s.listed)
    }

    /// The lowest revision every watch has reached.
    pub(super) fn reached(&self) -> u64 {
        self.streams.iter().map(|s| s.at.1).min().unwrap_or(0)
    }

    /// Where `shard`'s watch should resume: (restore epoch, revision).
    fn resume_at(&self, shard: usize) -> (u64, u64) {
        self.streams[shard].at
    }

    /// Takes one update of `shard`'s watch, received at `at_ms`.
    pub(super) fn observe(&mut self, shard: usize, update: &pb::AssignmentUpdate, at_ms: u64) {
        let first = !self.streams[shard].listed;
        let given = [
            (Kind::Domain, &update.domains_added, &update.domain_grants),
            (
                Kind::Cluster,
                &update.clusters_added,
                &update.cluster_grants,
            ),
        ];
        for (kind, names, grants) in given {
            for name in names {
                let grant = grants.get(name).copied().unwrap_or(0);
                if !self.seen.insert((kind, name.clone(), shard, grant)) {
                    continue;
                }
                if first && update.full {
                    // What the shard held when the run began watching it.
                    self.baseline
                        .entry((kind, name.clone()))
                        .or_insert((shard, grant));
                } else {
                    self.handoffs.push(Handoff {
                        kind,
                        name: name.clone(),
                        to: shard,
                        grant,
                        at_ms,
                    });
                }
            }
        }
        let stream = &mut self.streams[shard];
        let mut told: BTreeMap<(String, String), (u64, u64)> = update
            .slices
            .iter()
            .map(|s| {
                (
                    (s.provider.clone(), s.region.clone()),
                    (s.amount, s.granted),
                )
            })
            .collect();
        if update.full {
            // A full listing names every slice the shard holds: one it leaves out is gone.
            for quota in stream.slices.keys() {
                told.entry(quota.clone()).or_insert((0, update.revision));
            }
        }
        for (quota, (amount, grant)) in told {
            let before = stream.slices.insert(quota.clone(), amount);
            if first {
                self.slice_baseline.insert((shard, quota), amount);
            } else if before.unwrap_or(0) != amount {
                self.slice_steps.push(SliceStep {
                    shard,
                    quota,
                    amount,
                    grant,
                    at_ms,
                });
            }
        }
        stream.at = (update.restore_epoch, update.revision);
        stream.listed |= update.full;
    }

    /// The moves received in `[from_ms, to_ms]`: `disturbed` says which shards' state the
    /// scenario changed and when they were down, `operator` the revisions of the operator's
    /// writes, `names` the shards' ids (for the counterexamples).
    pub(super) fn moves(
        &self,
        (from_ms, to_ms): (u64, u64),
        disturbed: &Disturbed,
        operator: &BTreeSet<u64>,
        names: &[String],
    ) -> Moves {
        let within = |at: u64| (from_ms..=to_ms).contains(&at);
        let mut moves = Moves {
            lapsed_shards: disturbed
                .lapsed
                .iter()
                .filter(|shard| !disturbed.changed.contains(shard))
                .map(|&shard| names[shard].clone())
                .collect(),
            ..Moves::default()
        };
        // Every hand-off of a thing, in grant order, to tell where each came from.
        let mut by_thing: BTreeMap<(Kind, &str), Vec<&Handoff>> = BTreeMap::new();
        for h in &self.handoffs {
            by_thing.entry((h.kind, &h.name)).or_default().push(h);
        }
        for ((kind, name), mut handoffs) in by_thing {
            handoffs.sort_by_key(|h| h.grant);
            let mut holder = self.baseline.get(&(kind, name.to_string())).map(|b| b.0);
            let mut automatic_in_run = 0;
            for h in handoffs {
                let from = holder.replace(h.to);
                if !within(h.at_ms) {
                    continue;
                }
                let Some(from) = from else {
                    if kind == Kind::Cluster {
                        moves.clusters_created += 1;
                    }
                    continue;
                };
                let counts = match kind {
                    Kind::Domain => &mut moves.domains,
                    Kind::Cluster => &mut moves.clusters,
                };
                if operator.contains(&h.grant) {
                    counts.1 += 1;
                    automatic_in_run = 0;
                    continue;
                }
                counts.0 += 1;
                automatic_in_run += 1;
                moves.most_moves_of_one = moves.most_moves_of_one.max(automatic_in_run);
                let shown = || {
                    format!(
                        "{} {name} {} -> {} at revision {}",
                        kind.singular(),
                        names[from],
                        names[h.to],
                        h.grant
                    )
                };
                if disturbed.held(from) {
                    moves.off_undisturbed.push(shown());
                } else if !disturbed.changed.contains(&from) {
                    moves.off_lapsed += 1;
                }
                if disturbed.was_down(h.to, h.at_ms) {
                    moves.onto_down.push(shown());
                }
            }
        }
        let mut by_slice: BTreeMap<(usize, &(String, String)), Vec<&SliceStep>> = BTreeMap::new();
        for step in self.slice_steps.iter().filter(|s| within(s.at_ms)) {
            by_slice
                .entry((step.shard, &step.quota))
                .or_default()
                .push(step);
        }
        for ((shard, quota), steps) in by_slice {
            moves.slices_changed += 1;
            // The amount before the first step of the window (0: the slice is new).
            let mut amount = self
                .slice_steps
                .iter()
                .rfind(|s| s.shard == shard && &s.quota == quota && s.at_ms < from_ms)
                .map(|s| s.amount)
                .or_else(|| self.slice_baseline.get(&(shard, quota.clone())).copied())
                .unwrap_or(0);
            let mut directions: Vec<bool> = Vec::new();
            let mut automatic = 0;
            // Coordinator changes since the operator last set this slice: an operator's change
            // is a change of the shard's state, after which the coordinator may adjust afresh.
            let (mut since_operator, mut most_since_operator) = (0, 0);
            let mut swung = false;
            for step in &steps {
                let before = std::mem::replace(&mut amount, step.amount);
                if operator.contains(&step.grant) {
                    moves.slice_changes.1 += 1;
                    directions.clear();
                    since_operator = 0;
                    continue;
                }
                moves.slice_changes.0 += 1;
                automatic += 1;
                since_operator += 1;
                most_since_operator = most_since_operator.max(since_operator);
                moves.slice_added += step.amount.saturating_sub(before);
                let up = step.amount > before;
                if directions.last().is_some_and(|&last| last != up)
                    && disturbed.held(shard)
                    && !swung
                {
                    swung = true;
                    moves.swung.push(format!(
                        "{} {}/{} {:?}",
                        names[shard],
                        quota.0,
                        quota.1,
                        steps.iter().map(|s| s.amount).collect::<Vec<_>>()
                    ));
                }
                directions.push(up);
            }
            let held = disturbed.held(shard);
            let shown = || {
                format!(
                    "{} {}/{}{}: {:?}",
                    names[shard],
                    quota.0,
                    quota.1,
                    if held {
                        ", whose state held"
                    } else {
                        ", whose state the scenario changed"
                    },
                    steps.iter().map(|s| s.amount).collect::<Vec<_>>()
                )
            };
            if held && most_since_operator > 1 {
                moves.repeated_at_held.push(shown());
            }
            if automatic > moves.most_changes_of_one_slice {
                moves.most_changes_of_one_slice = automatic;
                moves.most_changed_slice = Some(shown());
            }
        }
        moves
    }
}

impl Moves {
    /// The figures, under names of their own in the scenario's measurements.
    pub(super) fn record(&self, m: &mut BTreeMap<String, f64>) {
        for (key, value) in [
            ("moves.domains_by_coordinator", self.domains.0),
            ("moves.domains_by_operator", self.domains.1),
            ("moves.clusters_by_coordinator", self.clusters.0),
            ("moves.clusters_by_operator", self.clusters.1),
            ("moves.clusters_created", self.clusters_created),
            ("moves.slice_changes_by_coordinator", self.slice_changes.0),
            ("moves.slice_changes_by_operator", self.slice_changes.1),
            ("moves.slices_changed", self.slices_changed),
            ("moves.most_moves_of_one", self.most_moves_of_one),
            ("moves.off_shards_that_lapsed_alone", self.off_lapsed),
            (
                "moves.most_changes_of_one_slice",
                self.most_changes_of_one_slice,
            ),
            (
                "moves.slices_changed_repeatedly_at_held_shards",
                self.repeated_at_held.len(),
            ),
        ] {
            m.insert(key.into(), value as f64);
        }
        m.insert(
            "moves.slice_added_by_coordinator".into(),
            self.slice_added as f64,
        );
    }

    /// The shards whose leases ran out on their own, and what moved off them.
    fn lapsed_note(&self) -> String {
        if self.lapsed_shards.is_empty() {
            return String::new();
        }
        format!(
            " or that went without a heartbeat answered for longer than its lease on its own \
             ({} of the moves, off {})",
            self.off_lapsed,
            self.lapsed_shards.join(", ")
        )
    }

    /// The three invariants.
    pub(super) fn checks(&self) -> Vec<Check> {
        let examples = |list: &[String]| {
            let shown: Vec<&str> = list.iter().take(5).map(String::as_str).collect();
            format!("{} (e.g. {})", list.len(), shown.join("; "))
        };
        vec![
            Check::new(
                "domains and clusters move only off shards whose state changed",
                self.off_undisturbed.is_empty(),
                if self.off_undisturbed.is_empty() {
                    format!(
                        "the coordinator moved {} domains and {} clusters, each off a shard the \
                         scenario changed{}, none more than {} times; the operator moved {} and {}",
                        self.domains.0,
                        self.clusters.0,
                        self.lapsed_note(),
                        self.most_moves_of_one,
                        self.domains.1,
                        self.clusters.1
                    )
                } else {
                    format!(
                        "moved off shards whose state did not change: {}",
                        examples(&self.off_undisturbed)
                    )
                },
            ),
            Check::new(
                "the coordinator moves nothing onto a shard that is down",
                self.onto_down.is_empty(),
                if self.onto_down.is_empty() {
                    format!(
                        "{} domains and {} clusters went to shards that were up",
                        self.domains.0, self.clusters.0
                    )
                } else {
                    format!(
                        "moved onto shards while they were down or cut off, to move again: {}",
                        examples(&self.onto_down)
                    )
                },
            ),
            Check::new(
                "no slice moves back and forth unless its shard's state changed",
                self.swung.is_empty(),
                if self.swung.is_empty() {
                    format!(
                        "{} slices changed ({} changes by the coordinator, {} by the operator, \
                         at most {} of one slice{}), none back and forth at a shard the scenario \
                         left alone; changed more than once there: {}",
                        self.slices_changed,
                        self.slice_changes.0,
                        self.slice_changes.1,
                        self.most_changes_of_one_slice,
                        self.most_changed_slice
                            .as_ref()
                            .map(|s| format!(": {s}"))
                            .unwrap_or_default(),
                        if self.repeated_at_held.is_empty() {
                            "none".to_string()
                        } else {
                            examples(&self.repeated_at_held)
                        }
                    )
                } else {
                    format!(
                        "rose and fell at shards the scenario left alone: {}",
                        examples(&self.swung)
                    )
                },
            ),
        ]
    }
}

/// Follows one shard's assignment watch for the run, over whichever replica answers, resuming
/// where it stopped.
async fn follow(
    shared: Arc<Shared>,
    ledger: Arc<Mutex<Ledger>>,
    shard: usize,
    id: String,
    replicas: Vec<Channel>,
) {
    let mut next = shard;
    while !shared.stop.load(Ordering::Relaxed) {
        let channel = replicas[next % replicas.len()].clone();
        next += 1;
        let (restore_epoch, from_revision) = ledger.lock().resume_at(shard);
        let opened = tokio::time::timeout(
            Duration::from_secs(2),
            AssignmentsClient::new(channel).watch(pb::WatchAssignmentsRequest {
                shard_id: id.clone(),
                from_revision,
                restore_epoch,
            }),
        )
        .await;
        if let Ok(Ok(stream)) = opened {
            let mut stream = stream.into_inner();
            // A replica that went quiet (stopped, cut off) says nothing, not even the progress
            // it sends every second: try another.
            while let Ok(Some(Ok(update))) =
                tokio::time::timeout(Duration::from_secs(3), stream.next()).await
            {
                ledger.lock().observe(shard, &update, shared.now_ms());
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The watches of every shard, feeding one ledger.
pub(super) struct Recorder {
    pub(super) ledger: Arc<Mutex<Ledger>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Recorder {
    /// Starts a watch per shard and waits (up to `limit`) for each one's first listing.
    pub(super) async fn start(
        shared: Arc<Shared>,
        shards: Vec<String>,
        replicas: Vec<Channel>,
        limit: Duration,
    ) -> anyhow::Result<Recorder> {
        let ledger = Arc::new(Mutex::new(Ledger::new(shards.len())));
        let tasks = shards
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                tokio::spawn(follow(
                    shared.clone(),
                    ledger.clone(),
                    i,
                    id,
                    replicas.clone(),
                ))
            })
            .collect();
        let recorder = Recorder { ledger, tasks };
        let started = Instant::now();
        while !recorder.ledger.lock().listed() {
            if started.elapsed() > limit {
                anyhow::bail!("the move recorder's watches did not list within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(recorder)
    }

    /// Waits (up to `limit`) until every watch has reached `revision`; false if one has not.
    pub(super) async fn reach(&self, revision: u64, limit: Duration) -> bool {
        let started = Instant::now();
        while self.ledger.lock().reached() < revision {
            if started.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Stops the watches.
    pub(super) async fn stop(self) {
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shards changed (`changed`) and down from 0 ms on (`down`).
    fn disturbed(changed: &[usize], down: &[usize]) -> Disturbed {
        let mut d = Disturbed::default();
        for &shard in changed {
            d.changed(shard);
        }
        for &shard in down {
            d.down(shard, 0);
        }
        d
    }

    fn names() -> Vec<String> {
        (0..4).map(|i| format!("s{i}")).collect()
    }

    fn listing(
        revision: u64,
        domains: &[(&str, u64)],
        slices: &[(&str, u64, u64)],
    ) -> pb::AssignmentUpdate {
        pb::AssignmentUpdate {
            revision,
            full: true,
            domains_added: domains.iter().map(|d| d.0.to_string()).collect(),
            domain_grants: domains.iter().map(|d| (d.0.to_string(), d.1)).collect(),
            slices: slices
                .iter()
                .map(|(p, amount, granted)| pb::QuotaSliceOf {
                    provider: p.to_string(),
                    region: "r".into(),
                    amount: *amount,
                    granted: *granted,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn delta(
        revision: u64,
        domains: &[(&str, u64)],
        slices: &[(&str, u64, u64)],
    ) -> pb::AssignmentUpdate {
        pb::AssignmentUpdate {
            full: false,
            ..listing(revision, domains, slices)
        }
    }

    /// s0 holds d1 and d2, s1 holds d3; every shard has a slice of p of 10.
    fn started() -> Ledger {
        let mut ledger = Ledger::new(3);
        ledger.observe(0, &listing(5, &[("d1", 1), ("d2", 1)], &[("p", 10, 1)]), 0);
        ledger.observe(1, &listing(5, &[("d3", 1)], &[("p", 10, 1)]), 0);
        ledger.observe(2, &listing(5, &[], &[("p", 10, 1)]), 0);
        assert!(ledger.listed());
        ledger
    }

    #[test]
    fn an_evacuation_off_a_changed_shard_holds_and_is_counted_once() {
        let mut ledger = started();
        ledger.observe(1, &delta(6, &[("d1", 6), ("d2", 6)], &[]), 100);
        // A resumed watch says it again: still one move each.
        ledger.observe(
            1,
            &listing(7, &[("d1", 6), ("d2", 6), ("d3", 1)], &[("p", 10, 1)]),
            150,
        );
        let moves = ledger.moves((50, 200), &disturbed(&[], &[0]), &BTreeSet::new(), &names());
        assert_eq!(moves.domains, (2, 0));
        assert_eq!(moves.most_moves_of_one, 1);
        assert!(moves.checks().iter().all(|c| c.holds), "{moves:?}");
        // Outside the window, nothing.
        let before = ledger.moves((0, 50), &disturbed(&[], &[0]), &BTreeSet::new(), &names());
        assert_eq!(before, Moves::default());
    }

    #[test]
    fn a_move_off_a_shard_left_alone_is_reported_even_when_the_watch_coalesced_it() {
        let mut ledger = started();
        // d1 went s0 -> s1 (revision 6, s0 had lapsed) -> s2 (revision 8, s1 had not): s2's
        // watch delivers its part before s1's.
        ledger.observe(2, &delta(8, &[("d1", 8)], &[]), 100);
        ledger.observe(1, &delta(8, &[("d1", 6)], &[]), 110);
        let moves = ledger.moves((50, 200), &disturbed(&[], &[0]), &BTreeSet::new(), &names());
        assert_eq!(moves.domains, (2, 0));
        assert_eq!(moves.most_moves_of_one, 2);
        assert_eq!(moves.off_undisturbed, ["domain d1 s1 -> s2 at revision 8"]);
        assert!(!moves.checks()[0].holds);
    }

    #[test]
    fn a_move_off_a_shard_whose_lease_ran_out_on_its_own_is_counted_not_failed() {
        let mut ledger = started();
        ledger.observe(1, &delta(6, &[("d1", 6)], &[]), 100);
        // s0 held by the scenario's account: the move is a failure...
        let alone = ledger.moves((50, 200), &disturbed(&[], &[]), &BTreeSet::new(), &names());
        assert_eq!(alone.off_undisturbed, ["domain d1 s0 -> s1 at revision 6"]);
        // ...unless s0 counted a lapse of its own: then the coordinator judged right.
        let mut lapsed = disturbed(&[], &[]);
        lapsed.lapsed(0);
        let moves = ledger.moves((50, 200), &lapsed, &BTreeSet::new(), &names());
        assert!(moves.off_undisturbed.is_empty(), "{moves:?}");
        assert_eq!(
            (moves.off_lapsed, moves.lapsed_shards.clone()),
            (1, vec!["s0".to_string()])
        );
        let check = &moves.checks()[0];
        assert!(check.holds, "{check:?}");
        assert!(check.detail.contains("off s0"), "{}", check.detail);
    }

    #[test]
    fn a_hop_through_a_shard_going_down_is_reported() {
        let mut ledger = started();
        // s0 and s1 go down together; d1 goes to s1 first, then on to s2.
        ledger.observe(1, &delta(6, &[("d1", 6)], &[]), 100);
        ledger.observe(2, &delta(8, &[("d1", 8)], &[]), 120);
        let down = disturbed(&[], &[0, 1]);
        let moves = ledger.moves((50, 200), &down, &BTreeSet::new(), &names());
        assert!(moves.off_undisturbed.is_empty());
        assert_eq!(moves.onto_down, ["domain d1 s0 -> s1 at revision 6"]);
        let checks = moves.checks();
        assert_eq!(
            checks.iter().map(|c| c.holds).collect::<Vec<_>>(),
            [true, false, true],
            "{checks:?}"
        );
        // Had s1 been back (at 90 ms) before d1 reached it, s1 would have been a shard like
        // any other: its state changed in the scenario, but it was up.
        let mut back = disturbed(&[], &[0, 1]);
        back.back(1, 90);
        let moves = ledger.moves((50, 200), &back, &BTreeSet::new(), &names());
        assert!(moves.onto_down.is_empty(), "{moves:?}");
        assert!(moves.off_undisturbed.is_empty(), "s1's state changed");
    }

    #[test]
    fn the_operator_moving_things_home_is_counted_apart_and_starts_afresh() {
        let mut ledger = started();
        ledger.observe(1, &delta(6, &[("d1", 6)], &[]), 100);
        ledger.observe(0, &delta(9, &[("d1", 9)], &[]), 120);
        let moves = ledger.moves(
            (50, 200),
            &disturbed(&[], &[0]),
            &BTreeSet::from([9]),
            &names(),
        );
        assert_eq!(moves.domains, (1, 1));
        assert!(moves.off_undisturbed.is_empty());
    }

    #[test]
    fn new_clusters_are_created_not_moved() {
        let mut ledger = started();
        let mut update = delta(6, &[], &[]);
        update.clusters_added = vec!["c-new".into()];
        update.cluster_grants.insert("c-new".into(), 6);
        ledger.observe(2, &update, 100);
        let moves = ledger.moves((50, 200), &disturbed(&[], &[]), &BTreeSet::new(), &names());
        assert_eq!((moves.clusters, moves.clusters_created), ((0, 0), 1));
        assert!(moves.checks().iter().all(|c| c.holds));
    }

    #[test]
    fn a_slice_that_rises_and_falls_at_a_shard_left_alone_swings() {
        let mut ledger = started();
        ledger.observe(1, &delta(6, &[], &[("p", 14, 6)]), 100);
        ledger.observe(1, &delta(7, &[], &[("p", 16, 7)]), 110);
        ledger.observe(1, &delta(8, &[], &[("p", 12, 8)]), 120);
        let moves = ledger.moves((50, 200), &disturbed(&[], &[]), &BTreeSet::new(), &names());
        assert_eq!(moves.slice_changes, (3, 0));
        assert_eq!(moves.slice_added, 6);
        assert_eq!(moves.most_changes_of_one_slice, 3);
        assert_eq!(moves.swung, ["s1 p/r [14, 16, 12]"]);
        assert_eq!(
            moves.repeated_at_held,
            ["s1 p/r, whose state held: [14, 16, 12]"]
        );
        // At a shard whose state changed, or with the operator between, it is not a swing.
        let changed = ledger.moves((50, 200), &disturbed(&[], &[1]), &BTreeSet::new(), &names());
        assert!(changed.swung.is_empty());
        assert!(changed.repeated_at_held.is_empty());
        let cut = ledger.moves(
            (50, 200),
            &disturbed(&[], &[]),
            &BTreeSet::from([7]),
            &names(),
        );
        assert!(cut.swung.is_empty(), "{cut:?}");
        assert!(cut.repeated_at_held.is_empty(), "{cut:?}");
        assert_eq!(cut.slice_changes, (2, 1));
    }

    #[test]
    fn a_slice_left_out_of_a_full_listing_is_gone() {
        let mut ledger = started();
        ledger.observe(2, &listing(9, &[], &[]), 100);
        let moves = ledger.moves((50, 200), &disturbed(&[], &[]), &BTreeSet::new(), &names());
        assert_eq!(moves.slice_changes, (1, 0));
        assert_eq!(
            ledger.streams[2].slices[&("p".to_string(), "r".to_string())],
            0
        );
    }
}
