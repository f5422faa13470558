//! Each replica's HTTP port: Prometheus metrics that agree with the cluster's state, liveness
//! and readiness probes with the meanings operators expect, and the status page — checked over
//! HTTP and rendered in headless Chromium (Debian package, installed by `.ci/chromium`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ballast_protocol::pb;
use ballast_testkit::fleet::{FleetShape, load_fleet};
use ballast_testkit::{ClusterOptions, TestCluster, http_get, metric, wait_for};

async fn cluster() -> TestCluster {
    let cluster =
        TestCluster::start_with(ClusterOptions::sim(env!("CARGO_BIN_EXE_ballast-sim")), 3).await;
    load_fleet(
        &cluster.client(),
        FleetShape {
            shards: 6,
            domains: 120,
            bindings: 30,
            quotas: 2,
        },
    )
    .await
    .expect("loading a fleet");
    cluster
}

fn get(address: &str, path: &str) -> (u16, String) {
    http_get(address, path).unwrap_or_else(|| panic!("GET {path} on {address} got no answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_probes_and_status_page_over_http() {
    let mut cluster = cluster().await;
    let leader = cluster.leader().await;
    let revision = cluster
        .status(leader)
        .await
        .and_then(|s| s.header)
        .expect("status")
        .revision;
    cluster.wait_until_converged(revision).await;

    let mut terms = Vec::new();
    let mut leaders = 0;
    for replica in &cluster.replicas {
        let http = &replica.http_address;
        assert_eq!(get(http, "/healthz"), (200, "ok\n".to_string()));
        let (code, body) = wait_for("readiness", Duration::from_secs(20), || async {
            http_get(http, "/readyz").filter(|(code, _)| *code == 200)
        })
        .await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("replica {leader} leads")), "{body}");

        let (code, metrics) = get(http, "/metrics");
        assert_eq!(code, 200);
        let is_leader = metric(&metrics, "ballast_raft_state{state=\"leader\"}").expect("state");
        leaders += is_leader as u32;
        terms.push(metric(&metrics, "ballast_raft_term").expect("term"));
        assert_eq!(
            metric(&metrics, "ballast_fleet_revision"),
            Some(revision as f64),
            "replica {} reports the converged revision",
            replica.id
        );
        assert_eq!(
            metric(&metrics, "ballast_shards{status=\"active\"}"),
            Some(6.0)
        );
        assert_eq!(metric(&metrics, "ballast_domains"), Some(120.0));
        assert_eq!(metric(&metrics, "ballast_raft_members"), Some(3.0));
        assert_eq!(metric(&metrics, "ballast_placement_healthy"), Some(1.0));
        assert!(metric(&metrics, "ballast_raft_applied_index").unwrap_or(0.0) > 0.0);
        assert!(metric(&metrics, "ballast_apply_duration_seconds_count").unwrap_or(0.0) > 0.0);
        assert!(metric(&metrics, "ballast_raft_commit_index").unwrap_or(0.0) > 0.0);
        if replica.id == leader {
            assert_eq!(is_leader, 1.0);
            // The leader took the writes: commit latency and per-method RPC figures.
            assert!(
                metric(&metrics, "ballast_propose_duration_seconds_count").unwrap_or(0.0) > 0.0
            );
            assert!(
                metric(
                    &metrics,
                    "ballast_rpc_duration_seconds_count{method=\"ballast.v1.Fleet/Write\"}"
                )
                .unwrap_or(0.0)
                    > 0.0,
                "{metrics}"
            );
            for peer in cluster.replicas.iter().filter(|r| r.id != leader) {
                let contact = metric(
                    &metrics,
                    &format!(
                        "ballast_raft_peer_last_contact_seconds{{peer=\"{}\"}}",
                        peer.id
                    ),
                )
                .expect("last contact per peer");
                assert!(contact < 10.0);
                assert!(
                    metric(
                        &metrics,
                        &format!("ballast_raft_peer_lag_entries{{peer=\"{}\"}}", peer.id)
                    )
                    .is_some()
                );
            }
        }
        let (code, page) = get(http, "/");
        assert_eq!(code, 200);
        assert_eq!(page.matches("<tr class=\"member").count(), 3, "{page}");
        assert_eq!(page.matches("(leader)").count(), 1);
        assert!(page.contains("3 voters in 3 distinct AZs"), "{page}");
        assert!(page.contains("Shards (6)"));
    }
    assert_eq!(leaders, 1, "exactly one replica reports itself leader");
    assert!(
        terms.windows(2).all(|w| w[0] == w[1]),
        "one term: {terms:?}"
    );

    // Errors are counted by method and code: a write for an unknown shard.
    let refused = cluster
        .client()
        .write(pb::Command {
            command: Some(pb::command::Command::AssignDomains(pb::AssignDomains {
                assignments: vec![pb::DomainAssignment {
                    domain: "d-x".into(),
                    shard: "no-such-shard".into(),
                }],
                allow_move: false,
            })),
        })
        .await;
    assert!(refused.is_err());
    let (_, metrics) = get(&cluster.replica(leader).http_address, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ballast_rpc_errors_total{method=\"ballast.v1.Fleet/Write\"")),
        "{metrics}"
    );

    // Snapshot time, open watch streams and rebalancer moves.
    let leader_http = cluster.replica(leader).http_address.clone();
    cluster
        .client()
        .cluster(|mut c, req| async move { c.snapshot(req.wrap(pb::SnapshotRequest {})).await })
        .await
        .expect("snapshot");
    let (_, metrics) = get(&leader_http, "/metrics");
    assert!(
        metric(&metrics, "ballast_snapshot_duration_seconds_count").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    let mut watch = pb::assignments_client::AssignmentsClient::new(cluster.channel(leader))
        .watch(pb::WatchAssignmentsRequest {
            shard_id: "shard-000".into(),
            from_revision: 0,
            restore_epoch: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    watch.message().await.expect("first update");
    let (_, metrics) = get(&leader_http, "/metrics");
    assert_eq!(
        metric(&metrics, "ballast_watch_streams{kind=\"assignments\"}"),
        Some(1.0)
    );
    drop(watch);
    cluster
        .client()
        .write(pb::Command {
            command: Some(pb::command::Command::DrainShard(pb::DrainShard {
                id: "shard-001".into(),
            })),
        })
        .await
        .expect("draining a shard");
    wait_for(
        "rebalancer moves counted",
        Duration::from_secs(20),
        || async {
            let (_, metrics) = http_get(&leader_http, "/metrics")?;
            (metric(&metrics, "ballast_rebalance_moves_total{kind=\"domain\"}").unwrap_or(0.0)
                > 0.0)
                .then_some(())
        },
    )
    .await;
    wait_for(
        "the watch stream closed",
        Duration::from_secs(10),
        || async {
            let (_, metrics) = http_get(&leader_http, "/metrics")?;
            (metric(&metrics, "ballast_watch_streams{kind=\"assignments\"}") == Some(0.0))
                .then_some(())
        },
    )
    .await;

    // Two replicas die: the survivor stays alive but is no longer ready.
    let survivor = cluster.follower_of(leader);
    for id in [1, 2, 3].into_iter().filter(|id| *id != survivor) {
        cluster.kill(id);
    }
    let http = cluster.replica(survivor).http_address.clone();
    let (code, reason) = wait_for(
        "the survivor to report not ready",
        Duration::from_secs(30),
        || async { http_get(&http, "/readyz").filter(|(code, _)| *code == 503) },
    )
    .await;
    assert_eq!(code, 503);
    assert!(reason.contains("knows no leader"), "{reason}");
    assert_eq!(get(&http, "/healthz").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_headless_chromium() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/chromium");
    let installed = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("running .ci/chromium");
    assert!(installed.status.success(), "installing Chromium failed");
    let chromium = String::from_utf8_lossy(&installed.stdout)
        .trim()
        .to_string();

    let cluster = cluster().await;
    let leader = cluster.leader().await;
    let profile = tempfile::tempdir().expect("profile dir");
    for replica in &cluster.replicas {
        let url = format!("http://{}/", replica.http_address);
        let out = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=2000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(&url)
            .output()
            .expect("running chromium");
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && dom.contains("</html>"),
            "chromium could not render {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The page's script ran in the browser and counted the member rows.
        assert!(dom.contains("data-members=\"3\""), "{dom}");
        assert_eq!(dom.matches("class=\"member").count(), 3);
        assert!(
            dom.contains(&format!(
                "leader <span id=\"leader\" class=\"leader\">replica {leader} at"
            )),
            "{dom}"
        );
        assert!(
            dom.contains(" s ago"),
            "relative time filled in by the script: {dom}"
        );
    }
}
