//! The simulated fleet: shards, topology domains, clusters with changing demand and quotas,
//! generated from a seed. Pure data and arithmetic; the scenario runner turns it into writes
//! and demand submissions.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use ballast_testkit::fleet::{AZS, shard_id};

/// How big a simulated fleet is.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Scale {
    /// Name in reports ("ci", "full").
    pub name: &'static str,
    /// Shard workers (real processes), spread evenly over the three AZs.
    pub shards: usize,
    /// Topology domains, round-robin over the shards of their AZ.
    pub domains: usize,
    /// Clusters, each bound to one shard, each with one demand row.
    pub clusters: usize,
    /// (provider, region) quotas, each sliced over every shard.
    pub quotas: usize,
    /// Mean machines a cluster asks for; demand walks between half and twice this.
    pub mean_demand: u32,
    /// Machine count the coordinator state stands for (reports only: a 100M-machine fleet's
    /// coordinator holds the same tables whatever the per-cluster demand simulated here).
    pub fleet_machines: u64,
}

impl Scale {
    /// Seconds-long runs for CI: 6 shards, 600 domains, 120 clusters, ~2,400 machines.
    pub const CI: Scale = Scale {
        name: "ci",
        shards: 6,
        domains: 600,
        clusters: 120,
        quotas: 2,
        mean_demand: 20,
        fleet_machines: 2_400,
    };

    /// The 100M-machine fleet's coordinator state (200 shards, 100K domains, 20K clusters,
    /// 30 quotas) with real demand for 20K clusters × 5 machines = 100K simulated machines
    /// (what 200 shard processes sharing one small box can churn through; one shard's engine at
    /// 500K machines is measured by `ballast-bench engine`).
    pub const FULL: Scale = Scale {
        name: "full",
        shards: 200,
        domains: 100_000,
        clusters: 20_000,
        quotas: 30,
        mean_demand: 5,
        fleet_machines: 100_000_000,
    };

    /// A scale by name.
    pub fn named(name: &str) -> Option<Scale> {
        match name {
            "ci" => Some(Scale::CI),
            "full" => Some(Scale::FULL),
            _ => None,
        }
    }
}

/// One shard of the model.
#[derive(Clone, Debug)]
pub struct ShardSpec {
    /// Shard id (`shard-000`, ...).
    pub id: String,
    /// Its AZ.
    pub az: &'static str,
}

/// One cluster of the model.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Cluster id.
    pub id: String,
    /// Index of the shard it is bound to.
    pub shard: usize,
    /// Machines it currently asks for.
    pub demand: u32,
}

/// The whole simulated fleet and its demand, advanced deterministically from a seed.
pub struct FleetModel {
    /// Scale it was built at.
    pub scale: Scale,
    /// Shards.
    pub shards: Vec<ShardSpec>,
    /// Domain names with the index of their first owner (a shard of the domain's AZ).
    pub domains: Vec<(String, usize)>,
    /// Clusters.
    pub clusters: Vec<ClusterSpec>,
    rng: StdRng,
}

impl FleetModel {
    /// Builds the fleet of `scale` from `seed`.
    pub fn new(scale: Scale, seed: u64) -> FleetModel {
        let mut rng = StdRng::seed_from_u64(seed);
        let shards: Vec<ShardSpec> = (0..scale.shards)
            .map(|i| ShardSpec {
                id: shard_id(i),
                az: AZS[i % AZS.len()],
            })
            .collect();
        // Domain n lives in AZ n % 3 and belongs to a shard of that AZ, so losing an AZ
        // loses exactly that AZ's shards and domains.
        let domains = (0..scale.domains)
            .map(|n| {
                let az = n % AZS.len();
                let in_az = scale.shards.div_ceil(AZS.len());
                let shard = az + AZS.len() * ((n / AZS.len()) % in_az);
                let shard = if shard < scale.shards { shard } else { az };
                (
                    format!("topology.kubernetes.io/zone={}/rack=r{n:06}", AZS[az]),
                    shard,
                )
            })
            .collect();
        let (lo, hi) = demand_bounds(scale.mean_demand);
        let clusters = (0..scale.clusters)
            .map(|n| ClusterSpec {
                id: format!("cluster-{n:06}"),
                shard: n % scale.shards,
                demand: rng.random_range(lo..=hi),
            })
            .collect();
        FleetModel {
            scale,
            shards,
            domains,
            clusters,
            rng,
        }
    }

    /// Moves the demand of about `fraction` of the clusters by a random step (up to a quarter
    /// of the mean), kept between half and twice the mean. Returns the clusters that changed.
    pub fn step_demand(&mut self, fraction: f64) -> Vec<usize> {
        let (lo, hi) = demand_bounds(self.scale.mean_demand);
        let step = (self.scale.mean_demand / 4).max(1) as i64;
        let mut changed = Vec::new();
        for (n, cluster) in self.clusters.iter_mut().enumerate() {
            if !self.rng.random_bool(fraction.clamp(0.0, 1.0)) {
                continue;
            }
            let delta = self.rng.random_range(-step..=step);
            let next = (cluster.demand as i64 + delta).clamp(lo as i64, hi as i64) as u32;
            if next != cluster.demand {
                cluster.demand = next;
                changed.push(n);
            }
        }
        changed
    }

    /// Raises every cluster bound to a shard in `shards` by `percent` (capped at the upper
    /// bound): a demand surge. Returns the clusters that changed.
    pub fn surge(&mut self, shards: &[usize], percent: u32) -> Vec<usize> {
        let (_, hi) = demand_bounds(self.scale.mean_demand);
        let mut changed = Vec::new();
        for (n, cluster) in self.clusters.iter_mut().enumerate() {
            if shards.contains(&cluster.shard) {
                let next = (cluster.demand + cluster.demand * percent / 100).min(hi);
                if next != cluster.demand {
                    cluster.demand = next;
                    changed.push(n);
                }
            }
        }
        changed
    }

    /// Points clusters at the shards the coordinator now binds them to (the rebalancer moves
    /// the clusters of dead and draining shards), as a cluster's own client follows its
    /// binding. Bindings of clusters or shards outside the model are ignored. Returns the
    /// clusters that moved.
    pub fn follow_bindings<'a>(
        &mut self,
        bindings: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<usize> {
        let clusters: HashMap<&str, usize> = self
            .clusters
            .iter()
            .enumerate()
            .map(|(n, c)| (c.id.as_str(), n))
            .collect();
        let shards: HashMap<&str, usize> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        let moves: Vec<(usize, usize)> = bindings
            .into_iter()
            .filter_map(|(cluster, shard)| Some((*clusters.get(cluster)?, *shards.get(shard)?)))
            .filter(|(n, shard)| self.clusters[*n].shard != *shard)
            .collect();
        for (n, shard) in &moves {
            self.clusters[*n].shard = *shard;
        }
        moves.into_iter().map(|(n, _)| n).collect()
    }

    /// The clusters bound to any of `shards`.
    pub fn clusters_of(&self, shards: &[usize]) -> Vec<usize> {
        (0..self.clusters.len())
            .filter(|&n| shards.contains(&self.clusters[n].shard))
            .collect()
    }

    /// Machines the clusters bound to `shard` ask for.
    pub fn demand_of(&self, shard: usize) -> u64 {
        self.clusters
            .iter()
            .filter(|c| c.shard == shard)
            .map(|c| c.demand as u64)
            .sum()
    }

    /// Indexes of the shards in `az`.
    pub fn shards_in(&self, az: &str) -> Vec<usize> {
        (0..self.shards.len())
            .filter(|&i| self.shards[i].az == az)
            .collect()
    }

    /// Each shard's slice of each quota: every shard can hold its clusters' largest possible
    /// demand with a tenth to spare, spread over the quotas. Tight on purpose, so a shard that
    /// ignored its slice would show.
    pub fn slice_per_quota(&self) -> u64 {
        let (_, hi) = demand_bounds(self.scale.mean_demand);
        let per_shard = self.scale.clusters.div_ceil(self.scale.shards) as u64 * hi as u64;
        (per_shard * 11 / 10).div_ceil(self.scale.quotas as u64)
    }

    /// The (provider, region) of quota `q`.
    pub fn quota_key(q: usize) -> (String, String) {
        (format!("provider-{}", q / 6), format!("region-{}", q % 6))
    }
}

/// Half and twice `mean`, the range a cluster's demand walks in.
pub fn demand_bounds(mean: u32) -> (u32, u32) {
    ((mean / 2).max(1), mean.saturating_mul(2).max(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_follow_their_bindings() {
        let mut model = FleetModel::new(Scale::CI, 1);
        let (first, second) = (model.clusters[0].id.clone(), model.clusters[1].id.clone());
        let home = model.clusters[1].shard;
        let elsewhere = model.shards[(model.clusters[0].shard + 1) % model.shards.len()]
            .id
            .clone();
        let moved = model.follow_bindings([
            (first.as_str(), elsewhere.as_str()),
            (second.as_str(), model.shards[home].id.clone().as_str()),
            ("not-a-cluster", elsewhere.as_str()),
            (first.as_str(), "not-a-shard"),
        ]);
        assert_eq!(moved, vec![0]);
        assert_eq!(model.shards[model.clusters[0].shard].id, elsewhere);
        assert_eq!(model.clusters[1].shard, home);
    }

    #[test]
    fn same_seed_same_fleet_and_demand() {
        let mut a = FleetModel::new(Scale::CI, 7);
        let mut b = FleetModel::new(Scale::CI, 7);
        for _ in 0..20 {
            assert_eq!(a.step_demand(0.2), b.step_demand(0.2));
        }
        let demand = |m: &FleetModel| m.clusters.iter().map(|c| c.demand).collect::<Vec<_>>();
        assert_eq!(demand(&a), demand(&b));
        let c = FleetModel::new(Scale::CI, 8);
        assert_ne!(demand(&a), demand(&c));
    }

    #[test]
    fn domains_belong_to_a_shard_of_their_az_and_demand_fits_slices() {
        for scale in [Scale::CI, Scale::FULL] {
            let mut model = FleetModel::new(scale, 1);
            for (domain, shard) in &model.domains {
                let az = model.shards[*shard].az;
                assert!(domain.contains(&format!("zone={az}/")), "{domain} on {az}");
            }
            let (lo, hi) = demand_bounds(scale.mean_demand);
            for _ in 0..50 {
                model.step_demand(0.5);
                model.surge(&[0, 1], 50);
            }
            let slices = model.slice_per_quota() * scale.quotas as u64;
            for shard in 0..scale.shards {
                assert!(
                    model.demand_of(shard) <= slices,
                    "shard {shard} over its slices"
                );
            }
            assert!(model.clusters.iter().all(|c| (lo..=hi).contains(&c.demand)));
        }
    }
}
