//! What an ownership move did to the machines, judged by the providers' own record: with demand
//! held still, every machine created, deleted while at work, or moved to another cluster (or
//! drained) is the move's doing, and ADR 0016 says there is none. Deleting an idle machine is
//! allowed: a slice that shrank takes idle surplus back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::Sim;
use super::checks::Check;

/// Live machines at the providers: id → the cluster it serves ("" when idle).
pub type Record = BTreeMap<String, String>;

/// What changed between two records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Churn {
    /// Live after, not before.
    pub created: Vec<String>,
    /// Serving a cluster before, gone after.
    pub deleted_at_work: Vec<String>,
    /// Idle before, gone after (surplus to a slice).
    pub deleted_idle: usize,
    /// Live in both, serving another cluster (or none) after.
    pub reconfigured: Vec<String>,
}

impl Churn {
    /// Whether the move left every machine as it was (idle surplus aside).
    pub fn is_none(&self) -> bool {
        self.created.is_empty() && self.deleted_at_work.is_empty() && self.reconfigured.is_empty()
    }
}

/// The providers' record watched while a scenario runs: how few machines served a cluster at
/// any look (every 250 ms).
pub struct RecordWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, usize)>,
}

impl RecordWatch {
    /// Stops watching: the fewest machines serving a cluster seen, and how many looks.
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or((0, 0))
    }
}

/// Machines serving a cluster in a record.
fn serving(record: &Record) -> usize {
    record
        .values()
        .filter(|cluster| !cluster.is_empty())
        .count()
}

/// The difference between two records.
pub fn churn(before: &Record, after: &Record) -> Churn {
    let mut churn = Churn::default();
    for (id, cluster) in before {
        match after.get(id) {
            None if cluster.is_empty() => churn.deleted_idle += 1,
            None => churn.deleted_at_work.push(id.clone()),
            Some(now) if now != cluster => churn
                .reconfigured
                .push(format!("{id} ({cluster:?} → {now:?})")),
            Some(_) => {}
        }
    }
    churn.created = after
        .keys()
        .filter(|id| !before.contains_key(*id))
        .cloned()
        .collect();
    churn
}

/// Up to three examples and how many in all.
fn examples(ids: &[String]) -> String {
    match ids.len() {
        0 => "0".into(),
        n => format!(
            "{n} (e.g. {})",
            ids.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

impl Sim {
    /// The providers' record now.
    async fn provider_record_now(&self) -> Record {
        let mut record = Record::new();
        for (_, provider) in &self.providers {
            for m in ballast_testkit::provider_machines(&provider.endpoint, "").await {
                if ballast_testkit::live(&m) {
                    record.insert(m.id, m.cluster);
                }
            }
        }
        record
    }

    /// The record once every live shard has carried its decisions out at the providers (no
    /// placement pending) and two looks 300 ms apart agree, or the last look after 10 s.
    async fn settled_record(&self) -> Record {
        let _ = self
            .until_each(self.live_shards(), Duration::from_secs(10), |_, s| {
                s.placements_pending == 0
            })
            .await;
        let started = Instant::now();
        let mut last = self.provider_record_now().await;
        while started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.provider_record_now().await;
            if now == last {
                break;
            }
            last = now;
        }
        last
    }

    /// With provider processes: the record to judge `what` against, taken once demand is met
    /// and the record has settled, and a watch on the record from then on. `None` without
    /// provider processes (each shard's built-in provider serves it alone: there is nothing to
    /// hand over).
    pub(super) async fn settled_record_before(
        &self,
        what: &str,
    ) -> anyhow::Result<Option<(Record, RecordWatch)>> {
        if self.providers.is_empty() {
            return Ok(None);
        }
        self.until_demand_met(Duration::from_secs(60))
            .await
            .map_err(|short| anyhow::anyhow!("demand not met before {what}: {short}"))?;
        let record = self.settled_record().await;
        let endpoints: Vec<String> = self
            .providers
            .iter()
            .map(|(_, p)| p.endpoint.clone())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut fewest, mut looks) = (usize::MAX, 0);
                while !stop.load(Ordering::Relaxed) {
                    let mut now = 0;
                    for endpoint in &endpoints {
                        now += ballast_testkit::provider_machines(endpoint, "")
                            .await
                            .iter()
                            .filter(|m| ballast_testkit::live(m) && !m.cluster.is_empty())
                            .count();
                    }
                    fewest = fewest.min(now);
                    looks += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                (fewest, looks)
            }
        });
        Ok(Some((record, RecordWatch { stop, task })))
    }

    /// Machines whose cluster differs between a live shard's ledger and the providers' record.
    async fn ledger_drift(&self) -> anyhow::Result<(usize, Vec<String>)> {
        let record = self.settled_record().await;
        let mut machines = 0;
        let mut differ = Vec::new();
        for (shard, ledger) in self.machines_of_live_shards().await? {
            for m in ledger {
                machines += 1;
                let serves = m.need.split('/').next().unwrap_or("");
                match record.get(&m.id) {
                    Some(cluster) if cluster == serves => {}
                    other => differ.push(format!(
                        "{} on {shard}: ledger {serves:?}, provider {:?}",
                        m.id,
                        other.map_or("(not live)", String::as_str)
                    )),
                }
            }
        }
        Ok((machines, differ))
    }

    /// With provider processes, while demand holds still: every live shard's ledger and the
    /// providers' record agree on which cluster each machine serves (what a handover adopts
    /// is what the provider records, so a drift here is churn later). Looked at again for up
    /// to 10 s, so a decision carried out between the two reads is not a drift.
    pub(super) async fn ledgers_match_providers(&self) -> anyhow::Result<Option<Check>> {
        if self.providers.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let (machines, differ) = loop {
            let (machines, differ) = self.ledger_drift().await?;
            if differ.is_empty() || started.elapsed() > Duration::from_secs(10) {
                break (machines, differ);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        Ok(Some(Check::new(
            "the providers' record: every shard's ledger agrees on what each machine serves",
            differ.is_empty(),
            if differ.is_empty() {
                format!(
                    "{machines} machines in the live shards' ledgers, each as the providers record it"
                )
            } else {
                format!(
                    "{} of {machines} differ, e.g. {}",
                    differ.len(),
                    differ
                        .iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            },
        )))
    }

    /// Judges what `what` did to the machines since `before` (nothing without provider
    /// processes), recording the counts in `m`.
    pub(super) async fn churn_check(
        &self,
        what: &str,
        before: Option<(Record, RecordWatch)>,
        m: &mut BTreeMap<String, f64>,
    ) -> Vec<Check> {
        let Some((before, watch)) = before else {
            return Vec::new();
        };
        let after = self.settled_record().await;
        let (fewest, looks) = watch.finish().await;
        let serving_before = serving(&before);
        m.insert("provider_serving_before".into(), serving_before as f64);
        m.insert("provider_serving_fewest".into(), fewest as f64);
        let dip = Check::new(
            &format!("the providers' record: machines serving clusters never dipped during {what}"),
            looks > 0 && fewest >= serving_before,
            format!(
                "{serving_before} serving before; the fewest in {looks} looks 250 ms apart: {fewest}"
            ),
        );
        let churn = churn(&before, &after);
        m.insert("provider_created".into(), churn.created.len() as f64);
        m.insert(
            "provider_deleted_at_work".into(),
            churn.deleted_at_work.len() as f64,
        );
        m.insert("provider_deleted_idle".into(), churn.deleted_idle as f64);
        m.insert(
            "provider_reconfigured".into(),
            churn.reconfigured.len() as f64,
        );
        vec![
            dip,
            Check::new(
                &format!(
                    "the providers' record: {what} created, released or reconfigured no machine"
                ),
                churn.is_none(),
                format!(
                    "{} live machines before, {} after; created {}, deleted at work {}, reconfigured {}, idle surplus deleted {}",
                    before.len(),
                    after.len(),
                    examples(&churn.created),
                    examples(&churn.deleted_at_work),
                    examples(&churn.reconfigured),
                    churn.deleted_idle
                ),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(&str, &str)]) -> Record {
        pairs
            .iter()
            .map(|(id, cluster)| (id.to_string(), cluster.to_string()))
            .collect()
    }

    #[test]
    fn every_kind_of_churn_is_named_and_idle_surplus_is_allowed() {
        let before = record(&[
            ("m1", "c1"),
            ("m2", "c1"),
            ("m3", ""),
            ("m4", "c2"),
            ("m5", ""),
        ]);
        let same = churn(&before, &before);
        assert!(same.is_none(), "{same:?}");
        let after = record(&[("m1", "c1"), ("m2", ""), ("m4", "c3"), ("m6", "c1")]);
        let c = churn(&before, &after);
        assert_eq!(c.created, ["m6"]);
        assert_eq!(
            c.reconfigured,
            ["m2 (\"c1\" → \"\")", "m4 (\"c2\" → \"c3\")"]
        );
        assert_eq!(c.deleted_idle, 2);
        assert!(c.deleted_at_work.is_empty());
        assert!(!c.is_none());
        let only_idle_gone = record(&[("m1", "c1"), ("m2", "c1"), ("m4", "c2")]);
        assert!(churn(&before, &only_idle_gone).is_none());
        let at_work_gone = record(&[("m2", "c1"), ("m3", ""), ("m4", "c2"), ("m5", "")]);
        assert_eq!(churn(&before, &at_work_gone).deleted_at_work, ["m1"]);
    }
}
