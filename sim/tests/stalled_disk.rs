//! A shard worker whose disk stalls while demand is submitted, with real processes: a
//! coordinator, a reference provider and a shard. The shard's fsync of submitted demand is
//! stopped at the blocking hold point `shard-demand-fsync` (`ballast-failpoints`) with eight
//! submissions queued behind it. Meanwhile the shard must keep answering everything else (a
//! surge of submissions used to take every runtime thread, one waiting on the disk under the
//! demand lock and the rest on that lock) and must answer no submission before it is on disk.
//! Once the disk is back every submission is answered, and the shard serves the newest demand.

use std::path::Path;
use std::time::Duration;

use ballast_protocol::pb;
use ballast_testkit::{
    ClusterOptions, ProviderProcess, ShardProcess, TestCluster, allocate_to_s1, assigned_machines,
    submit_small_through, wait_for,
};

const DOMAIN: &str = "zone=az-a/rack=r1";
/// Longest any one call to the shard may take while the disk is stalled or after.
const ANSWER: Duration = Duration::from_secs(5);

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ballast-sim"))
}

/// The shard's status, which must come within [`ANSWER`].
async fn status(shard: &ShardProcess, when: &str) -> pb::ShardStatusResponse {
    tokio::time::timeout(ANSWER, shard.status())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the shard did not answer Status within {ANSWER:?} {when}\nlog:\n{}",
                shard.log()
            )
        })
        .unwrap_or_else(|| panic!("the shard refused Status {when}\nlog:\n{}", shard.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_holds_back_demand_answers_but_not_the_shard() {
    let failpoints = tempfile::tempdir().expect("failpoint dir");
    let failpoint_dir = failpoints.path().to_str().expect("UTF-8 path");
    // One replica: the coordinator is not under test here, and the machine has two cores.
    let cluster = TestCluster::start_with(ClusterOptions::sim(program()), 1).await;
    let provider = ProviderProcess::start(
        &format!("'{}' provider", program().display()),
        "--name sim --region local",
    );
    let grpc = format!("grpc://{}", provider.endpoint);
    let shard = cluster.spawn_sim_shard_with_env(
        program(),
        "s1",
        "az-a",
        &["--provider", &grpc, "--sim-latency-ms", "0"],
        &[
            ("BALLAST_FAILPOINTS", "shard-demand-fsync"),
            ("BALLAST_FAILPOINT_DIR", failpoint_dir),
        ],
    );
    cluster.wait_for_shards(1).await;
    allocate_to_s1(&cluster.client(), &grpc, DOMAIN, 10).await;
    shard.wait_for_grants().await;

    // Eight submissions of c1's demand at once, more than the shard has runtime threads; the
    // first fsync of them stalls.
    let mut submissions = tokio::task::JoinSet::new();
    for count in 1..=8 {
        let client = shard.client();
        submissions.spawn(async move { submit_small_through(client, "c1", count).await });
    }
    let held = failpoints.path().join("shard-demand-fsync.held");
    wait_for(
        "the demand fsync to stall at its hold point",
        Duration::from_secs(20),
        || {
            let held = held.clone();
            async move { held.exists().then_some(()) }
        },
    )
    .await;

    // While the disk is stalled the shard answers, and answers no submission.
    for round in 0..5 {
        let st = status(&shard, "while its demand fsync is stalled").await;
        assert_eq!(
            assigned_machines(&st),
            0,
            "round {round}: the shard serves demand that is not on disk yet"
        );
        assert!(
            submissions.try_join_next().is_none(),
            "round {round}: a submission was answered before it was on disk"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    std::fs::write(failpoints.path().join("shard-demand-fsync.release"), b"")
        .expect("releasing the hold point");
    let mut answered = 0;
    while let Some(done) = tokio::time::timeout(ANSWER * 2, submissions.join_next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{answered} of 8 submissions answered within {:?} of the disk coming back\nlog:\n{}",
                ANSWER * 2,
                shard.log()
            )
        })
    {
        done.expect("submission task")
            .unwrap_or_else(|e| panic!("a submission was refused: {e}\nlog:\n{}", shard.log()));
        answered += 1;
    }

    // The newest demand is what the shard serves.
    shard
        .submit_small("c1", 3)
        .await
        .unwrap_or_else(|e| panic!("the last submission was refused: {e}"));
    wait_for(
        "the shard to serve c1's newest demand of 3 machines",
        Duration::from_secs(30),
        || async {
            let st = status(&shard, "after the disk came back").await;
            (assigned_machines(&st) == 3 && st.shortfall == 0).then_some(())
        },
    )
    .await;
}
