//! The `partition` scenario: one shard loses its connection to the coordinator — only that
//! connection; every replica stays healthy — for longer than its lease. It keeps serving its
//! clusters from its cache (static stability) until the rebalancer gives its domains,
//! clusters and slices to other shards; from the moment they adopt at the providers it is
//! refused there, however hard it tries; when the partition heals it drops what it lost and
//! its clusters are served by their new shards (ADR 0005, ADR 0016).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use ballast_protocol::pb;
use ballast_testkit::fleet::{FleetListing, list_fleet};

use super::checks::Check;
use super::scenarios::ms;
use super::{PARTITIONED, Sim, Window, machine_resources, submit_demand};

impl Sim {
    pub(super) async fn partition(
        &mut self,
        m: &mut BTreeMap<String, f64>,
    ) -> anyhow::Result<Vec<Check>> {
        let k = PARTITIONED;
        let id = self.shards[k].id.clone();
        let mut checks = Vec::new();
        // Demand holds still but for what this scenario sends, so what happens is its doing.
        let hold = self.shared.hold_demand();
        self.until_demand_met(Duration::from_secs(60))
            .await
            .map_err(|short| anyhow::anyhow!("demand not met before the partition: {short}"))?;
        let listing = list_fleet(&self.client).await?;
        let homes: Vec<(String, usize)> = listing
            .domains
            .iter()
            .filter(|d| d.shard == id)
            .map(|d| (d.domain.clone(), k))
            .collect();
        let lost_clusters: BTreeSet<String> = listing
            .bindings
            .iter()
            .filter(|b| b.shard == id)
            .map(|b| b.cluster.clone())
            .collect();
        self.shared.event(format!(
            "partition: {id} cut off from every replica ({} clusters); the replicas stay up",
            lost_clusters.len()
        ));
        let from_ms = self.shared.now_ms();
        let cut = Instant::now();
        self.shared.take_down(k);
        for proxy in &self.proxies {
            proxy.cut();
        }

        // Cut off, it still serves its clusters: a surge of their demand is provisioned.
        let surged = self.shared.model.lock().surge(&[k], 30);
        submit_demand(&self.shared, &self.shard_clients, &surged).await;
        let demand = self.shared.model.lock().demand_of(k);
        let served = self
            .until_each(vec![k], Duration::from_secs(30), |_, s| {
                s.shortfall == 0
                    && s.machines_by_state.get("assigned").copied().unwrap_or(0) >= demand
            })
            .await;
        checks.push(Check::new(
            "the cut-off shard serves its clusters' new demand from its cache",
            served.is_ok(),
            match &served {
                Ok(d) => format!(
                    "{} clusters asked for 30% more; served {:.0} ms later without a coordinator",
                    surged.len(),
                    ms(*d)
                ),
                Err(_) => "not served within 30 s".into(),
            },
        ));

        // Its lease lapses: its domains and clusters move to live shards.
        self.shared.alive[k].store(false, Ordering::Relaxed);
        loop {
            // The cheap question first: the full listing only once the domains have gone.
            if self.domains_of(&id, 1).await?.is_empty()
                && reassigned(&list_fleet(&self.client).await?, &id, &lost_clusters)
            {
                break;
            }
            if cut.elapsed() > Duration::from_secs(120) {
                bail!("{id}'s domains or clusters still assigned to it 120 s after the partition");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let moved = cut.elapsed();
        m.insert("cut_to_reassigned_ms".into(), ms(moved));
        let revision = self.client.revision().await?;
        self.wait_for_shards_at(revision).await?;
        // Their clients follow the clusters to their new shards, which adopt their machines.
        let met = self.until_demand_met(Duration::from_secs(60)).await;
        checks.push(Check::new(
            "the clusters of the cut-off shard are served by their new shards",
            met.is_ok(),
            match &met {
                Ok(d) => format!(
                    "reassigned {:.0} ms after the cut; demand met at their new shards {:.0} ms later",
                    ms(moved),
                    ms(*d)
                ),
                Err(short) => short.clone(),
            },
        ));

        // The cut-off shard keeps trying: asked for more for clusters it still believes it
        // serves, it creates and configures at the providers, which refuse it.
        let before = self.owned_by(&id).await;
        let mut client = self.shard_clients[k].clone();
        for cluster in &lost_clusters {
            let _ = client
                .submit_demand(pb::SubmitDemandRequest {
                    cluster: cluster.clone(),
                    rows: vec![pb::DemandRow {
                        id: "main".into(),
                        count: 10_000,
                        resources: Some(machine_resources()),
                        ..Default::default()
                    }],
                })
                .await;
        }
        if !self.providers.is_empty() {
            let fenced = self
                .until_each(vec![k], Duration::from_secs(30), |_, s| {
                    !s.fenced.is_empty()
                })
                .await;
            let after = self.owned_by(&id).await;
            let listing = list_fleet(&self.client).await?;
            let holder: BTreeMap<&str, &str> = listing
                .bindings
                .iter()
                .map(|b| (b.cluster.as_str(), b.shard.as_str()))
                .collect();
            let made: Vec<&String> = after.keys().filter(|m| !before.contains_key(*m)).collect();
            let serving_elsewhere: Vec<String> = self
                .provider_serving()
                .await
                .into_iter()
                .filter(|(_, (cluster, owner))| {
                    lost_clusters.contains(cluster)
                        && holder.get(cluster.as_str()).is_some_and(|h| h != owner)
                })
                .map(|(machine, (cluster, owner))| {
                    format!("{machine} of {cluster} owned by {owner}")
                })
                .collect();
            checks.push(Check::new(
                "the providers' record: the cut-off shard acted on nothing after the new shards took over",
                fenced.is_ok() && made.is_empty() && serving_elsewhere.is_empty(),
                format!(
                    "fenced: {}; machines it made after the takeover: {}; machines of its former clusters not owned by their shard: {}",
                    if fenced.is_ok() { "yes" } else { "no, within 30 s" },
                    made.len(),
                    if serving_elsewhere.is_empty() {
                        "none".to_string()
                    } else {
                        serving_elsewhere.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
                    }
                ),
            ));
        }

        // The partition heals: the shard learns what it lost and drops it.
        for proxy in &self.proxies {
            proxy.heal();
        }
        self.shared.bring_back(k);
        let healed = Instant::now();
        self.shared.event(format!(
            "partition healed after {:.0} ms",
            ms(cut.elapsed())
        ));
        let dropped = self
            .until_each(vec![k], Duration::from_secs(60), |_, s| {
                // The background writer binds new clusters to it once it is back: only what
                // it lost must be gone.
                s.coordinator_reachable
                    && s.domains.is_empty()
                    && !s.clusters.iter().any(|c| lost_clusters.contains(c))
            })
            .await;
        checks.push(Check::new(
            "the healed shard drops the domains and clusters it lost",
            dropped.is_ok(),
            match &dropped {
                Ok(d) => format!("{:.0} ms after the heal", ms(*d)),
                Err(_) => format!(
                    "60 s after the heal it shows {:?}",
                    self.shard_status(k).await.map(|s| (
                        s.coordinator_reachable,
                        s.revision,
                        s.domains.len(),
                        s.clusters
                            .iter()
                            .filter(|c| lost_clusters.contains(*c))
                            .count(),
                        s.fenced,
                        s.status
                    ))
                ),
            },
        ));
        m.insert("heal_to_dropped_ms".into(), ms(healed.elapsed()));
        self.shared.alive[k].store(true, Ordering::Relaxed);
        // Healed, the shard takes its domains and clusters back (the operator's move, as after
        // an AZ loss): left without domains, its AZ peer would hold clusters it has no domain
        // to create in once the next burst swaps the AZ's domains.
        let clusters: Vec<(String, String)> = lost_clusters
            .iter()
            .map(|c| (c.clone(), id.clone()))
            .collect();
        self.move_home(&homes, &clusters, m).await?;
        let home: Vec<usize> = {
            let model = self.shared.model.lock();
            (0..model.clusters.len())
                .filter(|&n| model.clusters[n].shard == k)
                .collect()
        };
        submit_demand(&self.shared, &self.shard_clients, &home).await;
        self.windows.push(Window {
            label: format!("{id} partitioned"),
            from_ms,
            to_ms: self.shared.now_ms(),
        });
        drop(hold);
        Ok(checks)
    }

    /// Live machines the providers record as `shard`'s (empty without provider processes).
    async fn owned_by(&self, shard: &str) -> BTreeMap<String, String> {
        self.provider_serving()
            .await
            .into_iter()
            .filter(|(_, (_, owner))| owner == shard)
            .map(|(machine, (cluster, _))| (machine, cluster))
            .collect()
    }

    /// Every live machine at the providers: id → (cluster it serves, owner).
    async fn provider_serving(&self) -> BTreeMap<String, (String, String)> {
        let mut all = BTreeMap::new();
        for (_, provider) in &self.providers {
            for m in ballast_testkit::provider_machines(&provider.endpoint, "").await {
                if ballast_testkit::live(&m) {
                    all.insert(m.id, (m.cluster, m.owner_shard));
                }
            }
        }
        all
    }
}

/// Whether the coordinator has moved everything `shard` held when it was cut off: none of the
/// fleet's domains and none of `lost_clusters` is assigned to it any more.
fn reassigned(listing: &FleetListing, shard: &str, lost_clusters: &BTreeSet<String>) -> bool {
    !listing.domains.iter().any(|d| d.shard == shard)
        && !listing
            .bindings
            .iter()
            .any(|b| b.shard == shard && lost_clusters.contains(&b.cluster))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(domains: &[(&str, &str)], bindings: &[(&str, &str)]) -> FleetListing {
        FleetListing {
            domains: domains
                .iter()
                .map(|(domain, shard)| pb::DomainAssignment {
                    domain: domain.to_string(),
                    shard: shard.to_string(),
                })
                .collect(),
            bindings: bindings
                .iter()
                .map(|(cluster, shard)| pb::Binding {
                    cluster: cluster.to_string(),
                    shard: shard.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    /// A shard that had already lost its domains before the cut (its lease lapsed under load
    /// once) still holds its clusters: the partition must not heal before they move too, or
    /// the healed shard has nothing to drop (a CI run failed that way, 2026-12-07).
    #[test]
    fn a_shard_is_reassigned_only_once_its_clusters_moved_too() {
        let lost: BTreeSet<String> = ["c1".to_string(), "c2".to_string()].into();
        let held = listing(
            &[("d1", "shard-002")],
            &[("c1", "shard-001"), ("c2", "shard-002")],
        );
        assert!(
            !reassigned(&held, "shard-001", &lost),
            "c1 is still bound to shard-001"
        );
        let domain_left = listing(
            &[("d1", "shard-001")],
            &[("c1", "shard-002"), ("c2", "shard-002")],
        );
        assert!(
            !reassigned(&domain_left, "shard-001", &lost),
            "d1 is still on shard-001"
        );
        // New clusters the background writer binds to it meanwhile are not what it lost.
        let moved = listing(
            &[("d1", "shard-002")],
            &[
                ("c1", "shard-002"),
                ("c2", "shard-003"),
                ("c9", "shard-001"),
            ],
        );
        assert!(reassigned(&moved, "shard-001", &lost));
    }
}
