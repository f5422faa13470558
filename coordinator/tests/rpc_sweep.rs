//! Every RPC of the Fleet, Cluster, Assignments and Raft services called with malformed,
//! oversized and hostile input against three replica processes: each call is refused with a
//! precise code (never OK, never Internal or Unknown, which would mean an unhandled case) and
//! a message, no replica dies, and the replicated state is unchanged afterwards. Fleet writes
//! and the etcd API have their own suites (`bad_input.rs`, `sim/tests/etcd_api.rs`).

mod common;

use std::future::Future;

use ballast_protocol::pb;
use ballast_protocol::pb::assignments_client::AssignmentsClient;
use ballast_protocol::pb::cluster_client::ClusterClient;
use ballast_protocol::pb::fleet_client::FleetClient;
use ballast_protocol::pb::raft_client::RaftClient;
use ballast_testkit::fleet::{FleetShape, load_fleet};
use ballast_testkit::{FAST_FLAGS, TestCluster};
use common::coord_binary;
use tonic::Code;

const HUGE: usize = 1 << 20;

fn huge(c: char) -> String {
    std::iter::repeat_n(c, HUGE).collect()
}

/// Strings no id, address or label may be.
fn hostile_strings() -> Vec<String> {
    vec![
        String::new(),
        " ".into(),
        "a b".into(),
        "\0".into(),
        "../../etc/passwd".into(),
        "é\u{202e}x".into(),
        "x".repeat(300),
        huge('z'),
    ]
}

/// Checks one refusal.
async fn refused<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    tally: &mut Vec<String>,
) {
    match call.await {
        Ok(answer) => panic!("{what}: accepted: {answer:?}"),
        Err(status) => {
            assert!(
                !matches!(
                    status.code(),
                    Code::Internal | Code::Unknown | Code::Ok | Code::Unavailable
                ),
                "{what}: {status:?}"
            );
            assert!(!status.message().is_empty(), "{what}: empty message");
            tally.push(format!("{what}: {:?}", status.code()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_hostile_input_and_changes_nothing() {
    let cluster = TestCluster::start(coord_binary(), 3, FAST_FLAGS).await;
    load_fleet(
        &cluster.client(),
        FleetShape {
            shards: 3,
            domains: 30,
            bindings: 6,
            quotas: 1,
        },
    )
    .await
    .expect("fleet");
    let leader = cluster.leader().await;
    let follower = cluster.follower_of(leader);
    let before = cluster.state_of(leader, "").await.expect("state");
    let mut tally = Vec::new();

    for target in [leader, follower] {
        let fleet = || FleetClient::new(cluster.channel(target));
        let admin = || ClusterClient::new(cluster.channel(target));
        let shards = || AssignmentsClient::new(cluster.channel(target));
        let raft = || RaftClient::new(cluster.channel(target));
        for s in hostile_strings() {
            let short: String = s.chars().take(12).collect();
            refused(
                &format!("GetShard {short:?}"),
                fleet().get_shard(pb::GetShardRequest {
                    options: None,
                    id: s.clone(),
                }),
                &mut tally,
            )
            .await;
            refused(
                &format!("Join address {short:?}"),
                admin().join(pb::JoinRequest {
                    id: 9,
                    address: s.clone(),
                    az: "az-d".into(),
                    token: "x.y".into(),
                    learner: false,
                }),
                &mut tally,
            )
            .await;
            refused(
                &format!("Join az {short:?}"),
                admin().join(pb::JoinRequest {
                    id: 9,
                    address: "127.0.0.1:1".into(),
                    az: s.clone(),
                    token: "x.y".into(),
                    learner: false,
                }),
                &mut tally,
            )
            .await;
            refused(
                &format!("Join token {short:?}"),
                admin().join(pb::JoinRequest {
                    id: 9,
                    address: "127.0.0.1:1".into(),
                    az: "az-d".into(),
                    token: s.clone(),
                    learner: false,
                }),
                &mut tally,
            )
            .await;
            refused(
                &format!("Export destination {short:?}"),
                admin().export(pb::ExportRequest {
                    destination: if s.is_empty() {
                        "gs://x/y".into()
                    } else {
                        s.clone()
                    },
                }),
                &mut tally,
            )
            .await;
            refused(
                &format!("Heartbeat shard {short:?}"),
                shards().heartbeat(pb::HeartbeatRequest {
                    shard_id: s.clone(),
                    address: "127.0.0.1:1".into(),
                    az: "az-a".into(),
                    lease_ttl_ms: 0,
                    epoch: 1,
                    summary: None,
                }),
                &mut tally,
            )
            .await;
            refused(
                &format!("Heartbeat az {short:?}"),
                shards().heartbeat(pb::HeartbeatRequest {
                    shard_id: "new-shard".into(),
                    address: "127.0.0.1:1".into(),
                    az: s.clone(),
                    lease_ttl_ms: 0,
                    epoch: 1,
                    summary: None,
                }),
                &mut tally,
            )
            .await;
            refused(
                &format!("Watch {short:?}"),
                shards().watch(pb::WatchAssignmentsRequest {
                    shard_id: s.clone(),
                    from_revision: 0,
                    restore_epoch: 0,
                }),
                &mut tally,
            )
            .await;
            refused(
                &format!("ListDomains shard {short:?}"),
                fleet().list_domains(pb::ListDomainsRequest {
                    options: None,
                    shard: if s.is_empty() { "\n".into() } else { s.clone() },
                    after: String::new(),
                    limit: 0,
                }),
                &mut tally,
            )
            .await;
        }
        // Numbers out of range.
        refused(
            "ListDomains limit",
            fleet().list_domains(pb::ListDomainsRequest {
                options: None,
                shard: String::new(),
                after: String::new(),
                limit: u32::MAX,
            }),
            &mut tally,
        )
        .await;
        refused(
            "Heartbeat lease",
            shards().heartbeat(pb::HeartbeatRequest {
                shard_id: "new-shard".into(),
                address: "127.0.0.1:1".into(),
                az: "az-a".into(),
                lease_ttl_ms: u64::MAX,
                epoch: 1,
                summary: None,
            }),
            &mut tally,
        )
        .await;
        let quota = |provider: &str, region: &str| pb::QuotaUse {
            provider: provider.into(),
            region: region.into(),
            ..Default::default()
        };
        let summaries = [
            (
                "too many quotas",
                (0..=ballast_protocol::validate::MAX_QUOTA_REPORTS)
                    .map(|i| quota("aws", &format!("r{i}")))
                    .collect::<Vec<_>>(),
            ),
            (
                "a quota twice",
                vec![quota("aws", "r1"), quota("aws", "r1")],
            ),
            ("a bad provider", vec![quota("AWS", "r1")]),
        ]
        .into_iter()
        .map(|(what, quotas)| {
            let summary = pb::ShardSummary {
                quotas,
                ..Default::default()
            };
            (what, summary)
        })
        .chain([
            (
                "too many clusters",
                pb::ShardSummary {
                    cluster_demand: (0..=ballast_protocol::validate::MAX_CLUSTER_REPORTS)
                        .map(|i| (format!("c{i}"), 1))
                        .collect(),
                    ..Default::default()
                },
            ),
            (
                "a bad cluster id",
                pb::ShardSummary {
                    cluster_demand: [("Not An Id".to_string(), 1)].into(),
                    ..Default::default()
                },
            ),
        ]);
        for (what, summary) in summaries {
            refused(
                &format!("Heartbeat summary with {what}"),
                shards().heartbeat(pb::HeartbeatRequest {
                    shard_id: "new-shard".into(),
                    address: "127.0.0.1:1".into(),
                    az: "az-a".into(),
                    lease_ttl_ms: 0,
                    epoch: 1,
                    summary: Some(summary),
                }),
                &mut tally,
            )
            .await;
        }
        for ttl in [0, u64::MAX] {
            refused(
                &format!("CreateJoinToken ttl {ttl}"),
                admin().create_join_token(pb::CreateJoinTokenRequest { ttl_seconds: ttl }),
                &mut tally,
            )
            .await;
        }
        for id in [0, 999] {
            refused(
                &format!("Join id {id}"),
                admin().join(pb::JoinRequest {
                    id,
                    address: "127.0.0.1:1".into(),
                    az: "az-d".into(),
                    token: String::new(),
                    learner: false,
                }),
                &mut tally,
            )
            .await;
            refused(
                &format!("RemoveMember {id}"),
                admin().remove_member(pb::RemoveMemberRequest { id }),
                &mut tally,
            )
            .await;
            refused(
                &format!("PromoteMember {id}"),
                admin().promote_member(pb::PromoteMemberRequest { id }),
                &mut tally,
            )
            .await;
            refused(
                &format!("TransferLeader {id}"),
                admin().transfer_leader(pb::TransferLeaderRequest { target: id }),
                &mut tally,
            )
            .await;
        }
        // The peer port: garbage, a foreign cluster, oversized payloads.
        let cluster_id = cluster
            .status(target)
            .await
            .and_then(|s| s.header)
            .expect("status")
            .cluster_id;
        for (label, id, payload) in [
            (
                "garbage",
                cluster_id.clone(),
                b"\x00\xffnot postcard".to_vec(),
            ),
            ("foreign cluster", "other".to_string(), Vec::new()),
            ("no cluster id", String::new(), Vec::new()),
            ("huge", cluster_id.clone(), huge('q').into_bytes()),
        ] {
            let message = || pb::RaftMessage {
                cluster_id: id.clone(),
                payload: payload.clone(),
                id: 0,
            };
            refused(
                &format!("AppendEntries {label}"),
                raft().append_entries(message()),
                &mut tally,
            )
            .await;
            // On a stream the call itself opens; the message's answer is the refusal.
            let streamed = async {
                let (send, outbound) = tokio::sync::mpsc::channel(1);
                send.send(message()).await.expect("queued");
                let mut answers = raft()
                    .append_stream(tokio_stream::wrappers::ReceiverStream::new(outbound))
                    .await?
                    .into_inner();
                match answers.message().await? {
                    Some(answer) => Ok(tonic::Response::new(answer)),
                    None => Err(tonic::Status::unavailable("the stream ended unanswered")),
                }
            };
            refused(&format!("AppendStream {label}"), streamed, &mut tally).await;
            refused(&format!("Vote {label}"), raft().vote(message()), &mut tally).await;
            refused(
                &format!("Propose {label}"),
                raft().propose(message()),
                &mut tally,
            )
            .await;
            refused(
                &format!("InstallSnapshot {label}"),
                raft().install_snapshot(pb::SnapshotChunk {
                    cluster_id: id.clone(),
                    vote: payload.clone(),
                    meta: payload.clone(),
                    offset: u64::MAX,
                    data: payload.clone(),
                    done: true,
                }),
                &mut tally,
            )
            .await;
        }
        // Forwarded batches carry etcd-API writes only: a fleet command is refused whole.
        let fleet_command = ballast_coordinator::log::wire::encode(&vec![
            ballast_coordinator::fleet::FleetRequest {
                request_id: String::new(),
                command: ballast_coordinator::fleet::FleetCommand::Group(Vec::new()),
            },
        ])
        .expect("encoding");
        refused(
            "Propose a fleet command",
            raft().propose(pb::RaftMessage {
                cluster_id: cluster_id.clone(),
                payload: fleet_command,
                id: 0,
            }),
            &mut tally,
        )
        .await;
        for id in ["other", ""] {
            refused(
                &format!("ReadIndex cluster {id:?}"),
                raft().read_index(pb::ReadIndexRequest {
                    cluster_id: id.into(),
                }),
                &mut tally,
            )
            .await;
            refused(
                &format!("Campaign cluster {id:?}"),
                raft().campaign(pb::ElectionControl {
                    cluster_id: id.into(),
                    millis: u64::MAX,
                }),
                &mut tally,
            )
            .await;
            refused(
                &format!("LeaderPresence cluster {id:?}"),
                raft().leader_presence(pb::LeaderHello {
                    cluster_id: id.into(),
                    leader_id: u64::MAX,
                    term: u64::MAX,
                }),
                &mut tally,
            )
            .await;
            refused(
                &format!("PauseElection cluster {id:?}"),
                raft().pause_election(pb::ElectionControl {
                    cluster_id: id.into(),
                    millis: u64::MAX,
                }),
                &mut tally,
            )
            .await;
        }
    }
    assert!(tally.len() > 150, "{} refusals", tally.len());

    // Every replica still serves, same leader, nothing changed.
    for replica in &cluster.replicas {
        assert!(
            cluster.status(replica.id).await.is_some(),
            "replica {} stopped answering",
            replica.id
        );
    }
    assert_eq!(cluster.leader().await, leader);
    assert_eq!(cluster.state_of(leader, "").await.expect("state"), before);
}
