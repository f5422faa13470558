//! Evacuation over the wire: when a shard's lease lapses, its clusters move to live shards and
//! its slices follow them in proportion to what each cluster asked for, as the shard's last
//! heartbeat reported it (ADR 0014) — not in proportion to the number of clusters, which would
//! leave the cluster asking for most with a small share and the one asking for little with
//! quota it does not need.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::pb::assignments_client::AssignmentsClient;
use ballast_protocol::pb::command::Command as Wire;
use ballast_testkit::{FAST_FLAGS, TestCluster, fleet::list_fleet, wait_for};
use common::{cmd, coord_binary, register};

/// The lease the shards ask for in their heartbeats.
const LEASE_MS: u64 = 1_500;

/// One heartbeat of `shard` to whichever replica leads (the others refuse it).
async fn heartbeat(
    replicas: &[tonic::transport::Channel],
    shard: &str,
    demand: &HashMap<String, u64>,
) {
    for channel in replicas {
        let answer = AssignmentsClient::new(channel.clone())
            .heartbeat(pb::HeartbeatRequest {
                shard_id: shard.into(),
                address: "127.0.0.1:1".into(),
                az: "az-a".into(),
                lease_ttl_ms: LEASE_MS,
                epoch: 1,
                summary: Some(pb::ShardSummary {
                    cluster_demand: demand.clone(),
                    ..Default::default()
                }),
            })
            .await;
        if answer.is_ok() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_shards_slices_follow_its_clusters_demand() {
    let cluster = TestCluster::start(coord_binary(), 3, FAST_FLAGS).await;
    let client = cluster.client();
    for shard in ["a1", "a2", "a3"] {
        client
            .write(register(shard, "az-a"))
            .await
            .expect("register");
    }
    for command in [
        Wire::SetProvider(pb::SetProvider {
            name: "p".into(),
            endpoint: "grpc://127.0.0.1:1".into(),
            region: "r".into(),
            capacity_types: vec![],
        }),
        Wire::SetQuota(pb::SetQuota {
            provider: "p".into(),
            region: "r".into(),
            total: 1_000,
            slices: vec![pb::QuotaSlice {
                shard: "a1".into(),
                amount: 100,
            }],
        }),
        Wire::BindCluster(pb::BindCluster {
            cluster: "c-big".into(),
            shard: "a1".into(),
        }),
        Wire::BindCluster(pb::BindCluster {
            cluster: "c-small".into(),
            shard: "a1".into(),
        }),
    ] {
        client.write(cmd(command)).await.expect("seeding the fleet");
    }
    // a1 reports its clusters' demand and goes silent; a2 and a3 keep heartbeating.
    let asked = HashMap::from([("c-big".to_string(), 90), ("c-small".to_string(), 10)]);
    let replicas: Vec<_> = (1..=3).map(|id| cluster.channel(id)).collect();
    heartbeat(&replicas, "a1", &asked).await;
    let live = tokio::spawn(async move {
        loop {
            for shard in ["a2", "a3"] {
                heartbeat(&replicas, shard, &HashMap::new()).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let listing = wait_for(
        "a1's clusters and slice to move off it",
        Duration::from_secs(30),
        || async {
            let listing = list_fleet(&client).await.ok()?;
            let moved = listing.bindings.iter().all(|b| b.shard != "a1")
                && listing.quotas[0].slices.iter().all(|s| s.shard != "a1");
            moved.then_some(listing)
        },
    )
    .await;
    live.abort();
    let holder: BTreeMap<String, String> = listing
        .bindings
        .iter()
        .map(|b| (b.cluster.clone(), b.shard.clone()))
        .collect();
    let slices: BTreeMap<String, u64> = listing.quotas[0]
        .slices
        .iter()
        .map(|s| (s.shard.clone(), s.amount))
        .collect();
    assert_ne!(
        holder["c-big"], holder["c-small"],
        "the two clusters went to different shards ({holder:?}); the split is not tested"
    );
    assert_eq!(slices.values().sum::<u64>(), 100, "{slices:?}");
    assert_eq!(
        slices.get(&holder["c-big"]),
        Some(&90),
        "the cluster asking for 90 of 100 takes 90 of the slice: {slices:?}, {holder:?}"
    );
    assert_eq!(slices.get(&holder["c-small"]), Some(&10), "{slices:?}");
}
