//! Sustained writes and thousands of watchers while leadership keeps moving: 2,000 etcd watchers
//! (20 streams of 100, on every replica) follow a prefix while puts run and the leader is moved
//! over and over, with a SIGKILL and restart of a follower in the middle. Every watcher must see
//! every acknowledged put, once, in revision order; the replicas' memory must not grow with the
//! number of leader changes. The CI run moves the leader 60 times; the long run
//! (`BALLAST_LEADER_CHANGES=10000 cargo test -p ballast-sim --test load_under_faults --release
//! -- --ignored`) 10,000 times. With `BALLAST_CONTROL_NO_TRANSFERS=1` the long run keeps the
//! same load and pace but leaves leadership alone: the control for telling growth caused by
//! leader changes from growth caused by the writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::kv_client::KvClient;
use ballast_protocol::etcdserverpb::watch_client::WatchClient;
use ballast_protocol::pb;
use ballast_protocol::pb::cluster_client::ClusterClient;
use ballast_testkit::{ClusterOptions, TestCluster, rss_bytes};
use tokio::sync::Mutex;

const STREAMS: usize = 20;
const WATCHERS_PER_STREAM: usize = 100;

/// Revisions each watcher saw, by (stream, watch id).
type Seen = Arc<Mutex<BTreeMap<(usize, i64), Vec<i64>>>>;

async fn open_watchers(cluster: &TestCluster, seen: Seen, start_revision: i64) {
    let channels: Vec<tonic::transport::Channel> = cluster
        .replicas
        .iter()
        .map(|r| cluster.channel(r.id))
        .collect();
    for stream in 0..STREAMS {
        let (seen, channels) = (seen.clone(), channels.clone());
        tokio::spawn(async move {
            // Like an etcd client: when a stream breaks (its replica was killed), open it again
            // on the next replica, each watcher resuming after the last revision it saw.
            let mut replica = stream % channels.len();
            loop {
                let (tx, rx) = tokio::sync::mpsc::channel(WATCHERS_PER_STREAM);
                {
                    let seen = seen.lock().await;
                    for watch_id in 0..WATCHERS_PER_STREAM as i64 {
                        let from = seen
                            .get(&(stream, watch_id))
                            .and_then(|r| r.last())
                            .map_or(start_revision, |last| last + 1);
                        let _ = tx.try_send(epb::WatchRequest {
                            request_union: Some(epb::watch_request::RequestUnion::CreateRequest(
                                epb::WatchCreateRequest {
                                    key: b"load/".to_vec(),
                                    range_end: b"load0".to_vec(),
                                    start_revision: from,
                                    watch_id,
                                    ..Default::default()
                                },
                            )),
                        });
                    }
                }
                let opened = WatchClient::new(channels[replica].clone())
                    .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await;
                if let Ok(responses) = opened {
                    let mut responses = responses.into_inner();
                    let _keep_open = tx;
                    while let Ok(Some(response)) = responses.message().await {
                        if response.canceled {
                            // Said here, so a watcher that then misses puts shows why.
                            eprintln!(
                                "watcher {stream}/{} canceled: compact revision {}, reason {:?}",
                                response.watch_id,
                                response.compact_revision,
                                response.cancel_reason
                            );
                        }
                        let mut seen = seen.lock().await;
                        let revisions = seen.entry((stream, response.watch_id)).or_default();
                        revisions.extend(
                            response
                                .events
                                .iter()
                                .filter_map(|e| e.kv.as_ref())
                                .map(|kv| kv.mod_revision),
                        );
                    }
                }
                replica = (replica + 1) % channels.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

async fn rss_total(cluster: &TestCluster) -> u64 {
    cluster
        .replicas
        .iter()
        .filter_map(|r| r.pid().and_then(rss_bytes))
        .sum()
}

async fn run(leader_changes: usize) {
    let control = std::env::var_os("BALLAST_CONTROL_NO_TRANSFERS").is_some();
    let mut cluster = TestCluster::start_with(
        // Short leases: a transfer waits one out, and this test makes thousands.
        ClusterOptions::sim(env!("CARGO_BIN_EXE_ballast-sim")).with_timers(20, 100, 200),
        3,
    )
    .await;
    let start = ballast_testkit::current_revision(&cluster.client()).await as i64 + 1;
    let seen: Seen = Arc::default();
    open_watchers(&cluster, seen.clone(), start).await;

    // Writers: puts through whichever replica answers, recording acknowledged revisions.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let endpoints: Vec<tonic::transport::Channel> = cluster
            .replicas
            .iter()
            .map(|r| cluster.channel(r.id))
            .collect();
        let (stop, acked, seen) = (stop.clone(), acked.clone(), seen.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut kv = KvClient::new(endpoints[n % endpoints.len()].clone());
                let put = kv.put(epb::PutRequest {
                    key: format!("load/{writer}/{}", n % 50).into_bytes(),
                    value: vec![b'v'; 100],
                    ..Default::default()
                });
                if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(2), put).await
                    && let Some(header) = answer.into_inner().header
                {
                    acked.lock().await.push(header.revision);
                }
                // Keep the KV history short (as an operator's auto-compaction would), so memory
                // that grows can only be something leaking.
                if writer == 0 && n.is_multiple_of(200) {
                    let head = acked.lock().await.iter().max().copied().unwrap_or(0);
                    // Never past what a watcher still has to see: one whose stream broke
                    // resumes after the last revision it saw, and a compacted start revision
                    // cancels its watch (as etcd does), which would read as missed puts.
                    let slowest = {
                        let seen = seen.lock().await;
                        if seen.len() < STREAMS * WATCHERS_PER_STREAM {
                            start - 1
                        } else {
                            seen.values()
                                .map(|r| r.last().copied().unwrap_or(start - 1))
                                .min()
                                .unwrap_or(start - 1)
                        }
                    };
                    let _ = kv
                        .compact(epb::CompactionRequest {
                            revision: (head - 100).min(slowest),
                            physical: false,
                        })
                        .await;
                }
                // ~25 puts/s in all: each one fans out to every watcher.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }));
    }

    // Move the leader round the group; kill and restart a follower halfway.
    let started = Instant::now();
    let mut baseline = 0;
    let mut changes = 0;
    let mut attempts = 0;
    while changes < leader_changes {
        attempts += 1;
        assert!(
            attempts < leader_changes * 4 + 100,
            "only {changes} leader changes in {attempts} attempts"
        );
        if changes == leader_changes / 2 && attempts > 1 {
            let leader = cluster.leader().await;
            let victim = cluster.follower_of(leader);
            cluster.kill(victim);
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.restart(victim);
        }
        if changes == leader_changes / 10 && baseline == 0 {
            // After warm-up: every stream, watcher and connection exists.
            baseline = rss_total(&cluster).await;
        }
        // Round the group: 1 → 2 → 3 → 1 ...
        let leader = cluster.leader().await;
        let ids: Vec<u64> = cluster.replicas.iter().map(|r| r.id).collect();
        let at = ids.iter().position(|id| *id == leader).unwrap_or(0);
        let next = ids[(at + 1) % ids.len()];
        let moved = if control {
            // The control run: the same load and the same pace, leadership left alone, so
            // growth that shows here too is not caused by leader changes.
            tokio::time::sleep(Duration::from_millis(480)).await;
            Ok(tonic::Response::new(pb::TransferLeaderResponse::default()))
        } else {
            ClusterClient::new(cluster.channel(leader))
                .transfer_leader(pb::TransferLeaderRequest { target: next })
                .await
        };
        if moved.is_ok() {
            changes += 1;
            if changes.is_multiple_of(500) {
                eprintln!(
                    "{changes} leader changes after {:.0} s; RSS of the three replicas {:.1} MiB",
                    started.elapsed().as_secs_f64(),
                    rss_total(&cluster).await as f64 / (1 << 20) as f64
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        let _ = writer.await;
    }
    let final_revision = ballast_testkit::current_revision(&cluster.client()).await;
    cluster.wait_until_converged(final_revision).await;
    let end = rss_total(&cluster).await;

    let acked = acked.lock().await.clone();
    assert!(acked.len() > 100, "only {} puts acknowledged", acked.len());
    // Every watcher sees every acknowledged put once, in order (a watcher may also see
    // puts whose acknowledgement was lost, never a revision twice).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = seen.lock().await;
        let complete = seen.len() == STREAMS * WATCHERS_PER_STREAM
            && seen.values().all(|revisions| {
                revisions.last().copied().unwrap_or(0) >= *acked.iter().max().unwrap()
            });
        if complete || Instant::now() > deadline {
            assert_eq!(
                seen.len(),
                STREAMS * WATCHERS_PER_STREAM,
                "watchers that saw nothing"
            );
            for ((stream, id), revisions) in seen.iter() {
                assert!(
                    revisions.windows(2).all(|w| w[0] < w[1]),
                    "watcher {stream}/{id}: revisions out of order or repeated"
                );
                let set: std::collections::BTreeSet<i64> = revisions.iter().copied().collect();
                let missing = acked.iter().filter(|r| !set.contains(r)).count();
                assert_eq!(
                    missing, 0,
                    "watcher {stream}/{id} missed {missing} acknowledged puts"
                );
            }
            break;
        }
        drop(seen);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let growth = end.saturating_sub(baseline) as f64 / (1 << 20) as f64;
    eprintln!(
        "{leader_changes} leader changes in {:.1} s, {} puts acknowledged, {} watchers; \
         RSS of the three replicas after warm-up {:.1} MiB, at the end {:.1} MiB (+{growth:.1} MiB)",
        started.elapsed().as_secs_f64(),
        acked.len(),
        STREAMS * WATCHERS_PER_STREAM,
        baseline as f64 / (1 << 20) as f64,
        end as f64 / (1 << 20) as f64,
    );
    // A leak per leader change would show as growth proportional to the changes; allow the
    // steady working set to settle but not to grow with them. The settling allowance is what
    // the footprint work (issue #24) left: the 10,000-change run grew by 27.3 MiB after
    // warm-up on 2026-12-07 (it was 69.5 MiB on 2026-12-02, under a bound of 64 + 0.002 a
    // change), and by 27.1 MiB again after the memtable and snapshot changes (595aa94, 4,653 s;
    // 84.5 -> 111.6 MiB); the CI run by ~5 MiB.
    assert!(
        growth < 32.0 + leader_changes as f64 * 0.002,
        "memory grew by {growth:.1} MiB over {leader_changes} leader changes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_write_while_leadership_moves() {
    run(60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: 10,000 leader changes (see the module docs)"]
async fn ten_thousand_leader_changes_without_growth() {
    let changes = std::env::var("BALLAST_LEADER_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    run(changes).await;
}
