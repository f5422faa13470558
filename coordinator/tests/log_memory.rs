//! The log's memory goes with a snapshot, and when the log goes quiet: its entries leave the
//! storage engine's memtable (issue #24). fjall flushes a memtable only
//! when it passes its size limit, so without a flush the last megabytes of log stayed in
//! memory for good, purged or kept for lagging followers alike.

mod common;

use std::time::Duration;

use ballast_protocol::pb;
use ballast_testkit::fleet::{FleetShape, load_fleet};
use ballast_testkit::{FAST_FLAGS, TestCluster, wait_for};
use common::coord_binary;

/// `ballast_storage_write_buffer_bytes` of replica `id`.
fn write_buffer(cluster: &TestCluster, id: u64) -> f64 {
    cluster
        .metric(id, "ballast_storage_write_buffer_bytes")
        .unwrap_or_else(|| panic!("replica {id} exports no write buffer gauge"))
}

/// Loads about a megabyte of log: under the log memtable's 2 MiB limit, so fjall would not
/// flush it on its own. Returns the write buffer bytes on `id` right after.
async fn load_under_the_memtable_limit(cluster: &TestCluster, id: u64) -> f64 {
    load_fleet(
        &cluster.client(),
        FleetShape {
            shards: 4,
            domains: 12_000,
            bindings: 10,
            quotas: 1,
        },
    )
    .await
    .expect("loading domains");
    let loaded = write_buffer(cluster, id);
    eprintln!("write buffer after the load: {loaded} bytes");
    assert!(
        loaded > 512.0 * 1024.0,
        "the load left only {loaded} bytes in the memtables; the test needs more log than that"
    );
    loaded
}

/// Three replicas whose snapshots come neither from the entry count nor from the timer
/// within a test's time.
async fn start_without_timed_snapshots() -> TestCluster {
    let mut flags = FAST_FLAGS.to_vec();
    flags.extend([
        "--snapshot-entries",
        "1000000",
        "--snapshot-interval-secs",
        "3600",
    ]);
    TestCluster::start(coord_binary(), 3, &flags).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_log_releases_its_memory_without_a_snapshot() {
    let cluster = start_without_timed_snapshots().await;
    let leader = cluster.leader().await;
    let loaded = load_under_the_memtable_limit(&cluster, leader).await;
    // Nothing more is written: within a few seconds the log counts as quiet.
    let released = wait_for(
        "the quiet log to leave the memtables",
        Duration::from_secs(30),
        || async {
            let now = write_buffer(&cluster, leader);
            (now < loaded / 4.0).then_some(now)
        },
    )
    .await;
    eprintln!("write buffer once the log was quiet: {released} bytes");
    let status = cluster.status(leader).await.expect("the leader's status");
    assert_eq!(status.snapshot_index, 0, "no snapshot was taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_releases_the_logs_memory_on_a_busy_replica() {
    let mut flags = FAST_FLAGS.to_vec();
    // No automatic snapshot during the load. The few entries the load makes stay in the log
    // behind the snapshot (kept for followers that lag, up to --logs-to-keep): not purged,
    // and still not worth memory.
    flags.extend(["--snapshot-entries", "1000000"]);
    let cluster = TestCluster::start(coord_binary(), 3, &flags).await;
    let leader = cluster.leader().await;
    let loaded = load_under_the_memtable_limit(&cluster, leader).await;

    let snapshot = cluster
        .client_of(leader)
        .cluster(|mut c, req| async move { c.snapshot(req.wrap(pb::SnapshotRequest {})).await })
        .await
        .expect("on-demand snapshot");
    assert!(snapshot.snapshot_index > 0);
    // Small writes all along, so the log is never quiet (which would flush it too).
    let client = cluster.client();
    let mut n = 0;
    let released = wait_for(
        "the log behind the snapshot to leave the memtables",
        Duration::from_secs(30),
        || {
            n += 1;
            let (client, cluster) = (&client, &cluster);
            async move {
                client
                    .write(common::assign(
                        &format!("zone=az-a/rack=small-{n}"),
                        &ballast_testkit::fleet::shard_id(0),
                    ))
                    .await
                    .expect("a small write");
                let now = write_buffer(cluster, leader);
                (now < loaded / 4.0).then_some(now)
            }
        },
    )
    .await;
    eprintln!("write buffer after the snapshot, writes going on: {released} bytes");
}

/// A log past `SNAPSHOT_LOG_BYTES` (64 MiB) since the last snapshot is snapshotted, however
/// far `--snapshot-entries` and `--snapshot-interval-secs` are: entries carry groups of
/// requests, so their count alone does not bound the log's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_past_its_byte_limit_is_snapshotted() {
    use ballast_protocol::etcdserverpb as epb;
    use ballast_protocol::etcdserverpb::kv_client::KvClient;

    let cluster = start_without_timed_snapshots().await;
    let leader = cluster.leader().await;
    let mut kv = KvClient::new(cluster.channel(leader));
    // 72 puts of 1 MiB: 72 MiB of log, past the limit once.
    for n in 0..72u8 {
        kv.put(epb::PutRequest {
            key: format!("big/{n:02}").into_bytes(),
            value: vec![n; 1024 * 1024],
            ..Default::default()
        })
        .await
        .expect("a 1 MiB put");
    }
    let snapshot_index = wait_for(
        "a snapshot of the log past its byte limit",
        Duration::from_secs(60),
        || async {
            let status = cluster.status(leader).await?;
            (status.snapshot_index > 0).then_some(status.snapshot_index)
        },
    )
    .await;
    eprintln!("snapshot at index {snapshot_index}");
}
