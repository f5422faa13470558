//! Lease reads (`--read-policy lease`, ADR 0020) with real replica processes: a leader whose
//! lease holds answers linearizable reads from its own state, on its own clients' behalf and
//! as the read index it hands followers; a leader frozen past its lease, while the others
//! elect a new leader and write, serves no stale value when it wakes.

use std::time::Duration;

use ballast_testkit::{ClusterOptions, FAST_FLAGS, TestCluster, wait_for};
use etcd_client::{Client, ConnectOptions};

/// Three replicas on the test timers with lease reads.
async fn lease_cluster() -> TestCluster {
    let mut flags = FAST_FLAGS.to_vec();
    flags.extend(["--read-policy", "lease"]);
    let options = ClusterOptions {
        extra: flags.iter().map(|s| s.to_string()).collect(),
        ..ClusterOptions::sim(env!("CARGO_BIN_EXE_ballast-sim"))
    };
    TestCluster::start_with(options, 3).await
}

/// A client of replica `id` alone (etcd clients balance over what they are given).
async fn client_of(cluster: &TestCluster, id: u64) -> Client {
    Client::connect(
        [cluster.replica(id).address.clone()],
        Some(ConnectOptions::new().with_timeout(Duration::from_secs(5))),
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to replica {id}: {e}"))
}

/// `ballast_linearizable_reads_total{how=...}` on replica `id`.
fn reads_counted(cluster: &TestCluster, id: u64, how: &str) -> f64 {
    cluster
        .metric(
            id,
            &format!("ballast_linearizable_reads_total{{how=\"{how}\"}}"),
        )
        .unwrap_or(0.0)
}

async fn get(client: &mut Client, key: &str) -> Result<Option<String>, etcd_client::Error> {
    let answer = client.get(key, None).await?;
    Ok(answer
        .kvs()
        .first()
        .map(|kv| kv.value_str().expect("utf-8 value").to_string()))
}

/// Writes `lease/k` = `{tag}{i}` through `writer` and reads it back at once through `reader`,
/// for i in 1..=`count`: every read must see the write before it.
async fn writes_read_back(writer: &mut Client, reader: &mut Client, tag: &str, count: usize) {
    for i in 1..=count {
        let value = format!("{tag}{i}");
        writer
            .put("lease/k", value.as_str(), None)
            .await
            .unwrap_or_else(|e| panic!("put {value}: {e}"));
        let read = get(reader, "lease/k")
            .await
            .unwrap_or_else(|e| panic!("read after {value}: {e}"));
        assert_eq!(read.as_deref(), Some(value.as_str()), "read {i} of {tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_a_read_lease_answers_reads_without_a_quorum_round() {
    const READS: usize = 40;
    let cluster = lease_cluster().await;
    let leader = cluster.leader().await;
    let follower = cluster.follower_of(leader);
    let mut on_leader = client_of(&cluster, leader).await;
    let mut on_follower = client_of(&cluster, follower).await;

    // The lease needs an append of the leader's own term committed and a majority that
    // accepted one within the lease; heartbeats renew it every 50 ms.
    on_leader.put("lease/k", "v0", None).await.expect("put");
    let before = reads_counted(&cluster, leader, "lease");
    // Written through the follower, read on the leader: each read sees the write before it.
    writes_read_back(&mut on_follower, &mut on_leader, "v", READS).await;
    let by_lease = reads_counted(&cluster, leader, "lease") - before;
    let by_round = reads_counted(&cluster, leader, "round");
    eprintln!("{READS} reads on the leader: {by_lease} by lease, {by_round} by a quorum round");
    // A lease can lapse on a slow box (a heartbeat late by more than the lease); most reads
    // must still go without a round, or the lease is not doing its job.
    assert!(
        by_lease >= (READS / 2) as f64,
        "only {by_lease} of {READS} reads on the leader were answered under its lease"
    );

    // A follower asks the leader for a read index; the leader answers from its lease.
    let before = reads_counted(&cluster, leader, "lease_read_index");
    writes_read_back(&mut on_leader, &mut on_follower, "w", READS).await;
    let handed = reads_counted(&cluster, leader, "lease_read_index") - before;
    eprintln!("{READS} reads on a follower: {handed} read indexes from the leader's lease");
    assert!(
        handed >= (READS / 2) as f64,
        "only {handed} of {READS} read indexes were answered under the leader's lease"
    );
}

/// The leader is frozen (SIGSTOP) with a read already on its way to it; the other two elect a
/// new leader and overwrite the key; the old leader wakes still believing it leads. Its lease
/// ran out while it was frozen, so the read must not see the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_serves_no_stale_read_when_it_wakes() {
    let cluster = lease_cluster().await;
    let old = cluster.leader().await;
    let mut on_old = client_of(&cluster, old).await;
    on_old.put("frozen/k", "before", None).await.expect("put");
    // Under the lease, the old leader answers from its own state.
    let warm = reads_counted(&cluster, old, "lease");
    wait_for(
        "a read under the old leader's lease",
        Duration::from_secs(10),
        || {
            let mut client = on_old.clone();
            let cluster = &cluster;
            async move {
                let read = get(&mut client, "frozen/k").await.ok()?;
                assert_eq!(read.as_deref(), Some("before"));
                (reads_counted(cluster, old, "lease") > warm).then_some(())
            }
        },
    )
    .await;

    cluster.pause(old);
    let others: Vec<u64> = cluster
        .replicas
        .iter()
        .map(|r| r.id)
        .filter(|id| *id != old)
        .collect();
    let new = wait_for(
        "a new leader among the others",
        Duration::from_secs(30),
        || async {
            for id in &others {
                let status =
                    tokio::time::timeout(Duration::from_secs(2), cluster.status(*id)).await;
                if let Ok(Some(s)) = status
                    && s.state == "leader"
                {
                    return Some(*id);
                }
            }
            None
        },
    )
    .await;
    let mut on_new = client_of(&cluster, new).await;
    wait_for(
        "the new leader to take a write",
        Duration::from_secs(30),
        || {
            let mut client = on_new.clone();
            async move { client.put("frozen/k", "after", None).await.ok() }
        },
    )
    .await;
    assert_eq!(
        get(&mut on_new, "frozen/k")
            .await
            .expect("read on the new leader")
            .as_deref(),
        Some("after")
    );

    // The read reaches the frozen leader's socket first and is served when it wakes.
    let read = tokio::spawn(async move { get(&mut on_old, "frozen/k").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.resume(old);
    let answer = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the woken replica answers the read within 20 s")
        .expect("the read task");
    match answer {
        Ok(value) => assert_eq!(
            value.as_deref(),
            Some("after"),
            "the woken old leader answered a linearizable read with a value overwritten while \
             it was frozen"
        ),
        // Refusing is allowed (it knows no leader yet, or timed out); a stale value is not.
        Err(e) => eprintln!("the woken old leader refused the read: {e}"),
    }
}
