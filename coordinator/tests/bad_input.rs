//! Bad input through every write path and the peer port: each gets a precise gRPC status and
//! message, the state (and revision) stays as it was, and the replicas keep serving.

mod common;

use ballast_protocol::client::{BallastClient, ClientConfig, ClientError};
use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use ballast_protocol::pb::raft_client::RaftClient;
use ballast_testkit::{FAST_FLAGS, TestCluster};
use common::{assign, cmd, coord_binary, register};
use tonic::Code;

async fn revision(client: &BallastClient) -> u64 {
    ballast_testkit::current_revision(client).await
}

/// Sends `command` and checks the refusal: expected code, message mentioning `needle`, and no
/// change of revision.
async fn refused(client: &BallastClient, command: pb::Command, code: Code, needle: &str) {
    let before = revision(client).await;
    let error = client
        .write(command.clone())
        .await
        .expect_err(&format!("{command:?} should be refused"));
    assert_eq!(error.code(), code, "{command:?}: {error}");
    assert!(
        error.to_string().contains(needle),
        "message {:?} should mention {needle:?}",
        error.to_string()
    );
    assert_eq!(
        revision(client).await,
        before,
        "state changed after {command:?}"
    );
}

fn quota(total: u64, slices: &[(&str, u64)]) -> pb::Command {
    cmd(Wire::SetQuota(pb::SetQuota {
        provider: "aws".into(),
        region: "us-east-1".into(),
        total,
        slices: slices
            .iter()
            .map(|(s, a)| pb::QuotaSlice {
                shard: (*s).into(),
                amount: *a,
            })
            .collect(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fleet_writes_are_refused_precisely_and_change_nothing() {
    let cluster = TestCluster::start(coord_binary(), 3, FAST_FLAGS).await;
    let client = cluster.client();
    client.write(register("s1", "az-a")).await.expect("s1");
    client.write(register("s2", "az-b")).await.expect("s2");
    client
        .write(cmd(Wire::SetProvider(pb::SetProvider {
            name: "aws".into(),
            endpoint: "https://ec2.example".into(),
            region: "us-east-1".into(),
            capacity_types: vec!["m5".into()],
        })))
        .await
        .expect("provider");
    client
        .write(assign("zone=az-a/rack=r1", "s1"))
        .await
        .expect("domain");
    client
        .write(quota(100, &[("s1", 60)]))
        .await
        .expect("quota");

    // Unknown shard.
    refused(
        &client,
        assign("zone=az-a/rack=r2", "s9"),
        Code::NotFound,
        "s9",
    )
    .await;
    // Domain owned by another shard.
    refused(
        &client,
        assign("zone=az-a/rack=r1", "s2"),
        Code::FailedPrecondition,
        "s1",
    )
    .await;
    // Quota slices over the total.
    refused(
        &client,
        quota(100, &[("s1", 60), ("s2", 41)]),
        Code::FailedPrecondition,
        "100",
    )
    .await;
    // Malformed domain keys.
    for bad in ["rack", "=r1", "a==b", "a=b/", "zone=a/b=c/", "zöne=a"] {
        refused(&client, assign(bad, "s1"), Code::InvalidArgument, "domain").await;
    }
    // Oversized values.
    let long_domain = format!("zone={}", "a".repeat(300));
    refused(
        &client,
        assign(&long_domain, "s1"),
        Code::InvalidArgument,
        "domain",
    )
    .await;
    refused(
        &client,
        register(&"s".repeat(64), "az-a"),
        Code::InvalidArgument,
        "63",
    )
    .await;
    // Malformed ids and a missing command.
    refused(
        &client,
        register("S1!", "az-a"),
        Code::InvalidArgument,
        "invalid",
    )
    .await;
    refused(
        &client,
        pb::Command { command: None },
        Code::InvalidArgument,
        "command",
    )
    .await;
    // The same shard twice in one quota.
    refused(
        &client,
        quota(100, &[("s1", 10), ("s1", 20)]),
        Code::InvalidArgument,
        "twice",
    )
    .await;
    // A batch is all or nothing: a good command followed by a bad one changes nothing.
    refused(
        &client,
        cmd(Wire::Batch(pb::Batch {
            commands: vec![
                assign("zone=az-c/rack=r1", "s2"),
                assign("zone=az-c/rack=r2", "s9"),
            ],
        })),
        Code::NotFound,
        "s9",
    )
    .await;
    let domains = common::domains(&client, false).await;
    assert_eq!(
        domains,
        vec![("zone=az-a/rack=r1".to_string(), "s1".to_string())]
    );

    // Bad cluster-administration requests.
    let status = client
        .cluster(|mut c, req| async move {
            c.transfer_leader(req.wrap(pb::TransferLeaderRequest { target: 42 }))
                .await
        })
        .await
        .expect_err("unknown transfer target");
    assert_eq!(status.code(), Code::NotFound, "{status}");
    let status = client
        .cluster(|mut c, req| async move {
            c.remove_member(req.wrap(pb::RemoveMemberRequest { id: 42 }))
                .await
        })
        .await
        .expect_err("unknown member");
    assert_eq!(status.code(), Code::NotFound, "{status}");
    for (id, address, az, needle) in [
        (0, "127.0.0.1:1", "az-a", "id"),
        (9, "", "az-a", "address"),
        (9, "127.0.0.1:1", "AZ A", "az"),
    ] {
        let status = client
            .cluster(|mut c, req| async move {
                c.join(req.wrap(pb::JoinRequest {
                    id,
                    address: address.into(),
                    az: az.into(),
                    token: String::new(),
                    learner: false,
                }))
                .await
            })
            .await
            .expect_err("bad join");
        assert_eq!(status.code(), Code::InvalidArgument, "{status}");
        assert!(status.to_string().contains(needle), "{status}");
    }
    let taken = cluster.replica(2).address.clone();
    let status = client
        .cluster(|mut c, req| {
            let taken = taken.clone();
            async move {
                c.join(req.wrap(pb::JoinRequest {
                    id: 9,
                    address: taken,
                    az: "az-d".into(),
                    token: String::new(),
                    learner: false,
                }))
                .await
            }
        })
        .await
        .expect_err("address taken");
    assert_eq!(status.code(), Code::AlreadyExists, "{status}");

    // Every replica still serves and agrees.
    let rev = revision(&client).await;
    for id in 1..=3 {
        cluster.wait_for_revision(id, rev).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoints_and_foreign_clusters_are_refused() {
    // Nothing listens: a clear unavailable error within the retry budget.
    let mut config = ClientConfig::new(vec![format!("127.0.0.1:{}", ballast_testkit::free_port())]);
    config.retry_budget = std::time::Duration::from_millis(500);
    let client = BallastClient::new(config).expect("client");
    let error = client
        .write(register("s1", "az-a"))
        .await
        .expect_err("no server");
    assert!(matches!(error, ClientError::Unavailable { .. }), "{error}");
    assert!(BallastClient::connect(&[]).is_err());
    assert!(BallastClient::connect(&["not a uri ::".to_string()]).is_err());

    // Two clusters side by side on one host.
    let a = TestCluster::start(coord_binary(), 1, FAST_FLAGS).await;
    let b = TestCluster::start(coord_binary(), 1, FAST_FLAGS).await;
    let a_id = a
        .status(1)
        .await
        .and_then(|s| s.header)
        .map(|h| h.cluster_id)
        .expect("cluster a id");

    // A client pinned to cluster A refuses to act on cluster B.
    let mut config = ClientConfig::new(b.endpoints());
    config.cluster_id = Some(a_id.clone());
    let pinned = BallastClient::new(config).expect("client");
    let error = pinned
        .write(register("s1", "az-a"))
        .await
        .expect_err("foreign cluster");
    assert_eq!(error.code(), Code::FailedPrecondition, "{error}");
    assert!(error.to_string().contains("cluster id mismatch"), "{error}");

    // Raft traffic from cluster A is refused by cluster B.
    let mut raft = RaftClient::connect(format!("http://{}", b.replica(1).address))
        .await
        .expect("raft client");
    let status = raft
        .vote(pb::RaftMessage {
            cluster_id: a_id,
            payload: b"{}".to_vec(),
            id: 0,
        })
        .await
        .expect_err("foreign raft message");
    assert_eq!(status.code(), Code::FailedPrecondition);
    // Garbage from the right cluster is refused as undecodable, without harm.
    let b_id = b
        .status(1)
        .await
        .and_then(|s| s.header)
        .map(|h| h.cluster_id)
        .expect("cluster b id");
    let status = raft
        .append_entries(pb::RaftMessage {
            cluster_id: b_id,
            payload: b"not json".to_vec(),
            id: 0,
        })
        .await
        .expect_err("garbage raft message");
    assert_eq!(status.code(), Code::InvalidArgument);
    b.client()
        .write(register("s1", "az-a"))
        .await
        .expect("cluster b still serves");
}
