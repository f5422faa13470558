//! A replica whose disk fills up: its data dir sits on a small tmpfs that the test fills. The
//! other two keep taking writes; the full replica stops with the storage error in its log
//! instead of acknowledging what it could not store; once space is back it restarts from what
//! it had and catches up to the identical state. Needs permission to mount a tmpfs, so it is
//! ignored by default; `.ci/run` runs it as root with
//! `cargo test -p ballast-sim --test disk_full -- --ignored`, where a failed mount fails it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ballast_protocol::etcdserverpb::PutRequest;
use ballast_protocol::etcdserverpb::kv_client::KvClient;
use ballast_testkit::{ClusterOptions, TestCluster, current_revision};

/// A mounted tmpfs, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, megabytes: u32) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(at).map_err(|e| format!("creating {}: {e}", at.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if out.status.success() {
            Ok(SmallDisk(at.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn available(&self) -> u64 {
        let output = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()
            .expect("df");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mounts a tmpfs (needs root or CAP_SYS_ADMIN); .ci/run runs it with --ignored"]
async fn a_full_disk_stops_one_replica_cleanly_and_it_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SmallDisk::mount(&dir.path().join("small"), 48).unwrap_or_else(|e| {
        panic!("cannot mount a 48 MiB tmpfs (needs root or CAP_SYS_ADMIN): {e}")
    });
    let cluster_dir = dir.path().join("cluster");
    std::fs::create_dir_all(&cluster_dir).expect("cluster dir");
    std::fs::create_dir_all(disk.0.join("replica-3")).expect("replica dir on the small disk");
    std::os::unix::fs::symlink(disk.0.join("replica-3"), cluster_dir.join("replica-3"))
        .expect("symlink");
    let mut cluster = TestCluster::start_with(
        ClusterOptions {
            dir: Some(cluster_dir.clone()),
            ..ClusterOptions::sim(env!("CARGO_BIN_EXE_ballast-sim"))
        },
        3,
    )
    .await;
    // Replica 3 must not lead: a full leader would only cost an election, the point here is
    // a follower that cannot store what it is sent.
    let leader = cluster.leader().await;
    assert_ne!(leader, 3, "replica 1 bootstraps and leads");

    // Leave about 1 MiB free, then write 8 MiB.
    let filler = disk.0.join("filler");
    let room = disk.available().saturating_sub(1 << 20);
    std::fs::write(&filler, vec![7u8; room as usize]).expect("filling the disk");
    let mut kv = KvClient::new(cluster.channel(leader));
    let value = vec![b'x'; 64 * 1024];
    for n in 0..128 {
        kv.put(PutRequest {
            key: format!("k/{n:03}").into_bytes(),
            value: value.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("put {n} with one replica's disk full: {e}"));
    }
    // The full replica reports the storage error and exits (its supervisor restarts it),
    // instead of acknowledging what it could not store or lingering half-alive.
    let ended = cluster.wait_for_exit(3, Duration::from_secs(30)).await;
    assert!(
        ended.is_some_and(|s| !s.success()),
        "replica 3 kept running on a full disk"
    );
    let logs = std::fs::read_to_string(cluster_dir.join("replica-3.log")).expect("log");
    assert!(logs.contains("No space left on device"), "{logs}");
    assert!(logs.contains("the Raft core stopped"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    // Space comes back; the replica restarts from its own data and catches up.
    std::fs::remove_file(&filler).expect("freeing space");
    cluster.restart(3);
    let revision = current_revision(&cluster.client()).await;
    cluster.wait_until_converged(revision).await;
    let reference = cluster.state_of(leader, "k/").await.expect("state");
    assert_eq!(
        cluster.state_of(3, "k/").await.expect("state of 3"),
        reference
    );
    assert!(reference.contains("k/127"));
    drop(cluster);
    drop(disk);
}
