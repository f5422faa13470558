//! Grants over the wire (ADR 0016): every domain and cluster a shard's watch gives it carries
//! the revision it was granted at, every slice the grant of its quota's slice table; a holder hears of a new
//! table even when its own slice stayed; and the grants survive a snapshot and a restart of
//! every replica.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use ballast_testkit::{FAST_FLAGS, TestCluster};
use common::{cmd, coord_binary, register};

/// Collects the updates of one watch until `done` says the accumulated state is complete.
struct Watcher {
    stream: tonic::Streaming<pb::AssignmentUpdate>,
    domains: HashMap<String, u64>,
    clusters: HashMap<String, u64>,
    slices: HashMap<(String, String), (u64, u64)>,
    revision: u64,
}

impl Watcher {
    async fn open(cluster: &TestCluster, replica: u64, shard: &str) -> Watcher {
        let stream = pb::assignments_client::AssignmentsClient::new(cluster.channel(replica))
            .watch(pb::WatchAssignmentsRequest {
                shard_id: shard.into(),
                from_revision: 0,
                restore_epoch: 0,
            })
            .await
            .expect("watch")
            .into_inner();
        Watcher {
            stream,
            domains: HashMap::new(),
            clusters: HashMap::new(),
            slices: HashMap::new(),
            revision: 0,
        }
    }

    /// Applies updates until the watch has reached `revision`.
    async fn reach(&mut self, revision: u64) {
        while self.revision < revision {
            let update = tokio::time::timeout(Duration::from_secs(20), self.stream.message())
                .await
                .unwrap_or_else(|_| panic!("no update reaching revision {revision} within 20 s"))
                .expect("watch stream")
                .expect("watch stream open");
            if update.full {
                self.domains.clear();
                self.clusters.clear();
                self.slices.clear();
            }
            for domain in &update.domains_removed {
                self.domains.remove(domain);
            }
            for domain in &update.domains_added {
                let granted = *update
                    .domain_grants
                    .get(domain)
                    .unwrap_or_else(|| panic!("domain {domain} added without a grant: {update:?}"));
                self.domains.insert(domain.clone(), granted);
            }
            for cluster in &update.clusters_removed {
                self.clusters.remove(cluster);
            }
            for cluster in &update.clusters_added {
                let granted = *update.cluster_grants.get(cluster).unwrap_or_else(|| {
                    panic!("cluster {cluster} added without a grant: {update:?}")
                });
                self.clusters.insert(cluster.clone(), granted);
            }
            for slice in &update.slices {
                let key = (slice.provider.clone(), slice.region.clone());
                if slice.amount == 0 {
                    self.slices.remove(&key);
                } else {
                    self.slices.insert(key, (slice.amount, slice.granted));
                }
            }
            self.revision = update.revision;
        }
    }
}

async fn write(cluster: &TestCluster, command: Wire) -> u64 {
    cluster
        .client()
        .write(cmd(command))
        .await
        .expect("write")
        .header
        .expect("header")
        .revision
}

fn assign(domain: &str, shard: &str) -> Wire {
    Wire::AssignDomains(pb::AssignDomains {
        assignments: vec![pb::DomainAssignment {
            domain: domain.into(),
            shard: shard.into(),
        }],
        allow_move: true,
    })
}

fn slices(pairs: &[(&str, u64)]) -> Vec<pb::QuotaSlice> {
    pairs
        .iter()
        .map(|(shard, amount)| pb::QuotaSlice {
            shard: shard.to_string(),
            amount: *amount,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_carry_domain_cluster_and_slice_table_grants_across_snapshots_and_restarts() {
    let mut cluster = TestCluster::start(coord_binary(), 3, FAST_FLAGS).await;
    for shard in ["s1", "s2"] {
        cluster
            .client()
            .write(register(shard, "az-a"))
            .await
            .expect("register");
    }
    write(
        &cluster,
        Wire::SetProvider(pb::SetProvider {
            name: "p".into(),
            endpoint: "grpc://127.0.0.1:1".into(),
            region: "r".into(),
            capacity_types: vec![],
        }),
    )
    .await;
    let kept = write(&cluster, assign("z=kept", "s1")).await;
    let moving = write(&cluster, assign("z=moving", "s1")).await;
    let table = write(
        &cluster,
        Wire::SetQuota(pb::SetQuota {
            provider: "p".into(),
            region: "r".into(),
            total: 100,
            slices: slices(&[("s1", 10), ("s2", 10)]),
        }),
    )
    .await;
    let quota = ("p".to_string(), "r".to_string());
    let bind = |cluster: &str, shard: &str| {
        Wire::BindCluster(pb::BindCluster {
            cluster: cluster.into(),
            shard: shard.into(),
        })
    };
    let staying = write(&cluster, bind("c-staying", "s1")).await;
    write(&cluster, bind("c-moving", "s1")).await;

    let mut s1 = Watcher::open(&cluster, 1, "s1").await;
    s1.reach(staying).await;
    assert_eq!(
        s1.domains,
        HashMap::from([("z=kept".into(), kept), ("z=moving".into(), moving)])
    );
    assert_eq!(s1.slices[&quota], (10, table));

    // The domain moves: s1 loses it, s2 gets it with the move's revision as its grant.
    let moved = write(&cluster, assign("z=moving", "s2")).await;
    // So does a cluster.
    let rebound = write(
        &cluster,
        Wire::MoveCluster(pb::MoveCluster {
            cluster: "c-moving".into(),
            shard: "s2".into(),
        }),
    )
    .await;
    let mut s2 = Watcher::open(&cluster, 2, "s2").await;
    s2.reach(rebound).await;
    assert_eq!(s2.domains, HashMap::from([("z=moving".into(), moved)]));
    assert_eq!(s2.clusters["c-moving"], rebound);
    // s2's slice grows; s1 keeps 10 but must hear of the new table.
    let grown = write(
        &cluster,
        Wire::SetQuotaSlices(pb::SetQuotaSlices {
            provider: "p".into(),
            region: "r".into(),
            slices: slices(&[("s2", 30)]),
        }),
    )
    .await;
    s1.reach(grown).await;
    s2.reach(grown).await;
    assert_eq!(s1.domains, HashMap::from([("z=kept".into(), kept)]));
    assert_eq!(
        s1.clusters,
        HashMap::from([("c-staying".into(), staying)]),
        "the moved cluster is gone, the other keeps its grant"
    );
    assert_eq!(s1.slices[&quota], (10, grown), "same slice, new table");
    assert_eq!(s2.slices[&quota], (30, grown));

    // A snapshot on every replica, then every replica restarted: the grants are the same.
    for id in 1..=3u64 {
        cluster
            .client_of(id)
            .cluster(|mut c, req| async move { c.snapshot(req.wrap(pb::SnapshotRequest {})).await })
            .await
            .expect("snapshot");
    }
    for id in 1..=3u64 {
        cluster.kill(id);
    }
    for id in 1..=3u64 {
        cluster.restart(id);
    }
    for id in 1..=3u64 {
        cluster.wait_for_revision(id, grown).await;
        let mut again = Watcher::open(&cluster, id, "s1").await;
        again.reach(grown).await;
        assert_eq!(again.domains, s1.domains, "replica {id} after the restart");
        assert_eq!(again.slices, s1.slices, "replica {id} after the restart");
        assert_eq!(
            again.clusters, s1.clusters,
            "replica {id} after the restart"
        );
    }
}
