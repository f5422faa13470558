//! The log's memory goes with a snapshot: the entries behind it leave the storage engine's
//! memtable, even on a replica that then goes quiet (issue #24). fjall flushes a memtable only
//! when it passes its size limit, so without a flush the last megabytes of log stayed in
//! memory for good, purged or kept for lagging followers alike.

mod common;

use std::time::Duration;

use ballast_protocol::pb;
use ballast_testkit::fleet::{FleetShape, load_fleet};
use ballast_testkit::{FAST_FLAGS, TestCluster, http_get, metric, wait_for};
use common::coord_binary;

/// `ballast_storage_write_buffer_bytes` of replica `id`.
fn write_buffer(cluster: &TestCluster, id: u64) -> f64 {
    let (_, page) = http_get(&cluster.replica(id).http_address, "/metrics")
        .unwrap_or_else(|| panic!("replica {id}'s metrics"));
    metric(&page, "ballast_storage_write_buffer_bytes")
        .unwrap_or_else(|| panic!("replica {id} exports no write buffer gauge"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_releases_the_logs_memory_on_a_quiet_replica() {
    let mut flags = FAST_FLAGS.to_vec();
    // No automatic snapshot during the load. The few entries the load makes stay in the log
    // behind the snapshot (kept for followers that lag, up to --logs-to-keep): not purged,
    // and still not worth memory.
    flags.extend(["--snapshot-entries", "1000000"]);
    let cluster = TestCluster::start(coord_binary(), 3, &flags).await;
    let leader = cluster.leader().await;
    // About a megabyte of log: under the log memtable's 2 MiB limit, so fjall would not flush
    // it on its own.
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
    let loaded = write_buffer(&cluster, leader);
    eprintln!("write buffer after the load: {loaded} bytes");
    assert!(
        loaded > 512.0 * 1024.0,
        "the load left only {loaded} bytes in the memtables; the test needs more log than that"
    );

    let snapshot = cluster
        .client_of(leader)
        .cluster(|mut c, req| async move { c.snapshot(req.wrap(pb::SnapshotRequest {})).await })
        .await
        .expect("on-demand snapshot");
    assert!(snapshot.snapshot_index > 0);
    let released = wait_for(
        "the log behind the snapshot to leave the memtables",
        Duration::from_secs(30),
        || async {
            let now = write_buffer(&cluster, leader);
            (now < loaded / 4.0).then_some(now)
        },
    )
    .await;
    eprintln!("write buffer after the snapshot: {released} bytes");
}
