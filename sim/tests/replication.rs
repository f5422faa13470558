//! The replication path under stress (issue #23):
//!
//! - A leader sends its new entries to followers while its own fsync of them runs (ADR 0018
//!   decision 1). With the leader's fsync held (`log-leader-fsync-hold`, a disk that stalls):
//!   the followers receive the entry, nobody applies it and the client is not answered until
//!   the leader's copy is on disk too; and a leader whose disk stays stalled past the election
//!   timeout stops sending, so the followers elect another one, which keeps the write.
//! - A leader SIGKILLed in the middle of a stream of writes from 64 clients loses none that
//!   was acknowledged.
//! - A follower that falls megabytes behind catches up without the group losing its leader.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ballast_protocol::etcdserverpb::kv_client::KvClient;
use ballast_protocol::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_protocol::etcdserverpb::{PutRequest, RangeRequest, StatusRequest, StatusResponse};
use ballast_testkit::{ClusterOptions, TestCluster, current_revision, wait_for};

const HOLD: &str = "log-leader-fsync-hold";

/// Replica `id`'s answer to etcd's `Maintenance.Status`.
async fn etcd_status(cluster: &TestCluster, id: u64) -> Option<StatusResponse> {
    let status = MaintenanceClient::new(cluster.channel(id))
        .status(StatusRequest {})
        .await
        .ok()?;
    Some(status.into_inner())
}

/// (last log index, applied index) as replica `id` reports them.
async fn indexes(cluster: &TestCluster, id: u64) -> Option<(u64, u64)> {
    let status = etcd_status(cluster, id).await?;
    Some((status.raft_index, status.raft_applied_index))
}

/// `key`'s value in replica `id`'s own applied state.
async fn local_value(cluster: &TestCluster, id: u64, key: &str) -> Option<Vec<u8>> {
    KvClient::new(cluster.channel(id))
        .range(RangeRequest {
            key: key.as_bytes().to_vec(),
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("a local read")
        .into_inner()
        .kvs
        .pop()
        .map(|kv| kv.value)
}

fn held(dir: &Path) -> bool {
    dir.join(format!("{HOLD}.held")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_answered_only_once_the_leaders_own_copy_is_on_disk() {
    let hold_dir = tempfile::tempdir().expect("a hold dir");
    let hold = hold_dir.path().display().to_string();
    // Long timers, so the checks below run well inside the election timeout (3 s), past
    // which a leader with a stalled disk stops sending.
    let mut cluster =
        TestCluster::start_with(fast_cluster_options().with_timers(100, 1500, 3000), 3).await;
    let ids: Vec<u64> = cluster.replicas.iter().map(|r| r.id).collect();
    for &id in &ids {
        cluster.kill(id);
    }
    // Armed everywhere: the hold is reached only by a leader's own fsync of client entries.
    for &id in &ids {
        cluster.restart_with_env(
            id,
            &[],
            &[
                ("BALLAST_FAILPOINTS", HOLD),
                ("BALLAST_FAILPOINT_DIR", &hold),
            ],
        );
    }
    let leader = cluster.leader().await;
    let followers: Vec<u64> = ids.iter().copied().filter(|&id| id != leader).collect();

    let mut client = KvClient::new(cluster.channel(leader));
    let put = tokio::spawn(async move {
        client
            .put(PutRequest {
                key: b"k/held".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
    });
    wait_for(
        "the leader to reach its held fsync",
        Duration::from_secs(10),
        || async { held(hold_dir.path()).then_some(()) },
    )
    .await;
    let (entry, _) = indexes(&cluster, leader)
        .await
        .expect("the leader's status");
    // Sent to the followers while the leader's own fsync is held.
    for &id in &followers {
        wait_for(
            &format!("replica {id} to receive entry {entry}"),
            Duration::from_secs(2),
            || async { (indexes(&cluster, id).await?.0 >= entry).then_some(()) },
        )
        .await;
    }
    // For a while, well inside the election timeout: not answered, applied nowhere.
    for _ in 0..10 {
        assert!(
            !put.is_finished(),
            "the put was answered before the leader's copy was on disk: {:?}",
            put.await
        );
        for &id in &ids {
            let (_, applied) = indexes(&cluster, id).await.expect("status");
            assert!(
                applied < entry,
                "replica {id} applied entry {entry} before the leader's copy was on disk"
            );
            assert_eq!(
                local_value(&cluster, id, "k/held").await,
                None,
                "replica {id}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The disk stays stalled past the election timeout: the followers elect a leader of
    // their own, which holds the entry on disk and commits it.
    let new_leader = wait_for(
        "a follower to take over from the stalled leader",
        Duration::from_secs(30),
        || async {
            for &id in &followers {
                let status = cluster.status(id).await?;
                if status.state == "leader" {
                    return Some(id);
                }
            }
            None
        },
    )
    .await;
    wait_for(
        "the new leader to apply the write",
        Duration::from_secs(10),
        || async {
            local_value(&cluster, new_leader, "k/held")
                .await
                .map(|_| ())
        },
    )
    .await;
    assert!(
        !put.is_finished(),
        "the stalled leader answered the put: {:?}",
        put.await
    );

    // The disk recovers: the old leader's client gets its answer (the write, or a redirect),
    // and every replica ends up holding the write.
    std::fs::write(hold_dir.path().join(format!("{HOLD}.release")), b"").expect("release");
    let _answer = tokio::time::timeout(Duration::from_secs(20), put)
        .await
        .expect("the put was answered once the disk recovered")
        .expect("the put task");
    for &id in &ids {
        wait_for(
            &format!("replica {id} to apply the write"),
            Duration::from_secs(20),
            || async { local_value(&cluster, id, "k/held").await.map(|_| ()) },
        )
        .await;
    }
}

fn fast_cluster_options() -> ClusterOptions {
    ClusterOptions::sim(env!("CARGO_BIN_EXE_ballast-sim"))
}

/// Keys under `prefix` in replica `id`'s own applied state.
async fn local_keys(cluster: &TestCluster, id: u64, prefix: &str) -> BTreeSet<String> {
    KvClient::new(cluster.channel(id))
        .max_decoding_message_size(ballast_protocol::client::MAX_MESSAGE_BYTES)
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: ballast_protocol::coordination::prefix_end(prefix.as_bytes()),
            serializable: true,
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("listing replica {id}'s keys: {e}"))
        .into_inner()
        .kvs
        .into_iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// The term replica `id` reports.
async fn term(cluster: &TestCluster, id: u64) -> Option<u64> {
    Some(etcd_status(cluster, id).await?.header?.raft_term)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_in_a_stream_of_writes_loses_none_it_acknowledged() {
    const WRITERS: usize = 64;
    let mut cluster = TestCluster::start_with(fast_cluster_options(), 3).await;
    let ids: Vec<u64> = cluster.replicas.iter().map(|r| r.id).collect();
    let channels: Vec<_> = ids.iter().map(|&id| cluster.channel(id)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let value = vec![b'v'; 1024];
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (channels, stop, value) = (channels.clone(), stop.clone(), value.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                // Bounded: at most 1000 puts a writer, or until told to stop.
                for n in 0..1000usize {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // Spread over every replica, as etcd clients do; a put to the killed one
                    // fails and is simply not acknowledged.
                    let channel = channels[(w + n) % channels.len()].clone();
                    let key = format!("k/{w:02}/{n:04}");
                    let mut client = KvClient::new(channel);
                    let put = client.put(PutRequest {
                        key: key.clone().into_bytes(),
                        value: value.clone(),
                        ..Default::default()
                    });
                    match tokio::time::timeout(Duration::from_secs(5), put).await {
                        Ok(Ok(_)) => acknowledged.push(key),
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                acknowledged
            })
        })
        .collect();
    let leader = cluster.leader().await;
    let before = current_revision(&cluster.client()).await;
    cluster.wait_for_revision(leader, before + 500).await;
    cluster.kill(leader);
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let at_kill = current_revision(&cluster.client()).await;
    cluster.wait_for_revision(new_leader, at_kill + 500).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeSet::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("a writer"));
    }
    assert!(
        acknowledged.len() >= 1000,
        "{} puts acknowledged",
        acknowledged.len()
    );

    cluster.restart(leader);
    let revision = current_revision(&cluster.client()).await;
    cluster.wait_until_converged(revision).await;
    for &id in &ids {
        let held = local_keys(&cluster, id, "k/").await;
        let lost: Vec<_> = acknowledged.difference(&held).take(10).collect();
        assert!(
            lost.is_empty(),
            "replica {id} lacks acknowledged puts (first 10 shown): {lost:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_megabytes_behind_catches_up_without_the_group_losing_its_leader() {
    let mut cluster = TestCluster::start_with(fast_cluster_options(), 3).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower_of(leader);
    let term_before = term(&cluster, leader).await.expect("the leader's term");
    cluster.kill(follower);
    // 2,000 puts of 4 KiB, 32 at a time, while the follower is down: 8 MB behind.
    let value = vec![b'w'; 4096];
    let channel = cluster.channel(leader);
    let puts: Vec<_> = (0..32)
        .map(|w| {
            let (channel, value) = (channel.clone(), value.clone());
            tokio::spawn(async move {
                for n in 0..(2000 / 32 + 1) {
                    KvClient::new(channel.clone())
                        .put(PutRequest {
                            key: format!("big/{w:02}/{n:03}").into_bytes(),
                            value: value.clone(),
                            ..Default::default()
                        })
                        .await
                        .expect("a put while a follower is down");
                }
            })
        })
        .collect();
    for put in puts {
        put.await.expect("a writer");
    }
    cluster.restart(follower);
    let revision = current_revision(&cluster.client()).await;
    cluster.wait_for_revision(follower, revision).await;
    assert_eq!(
        local_keys(&cluster, follower, "big/").await,
        local_keys(&cluster, leader, "big/").await,
        "the follower caught up to a different state"
    );
    // The same leader in the same term throughout: catching up cost no election.
    assert_eq!(cluster.leader().await, leader);
    assert_eq!(term(&cluster, leader).await, Some(term_before));
    assert_eq!(term(&cluster, follower).await, Some(term_before));
}
