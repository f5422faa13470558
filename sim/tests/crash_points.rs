//! Crash consistency at named points (`BALLAST_FAILPOINTS`, the process aborts there like a
//! SIGKILL): while a snapshot is written, right after the log behind it is purged, in a DR
//! export between the data and the manifest, and halfway through rewriting a data dir for
//! `--force-new-cluster`; and journal fsyncs that start failing. Each time the replica either
//! restarts cleanly and converges with the others — nothing acknowledged lost — or refuses to
//! start with a clear reason.

use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::pb::cluster_client::ClusterClient;
use ballast_testkit::fleet::{FleetShape, load_fleet};
use ballast_testkit::{ClusterOptions, TestCluster, current_revision, wait_for};

async fn cluster(extra: &[&str]) -> TestCluster {
    let options = ClusterOptions::sim(env!("CARGO_BIN_EXE_ballast-sim")).with_extra(extra);
    TestCluster::start_with(options, 3).await
}

async fn put(cluster: &TestCluster, key: &str, value: &str) {
    let leader = cluster.leader().await;
    ballast_protocol::etcdserverpb::kv_client::KvClient::new(cluster.channel(leader))
        .put(ballast_protocol::etcdserverpb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("put");
}

/// Every replica holds the same state at the cluster's current revision.
async fn converged(cluster: &TestCluster) -> String {
    let revision = current_revision(&cluster.client()).await;
    cluster.wait_until_converged(revision).await;
    let mut states = Vec::new();
    for replica in &cluster.replicas {
        states.push(
            cluster
                .state_of(replica.id, "k/")
                .await
                .unwrap_or_else(|e| panic!("replica {} state: {e}", replica.id)),
        );
    }
    assert!(
        states.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: {states:#?}"
    );
    states.remove(0)
}

/// Restarts `id` armed with `point`, makes it reach the point with `reach`, and checks it
/// aborted there.
async fn crash_at<F, Fut>(cluster: &mut TestCluster, id: u64, point: &str, reach: F)
where
    F: FnOnce(tonic::transport::Channel) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    cluster.kill(id);
    cluster.restart_with_env(id, &[], &[("BALLAST_FAILPOINTS", point)]);
    wait_for(
        &format!("replica {id} back up"),
        Duration::from_secs(20),
        || async { cluster.status(id).await.filter(|s| s.applied_index > 0) },
    )
    .await;
    reach(cluster.channel(id)).await;
    let ended = cluster.wait_for_exit(id, Duration::from_secs(20)).await;
    let ended = ended.unwrap_or_else(|| panic!("replica {id} never reached {point}"));
    assert!(!ended.success(), "{ended:?}");
    assert!(
        cluster
            .logs()
            .contains(&format!("failpoint {point}: aborting")),
        "the abort came from {point}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_while_snapshotting_and_purging_recover() {
    // Keep 5 entries behind a snapshot, so every snapshot also purges the log.
    let mut cluster = cluster(&["--logs-to-keep", "5"]).await;
    load_fleet(
        &cluster.client(),
        FleetShape {
            shards: 6,
            domains: 300,
            bindings: 30,
            quotas: 2,
        },
    )
    .await
    .expect("fleet");
    let mut written = 0;
    for point in ["snapshot-before-save", "snapshot-after-save", "log-purge"] {
        for _ in 0..20 {
            written += 1;
            put(&cluster, &format!("k/{written:04}"), point).await;
        }
        // Followers and the leader alike: the leader's crash also costs an election.
        let leader = cluster.leader().await;
        let victim = if point == "log-purge" {
            leader
        } else {
            cluster.follower_of(leader)
        };
        crash_at(&mut cluster, victim, point, |channel| async move {
            // The snapshot call dies with the process.
            let _ = ClusterClient::new(channel)
                .snapshot(pb::SnapshotRequest {})
                .await;
        })
        .await;
        // The others keep taking writes while it is down.
        for _ in 0..5 {
            written += 1;
            put(&cluster, &format!("k/{written:04}"), "while down").await;
        }
        cluster.restart(victim);
        let state = converged(&cluster).await;
        assert!(state.contains(&format!("k/{written:04}")), "{state}");
        // The restarted replica snapshots normally again.
        ClusterClient::new(cluster.channel(victim))
            .snapshot(pb::SnapshotRequest {})
            .await
            .expect("a snapshot after the crash");
    }
    let state = converged(&cluster).await;
    for n in 1..=written {
        assert!(state.contains(&format!("k/{n:04}")), "k/{n:04} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dr_export_cut_short_leaves_no_archive_that_looks_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archives = dir.path().join("archives");
    std::fs::create_dir_all(&archives).expect("archives dir");
    let destination = archives.display().to_string();
    let mut cluster = cluster(&[]).await;
    load_fleet(
        &cluster.client(),
        FleetShape {
            shards: 6,
            domains: 200,
            bindings: 20,
            quotas: 2,
        },
    )
    .await
    .expect("fleet");
    let leader = cluster.leader().await;
    // Make the armed replica the leader: only the leader exports.
    cluster.kill(leader);
    cluster.restart_with_env(
        leader,
        &[],
        &[("BALLAST_FAILPOINTS", "dr-export-before-manifest")],
    );
    cluster.wait_for_voters(3).await;
    wait_for(
        "the armed replica leads",
        Duration::from_secs(30),
        || async {
            let current = cluster.leader().await;
            if current == leader {
                return Some(());
            }
            let _ = ClusterClient::new(cluster.channel(current))
                .transfer_leader(pb::TransferLeaderRequest { target: leader })
                .await;
            None
        },
    )
    .await;
    let refused = ClusterClient::new(cluster.channel(leader))
        .export(pb::ExportRequest {
            destination: destination.clone(),
        })
        .await;
    assert!(refused.is_err(), "the export died with its replica");
    assert!(
        cluster
            .wait_for_exit(leader, Duration::from_secs(20))
            .await
            .is_some_and(|s| !s.success())
    );
    // The data object is there, the manifest is not: nothing lists it as an archive.
    let where_to = ballast_dr::Destination::parse(&destination).expect("destination");
    assert!(
        ballast_dr::list(&where_to)
            .await
            .expect("listing")
            .is_empty()
    );
    cluster.restart(leader);
    cluster.leader().await;
    let exported = cluster
        .client()
        .cluster(|mut c, req| {
            let destination = destination.clone();
            async move { c.export(req.wrap(pb::ExportRequest { destination })).await }
        })
        .await
        .expect("a later export succeeds");
    let listed = ballast_dr::list(&where_to).await.expect("listing");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let manifest = listed[0].manifest.as_ref().expect("complete manifest");
    assert_eq!(
        manifest.revision, exported.revision,
        "the complete archive is the later export"
    );
    converged(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_force_new_cluster_refuses_to_start() {
    let mut cluster = cluster(&[]).await;
    put(&cluster, "k/1", "v").await;
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    cluster.restart_with_env(
        1,
        &["--force-new-cluster"],
        &[("BALLAST_FAILPOINTS", "restore-rewrite")],
    );
    let ended = cluster.wait_for_exit(1, Duration::from_secs(20)).await;
    assert!(ended.is_some_and(|s| !s.success()));
    assert!(
        cluster
            .logs()
            .contains("failpoint restore-rewrite: aborting")
    );
    // Half rewritten: it must not start, with or without the flag, and must say why.
    for flags in [&[][..], &["--force-new-cluster"][..]] {
        cluster.restart_with(1, flags);
        let ended = cluster.wait_for_exit(1, Duration::from_secs(20)).await;
        assert!(
            ended.is_some_and(|s| !s.success()),
            "replica 1 started on a half-rewritten data dir ({flags:?})"
        );
    }
    let logs = cluster.logs();
    assert!(
        logs.contains("holds an interrupted --force-new-cluster"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_stops_the_replica_and_loses_nothing() {
    let mut cluster = cluster(&[]).await;
    let mut acknowledged = Vec::new();
    for round in 0..2 {
        // A follower first, then the leader: the replica's fsyncs start failing after it is
        // back up (the 40th from its start on), while writes keep coming.
        let leader = cluster.leader().await;
        let victim = if round == 0 {
            cluster.follower_of(leader)
        } else {
            leader
        };
        cluster.kill(victim);
        cluster.restart_with_env(victim, &[], &[("BALLAST_FAILPOINTS", "fsync-error@40")]);
        let mut ended = None;
        for n in 0..400 {
            let key = format!("k/{round}/{n:03}");
            let current = cluster.leader().await;
            let put =
                ballast_protocol::etcdserverpb::kv_client::KvClient::new(cluster.channel(current))
                    .put(ballast_protocol::etcdserverpb::PutRequest {
                        key: key.clone().into_bytes(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    })
                    .await;
            if put.is_ok() {
                acknowledged.push(key);
            }
            ended = cluster
                .wait_for_exit(victim, Duration::from_millis(1))
                .await;
            if ended.is_some() {
                break;
            }
        }
        // It stopped on the failed fsync instead of acknowledging what is not durable.
        let ended = match ended {
            Some(status) => status,
            None => cluster
                .wait_for_exit(victim, Duration::from_secs(20))
                .await
                .expect("the replica kept running with failing fsyncs"),
        };
        assert!(!ended.success());
        let logs = cluster.logs();
        assert!(logs.contains("fsync failed (injected"), "{logs}");
        assert!(logs.contains("the Raft core stopped"), "{logs}");
        cluster.restart(victim);
        let state = converged(&cluster).await;
        for key in &acknowledged {
            assert!(state.contains(key.as_str()), "acknowledged {key} lost");
        }
    }
    assert!(
        acknowledged.len() > 20,
        "{} puts acknowledged",
        acknowledged.len()
    );
}
