//! Safety under one-sided partitions, leadership moves and connection resets, with real
//! replica processes and the test-only network fault rules (`--fault-rules`):
//!
//! - a leader cut off from its peers (its clients still reach it) must stop renewing leases
//!   before the majority's new leader can expire them and hand a lock to someone else;
//! - shard heartbeats seen by a replica in an earlier term must not judge shards when it leads
//!   again: healthy shards keep their domains through A → B → A;
//! - connection resets on a live leader's peer links must not depose it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ballast_protocol::client::BallastClient;
use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use ballast_testkit::{ClusterOptions, FAST_FLAGS, TestCluster, http_get, metric, wait_for};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

/// `ballast-sim replica` with fault rules and exactly `flags` (no [`FAST_FLAGS`] unless given).
fn options(flags: &[&str]) -> ClusterOptions {
    ClusterOptions {
        extra: flags.iter().map(|s| s.to_string()).collect(),
        faults: true,
        ..ClusterOptions::sim(env!("CARGO_BIN_EXE_ballast-sim"))
    }
}

/// Cuts `id` off from every other replica, both ways; clients still reach every replica.
fn isolate(cluster: &TestCluster, id: u64) {
    let others: Vec<&str> = cluster
        .replicas
        .iter()
        .filter(|r| r.id != id)
        .map(|r| r.address.as_str())
        .collect();
    let rules: String = others.iter().map(|a| format!("block {a}\n")).collect();
    cluster.set_faults(id, &rules);
    for other in cluster.replicas.iter().filter(|r| r.id != id) {
        cluster.set_faults(
            other.id,
            &format!("block {}\n", cluster.replica(id).address),
        );
    }
}

fn heal(cluster: &TestCluster) {
    for replica in &cluster.replicas {
        cluster.set_faults(replica.id, "");
    }
}

/// The status of replica `id` as it sees itself, or `None` if it does not answer within 2 s.
async fn status(cluster: &TestCluster, id: u64) -> Option<pb::StatusResponse> {
    tokio::time::timeout(Duration::from_secs(2), cluster.status(id))
        .await
        .ok()
        .flatten()
}

async fn wait_until_leader(cluster: &TestCluster, id: u64) {
    wait_for(
        &format!("replica {id} to lead"),
        Duration::from_secs(30),
        || async {
            status(cluster, id)
                .await
                .filter(|s| s.state == "leader")
                .map(|_| ())
        },
    )
    .await;
}

/// Takes the lock key for `owner` if nobody holds it; true when taken.
async fn try_lock(client: &mut Client, owner: &str, lease: Option<i64>) -> Result<bool, String> {
    let put = TxnOp::put(
        "lock",
        owner,
        lease.map(|l| PutOptions::new().with_lease(l)),
    );
    let txn = Txn::new()
        .when([Compare::create_revision("lock", CompareOp::Equal, 0)])
        .and_then([put]);
    client
        .txn(txn)
        .await
        .map(|answer| answer.succeeded())
        .map_err(|e| e.to_string())
}

/// A lock holder whose keep-alives go through an isolated leader, and a contender on the
/// majority side: every keep-alive the holder saw succeed must run out (send time + TTL)
/// before the contender takes the lock, or both believe they hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_stops_renewing_leases_before_the_majority_expires_them() {
    let cluster = TestCluster::start_with(options(FAST_FLAGS), 3).await;
    let leader = cluster.leader().await;
    let old_leader = cluster.replica(leader).address.clone();
    let majority: Vec<String> = cluster
        .replicas
        .iter()
        .filter(|r| r.id != leader)
        .map(|r| r.address.clone())
        .collect();

    // The holder talks to the leader only: a lease, the lock on it, keep-alives.
    const TTL: i64 = 2;
    let mut holder = Client::connect([old_leader], None).await.expect("connect");
    let lease = holder.lease_grant(TTL, None).await.expect("lease").id();
    assert!(
        try_lock(&mut holder, "holder", Some(lease))
            .await
            .expect("lock")
    );
    let started = Instant::now();
    let (done, mut finish) = tokio::sync::watch::channel(false);
    let keep_alives = tokio::spawn(async move {
        // (sent, TTL answered); an error or no answer within 1 s counts as a failed renewal.
        let mut renewed: Vec<(Duration, i64)> = Vec::new();
        let mut failed = 0u32;
        let mut stream = None;
        while !*finish.borrow_and_update() {
            let sent = started.elapsed();
            if stream.is_none() {
                stream = holder.lease_keep_alive(lease).await.ok();
            }
            let answer = match stream.as_mut() {
                Some((keeper, answers)) => {
                    tokio::time::timeout(Duration::from_secs(1), async {
                        keeper.keep_alive().await.ok()?;
                        answers.message().await.ok().flatten()
                    })
                    .await
                }
                None => Ok(None),
            };
            match answer {
                Ok(Some(answer)) if answer.ttl() > 0 => renewed.push((sent, answer.ttl())),
                _ => {
                    failed += 1;
                    stream = None;
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), finish.changed()).await;
        }
        (renewed, failed)
    });
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Cut the leader off from its peers; its clients still reach it.
    let isolated_at = started.elapsed();
    isolate(&cluster, leader);
    let mut contender = Client::connect(majority, None).await.expect("connect");
    let taken_at = wait_for(
        "the majority to hand the lock to the contender",
        Duration::from_secs(20),
        || {
            let mut contender = contender.clone();
            async move {
                match try_lock(&mut contender, "contender", None).await {
                    Ok(true) => Some(started.elapsed()),
                    _ => None,
                }
            }
        },
    )
    .await;
    // The holder goes on renewing for a while after the hand-over.
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.send_replace(true);
    let (renewed, failed) = keep_alives.await.expect("keep-alive task");
    heal(&cluster);

    let overlapping: Vec<String> = renewed
        .iter()
        .filter(|(sent, ttl)| *sent + Duration::from_secs(*ttl as u64) > taken_at)
        .map(|(sent, ttl)| format!("sent at {sent:?} with TTL {ttl} s"))
        .collect();
    let overlapping = (overlapping.len(), overlapping.first(), overlapping.last());
    assert!(
        overlapping.0 == 0,
        "two holders: the contender took the lock at {taken_at:?} (leader isolated at \
         {isolated_at:?}) while renewals through the isolated leader still held it (how many, \
         first, last): {overlapping:?}"
    );
    assert!(
        renewed.iter().any(|(sent, _)| *sent < isolated_at),
        "the holder renewed before the isolation: {renewed:?}"
    );
    assert!(failed > 0, "renewals through the isolated leader failed");
    // The majority side stays writable and the old leader rejoins it.
    contender
        .put("after", "heal", None)
        .await
        .expect("put after healing");
}

fn register(id: &str, az: &str) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        shard_id: id.into(),
        address: format!("127.0.0.1:1{:04}", id.len()),
        az: az.into(),
        lease_ttl_ms: 0,
        epoch: 1,
        summary: None,
    }
}

async fn heartbeat(client: &BallastClient, beat: &pb::HeartbeatRequest) -> bool {
    client
        .assignments(|mut c, req| {
            let beat = beat.clone();
            async move { c.heartbeat(req.wrap(beat)).await }
        })
        .await
        .is_ok()
}

async fn owners(client: &BallastClient) -> BTreeMap<String, String> {
    ballast_testkit::fleet::list_fleet(client)
        .await
        .expect("listing the fleet")
        .domains
        .into_iter()
        .map(|d| (d.domain, d.shard))
        .collect()
}

async fn transfer_leader(client: &BallastClient, target: u64) {
    client
        .cluster(|mut c, req| async move {
            c.transfer_leader(req.wrap(pb::TransferLeaderRequest { target }))
                .await
        })
        .await
        .expect("leadership transfer");
}

fn rebalance_rounds(cluster: &TestCluster, id: u64) -> f64 {
    http_get(&cluster.replica(id).http_address, "/metrics")
        .and_then(|(_, page)| metric(&page, "ballast_rebalance_rounds_total"))
        .unwrap_or(0.0)
}

/// Leadership moves A → B, B leads for longer than the shard lease, then B → A. A must not
/// judge the shards by the heartbeats it saw in its first term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_from_an_earlier_term_never_evacuate_healthy_shards() {
    let flags = [
        FAST_FLAGS,
        &["--shard-lease-ms", "3000", "--rebalance-interval-ms", "200"],
    ]
    .concat();
    let cluster = TestCluster::start_with(options(&flags), 3).await;
    let client = cluster.client();
    let first = cluster.leader().await;
    let second = (1..=3).find(|id| *id != first).expect("a follower");

    // s1 and s2 heartbeat throughout and own the domains.
    let beats = [register("s1", "az-a"), register("s2", "az-b")];
    for beat in &beats {
        assert!(
            heartbeat(&client, beat).await,
            "registering {}",
            beat.shard_id
        );
    }
    let assignments = (0..12)
        .map(|n| pb::DomainAssignment {
            domain: format!("zone=az-a/rack=r{n:02}"),
            shard: beats[n % 2].shard_id.clone(),
        })
        .collect();
    client
        .write(pb::Command {
            command: Some(Wire::AssignDomains(pb::AssignDomains {
                assignments,
                allow_move: false,
            })),
        })
        .await
        .expect("assigning domains");
    let before = owners(&client).await;
    let add_s3 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beating = {
        let client = cluster.client();
        let (add_s3, paused, stop) = (add_s3.clone(), paused.clone(), stop.clone());
        tokio::spawn(async move {
            let late = register("s3", "az-c");
            while !stop.load(Ordering::Relaxed) {
                if paused.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                for beat in &beats {
                    heartbeat(&client, beat).await;
                }
                // s3 appears while the second replica leads: the only shard the first replica
                // has no record of, so the only target an evacuation could pick.
                if add_s3.load(Ordering::Relaxed) {
                    heartbeat(&client, &late).await;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    transfer_leader(&client, second).await;
    wait_until_leader(&cluster, second).await;
    add_s3.store(true, Ordering::Relaxed);
    // The second replica leads for longer than a shard lease (3 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        status(&cluster, second).await.map(|s| s.state),
        Some("leader".to_string()),
        "the second replica still leads"
    );
    // The shards' next heartbeats reach the first replica only after it has judged them
    // twice (a shard heartbeats every lease/3, 3 s at the default lease), so its judgement
    // rests on what it knows of them in this term: nothing yet, which earns them a full lease
    // of grace — not on their heartbeats of its first term, which ended more than a lease ago.
    paused.store(true, Ordering::Relaxed);
    transfer_leader(&client, first).await;
    wait_until_leader(&cluster, first).await;
    let rounds = rebalance_rounds(&cluster, first);
    wait_for(
        "two rebalancing rounds on the first replica",
        Duration::from_secs(30),
        || async { (rebalance_rounds(&cluster, first) >= rounds + 2.0).then_some(()) },
    )
    .await;
    paused.store(false, Ordering::Relaxed);
    let rounds = rebalance_rounds(&cluster, first);
    wait_for(
        "three more rebalancing rounds on the first replica",
        Duration::from_secs(30),
        || async { (rebalance_rounds(&cluster, first) >= rounds + 3.0).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    beating.await.expect("heartbeat task");

    let after = owners(&client).await;
    assert_eq!(
        after, before,
        "a domain of a heartbeating shard moved after leadership went A -> B -> A"
    );
}

/// Every connection of the live leader to its peers is cut four times a second for 5 s; a
/// reset is not a dead peer, so the leader keeps its term and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_do_not_depose_a_live_leader() {
    // Default timers (heartbeat 50 ms, election 150-250 ms): the ones a 500 ms back-off breaks.
    let cluster = TestCluster::start_with(options(&[]), 3).await;
    let client = cluster.client();
    let leader = cluster.leader().await;
    let term = status(&cluster, leader)
        .await
        .and_then(|s| s.header)
        .expect("status")
        .raft_term;
    client
        .write(pb::Command {
            command: Some(Wire::RegisterShard(pb::RegisterShard {
                id: "s1".into(),
                address: "127.0.0.1:19001".into(),
                az: "az-a".into(),
                lease_ttl_ms: 600_000,
            })),
        })
        .await
        .expect("registering a shard");

    cluster.set_faults(leader, "reset * 4\n");
    let started = Instant::now();
    let mut written = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let domain = format!("zone=az-a/rack=r{written:03}");
        client
            .write(pb::Command {
                command: Some(Wire::AssignDomains(pb::AssignDomains {
                    assignments: vec![pb::DomainAssignment {
                        domain,
                        shard: "s1".into(),
                    }],
                    allow_move: false,
                })),
            })
            .await
            .unwrap_or_else(|e| panic!("write {written} during the resets: {e}"));
        written += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.set_faults(leader, "");

    for id in 1..=3 {
        let header = status(&cluster, id)
            .await
            .expect("status")
            .header
            .expect("header");
        assert_eq!(
            (header.raft_term, header.leader_id),
            (term, leader),
            "replica {id}: the term moved on or the leader changed under connection resets \
             ({written} writes went through)"
        );
    }
    let log = std::fs::read_to_string(cluster.dir().join(format!("replica-{leader}.log")))
        .expect("leader log");
    let cuts = log.matches("fault injection: cutting connections").count();
    assert!(
        cuts >= 10,
        "the leader's connections were cut ({cuts} times)"
    );
}

/// A client whose preferred replica stops answering (a SIGSTOPped leader keeps its socket: a
/// call waits for its whole deadline) must try another replica on its next call, not wait on
/// the same one again: a shard's heartbeat, whose deadline outlasted its retry budget, kept
/// calling the stopped leader for the whole pause, lapsed at the new leader and lost its
/// domains (`ballast-sim demo`'s starved-coordinator scenario, 100 domains moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaves_a_replica_that_stopped_answering() {
    use ballast_protocol::client::ClientConfig;
    let cluster = TestCluster::start_with(options(&[]), 1).await;
    // A replica that accepts connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a listener");
    let hung_address = hung.local_addr().expect("its address").to_string();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            open.push(socket);
        }
    });
    let mut config = ClientConfig::new(vec![hung_address, cluster.replicas[0].address.clone()]);
    // The shard's settings then: each attempt outlasts the whole retry budget.
    config.attempt_timeout = Duration::from_millis(600);
    config.retry_budget = Duration::from_millis(300);
    let client = BallastClient::new(config).expect("a client");
    let mut answered = Vec::new();
    for _ in 0..3 {
        answered.push(client.revision().await.is_ok());
    }
    held.abort();
    assert_eq!(
        answered,
        [false, true, true],
        "the first call waits on the silent replica; the next ones go to the live one"
    );
}
