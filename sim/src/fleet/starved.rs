//! The `starved-coordinator` scenario: the coordinator, not the shards, stops working for
//! longer than the shards' lease — first the leader alone (SIGSTOP for 1.5 leases: the others
//! elect a new leader), then all three replicas at once — while every shard keeps working and
//! heartbeating into the void. A coordinator that judged leases by what it happened to hear
//! would evacuate shards that were serving all along; this one must move no domain (see
//! `coordinator/src/disruption.rs`, docs/reliability.md "Calm evacuation").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ballast_testkit::fleet::list_fleet;

use super::Sim;
use super::checks::Check;
use super::scenarios::ms;

impl Sim {
    pub(super) async fn starved_coordinator(
        &mut self,
        m: &mut BTreeMap<String, f64>,
    ) -> anyhow::Result<Vec<Check>> {
        let lease = Duration::from_millis(self.args.shard_lease_ms.unwrap_or(3_000));
        let stop = lease * 3 / 2;
        let mut checks = Vec::new();
        let hold = self.shared.hold_demand();
        self.until_demand_met(Duration::from_secs(60))
            .await
            .map_err(|short| anyhow::anyhow!("demand not met before the starvation: {short}"))?;
        let holders = |listing: &ballast_testkit::fleet::FleetListing| -> BTreeMap<String, String> {
            listing
                .domains
                .iter()
                .map(|d| (d.domain.clone(), d.shard.clone()))
                .collect()
        };
        let before = holders(&list_fleet(&self.client).await?);
        for all in [false, true] {
            let stopped: Vec<u64> = if all {
                self.cluster.replicas.iter().map(|r| r.id).collect()
            } else {
                vec![self.cluster.leader().await]
            };
            self.shared.event(format!(
                "SIGSTOP {} ({stopped:?}) for {:.0} ms, 1.5 shard leases",
                if all { "every replica" } else { "the leader" },
                ms(stop)
            ));
            for id in &stopped {
                self.cluster.pause(*id);
            }
            tokio::time::sleep(stop).await;
            for id in &stopped {
                self.cluster.resume(*id);
            }
            let resumed = Instant::now();
            // Two leases after the resume: every lapsed lease would have been judged by then.
            let mut moved: Vec<(String, String, String)> = Vec::new();
            while resumed.elapsed() < lease * 2 {
                if let Ok(listing) = list_fleet(&self.client).await {
                    let now = holders(&listing);
                    moved = before
                        .iter()
                        .filter_map(|(domain, shard)| {
                            let holder = now.get(domain)?;
                            (holder != shard)
                                .then(|| (domain.clone(), shard.clone(), holder.clone()))
                        })
                        .collect();
                    if !moved.is_empty() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let what = if all { "every replica" } else { "the leader" };
            m.insert(
                format!("moved_domains_after_{}", if all { "all" } else { "leader" }),
                moved.len() as f64,
            );
            checks.push(Check::new(
                &format!("no domain moves when {what} is stopped past the shards' lease"),
                moved.is_empty(),
                if moved.is_empty() {
                    format!(
                        "{} domains held by the same shards for {:.0} ms after a {:.0} ms stop",
                        before.len(),
                        ms(lease * 2),
                        ms(stop)
                    )
                } else {
                    let shown: Vec<String> = moved
                        .iter()
                        .take(3)
                        .map(|(d, from, to)| format!("{d}: {from} → {to}"))
                        .collect();
                    format!("{} domains moved, e.g. {}", moved.len(), shown.join("; "))
                },
            ));
        }
        m.insert("stop_ms".into(), ms(stop));
        drop(hold);
        Ok(checks)
    }
}
