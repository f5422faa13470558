//! A replica that restarts grants no vote for one `--election-max-ms` after it starts: before
//! it stopped it may have accepted the leader's append, which the leader counts on for its read
//! lease (ADR 0020), and openraft forgets when across a restart.

mod common;

use std::time::{Duration, Instant};

use ballast_coordinator::log::raft::types::NodeId;
use ballast_coordinator::log::wire;
use ballast_protocol::pb;
use ballast_protocol::pb::raft_client::RaftClient;
use ballast_testkit::{TestCluster, wait_for};
use common::coord_binary;
use openraft::raft::{VoteRequest, VoteResponse};

/// Long enough that the restarted replica is reached well inside it on a slow box.
const ELECTION_MAX_MS: u64 = 8_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_grants_no_vote_within_one_election_maximum() {
    let max = ELECTION_MAX_MS.to_string();
    let flags = [
        "--heartbeat-ms",
        "50",
        "--election-min-ms",
        "4000",
        "--election-max-ms",
        max.as_str(),
    ];
    let mut cluster = TestCluster::start(coord_binary(), 3, &flags).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower_of(leader);
    let header = cluster
        .status(leader)
        .await
        .and_then(|s| s.header)
        .expect("the leader's status");
    // A candidate one term ahead with an empty log: no replica would grant it, but only the
    // guard refuses it before openraft sees it.
    let request = VoteRequest::<NodeId>::new(openraft::Vote::new(header.raft_term + 1, 99), None);
    let message = pb::RaftMessage {
        cluster_id: header.cluster_id.clone(),
        payload: wire::encode(&request).expect("encoding a vote request"),
        id: 0,
    };

    cluster.kill(follower);
    let restarted = Instant::now();
    cluster.restart(follower);
    let address = cluster.replica(follower).address.clone();
    let endpoint = format!("http://{address}");
    let ask = || {
        let endpoint = endpoint.clone();
        let message = message.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(endpoint)
                .expect("endpoint")
                .connect_timeout(Duration::from_millis(500))
                .connect()
                .await
                .ok()?;
            Some(RaftClient::new(channel).vote(message).await)
        }
    };

    let first = wait_for(
        "the restarted replica to answer",
        Duration::from_secs(30),
        ask,
    )
    .await;
    let answered_after = restarted.elapsed();
    assert!(
        answered_after < Duration::from_millis(ELECTION_MAX_MS),
        "the restarted replica first answered {answered_after:?} after its restart, past the \
         window this test checks; the box is too slow for it"
    );
    let status = first.expect_err("a vote request answered within the election maximum");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("votes only after that long"),
        "{status:?}"
    );

    // Once the window has passed, openraft decides (and refuses this candidate: its log is
    // behind, and the leader's heartbeats hold the replica's lease).
    let answer = wait_for(
        "the restarted replica to consider votes again",
        Duration::from_millis(ELECTION_MAX_MS) + Duration::from_secs(30),
        || async {
            match ask().await? {
                Ok(answer) => Some(answer),
                Err(status) => {
                    assert!(
                        restarted.elapsed() < Duration::from_millis(ELECTION_MAX_MS) * 3,
                        "still refused {:?} after the restart: {status:?}",
                        restarted.elapsed()
                    );
                    None
                }
            }
        },
    )
    .await;
    assert!(
        restarted.elapsed() >= Duration::from_millis(ELECTION_MAX_MS),
        "openraft saw a vote request {:?} after the restart",
        restarted.elapsed()
    );
    let response: Result<VoteResponse<NodeId>, openraft::error::RaftError<NodeId>> =
        wire::decode(&answer.into_inner().payload).expect("a vote response");
    let response = response.expect("openraft answered the vote request");
    assert!(!response.vote_granted, "{response:?}");
    assert_eq!(cluster.leader().await, leader, "the leader kept its place");
}
