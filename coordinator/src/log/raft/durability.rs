//! How far this replica's own log is on disk, for a leader that sends its new entries to
//! followers while its own fsync of them is still running (issue #23, ADR 0018).
//!
//! openraft 0.9 waits for the leader's `RaftLogStorage::append` to be flushed before it
//! replicates, so the leader's fsync and the followers' ran one after the other. The log store
//! now reports a leader's own normal entries as flushed at once and fsyncs them in the
//! background, as etcd's leader does (Raft thesis §10.2.1). openraft may then count the leader
//! towards a quorum before its copy is on disk, so three things wait for this watermark
//! instead:
//!
//! - **apply** (`state_machine`): an entry is applied, and its client answered, only once this
//!   replica's copy is on disk. openraft committed it only after a follower had fsynced it, so
//!   an answered write is on the disks of a majority;
//! - **the commit index sent to followers** (`network`): clamped to the leader's watermark, so
//!   no follower applies an entry that only one disk holds;
//! - **the commit index saved** (`log_store::save_committed`): a restart never starts from a
//!   commit beyond what its log holds.
//!
//! A leader whose fsync does not finish within the election timeout stops sending to its
//! followers (`network`), so that they elect another leader as they did when openraft itself
//! waited for the disk.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::types::LogId;

/// What is known about this replica's own log on disk.
#[derive(Clone, Debug, Default)]
pub struct Durability {
    /// Every entry up to this one is on disk.
    pub through: Option<LogId>,
    /// Since when entries reported as flushed to openraft have waited for their fsync; `None`
    /// when none wait.
    pub unsynced_since: Option<Instant>,
    /// Why an fsync failed; once set, nothing more becomes durable.
    pub failed: Option<String>,
    /// Early appends queued and not yet synced.
    unsynced: u64,
    /// Truncations so far: an fsync that began before one cannot vouch for entries after it.
    truncations: u64,
}

impl Durability {
    fn covers(&self, index: u64) -> bool {
        self.through.is_some_and(|through| through.index >= index)
    }
}

/// Shared handle on [`Durability`]; clones watch the same log.
#[derive(Clone)]
pub struct LocalLog {
    state: watch::Sender<Durability>,
}

/// Why a wait for the local log ended without it reaching the index.
#[derive(Debug, thiserror::Error)]
pub enum NotDurable {
    /// An fsync failed: this replica's log cannot be trusted to hold anything more.
    #[error("this replica's log fsync failed: {0}")]
    Failed(String),
    /// The log holder is gone (the replica is stopping).
    #[error("the replica's log is closed")]
    Closed,
}

impl LocalLog {
    /// A log whose entries through `through` are on disk.
    pub fn new(through: Option<LogId>) -> Self {
        Self {
            state: watch::Sender::new(Durability {
                through,
                ..Default::default()
            }),
        }
    }

    /// A copy of what is known now.
    pub fn now(&self) -> Durability {
        self.state.borrow().clone()
    }

    /// Notes that an append was reported flushed before its fsync; returns the truncation
    /// count its fsync must still match to count.
    pub fn queued_early(&self) -> u64 {
        let mut truncations = 0;
        self.state.send_modify(|d| {
            d.unsynced += 1;
            d.unsynced_since.get_or_insert_with(Instant::now);
            truncations = d.truncations;
        });
        truncations
    }

    /// The truncation count an ordinary append's fsync must match to count.
    pub fn truncations(&self) -> u64 {
        self.state.borrow().truncations
    }

    /// An fsync that began at `started` succeeded: `last` (an append queued while the
    /// truncation count was `truncations`) is on disk, and with it `early` early appends.
    pub fn synced(&self, last: Option<(LogId, u64)>, early: u64, started: Instant) {
        self.state.send_modify(|d| {
            if let Some((last, truncations)) = last
                && truncations == d.truncations
                && d.through.is_none_or(|through| through.index < last.index)
            {
                d.through = Some(last);
            }
            d.unsynced = d.unsynced.saturating_sub(early);
            // Appends still waiting were queued after this fsync's batch was taken.
            d.unsynced_since = (d.unsynced > 0).then_some(started);
        });
    }

    /// An fsync failed: nothing more counts as durable.
    pub fn failed(&self, reason: String) {
        self.state.send_modify(|d| {
            d.failed.get_or_insert(reason);
        });
    }

    /// The log was cut back to `last` and synced: everything it still holds is on disk, and
    /// fsyncs that began before the cut no longer count.
    pub fn truncated(&self, last: Option<LogId>) {
        self.state.send_modify(|d| {
            d.through = last;
            d.truncations += 1;
        });
    }

    /// Waits until every entry through `index` is on disk.
    pub async fn wait_for(&self, index: u64) -> Result<(), NotDurable> {
        let mut changes = self.state.subscribe();
        let state = changes
            .wait_for(|d| d.failed.is_some() || d.covers(index))
            .await
            .map_err(|_| NotDurable::Closed)?;
        match &state.failed {
            Some(reason) => Err(NotDurable::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// `commit` lowered to what this replica holds on disk, after waiting up to `patience`
    /// for its disk to catch up.
    pub async fn clamp(&self, commit: Option<LogId>, patience: Duration) -> Option<LogId> {
        let index = commit?.index;
        if !self.state.borrow().covers(index) && !patience.is_zero() {
            let _ = tokio::time::timeout(patience, self.wait_for(index)).await;
        }
        self.clamp_now(commit)
    }

    /// `commit` lowered to what this replica holds on disk now.
    pub fn clamp_now(&self, commit: Option<LogId>) -> Option<LogId> {
        clamped(commit, &self.state.borrow())
    }

    /// Why an fsync failed, if one did.
    pub fn failure(&self) -> Option<String> {
        self.state.borrow().failed.clone()
    }

    /// How long an early append has waited for its fsync, if one waits.
    pub fn unsynced_for(&self) -> Option<Duration> {
        self.state.borrow().unsynced_since.map(|t| t.elapsed())
    }
}

/// `commit`, or the last durable entry when that is earlier.
fn clamped(commit: Option<LogId>, durable: &Durability) -> Option<LogId> {
    match (commit, durable.through) {
        (Some(commit), Some(through)) if through.index < commit.index => Some(through),
        (Some(_), None) => None,
        (commit, _) => commit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn the_commit_sent_is_lowered_to_what_is_on_disk() {
        let log = LocalLog::new(Some(id(1, 5)));
        assert_eq!(clamped(Some(id(1, 9)), &log.now()), Some(id(1, 5)));
        assert_eq!(clamped(Some(id(1, 4)), &log.now()), Some(id(1, 4)));
        assert_eq!(clamped(None, &log.now()), None);
        assert_eq!(clamped(Some(id(1, 1)), &LocalLog::new(None).now()), None);
    }

    #[test]
    fn an_fsync_begun_before_a_truncation_does_not_count() {
        let log = LocalLog::new(Some(id(1, 5)));
        let before = log.queued_early();
        log.truncated(Some(id(1, 3)));
        log.synced(Some((id(1, 8), before)), 1, Instant::now());
        assert_eq!(log.now().through, Some(id(1, 3)));
        assert!(log.unsynced_for().is_none());
        // An append after the cut counts.
        log.synced(Some((id(2, 4), log.truncations())), 0, Instant::now());
        assert_eq!(log.now().through, Some(id(2, 4)));
    }

    #[test]
    fn the_wait_for_an_fsync_is_timed_from_the_oldest_unsynced_append() {
        let log = LocalLog::new(None);
        assert!(log.unsynced_for().is_none());
        let t = log.queued_early();
        log.queued_early();
        assert!(log.unsynced_for().is_some());
        // One of the two was in the batch: the other still waits.
        log.synced(Some((id(1, 1), t)), 1, Instant::now());
        assert!(log.unsynced_for().is_some());
        log.synced(Some((id(1, 2), t)), 1, Instant::now());
        assert!(log.unsynced_for().is_none());
        // The watermark never goes back on a late, smaller sync.
        log.synced(Some((id(1, 1), t)), 0, Instant::now());
        assert_eq!(log.now().through, Some(id(1, 2)));
    }

    #[tokio::test]
    async fn waits_end_on_the_fsync_or_its_failure() {
        let log = LocalLog::new(Some(id(1, 1)));
        log.wait_for(1).await.expect("already on disk");
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.wait_for(3).await }
        });
        log.synced(Some((id(1, 3), 0)), 0, Instant::now());
        waiting.await.expect("joined").expect("synced");
        let failing = tokio::spawn({
            let log = log.clone();
            async move { log.wait_for(4).await }
        });
        log.failed("disk gone".into());
        assert!(matches!(
            failing.await.expect("joined"),
            Err(NotDurable::Failed(_))
        ));
        // The commit is clamped at once when the wait is given no time.
        assert_eq!(
            log.clamp(Some(id(1, 9)), Duration::ZERO).await,
            Some(id(1, 3))
        );
    }
}
