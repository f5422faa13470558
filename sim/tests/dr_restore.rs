//! Restore from an archive with shards attached: the cluster is exported, changed, lost
//! (every replica SIGKILLed), restored into a fresh single-voter data dir, and rejoined. Each
//! shard sees the new restore epoch, drops the grants the archive does not hold (even though
//! its cached revision was newer than the archive's) and converges to the restored state.

use std::path::Path;
use std::time::Duration;

use ballast_coordinator::log::member::ReplicaNode;
use ballast_coordinator::node::RESTORE_BUMP;
use ballast_coordinator::restore::{Archived, restore_into};
use ballast_dr::{ArchiveUrl, NoProgress};
use ballast_protocol::pb;
use ballast_testkit::{
    Allocation, ClusterOptions, ProviderProcess, ShardProcess, TestCluster, allocate,
    assign_domain, wait_for,
};

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ballast-sim"))
}

async fn cluster() -> TestCluster {
    TestCluster::start_with(ClusterOptions::sim(program()), 3).await
}

fn domains(status: &pb::ShardStatusResponse) -> Vec<String> {
    let mut d = status.domains.clone();
    d.sort();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_converge_to_a_restored_archive() {
    let archives = tempfile::tempdir().expect("archive dir");
    let mut cluster = cluster().await;
    let shard = |id: &str, az: &str| -> ShardProcess {
        cluster.spawn_sim_shard(program(), id, az, &["--lease-ms", "3000"])
    };
    let s1 = shard("s1", "az-a");
    let s2 = shard("s2", "az-b");
    let client = cluster.client();
    cluster.wait_for_shards(2).await;
    assign_domain(&client, "zone=az-a/rack=r1", "s1", false).await;
    let before_export = assign_domain(&client, "zone=az-b/rack=r2", "s2", false).await;
    s2.wait_until("r2", |st| st.revision >= before_export).await;

    // Export (through any replica: it runs on the leader).
    let exported = client
        .cluster(|mut c, req| {
            let destination = archives.path().display().to_string();
            async move { c.export(req.wrap(pb::ExportRequest { destination })).await }
        })
        .await
        .expect("export");
    assert!(exported.revision >= before_export);

    // Changes after the export, which the restore will not know about.
    assign_domain(&client, "zone=az-a/rack=r3", "s1", false).await;
    let last = assign_domain(&client, "zone=az-b/rack=r2", "s1", true).await;
    let ahead = s1
        .wait_until("post-export grants", |st| {
            st.revision >= last && domains(st).len() == 3
        })
        .await;
    assert!(ahead.revision > exported.revision);
    s2.wait_until("r2 moved away", |st| st.domains.is_empty())
        .await;

    // The whole cluster is lost.
    for id in 1..=3 {
        cluster.kill(id);
    }

    // Restore the archive into replica 1's data dir (as `ballastctl dr restore` does).
    let archive = ArchiveUrl::parse(&exported.archive_url).expect("archive url");
    let verified = ballast_dr::verify(&archive, None, true, &NoProgress)
        .await
        .expect("verify");
    let manifest = verified.manifest;
    let (address, az, data_dir) = {
        let r = cluster.replica(1);
        (r.address.clone(), r.az.clone(), r.data_dir.clone())
    };
    std::fs::remove_dir_all(&data_dir).expect("dropping the lost data dir");
    let restored = restore_into(
        &data_dir,
        1,
        ReplicaNode { address, az },
        &Archived {
            cluster_id: &manifest.cluster_id,
            state: verified.data.as_deref().expect("plain archive"),
            term: manifest.term,
            index: manifest.log_index,
        },
        RESTORE_BUMP,
    )
    .expect("restore");
    assert_eq!(restored.restore_epoch, 1);
    assert_eq!(restored.revision, manifest.revision + RESTORE_BUMP);
    cluster.restart(1);
    cluster.wait_for_voters(1).await;
    let status = cluster.status(1).await.expect("restored replica answers");
    let header = status.header.expect("header");
    assert_eq!(header.cluster_id, manifest.cluster_id);
    assert_eq!(header.restore_epoch, 1);
    assert!(header.revision >= restored.revision);

    // Shards notice the restore and converge to what the archive holds.
    s1.wait_until("only its archived grant", |st| {
        domains(st) == vec!["zone=az-a/rack=r1".to_string()] && st.revision >= restored.revision
    })
    .await;
    s2.wait_until("its archived grant back", |st| {
        domains(st) == vec!["zone=az-b/rack=r2".to_string()] && st.revision >= restored.revision
    })
    .await;

    // The other replicas rejoin with fresh data dirs; the restored cluster takes writes.
    cluster.rejoin_fresh(2).await;
    cluster.rejoin_fresh(3).await;
    let after = assign_domain(&client, "zone=az-a/rack=r4", "s1", false).await;
    assert!(after > restored.revision);
    s1.wait_until("a grant after the restore", |st| {
        st.revision >= after && domains(st).len() == 2
    })
    .await;
    let converged = wait_for("replicas to converge", Duration::from_secs(30), || async {
        let mut revisions = Vec::new();
        for id in 1..=3 {
            revisions.push(cluster.status(id).await?.header?.revision);
        }
        revisions.iter().all(|r| *r >= after).then_some(revisions)
    })
    .await;
    assert_eq!(converged.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_recovers_from_quorum_loss() {
    let mut cluster = cluster().await;
    let s1 = cluster.spawn_sim_shard(program(), "s1", "az-a", &["--lease-ms", "3000"]);
    let client = cluster.client();
    cluster.wait_for_shards(1).await;
    // Sent together, so the leader groups them into shared log entries: the replay must unpack
    // groups and timed requests as the replicas do.
    let writes = (0..20).map(|rack| {
        let client = &client;
        async move { assign_domain(client, &format!("zone=az-a/rack=r{rack}"), "s1", false).await }
    });
    let last = futures::future::join_all(writes)
        .await
        .into_iter()
        .max()
        .unwrap_or(0);
    s1.wait_until("its 20 domains", |st| st.revision >= last)
        .await;
    // Replica 1 has every acknowledged write (it may lead or follow); then quorum is lost.
    cluster.wait_for_revision(1, last).await;
    for id in 1..=3 {
        cluster.kill(id);
    }

    cluster.restart_with(1, &["--force-new-cluster"]);
    cluster.wait_for_voters(1).await;
    let status = cluster.status(1).await.expect("replica 1 answers");
    let header = status.header.expect("header");
    assert_eq!(header.restore_epoch, 1);
    assert!(
        header.revision > last,
        "revision moved past what clients saw"
    );
    assert_eq!(status.domain_count, 20, "every acknowledged write survived");
    assert_eq!(status.members.len(), 1);

    // The shard follows into the new epoch and keeps its domains.
    let followed = s1
        .wait_until("the new epoch", |st| st.revision >= header.revision)
        .await;
    assert_eq!(followed.domains.len(), 20);

    // The others rejoin fresh and the cluster takes writes again.
    cluster.rejoin_fresh(2).await;
    cluster.rejoin_fresh(3).await;
    let after = assign_domain(&client, "zone=az-a/rack=r99", "s1", false).await;
    assert!(after > header.revision);
    s1.wait_until("a grant after the recovery", |st| st.domains.len() == 21)
        .await;
}

/// A cluster a shard held all along through a new restore epoch keeps being served while the
/// shard takes it over again at its provider: the takeover only tells the provider the new
/// grant, and the cluster's machines are in the shard's ledger already. Here the provider
/// hangs (SIGSTOP) through the epoch change, so the takeover cannot finish; the cluster's
/// demand grows by two and the shard's two idle machines serve it. Before, the cluster's
/// demand waited for the takeover (a full-scale run on a loaded box left a shard with 1,345
/// idle machines three short for over 30 s after a restore).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_held_through_a_new_epoch_is_served_while_its_takeover_waits() {
    let mut cluster = cluster().await;
    let provider = ProviderProcess::start(
        &format!("'{}' provider", program().display()),
        "--name sim --region local",
    );
    let grpc = format!("grpc://{}", provider.endpoint);
    let s1 = cluster.spawn_sim_shard(
        program(),
        "s1",
        "az-a",
        &[
            "--provider",
            &grpc,
            "--sim-latency-ms",
            "0",
            "--lease-ms",
            "3000",
        ],
    );
    cluster.wait_for_shards(1).await;
    allocate(
        &cluster.client(),
        Allocation {
            provider: "sim",
            endpoint: &grpc,
            region: "local",
            total: 10,
            slices: &[("s1", 10)],
            cluster: ("c1", "s1"),
            domain: ("zone=az-a/rack=r1", "s1"),
        },
    )
    .await;
    s1.wait_for_grants().await;
    let count = |st: &pb::ShardStatusResponse, state: &str| {
        st.machines_by_state.get(state).copied().unwrap_or(0)
    };
    s1.submit_small("c1", 3).await.expect("demand of 3");
    s1.wait_until("three machines at work", |st| {
        count(st, "assigned") == 3 && st.shortfall == 0 && st.takeovers.is_empty()
    })
    .await;
    s1.submit_small("c1", 1).await.expect("demand of 1");
    s1.wait_until("two machines idle", |st| {
        count(st, "assigned") == 1 && count(st, "idle") == 2
    })
    .await;

    provider.pause();
    for id in 1..=3 {
        cluster.kill(id);
    }
    cluster.restart_with(1, &["--force-new-cluster"]);
    cluster.wait_for_voters(1).await;
    s1.wait_until("the new epoch, c1 being taken over again", |st| {
        st.restore_epoch == 1 && st.takeovers.iter().any(|t| t == "cluster/c1")
    })
    .await;
    s1.submit_small("c1", 3).await.expect("demand of 3 again");
    let served = s1
        .wait_until("c1's demand served from the idle machines", |st| {
            count(st, "assigned") == 3 && st.shortfall == 0
        })
        .await;
    assert!(
        served.takeovers.iter().any(|t| t == "cluster/c1"),
        "served while the takeover waits for the hung provider: {:?}",
        served.takeovers
    );

    provider.resume();
    s1.wait_until("the takeover done once the provider answers", |st| {
        st.takeovers.is_empty() && st.shortfall == 0 && count(st, "assigned") == 3
    })
    .await;
}

/// A replica that has not caught up with the restore epoch a shard already follows (one
/// rejoining with a fresh data dir, say) must not list its older state to that shard: it waits
/// until it holds the shard's epoch, as it waits when it is behind the shard's revision. Before,
/// it sent a full listing of its empty state at epoch 0 at once: the shard ignored it (an
/// older epoch), but a watcher that trusted it saw every grant vanish and come back (the full
/// simulator's DR scenario saw 60 slices fall to 0 and return).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_shards_restore_epoch_waits_instead_of_listing_an_older_state() {
    let options = ClusterOptions {
        faults: true,
        ..ClusterOptions::sim(program())
    };
    let mut cluster = TestCluster::start_with(options, 3).await;
    let s1 = cluster.spawn_sim_shard(program(), "s1", "az-a", &["--lease-ms", "3000"]);
    let client = cluster.client();
    cluster.wait_for_shards(1).await;
    let last = assign_domain(&client, "zone=az-a/rack=r1", "s1", false).await;
    cluster.wait_for_revision(1, last).await;
    for id in 1..=3 {
        cluster.kill(id);
    }
    cluster.restart_with(1, &["--force-new-cluster"]);
    cluster.wait_for_voters(1).await;
    let header = cluster
        .status(1)
        .await
        .and_then(|s| s.header)
        .expect("replica 1 answers");
    assert_eq!(header.restore_epoch, 1);
    s1.wait_until("the new epoch", |st| {
        st.restore_epoch == 1 && st.revision >= header.revision
    })
    .await;

    // Replica 2 comes back empty; the leader sends it nothing yet, so it cannot catch up.
    let token = cluster.join_token().await;
    cluster.set_faults(1, &format!("block {}\n", cluster.replica(2).address));
    cluster.spawn_fresh_rejoiner(2, &token);
    let mut watch = wait_for(
        "the rejoining replica to serve watches",
        Duration::from_secs(10),
        || {
            let channel = cluster.channel(2);
            let from_revision = header.revision;
            async move {
                pb::assignments_client::AssignmentsClient::new(channel)
                    .watch(pb::WatchAssignmentsRequest {
                        shard_id: "s1".into(),
                        from_revision,
                        restore_epoch: 1,
                    })
                    .await
                    .ok()
                    .map(tonic::Response::into_inner)
            }
        },
    )
    .await;
    // Longer than the watch's one-second progress reports: an older state would be listed
    // at once, and its progress after a second.
    let held = tokio::time::timeout(Duration::from_millis(2500), watch.message()).await;
    if let Ok(update) = held {
        let update = update.expect("watch").expect("an open watch");
        panic!(
            "a replica at epoch {} revision {} answered a watch from epoch 1 (full listing: {})",
            update.restore_epoch, update.revision, update.full
        );
    }

    // Once it has caught up, the same watch carries on from the shard's place.
    cluster.set_faults(1, "");
    let update = tokio::time::timeout(Duration::from_secs(60), watch.message())
        .await
        .expect("the rejoined replica answers the watch within 60 s")
        .expect("watch")
        .expect("an open watch");
    assert_eq!(update.restore_epoch, 1, "{update:?}");
    assert!(update.revision >= header.revision, "{update:?}");
    if update.full {
        assert_eq!(update.domains_added, vec!["zone=az-a/rack=r1".to_string()]);
    }
}
