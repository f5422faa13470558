//! Shard workers against a real 3-replica coordinator, all as separate processes: assignments
//! reach the owning shard and follow moves; with every coordinator replica SIGKILLed, shards
//! keep their assignments, survive their own SIGKILL and restart from their cache, and resume
//! their watch when the coordinator returns.

use std::path::Path;

use ballast_protocol::client::BallastClient;
use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use ballast_protocol::pb::shard_worker_client::ShardWorkerClient;
use ballast_testkit::{
    ClusterOptions, ShardProcess, TestCluster, assigned_machines, http_get, metric,
};

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ballast-sim"))
}

async fn cluster() -> TestCluster {
    TestCluster::start_with(ClusterOptions::sim(program()), 3).await
}

fn shard(cluster: &TestCluster, id: &str, az: &str) -> ShardProcess {
    cluster.spawn_sim_shard(program(), id, az, &["--lease-ms", "3000"])
}

fn cmd(inner: Wire) -> pb::Command {
    pb::Command {
        command: Some(inner),
    }
}

async fn assign(client: &BallastClient, domain: &str, shard: &str, allow_move: bool) -> u64 {
    ballast_testkit::assign_domain(client, domain, shard, allow_move).await
}

/// Replaces cluster c1's demand on `shard` with one row of `count` machines.
async fn submit(shard: &ShardProcess, count: u32) {
    let resources = pb::ResourceSpec {
        cpu_millis: 1000,
        memory_mib: 1024,
        gpus: 0,
    };
    shard
        .submit_demand("c1", count, resources)
        .await
        .expect("submitting demand");
}

/// Registers provider aws/us-east-1 with a quota of `amount` sliced entirely to `shard`, and
/// binds cluster c1 to it, in one batch.
async fn grant_quota(client: &BallastClient, shard: &str, amount: u64) {
    client
        .write(cmd(Wire::Batch(pb::Batch {
            commands: vec![
                cmd(Wire::SetProvider(pb::SetProvider {
                    name: "aws".into(),
                    endpoint: "https://ec2.example".into(),
                    region: "us-east-1".into(),
                    capacity_types: vec![],
                })),
                cmd(Wire::SetQuota(pb::SetQuota {
                    provider: "aws".into(),
                    region: "us-east-1".into(),
                    total: amount,
                    slices: vec![pb::QuotaSlice {
                        shard: shard.into(),
                        amount,
                    }],
                })),
                cmd(Wire::BindCluster(pb::BindCluster {
                    cluster: "c1".into(),
                    shard: shard.into(),
                })),
            ],
        })))
        .await
        .expect("quota and binding");
}

/// Waits until `shard` has learned of its slice and cluster c1.
async fn wait_for_slice_and_cluster(shard: &ShardProcess) {
    shard
        .wait_until("its slice and cluster", |st| {
            !st.slices.is_empty() && !st.clusters.is_empty()
        })
        .await;
}

fn holds(status: &pb::ShardStatusResponse, domain: &str) -> bool {
    status.domains.iter().any(|d| d == domain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_reach_their_shard_and_follow_moves() {
    let cluster = cluster().await;
    let shards = [
        shard(&cluster, "s1", "az-a"),
        shard(&cluster, "s2", "az-b"),
        shard(&cluster, "s3", "az-c"),
    ];
    let client = cluster.client();
    cluster.wait_for_shards(3).await;

    client
        .write(cmd(Wire::SetProvider(pb::SetProvider {
            name: "aws".into(),
            endpoint: "https://ec2.example".into(),
            region: "us-east-1".into(),
            capacity_types: vec![],
        })))
        .await
        .expect("provider");
    client
        .write(cmd(Wire::SetQuota(pb::SetQuota {
            provider: "aws".into(),
            region: "us-east-1".into(),
            total: 300,
            slices: ["s1", "s2", "s3"]
                .iter()
                .map(|s| pb::QuotaSlice {
                    shard: (*s).into(),
                    amount: 100,
                })
                .collect(),
        })))
        .await
        .expect("quota");
    client
        .write(cmd(Wire::BindCluster(pb::BindCluster {
            cluster: "c1".into(),
            shard: "s2".into(),
        })))
        .await
        .expect("binding");
    for (i, s) in ["s1", "s2", "s3"].iter().enumerate() {
        assign(
            &client,
            &format!("zone=az-{}/rack=r1", ["a", "b", "c"][i]),
            s,
            false,
        )
        .await;
    }
    for (i, s) in shards.iter().enumerate() {
        let domain = format!("zone=az-{}/rack=r1", ["a", "b", "c"][i]);
        let status = s
            .wait_until("its domain and slice", |st| {
                holds(st, &domain) && st.slices.iter().any(|q| q.amount == 100)
            })
            .await;
        assert_eq!(status.domains, vec![domain]);
        assert_eq!(status.status, "active");
    }
    shards[1]
        .wait_until("its cluster", |st| st.clusters == vec!["c1".to_string()])
        .await;

    // Move a domain: it reaches the new owner and leaves the old one.
    let revision = assign(&client, "zone=az-a/rack=r1", "s2", true).await;
    shards[1]
        .wait_until("the moved domain", |st| {
            holds(st, "zone=az-a/rack=r1") && st.revision >= revision
        })
        .await;
    shards[0]
        .wait_until("losing the moved domain", |st| {
            !holds(st, "zone=az-a/rack=r1")
        })
        .await;
    // Bad demand is refused precisely and changes nothing.
    let mut worker = ShardWorkerClient::connect(format!("http://{}", shards[1].address))
        .await
        .expect("connecting to s2");
    let row = |cpu: i64, az: &str| pb::DemandRow {
        id: "web".into(),
        count: 1,
        resources: Some(pb::ResourceSpec {
            cpu_millis: cpu,
            memory_mib: 1,
            gpus: 0,
        }),
        priority: 0,
        az: az.into(),
        domain: String::new(),
    };
    for (cluster, row, code, needle) in [
        (
            "c9",
            row(1, ""),
            tonic::Code::FailedPrecondition,
            "not bound",
        ),
        ("c1", row(-5, ""), tonic::Code::InvalidArgument, "negative"),
        (
            "c1",
            row(1, "az-q"),
            tonic::Code::FailedPrecondition,
            "az-q",
        ),
        (
            "Bad!",
            row(1, ""),
            tonic::Code::InvalidArgument,
            "cluster id",
        ),
    ] {
        let status = worker
            .submit_demand(pb::SubmitDemandRequest {
                cluster: cluster.into(),
                rows: vec![row],
            })
            .await
            .expect_err("bad demand");
        assert_eq!(status.code(), code, "{status}");
        assert!(status.message().contains(needle), "{status}");
    }
    let oversized = pb::SubmitDemandRequest {
        cluster: "c1".into(),
        rows: (0..10_001)
            .map(|n| pb::DemandRow {
                id: format!("r{n}"),
                ..row(1, "")
            })
            .collect(),
    };
    let status = worker
        .submit_demand(oversized)
        .await
        .expect_err("too many rows");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let allocations = worker
        .allocations(pb::AllocationsRequest {
            cluster: String::new(),
        })
        .await
        .expect("allocations")
        .into_inner();
    assert!(allocations.machines.is_empty() && allocations.in_flight == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_ride_out_a_full_coordinator_outage_and_their_own_restart() {
    let mut cluster = cluster().await;
    let mut s1 = shard(&cluster, "s1", "az-a");
    let s2 = shard(&cluster, "s2", "az-b");
    let client = cluster.client();
    cluster.wait_for_shards(2).await;
    assign(&client, "zone=az-a/rack=r1", "s1", false).await;
    grant_quota(&client, "s1", 10).await;
    let revision = assign(&client, "zone=az-b/rack=r1", "s2", false).await;
    let before = s1
        .wait_until("its domain, slice and cluster", |st| {
            holds(st, "zone=az-a/rack=r1") && !st.slices.is_empty() && !st.clusters.is_empty()
        })
        .await;
    s2.wait_until("caught up", |st| st.revision >= revision)
        .await;

    // Every coordinator replica dies.
    for id in 1..=3 {
        cluster.kill(id);
    }
    s1.wait_until("noticing the outage", |st| !st.coordinator_reachable)
        .await;
    let during = s2.status().await.expect("s2 answers during the outage");
    assert!(holds(&during, "zone=az-b/rack=r1"));

    // Demand arriving during the outage is served from the cached allocation.
    submit(&s1, 3).await;
    s1.wait_until("3 machines assigned", |st| assigned_machines(st) == 3)
        .await;

    // A shard SIGKILLed during the outage comes back from its cache alone.
    s1.kill();
    s1.restart();
    let restarted = s1
        .wait_until("serving again", |st| st.epoch == before.epoch + 1)
        .await;
    assert_eq!(restarted.domains, before.domains);
    assert!(restarted.revision >= before.revision);
    assert!(!restarted.coordinator_reachable);
    // Its machine ledger came back too, and it keeps provisioning within its slice.
    assert_eq!(assigned_machines(&restarted), 3);
    submit(&s1, 12).await;
    let capped = s1
        .wait_until("the slice filled", |st| {
            assigned_machines(st) == 10 && st.shortfall == 2
        })
        .await;
    assert_eq!(capped.machines_by_state.get("assigned"), Some(&10));

    // Its probes and metrics tell the same story: ready (serving from the cache) with the
    // coordinator unreachable, cycles running, provisions made, the slice's shortfall visible.
    let (code, ready) = http_get(&s1.http_address, "/readyz").expect("readyz answers");
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("coordinator unreachable"), "{ready}");
    let (_, metrics) = http_get(&s1.http_address, "/metrics").expect("metrics answer");
    let sample = |series: &str| -> f64 {
        metric(&metrics, series).unwrap_or_else(|| panic!("{series} missing from {metrics}"))
    };
    assert_eq!(sample("ballast_shard_coordinator_reachable"), 0.0);
    assert_eq!(sample("ballast_shard_machines{state=\"assigned\"}"), 10.0);
    assert_eq!(sample("ballast_shard_shortfall_machines"), 2.0);
    assert!(sample("ballast_shard_cycle_duration_seconds_count") > 0.0);
    assert!(sample("ballast_shard_provisions_total{outcome=\"ok\"}") >= 7.0);

    // The coordinator returns: watches resume and new grants arrive.
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.leader().await;
    let revision = assign(&client, "zone=az-a/rack=r2", "s1", false).await;
    let after = s1
        .wait_until("the new grant", |st| {
            holds(st, "zone=az-a/rack=r2") && st.revision >= revision
        })
        .await;
    assert!(holds(&after, "zone=az-a/rack=r1"));
    assert!(after.coordinator_reachable);
    assert_eq!(after.epoch, before.epoch + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_and_dead_shards_hand_their_domains_over() {
    let cluster = cluster().await;
    let a1 = shard(&cluster, "a1", "az-a");
    let a2 = shard(&cluster, "a2", "az-a");
    let mut b1 = shard(&cluster, "b1", "az-b");
    let client = cluster.client();
    cluster.wait_for_shards(3).await;
    for n in 0..4 {
        assign(&client, &format!("zone=az-a/rack=r{n}"), "a1", false).await;
    }
    assign(&client, "zone=az-b/rack=r0", "b1", false).await;
    a1.wait_until("its four domains", |st| st.domains.len() == 4)
        .await;

    // Draining a1: its domains go to its AZ peer a2, and a1 lets go of them.
    client
        .write(cmd(Wire::DrainShard(pb::DrainShard { id: "a1".into() })))
        .await
        .expect("drain");
    a2.wait_until("a1's domains", |st| st.domains.len() == 4)
        .await;
    let drained = a1
        .wait_until("giving its domains up", |st| st.domains.is_empty())
        .await;
    assert_eq!(drained.status, "draining");

    // b1 dies: once its lease (3 s) runs out, its domain moves to a live shard.
    b1.kill();
    a2.wait_until("b1's domain", |st| holds(st, "zone=az-b/rack=r0"))
        .await;
    // b1 returns from its cache and learns it lost the domain.
    b1.restart();
    b1.wait_until("giving the lost domain up", |st| {
        st.coordinator_reachable && !holds(st, "zone=az-b/rack=r0")
    })
    .await;
}

/// A shard frozen (SIGSTOP) for longer than its lease loses its domain to a live shard. When
/// it thaws it must not decide on its cached assignments: it holds until a heartbeat tells it
/// the coordinator's revision and its watch has brought it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_shard_catches_up_before_it_acts_again() {
    let cluster = cluster().await;
    let frozen = shard(&cluster, "f1", "az-a");
    let live = shard(&cluster, "f2", "az-a");
    let client = cluster.client();
    cluster.wait_for_shards(2).await;
    assign(&client, "zone=az-a/rack=r0", "f1", false).await;
    frozen
        .wait_until("its domain", |st| holds(st, "zone=az-a/rack=r0"))
        .await;

    frozen.pause();
    live.wait_until("the frozen shard's domain", |st| {
        holds(st, "zone=az-a/rack=r0")
    })
    .await;
    frozen.resume();
    frozen
        .wait_until("giving the lost domain up", |st| {
            !holds(st, "zone=az-a/rack=r0")
        })
        .await;
    let log = ballast_testkit::wait_for(
        "the thawed shard to act again",
        std::time::Duration::from_secs(20),
        || async { Some(frozen.log()).filter(|l| l.contains("acting again")) },
    )
    .await;
    let held = log
        .find("holding decisions until the assignments are current")
        .unwrap_or_else(|| panic!("the thawed shard never held its decisions:\n{log}"));
    assert!(
        log[held..].contains("assignments current; acting again"),
        "the thawed shard acted before it held:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_retried_within_the_slice() {
    let cluster = cluster().await;
    // Half of all provisions fail: the shard backs off and retries until the need is met,
    // and failed attempts never let it hold more than its slice.
    let s1 = cluster.spawn_sim_shard(
        program(),
        "s1",
        "az-a",
        &["--lease-ms", "3000", "--sim-failure-rate", "0.5"],
    );
    let client = cluster.client();
    cluster.wait_for_shards(1).await;
    assign(&client, "zone=az-a/rack=r1", "s1", false).await;
    grant_quota(&client, "s1", 6).await;
    wait_for_slice_and_cluster(&s1).await;
    submit(&s1, 5).await;
    let done = s1
        .wait_until("5 machines despite failures", |st| {
            assigned_machines(st) == 5
        })
        .await;
    let held: u64 = done.machines_by_state.values().sum();
    assert!(
        held <= 6,
        "slice of 6 exceeded: {:?}",
        done.machines_by_state
    );
    submit(&s1, 9).await;
    let capped = s1
        .wait_until("the slice filled", |st| {
            assigned_machines(st) == 6 && st.shortfall == 3
        })
        .await;
    assert_eq!(capped.machines_by_state.values().sum::<u64>(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_moved_away_takes_its_demand_and_slice_along() {
    let cluster = cluster().await;
    let s1 = shard(&cluster, "s1", "az-a");
    let s2 = shard(&cluster, "s2", "az-a");
    let client = cluster.client();
    cluster.wait_for_shards(2).await;
    assign(&client, "zone=az-a/rack=r1", "s1", false).await;
    assign(&client, "zone=az-a/rack=r2", "s2", false).await;
    grant_quota(&client, "s1", 6).await;
    wait_for_slice_and_cluster(&s1).await;
    submit(&s1, 5).await;
    s1.wait_until("5 machines", |st| assigned_machines(st) == 5)
        .await;

    // The operator moves c1 and its slice to s2 while s1 keeps its domain: s1 drops c1's
    // demand and gives the five machines, now idle above a slice of 0, back to the provider.
    client
        .write(cmd(Wire::Batch(pb::Batch {
            commands: vec![
                cmd(Wire::MoveCluster(pb::MoveCluster {
                    cluster: "c1".into(),
                    shard: "s2".into(),
                })),
                cmd(Wire::SetQuotaSlices(pb::SetQuotaSlices {
                    provider: "aws".into(),
                    region: "us-east-1".into(),
                    slices: vec![
                        pb::QuotaSlice {
                            shard: "s1".into(),
                            amount: 0,
                        },
                        pb::QuotaSlice {
                            shard: "s2".into(),
                            amount: 6,
                        },
                    ],
                })),
            ],
        })))
        .await
        .expect("move c1 and its slice");
    let emptied = s1
        .wait_until("returning c1's machines", |st| {
            st.clusters.is_empty() && st.machines_by_state.values().sum::<u64>() == 0
        })
        .await;
    assert_eq!(emptied.shortfall, 0, "no demand left on s1");
    let refused = s1
        .submit_demand("c1", 5, pb::ResourceSpec::default())
        .await
        .expect_err("c1 is s2's now");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    s2.wait_until("c1 and its slice", |st| {
        st.clusters == ["c1"] && st.slices.iter().map(|s| s.amount).sum::<u64>() == 6
    })
    .await;
    submit(&s2, 5).await;
    s2.wait_until("c1's 5 machines", |st| assigned_machines(st) == 5)
        .await;

    // Draining s2: the rebalancer moves c1 back to s1 with the slice that serves it.
    client
        .write(cmd(Wire::DrainShard(pb::DrainShard { id: "s2".into() })))
        .await
        .expect("drain");
    s1.wait_until("c1 and its slice back", |st| {
        st.clusters == ["c1"] && st.slices.iter().map(|s| s.amount).sum::<u64>() == 6
    })
    .await;
    s2.wait_until("letting c1 go", |st| {
        st.clusters.is_empty() && assigned_machines(st) == 0
    })
    .await;
    submit(&s1, 5).await;
    s1.wait_until("c1's 5 machines again", |st| assigned_machines(st) == 5)
        .await;
}
