//! The `demand-shift` scenario: a third of the clusters of one AZ triple their demand, all of
//! them on the first shards of that AZ, so those shards want far more than their slices hold.
//! No operator acts: the coordinator reads the shortfall the shards report with their
//! heartbeats and moves slice capacity to them (`coordinator/src/slice_placement.rs`), first
//! what no shard holds, then spare room of other shards. The judge: the shortfall clears, the
//! slices moved add up to no more than the shift needed, and no slice swings back and forth.
//! Then the demand goes back to what it was.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ballast_testkit::fleet::list_fleet;

use super::checks::Check;
use super::scenarios::ms;
use super::{Sim, submit_demand};

/// (shard, provider, region) → slice.
type Slices = BTreeMap<(String, String, String), u64>;

impl Sim {
    pub(super) async fn demand_shift(
        &mut self,
        m: &mut BTreeMap<String, f64>,
    ) -> anyhow::Result<Vec<Check>> {
        let limit = Duration::from_secs(if self.scale.name == "full" { 300 } else { 90 });
        let hold = self.shared.hold_demand();
        self.until_demand_met(Duration::from_secs(60))
            .await
            .map_err(|short| anyhow::anyhow!("demand not met before the shift: {short}"))?;
        let before = self.slices().await?;
        // A third of az-a's clusters, taken shard by shard: the first shards of the AZ get all
        // of the shift (spread evenly, every shard would have absorbed it in its own slice).
        let (shifted, original) = {
            let mut model = self.shared.model.lock();
            let in_az = model.shards_in("az-a");
            let mut clusters = model.clusters_of(&in_az);
            clusters.sort_by_key(|&n| (model.clusters[n].shard, n));
            clusters.truncate(clusters.len().div_ceil(3));
            let original: Vec<(usize, u32)> = clusters
                .iter()
                .map(|&n| (n, model.clusters[n].demand))
                .collect();
            for &n in &clusters {
                model.clusters[n].demand = model.clusters[n].demand.saturating_mul(3);
            }
            (clusters, original)
        };
        let shifted_shards: BTreeSet<usize> = {
            let model = self.shared.model.lock();
            shifted.iter().map(|&n| model.clusters[n].shard).collect()
        };
        // What the shift needs beyond the slices those shards held.
        let needed: u64 = {
            let model = self.shared.model.lock();
            shifted_shards
                .iter()
                .map(|&i| {
                    let id = &self.shards[i].id;
                    let sliced: u64 = before
                        .iter()
                        .filter(|((shard, ..), _)| shard == id)
                        .map(|(_, amount)| *amount)
                        .sum();
                    model.demand_of(i).saturating_sub(sliced)
                })
                .sum()
        };
        for &i in &shifted_shards {
            self.shared.disturb(i);
        }
        let sent = submit_demand(&self.shared, &self.shard_clients, &shifted).await;
        let shards: Vec<&str> = shifted_shards
            .iter()
            .map(|&i| self.shards[i].id.as_str())
            .collect();
        self.shared.event(format!(
            "demand shift: {} clusters of az-a triple their demand ({sent} accepted) on {}; \
             {needed} machines beyond their slices",
            shifted.len(),
            shards.join(", ")
        ));
        let shifted_at = Instant::now();
        // Every slice as sampled, to see it move and never swing back.
        let mut series: BTreeMap<(String, String, String), Vec<u64>> = before
            .iter()
            .map(|(key, amount)| (key.clone(), vec![*amount]))
            .collect();
        let sample = |slices: &Slices, series: &mut BTreeMap<_, Vec<u64>>| {
            let keys: BTreeSet<_> = slices.keys().chain(series.keys()).cloned().collect();
            for key in keys {
                let now = slices.get(&key).copied().unwrap_or(0);
                let seen = series.entry(key).or_insert_with(|| vec![0]);
                if seen.last() != Some(&now) {
                    seen.push(now);
                }
            }
        };
        let met = loop {
            if let Ok(slices) = self.slices().await {
                sample(&slices, &mut series);
            }
            match self.until_demand_met(Duration::from_millis(500)).await {
                Ok(_) => break Ok(shifted_at.elapsed()),
                Err(short) if shifted_at.elapsed() >= limit => break Err(short),
                Err(_) => {}
            }
        };
        let after = self.slices().await?;
        sample(&after, &mut series);
        let grew: u64 = series
            .values()
            .map(|s| s.last().copied().unwrap_or(0).saturating_sub(s[0]))
            .sum();
        // Net, at the shifted shards: a shifted shard whose new demand had not reached it yet
        // may have given spare room away first, and then asked for it back.
        let net: i64 = series
            .iter()
            .filter(|((shard, ..), _)| shards.contains(&shard.as_str()))
            .map(|(_, s)| s.last().copied().unwrap_or(0) as i64 - s[0] as i64)
            .sum();
        let grew_elsewhere: Vec<String> = series
            .iter()
            .filter(|((shard, ..), s)| s.last() > s.first() && !shards.contains(&shard.as_str()))
            .map(|((shard, p, r), s)| format!("{shard} {p}/{r} {:?}", s))
            .collect();
        // A slice that rose and fell: at a shard whose state did not change (its demand held
        // still), that is oscillation; at a shifted shard it is the shift arriving.
        let swings = |(_, s): &(&(String, String, String), &Vec<u64>)| {
            let up = s.windows(2).any(|w| w[1] > w[0]);
            let down = s.windows(2).any(|w| w[1] < w[0]);
            up && down
        };
        let shifted_swings = series
            .iter()
            .filter(|((shard, ..), _)| shards.contains(&shard.as_str()))
            .filter(|entry| swings(entry))
            .count();
        let swung: Vec<String> = series
            .iter()
            .filter(|((shard, ..), _)| !shards.contains(&shard.as_str()))
            .filter(|entry| swings(entry))
            .map(|((shard, p, r), s)| format!("{shard} {p}/{r} {s:?}"))
            .collect();
        let changed = series.values().filter(|s| s.len() > 1).count();
        m.insert("clusters_shifted".into(), shifted.len() as f64);
        m.insert("slice_needed".into(), needed as f64);
        m.insert("slice_moved".into(), grew as f64);
        m.insert("slices_changed".into(), changed as f64);
        m.insert("slice_net_to_shifted".into(), net as f64);
        m.insert("shifted_slice_swings".into(), shifted_swings as f64);
        let mut checks = Vec::new();
        match &met {
            Ok(took) => {
                m.insert("shift_to_met_ms".into(), ms(*took));
                checks.push(Check::new(
                    "a demand shift is met by slices following demand",
                    true,
                    format!(
                        "{needed} machines beyond the shifted shards' slices; demand met {:.0} ms \
                         after the shift, {grew} machines' worth of slice moved, {changed} \
                         slices changed",
                        ms(*took)
                    ),
                ));
            }
            Err(short) => checks.push(Check::new(
                "a demand shift is met by slices following demand",
                false,
                format!(
                    "not met {:.0} s after the shift ({grew} of {needed} moved): {short}",
                    limit.as_secs_f64()
                ),
            )),
        }
        checks.push(Check::new(
            "slices move no more than the demand shift needs",
            net <= needed as i64 && grew_elsewhere.is_empty(),
            if grew_elsewhere.is_empty() {
                format!(
                    "the shifted shards' slices grew by {net} net for {needed} needed ({grew} moved in all), no other shard's grew"
                )
            } else {
                format!(
                    "{net} net to the shifted shards for {needed} needed; slices grew at shards not shifted: {}",
                    grew_elsewhere.join("; ")
                )
            },
        ));
        checks.push(Check::new(
            "no slice swings back and forth",
            swung.is_empty(),
            if swung.is_empty() {
                format!(
                    "{changed} slices changed; none rose and fell at a shard whose demand held still ({shifted_swings} at shifted shards, which gave spare room before their own shift reached them)"
                )
            } else {
                format!(
                    "{} slices rose and fell at shards whose demand held still: {}",
                    swung.len(),
                    swung.join("; ")
                )
            },
        ));
        // The demand goes back; the slices stay where demand took them.
        {
            let mut model = self.shared.model.lock();
            for (n, demand) in &original {
                model.clusters[*n].demand = *demand;
            }
        }
        let back = submit_demand(&self.shared, &self.shard_clients, &shifted).await;
        self.shared.event(format!(
            "demand shift over: {back} clusters back to their demand"
        ));
        drop(hold);
        Ok(checks)
    }

    /// Every slice of every quota.
    async fn slices(&self) -> anyhow::Result<Slices> {
        let listing = list_fleet(&self.client).await?;
        Ok(listing
            .quotas
            .iter()
            .flat_map(|q| {
                q.slices.iter().map(|s| {
                    (
                        (s.shard.clone(), q.provider.clone(), q.region.clone()),
                        s.amount,
                    )
                })
            })
            .collect())
    }
}
