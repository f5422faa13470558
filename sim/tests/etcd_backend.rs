//! `ballast-coord --backend etcd` against a real etcd (Debian `etcd-server`, started by the
//! test on loopback): three Ballast replicas keep the fleet state and the KV in etcd and serve
//! the same APIs; the log, snapshot and compaction are visible in etcd; a SIGKILLed leader is
//! replaced within its session TTL with no acknowledged write lost; a replica restarted after
//! every replica died reloads everything from etcd; Raft-only administration is refused.

use std::time::Duration;

use ballast_protocol::pb;
use ballast_testkit::etcd::EtcdCluster;
use ballast_testkit::fleet::{FleetShape, list_fleet, load_fleet};
use ballast_testkit::{ClusterOptions, TestCluster, current_revision, wait_for};
use etcd_client::{Client, GetOptions};
use tonic::Code;

const PREFIX: &str = "/ballast/test";

fn options(etcd: &EtcdCluster) -> ClusterOptions {
    ClusterOptions {
        extra: [
            "--backend",
            "etcd",
            "--etcd-endpoints",
            &etcd.endpoints.join(","),
            "--etcd-prefix",
            PREFIX,
            "--etcd-session-ttl-secs",
            "2",
            "--snapshot-entries",
            "40",
            "--logs-to-keep",
            "10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..ClusterOptions::sim(env!("CARGO_BIN_EXE_ballast-sim"))
    }
}

async fn kv_put(client: &mut Client, key: &str, value: &str) -> i64 {
    wait_for(&format!("put {key}"), Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            client
                .put(key, value, None)
                .await
                .ok()
                .and_then(|r| r.header().map(|h| h.revision()))
        }
    })
    .await
}

async fn kv_get(client: &mut Client, key: &str) -> Option<String> {
    let answer = client.get(key, None).await.expect("get");
    answer
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).to_string())
}

async fn keys_in_etcd(etcd: &mut Client, suffix: &str) -> Vec<String> {
    etcd.get(
        format!("{PREFIX}/{suffix}"),
        Some(GetOptions::new().with_prefix().with_keys_only()),
    )
    .await
    .expect("reading etcd")
    .kvs()
    .iter()
    .map(|kv| String::from_utf8_lossy(kv.key()).to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ballast_on_a_real_etcd_serves_the_same_api_and_survives_kills() {
    let etcd_dir = tempfile::tempdir().expect("temp dir");
    let etcd = EtcdCluster::start(etcd_dir.path(), 1).expect("starting etcd");
    let mut raw_etcd = wait_for("etcd to serve", Duration::from_secs(30), || async {
        let mut client = Client::connect(&etcd.endpoints, None).await.ok()?;
        client.get("probe", None).await.ok()?;
        Some(client)
    })
    .await;

    let mut cluster = TestCluster::start_unformed(options(&etcd), 3).await;
    let client = cluster.client();

    // Fleet state through the Ballast API, KV through the etcd API, both on the etcd log.
    let shape = FleetShape {
        shards: 6,
        domains: 300,
        bindings: 60,
        quotas: 2,
    };
    load_fleet(&client, shape).await.expect("loading a fleet");
    let mut kv = Client::connect(cluster.endpoints(), None)
        .await
        .expect("connect");
    for i in 0..60 {
        kv_put(&mut kv, &format!("app/{i:03}"), &format!("v{i}")).await;
    }
    let revision = current_revision(&client).await;
    cluster.wait_until_converged(revision).await;
    let before = list_fleet(&client).await.expect("listing");
    assert_eq!(before.domains.len(), 300);

    // Every replica serves the same state, each through its own linearizable read.
    for id in 1..=3 {
        assert_eq!(
            list_fleet(&cluster.client_of(id)).await.expect("listing"),
            before,
            "replica {id} holds the same fleet state"
        );
    }

    // The log, the snapshot and the compaction are in etcd, with members and a leader.
    let members = keys_in_etcd(&mut raw_etcd, "members/").await;
    assert_eq!(members.len(), 3, "{members:?}");
    assert_eq!(keys_in_etcd(&mut raw_etcd, "leader").await.len(), 1);
    let snapshot_written = wait_for("a snapshot in etcd", Duration::from_secs(30), || async {
        let mut raw = raw_etcd.clone();
        let meta = raw.get(format!("{PREFIX}/snapshot"), None).await.ok()?;
        let kv = meta.kvs().first()?;
        let record: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
        record["index"].as_u64().filter(|i| *i >= 40)
    })
    .await;
    // The leader publishes the snapshot record, then deletes the log behind it.
    let first_kept = wait_for(
        "the log behind the snapshot to be compacted",
        Duration::from_secs(30),
        || async {
            let mut raw = raw_etcd.clone();
            let log = keys_in_etcd(&mut raw, "log/").await;
            log.first()
                .and_then(|k| k.rsplit('/').next())
                .and_then(|i| i.parse::<u64>().ok())
                .filter(|first| *first > 1)
        },
    )
    .await;
    assert!(
        first_kept + 10 > snapshot_written,
        "the log behind snapshot {snapshot_written} is compacted to a tail of 10, first kept {first_kept}"
    );
    assert!(
        !keys_in_etcd(&mut raw_etcd, "snapshot-data/")
            .await
            .is_empty()
    );

    // An entry over etcd's request limit (1.5 MiB by default) is refused with etcd's reason
    // and changes nothing; the group keeps working.
    let refused = kv
        .put("too-big", vec![b'x'; 1536 * 1024], None)
        .await
        .expect_err("larger than etcd's request limit");
    match refused {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(s.message().contains("too large"), "{s:?}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(kv_get(&mut kv, "too-big").await, None);
    kv_put(&mut kv, "after/too-big", "ok").await;

    // Raft-only administration is refused with a reason.
    let refused = client
        .cluster(|mut c, req| async move {
            c.remove_member(req.wrap(pb::RemoveMemberRequest { id: 2 }))
                .await
        })
        .await
        .expect_err("membership is etcd's");
    assert!(refused.to_string().contains("--backend etcd"), "{refused}");

    // SIGKILL the leader: another replica takes the leader key after the session TTL and
    // writes continue; every acknowledged write is still there.
    let leader = cluster.leader().await;
    cluster.kill(leader);
    let survivors = cluster.running_endpoints();
    let mut kv = Client::connect(survivors, None).await.expect("connect");
    kv_put(&mut kv, "after/leader-kill", "ok").await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let survivor_client = cluster.client_of(new_leader);
    assert_eq!(list_fleet(&survivor_client).await.expect("listing"), before);
    for i in [0, 31, 59] {
        assert_eq!(
            kv_get(&mut kv, &format!("app/{i:03}")).await.as_deref(),
            Some(format!("v{i}").as_str())
        );
    }

    // The killed replica comes back and catches up from etcd.
    cluster.restart(leader);
    let revision = current_revision(&survivor_client).await;
    cluster.wait_until_converged(revision).await;

    // Every replica dies; one restarted replica reloads snapshot + log from etcd alone.
    for id in 1..=3 {
        cluster.kill(id);
    }
    cluster.restart(2);
    let lone = cluster.client_of(2);
    let after = wait_for(
        "the restarted replica to serve",
        Duration::from_secs(30),
        || async { list_fleet(&lone).await.ok() },
    )
    .await;
    assert_eq!(after, before, "the fleet state survives in etcd");
    let mut kv = Client::connect([cluster.replica(2).address.clone()], None)
        .await
        .expect("connect");
    assert_eq!(
        kv_get(&mut kv, "after/leader-kill").await.as_deref(),
        Some("ok")
    );
    assert_eq!(kv_get(&mut kv, "app/042").await.as_deref(), Some("v42"));
    kv_put(&mut kv, "after/full-restart", "ok").await;

    // Bad input is still refused with etcd's codes, nothing changed.
    let refused = kv.put("", "v", None).await.expect_err("empty key");
    match refused {
        etcd_client::Error::GRpcStatus(s) => assert_eq!(s.code(), Code::InvalidArgument),
        other => panic!("unexpected error {other:?}"),
    }
}

/// The linearizability checker of `ballast-sim chaos`, over this test's small history.
#[path = "../src/chaos/checker.rs"]
#[allow(dead_code)]
mod checker;

/// Leader A registers the waiter for log index s, then its process pauses past its session
/// TTL (held at the `etcd-append-hold` point, then SIGSTOPped); B takes the lead and appends
/// its own entry at s. When A resumes and applies B's entry from its watch, its client must not
/// be told that its own write was stored: that write never reached the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_never_acknowledges_another_leaders_entry_as_its_own() {
    let etcd_dir = tempfile::tempdir().expect("temp dir");
    let etcd = EtcdCluster::start(etcd_dir.path(), 1).expect("starting etcd");
    wait_for("etcd to serve", Duration::from_secs(30), || async {
        let mut client = Client::connect(&etcd.endpoints, None).await.ok()?;
        client.get("probe", None).await.ok()
    })
    .await;
    let holds = tempfile::tempdir().expect("temp dir");
    let mut cluster = TestCluster::start_unformed(options(&etcd), 2).await;
    // Replica 1 alone, with the hold point armed, so that it leads.
    cluster.kill(1);
    cluster.kill(2);
    let hold_dir = holds.path().to_string_lossy().to_string();
    cluster.restart_with_env(
        1,
        &[],
        &[
            ("BALLAST_FAILPOINTS", "etcd-append-hold"),
            ("BALLAST_FAILPOINT_DIR", hold_dir.as_str()),
        ],
    );
    assert_eq!(cluster.leader().await, 1);
    cluster.restart(2);
    let started = std::time::Instant::now();
    let now = move || started.elapsed().as_micros() as u64;

    // A's write: its appender registers the waiter and stops at the hold point.
    let mut through_a = Client::connect([cluster.replica(1).address.clone()], None)
        .await
        .expect("connect to replica 1");
    let call = now();
    let write_a = tokio::spawn(async move {
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            through_a.put("register", "from-a", None),
        )
        .await;
        (outcome, now())
    });
    wait_for(
        "replica 1's appender to reach the hold point",
        Duration::from_secs(20),
        || async {
            holds
                .path()
                .join("etcd-append-hold.held")
                .exists()
                .then_some(())
        },
    )
    .await;

    // A pauses past its session TTL (2 s); B leads and appends its own entry at A's index.
    cluster.pause(1);
    let replica_b = cluster.client_of(2);
    wait_for("replica 2 to lead", Duration::from_secs(30), || async {
        let status = replica_b
            .cluster(|mut c, req| async move {
                c.status(req.wrap(pb::StatusRequest { options: None }))
                    .await
            })
            .await
            .ok()?;
        (status.state == "leader").then_some(())
    })
    .await;
    let mut through_b = Client::connect([cluster.replica(2).address.clone()], None)
        .await
        .expect("connect to replica 2");
    kv_put(&mut through_b, "other", "from-b").await;

    // A resumes, applies B's entry from its log watch, and answers its client.
    cluster.resume(1);
    let (outcome, ret) = write_a.await.expect("writer task");
    std::fs::write(holds.path().join("etcd-append-hold.release"), b"").expect("release");
    let acknowledged = matches!(outcome, Ok(Ok(_)));
    let read_call = now();
    let stored = kv_get(&mut through_b, "register").await;
    let history = vec![
        checker::Operation {
            client: 0,
            call,
            ret: acknowledged.then_some(ret),
            input: checker::Input::Put("from-a".into()),
            output: if acknowledged {
                checker::Output::Put
            } else {
                checker::Output::Unknown
            },
        },
        checker::Operation {
            client: 1,
            call: read_call,
            ret: Some(now()),
            input: checker::Input::Get,
            output: checker::Output::Get(stored.clone()),
        },
    ];
    assert_eq!(
        checker::check(&history, None, 100_000),
        checker::Verdict::Linearizable,
        "replica 1 answered its writer {outcome:?}, and the register now holds {stored:?}"
    );
    assert!(
        !acknowledged || stored.as_deref() == Some("from-a"),
        "an acknowledged write was lost: {outcome:?}, the register holds {stored:?}"
    );
    // Not left hanging either: the writer was told to retry, and the retry is applied.
    assert!(
        acknowledged
            || matches!(&outcome, Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.code() == Code::Unavailable),
        "the writer must get an answer it can act on, got {outcome:?}"
    );
    kv_put(&mut through_b, "register", "from-a").await;
    assert_eq!(
        kv_get(&mut through_b, "register").await.as_deref(),
        Some("from-a")
    );
}

#[test]
fn etcd_backend_flags_are_checked_before_starting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ballast-sim"))
            .args(["replica", "--id", "1", "--az", "az-a", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .output()
            .expect("running ballast-sim replica");
        assert!(!out.status.success(), "{extra:?} must be refused");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(run(&["--backend", "etcd"]).contains("--etcd-endpoints"));
    assert!(
        run(&[
            "--backend",
            "etcd",
            "--etcd-endpoints",
            "127.0.0.1:1",
            "--bootstrap"
        ])
        .contains("Raft-backend flags")
    );
    assert!(
        run(&[
            "--backend",
            "etcd",
            "--etcd-endpoints",
            "127.0.0.1:1",
            "--etcd-prefix",
            "ballast"
        ])
        .contains("absolute key path")
    );
    assert!(run(&["--etcd-endpoints", "127.0.0.1:1"]).contains("needs --backend etcd"));
    assert!(
        !dir.path().join("replica").exists(),
        "nothing was written for refused flags"
    );
}

/// A replica started before its etcd is listening (a reboot brings both up in any order)
/// waits for it, saying so in its log, and serves once etcd is up, instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_before_its_etcd_waits_for_it() {
    let work = tempfile::tempdir().expect("temp dir");
    let mut etcd = EtcdCluster::start(&work.path().join("etcd"), 1).expect("starting etcd");
    wait_for("etcd to elect a leader", Duration::from_secs(30), || {
        etcd.leader()
    })
    .await;
    etcd.kill(0);

    let dir = work.path().join("ballast");
    let forming = tokio::spawn(TestCluster::start_unformed(
        ClusterOptions {
            dir: Some(dir.clone()),
            ..options(&etcd)
        },
        1,
    ));
    let log = dir.join("replica-1.log");
    wait_for(
        "the replica to log that it waits for etcd",
        Duration::from_secs(30),
        || {
            let log = log.clone();
            async move {
                std::fs::read_to_string(&log)
                    .ok()
                    .filter(|text| text.contains("waiting for etcd"))
            }
        },
    )
    .await;

    etcd.restart(0).expect("restarting etcd");
    let cluster = forming.await.expect("the replica leads once etcd is up");
    let mut kv = Client::connect(cluster.endpoints(), None)
        .await
        .expect("connect");
    kv_put(&mut kv, "after/etcd-came-up", "ok").await;
    assert_eq!(
        kv_get(&mut kv, "after/etcd-came-up").await.as_deref(),
        Some("ok")
    );
}
