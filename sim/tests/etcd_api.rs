//! The real `etcdctl` (Debian package etcd-client, installed by `.ci/etcd`) against a
//! 3-replica Ballast: KV, prefixes, transactions, watches, leases, member list and endpoint
//! status, lease expiry on every replica, and a watch riding through a leader SIGKILL.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ballast_testkit::{ClusterOptions, TestCluster, wait_for};

struct Etcdctl {
    path: PathBuf,
    endpoints: String,
}

impl Etcdctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.path);
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .arg("--command-timeout=10s")
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running etcdctl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn with_stdin(&self, args: &[&str], input: &str) -> String {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Starts `etcdctl watch` and returns it with a channel of its output lines.
    /// The cluster's current revision, read linearizably.
    fn revision(&self) -> i64 {
        let answer: serde_json::Value =
            serde_json::from_str(&self.ok(&["get", "revision-probe", "-w", "json"]))
                .expect("etcdctl get -w json");
        answer["header"]["revision"]
            .as_i64()
            .expect("a revision in the header")
    }

    fn watch(&self, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
        let mut child = self
            .command(&[&["watch"], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (child, rx)
    }
}

/// Collects watch output lines until `count` events (3 lines each: kind, key, value) arrived.
fn events(rx: &mpsc::Receiver<String>, count: usize) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while lines.len() < count * 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("only {} watch lines: {lines:?}", lines.len()),
        }
    }
    lines
        .chunks(3)
        .map(|c| (c[0].clone(), c[1].clone(), c[2].clone()))
        .collect()
}

async fn cluster() -> TestCluster {
    TestCluster::start_with(ClusterOptions::sim(env!("CARGO_BIN_EXE_ballast-sim")), 3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_against_ballast() {
    let cluster = cluster().await;
    let ctl = Etcdctl {
        path: ballast_testkit::etcd::install(),
        endpoints: cluster.endpoints().join(","),
    };

    assert_eq!(ctl.ok(&["put", "foo", "bar"]).trim(), "OK");
    assert_eq!(ctl.ok(&["get", "foo"]), "foo\nbar\n");
    for (k, v) in [("app/a", "1"), ("app/b", "2"), ("apq", "3")] {
        ctl.ok(&["put", k, v]);
    }
    assert_eq!(
        ctl.ok(&["get", "--prefix", "app/", "--keys-only"]),
        "app/a\n\napp/b\n\n"
    );
    let limited: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["get", "--prefix", "app/", "--limit", "1", "-w", "json"]))
            .expect("json");
    assert_eq!(limited["count"], 2);
    assert_eq!(limited["more"], true);
    assert_eq!(ctl.ok(&["del", "foo"]).trim(), "1");
    assert_eq!(ctl.ok(&["get", "foo"]), "");

    // Transactions: the guard decides the branch.
    let txn = "value(\"app/a\") = \"1\"\n\nput app/a 10\n\nget app/a\n\n";
    assert_eq!(ctl.with_stdin(&["txn"], txn), "SUCCESS\n\nOK\n");
    assert_eq!(ctl.with_stdin(&["txn"], txn), "FAILURE\n\napp/a\n10\n");

    // Watch from now (from the next revision, so nothing is missed while the watch is being
    // established), then from an old revision.
    let from = format!("--rev={}", ctl.revision() + 1);
    let (mut watcher, lines) = ctl.watch(&["--prefix", "w/", &from]);
    ctl.ok(&["put", "w/1", "one"]);
    ctl.ok(&["del", "w/1"]);
    let seen = events(&lines, 2);
    assert_eq!(seen[0], ("PUT".into(), "w/1".into(), "one".into()));
    assert_eq!(seen[1].0, "DELETE");
    let _ = watcher.kill();

    // Leases: grant, attach, keep alive, time to live, revoke.
    let granted = ctl.ok(&["lease", "grant", "30"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    ctl.ok(&["put", "--lease", &id, "leased", "x"]);
    assert!(
        ctl.ok(&["lease", "keep-alive", "--once", &id])
            .contains("keepalived with TTL(30)")
    );
    assert!(
        ctl.ok(&["lease", "timetolive", &id, "--keys"])
            .contains("leased")
    );
    assert!(ctl.ok(&["lease", "list"]).contains(&id));
    assert!(ctl.ok(&["lease", "revoke", &id]).contains("revoked"));
    assert_eq!(ctl.ok(&["get", "leased"]), "");

    // Membership and status as etcd operators look at them.
    let members = ctl.ok(&["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(members.contains("replica-1") && members.contains("started"));
    let status = ctl.ok(&["endpoint", "status", "-w", "json"]);
    let parsed: serde_json::Value = serde_json::from_str(&status).expect("status json");
    assert_eq!(parsed.as_array().map(|a| a.len()), Some(3), "{status}");
    let leaders: std::collections::BTreeSet<u64> = parsed
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().expect("leader"))
        .collect();
    assert_eq!(
        leaders.len(),
        1,
        "every member names the same leader: {status}"
    );

    // Bad input gets etcd's errors.
    let out = ctl.run(&["put", "k", "v", "--lease", "123abc"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("requested lease not found"));
    let out = ctl.run(&["get", "foo", "--rev", "99999999"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("future revision"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_on_every_replica_and_watches_survive_a_leader_kill() {
    let mut cluster = cluster().await;
    let ctl = Etcdctl {
        path: ballast_testkit::etcd::install(),
        endpoints: cluster.endpoints().join(","),
    };
    // An unrenewed lease expires (the leader revokes it through Raft) on every replica.
    let granted = ctl.ok(&["lease", "grant", "2"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    ctl.ok(&["put", "--lease", &id, "ephemeral", "x"]);
    for endpoint in cluster.endpoints() {
        let one = Etcdctl {
            path: ctl.path.clone(),
            endpoints: endpoint.clone(),
        };
        wait_for("the leased key to expire", Duration::from_secs(20), || {
            let gone = one.ok(&["get", "ephemeral", "--consistency=s"]).is_empty();
            async move { gone.then_some(()) }
        })
        .await;
    }

    // A watch on every endpoint keeps every event, once, in order, across a leader SIGKILL.
    let from = format!("--rev={}", ctl.revision() + 1);
    let (mut watcher, lines) = ctl.watch(&["--prefix", "k/", &from]);
    for n in 0..10 {
        ctl.ok(&["put", &format!("k/{n:02}"), &n.to_string()]);
    }
    let leader = cluster.leader().await;
    cluster.kill(leader);
    // New etcdctl processes talk to the survivors; the running watcher fails over by itself.
    let survivors = Etcdctl {
        path: ctl.path.clone(),
        endpoints: cluster.running_endpoints().join(","),
    };
    for n in 10..20 {
        survivors.ok(&["put", &format!("k/{n:02}"), &n.to_string()]);
    }
    let seen = events(&lines, 20);
    let keys: Vec<String> = seen.iter().map(|(_, k, _)| k.clone()).collect();
    let expected: Vec<String> = (0..20).map(|n| format!("k/{n:02}")).collect();
    assert_eq!(keys, expected);
    // Nothing more (no duplicates) arrives.
    assert!(lines.recv_timeout(Duration::from_millis(1500)).is_err());
    let _ = watcher.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_etcds_error_codes_and_changes_nothing() {
    use ballast_protocol::etcdserverpb as epb;
    use ballast_protocol::etcdserverpb::kv_client::KvClient;
    use ballast_protocol::etcdserverpb::lease_client::LeaseClient;
    use tonic::Code;

    let cluster = cluster().await;
    let endpoint = format!("http://{}", cluster.endpoints()[1]);
    let mut kv = KvClient::connect(endpoint.clone()).await.expect("connect");
    let mut lease = LeaseClient::connect(endpoint).await.expect("connect");
    let put = |key: &[u8], value: Vec<u8>, lease: i64| epb::PutRequest {
        key: key.to_vec(),
        value,
        lease,
        ..Default::default()
    };
    let first = kv
        .put(put(b"a", b"1".to_vec(), 0))
        .await
        .expect("put")
        .into_inner();
    let revision = first.header.expect("header").revision;
    kv.put(put(b"a", b"2".to_vec(), 0)).await.expect("put");
    kv.put(put(b"a", b"3".to_vec(), 0)).await.expect("put");
    let now = revision + 2;

    let refused = [
        (
            kv.put(put(b"", b"v".to_vec(), 0)).await.err(),
            Code::InvalidArgument,
            "key is not provided",
        ),
        (
            kv.put(put(b"k", vec![0; 2 << 20], 0)).await.err(),
            Code::InvalidArgument,
            "request is too large",
        ),
        (
            kv.put(put(b"k", b"v".to_vec(), 4242)).await.err(),
            Code::NotFound,
            "requested lease not found",
        ),
        (
            kv.txn(epb::TxnRequest {
                success: vec![epb::RequestOp { request: None }],
                ..Default::default()
            })
            .await
            .err(),
            Code::InvalidArgument,
            "has no request",
        ),
        (
            kv.txn(epb::TxnRequest {
                success: vec![
                    epb::RequestOp {
                        request: Some(epb::request_op::Request::RequestPut(put(b"d", vec![], 0))),
                    },
                    epb::RequestOp {
                        request: Some(epb::request_op::Request::RequestPut(put(b"d", vec![], 0))),
                    },
                ],
                ..Default::default()
            })
            .await
            .err(),
            Code::InvalidArgument,
            "duplicate key",
        ),
        (
            lease
                .lease_grant(epb::LeaseGrantRequest { ttl: -5, id: 0 })
                .await
                .err(),
            Code::InvalidArgument,
            "negative",
        ),
        (
            lease
                .lease_revoke(epb::LeaseRevokeRequest { id: 77 })
                .await
                .err(),
            Code::NotFound,
            "requested lease not found",
        ),
        (
            kv.range(epb::RangeRequest {
                key: b"a".to_vec(),
                revision: now + 100,
                ..Default::default()
            })
            .await
            .err(),
            Code::OutOfRange,
            "future revision",
        ),
    ];
    for (status, code, needle) in refused {
        let status = status.expect("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{status:?} should say {needle}"
        );
    }

    // Compaction: older revisions are gone, with etcd's code.
    kv.compact(epb::CompactionRequest {
        revision: now,
        physical: false,
    })
    .await
    .expect("compact");
    let status = kv
        .range(epb::RangeRequest {
            key: b"a".to_vec(),
            revision,
            ..Default::default()
        })
        .await
        .expect_err("compacted");
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(status.message().contains("compacted"));

    // Nothing above changed the store.
    let all = kv
        .range(epb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(all.count, 1);
    assert_eq!(all.header.expect("header").revision, now);
    assert_eq!(all.kvs[0].value, b"3");

    // Values of the largest allowed size (1.5 MiB) go through one after another without
    // unsettling the group, and come back intact.
    let big: Vec<u8> = (0..(1536 * 1024)).map(|i| (i % 251) as u8).collect();
    for i in 0..5u8 {
        let mut value = big.clone();
        value[0] = i;
        kv.put(put(format!("big/{i}").as_bytes(), value, 0))
            .await
            .expect("largest value");
    }
    for i in 0..5u8 {
        let back = kv
            .range(epb::RangeRequest {
                key: format!("big/{i}").into_bytes(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        let value = &back.kvs[0].value;
        assert_eq!((value.len(), value[0]), (big.len(), i));
        assert_eq!(&value[1..], &big[1..]);
    }
}

/// `etcdctl endpoint hashkv --rev REVISION` against every endpoint: (endpoint, hash) per line,
/// once every replica has applied the revision (a follower a moment behind answers "future
/// revision", as etcd's does).
fn hashes_at(ctl: &Etcdctl, revision: i64) -> Vec<(String, String)> {
    let rev = revision.to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ctl.run(&["endpoint", "hashkv", "--rev", &rev]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once(", "))
                .map(|(endpoint, hash)| (endpoint.to_string(), hash.to_string()))
                .collect();
        }
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            stderr.contains("future revision") && Instant::now() < deadline,
            "etcdctl endpoint hashkv --rev {rev}: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The members' ids (hex, as etcdctl prints them) and the leader's, from `endpoint status`.
fn leader_and_members(ctl: &Etcdctl) -> (u64, Vec<u64>) {
    let status: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["endpoint", "status", "-w", "json"])).expect("json");
    let statuses = status.as_array().expect("one status per endpoint");
    let leader = statuses[0]["Status"]["leader"].as_u64().expect("leader");
    let members = statuses
        .iter()
        .map(|s| {
            s["Status"]["header"]["member_id"]
                .as_u64()
                .expect("member id")
        })
        .collect();
    (leader, members)
}

/// What an etcd operator runs besides reads and writes: hashes that compare replicas, alarms,
/// defragmentation, moving the leader, membership changes and auth — each answered as etcd
/// answers it, or, where Ballast does it its own way, with an error naming what to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_membership_and_auth_answer_as_etcd_does() {
    let cluster = cluster().await;
    let ctl = Etcdctl {
        path: ballast_testkit::etcd::install(),
        endpoints: cluster.endpoints().join(","),
    };
    let fails_with = |args: &[&str], words: &str| {
        let out = ctl.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success() && stderr.contains(words),
            "etcdctl {args:?} must fail saying {words:?}: {stderr}"
        );
    };

    // Every replica hashes the keyspace alike at one revision; a change changes the hash.
    for i in 0..20 {
        ctl.ok(&["put", &format!("h/{i}"), &format!("v{i}")]);
    }
    let revision = ctl.revision();
    let hashes = hashes_at(&ctl, revision);
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    assert!(hashes.iter().all(|(_, h)| *h == hashes[0].1), "{hashes:?}");
    ctl.ok(&["put", "h/0", "changed"]);
    let after = hashes_at(&ctl, ctl.revision());
    assert!(after.iter().all(|(_, h)| *h == after[0].1), "{after:?}");
    assert_ne!(after[0].1, hashes[0].1, "the hash follows the data");
    assert_eq!(
        hashes_at(&ctl, revision),
        hashes,
        "the past hashes as it was"
    );

    // No alarm is raised; disarming finds none; defragmenting has nothing to do.
    assert_eq!(ctl.ok(&["alarm", "list"]), "");
    assert_eq!(ctl.ok(&["alarm", "disarm"]), "");
    let defrag = ctl.ok(&["defrag"]);
    assert_eq!(
        defrag.matches("Finished defragmenting etcd member").count(),
        3,
        "{defrag}"
    );

    // Every replica reports the size of its data dir, and a leader.
    let status: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["endpoint", "status", "-w", "json"])).expect("json");
    let sizes: Vec<u64> = status
        .as_array()
        .expect("statuses")
        .iter()
        .map(|s| s["Status"]["dbSize"].as_u64().expect("dbSize"))
        .collect();
    assert!(sizes.iter().all(|s| *s > 0), "{sizes:?}");
    eprintln!("data dir sizes as endpoint status reports them: {sizes:?}");

    // move-leader hands leadership to the follower named; an unknown member cannot lead.
    fails_with(&["move-leader", "63"], "bad leader transferee");
    let (leader, members) = leader_and_members(&ctl);
    let target = *members.iter().find(|m| **m != leader).expect("a follower");
    let moved = ctl.ok(&["move-leader", &format!("{target:x}")]);
    assert!(moved.contains("Leadership transferred"), "{moved}");
    wait_for(
        "the named follower to lead",
        Duration::from_secs(20),
        || async { (leader_and_members(&ctl).0 == target).then_some(()) },
    )
    .await;

    // Membership: removal and promotion map onto Ballast's; adding and moving a member say
    // what to run instead.
    fails_with(&["member", "remove", "63"], "member not found");
    fails_with(
        &["member", "promote", &format!("{target:x}")],
        "can only promote a learner member",
    );
    fails_with(
        &["member", "add", "r4", "--peer-urls=http://127.0.0.1:1"],
        "ballastctl cluster token create",
    );
    fails_with(
        &[
            "member",
            "update",
            &format!("{target:x}"),
            "--peer-urls=http://127.0.0.1:2",
        ],
        "new join token",
    );

    // Auth is off, as etcd reports it; changes name mutual TLS.
    assert_eq!(ctl.ok(&["user", "list"]), "");
    assert_eq!(ctl.ok(&["role", "list"]), "");
    fails_with(&["user", "get", "alice"], "user name not found");
    fails_with(&["role", "get", "readers"], "role name not found");
    fails_with(&["user", "add", "alice:secret"], "mutual TLS");
    fails_with(&["auth", "enable"], "mutual TLS");

    // A snapshot in etcd's file format: etcdctl saves it from one member and reads it back
    // with bbolt (`snapshot status` checks the database), and Ballast's DR tools take it as
    // an archive.
    let dir = tempfile::tempdir().expect("a directory");
    let path = dir.path().join("snap.db").display().to_string();
    let one = Etcdctl {
        path: ctl.path.clone(),
        endpoints: cluster.endpoints()[0].clone(),
    };
    let saved = one.ok(&["snapshot", "save", &path]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let status: serde_json::Value =
        serde_json::from_str(&one.ok(&["snapshot", "status", &path, "-w", "json"]))
            .expect("snapshot status json");
    // Its keys: the 20 h/ keys (ballast's data and manifest and meta's index besides).
    assert_eq!(status["totalKey"], 20 + 3, "{status}");
    assert!(
        status["revision"].as_i64().expect("revision") >= revision,
        "{status}"
    );
    let (_, verified) = ballast_dr::verify_any(&path, None, true, &ballast_dr::NoProgress)
        .await
        .expect("the saved snapshot verifies as an archive");
    assert!(verified.manifest.revision as i64 >= revision);
    assert!(verified.data.as_ref().is_some_and(|d| !d.is_empty()));
    // It restores as an archive does: a single-voter data dir at its revision.
    let restored =
        ballast_coordinator::offline::restore(ballast_coordinator::offline::RestoreArgs {
            url: path.clone(),
            data_dir: dir.path().join("restored"),
            id: 1,
            az: "az-a".into(),
            advertise: "127.0.0.1:1".into(),
            force: false,
            key_file: None,
            key_env: None,
            json: true,
        })
        .await
        .expect("restoring from the saved snapshot");
    assert_eq!(
        restored["archived_revision"].as_u64(),
        Some(verified.manifest.revision),
        "{restored}"
    );
    // Cut short, it is refused with the reason.
    let bytes = std::fs::read(&path).expect("the file");
    std::fs::write(&path, &bytes[..bytes.len() - 100]).expect("truncating");
    let refused = ballast_dr::verify_any(&path, None, true, &ballast_dr::NoProgress).await;
    assert!(refused.is_err(), "a truncated snapshot must not verify");
}
