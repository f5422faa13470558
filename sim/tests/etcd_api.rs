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

    /// Runs etcdctl with `input` on its standard input.
    fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
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
        child.wait_with_output().expect("etcdctl")
    }

    fn with_stdin(&self, args: &[&str], input: &str) -> String {
        let out = self.run_with_stdin(args, input);
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
        let rx = lines_of(child.stdout.take().expect("stdout"));
        (child, rx)
    }
}

/// The lines a child process writes to `stdout`, as they come.
fn lines_of(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
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

    // Auth is off until enabled, as etcd reports it (`etcd_auth_*` below turns it on).
    assert_eq!(ctl.ok(&["user", "list"]), "");
    assert_eq!(ctl.ok(&["role", "list"]), "");
    fails_with(&["user", "get", "alice"], "user name not found");
    fails_with(&["role", "get", "readers"], "role name not found");
    fails_with(&["auth", "enable"], "root user does not exist");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_auth_users_roles_and_tokens_work_with_etcdctl() {
    let mut cluster = cluster().await;
    let ctl = Etcdctl {
        path: ballast_testkit::etcd::install(),
        endpoints: cluster.endpoints().join(","),
    };
    let as_user = |user: &str, args: &[&str]| -> Output {
        let flag = format!("--user={user}");
        ctl.run(&[&[flag.as_str()], args].concat())
    };
    let ok_as = |user: &str, args: &[&str]| -> String {
        let out = as_user(user, args);
        assert!(
            out.status.success(),
            "etcdctl --user={user} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let refused_as = |user: Option<&str>, args: &[&str], words: &str| {
        let out = match user {
            Some(user) => as_user(user, args),
            None => ctl.run(args),
        };
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success() && stderr.contains(words),
            "etcdctl (as {user:?}) {args:?} must fail saying {words:?}: {stderr}"
        );
    };
    let root = "root:rootpw";
    let alice = "alice:alicepw";
    let bob = "bob:bobpw";

    // Set up as an etcd operator would: root, a read-only and a read-write role on /app/.
    ctl.ok(&["user", "add", root]);
    ctl.ok(&["role", "add", "app-read"]);
    ctl.ok(&[
        "role",
        "grant-permission",
        "app-read",
        "read",
        "/app/",
        "--prefix=true",
    ]);
    ctl.ok(&["role", "add", "app-write"]);
    ctl.ok(&[
        "role",
        "grant-permission",
        "app-write",
        "readwrite",
        "/app/",
        "--prefix=true",
    ]);
    ctl.ok(&["user", "add", alice]);
    ctl.ok(&["user", "grant-role", "alice", "app-read"]);
    ctl.ok(&["user", "add", bob]);
    ctl.ok(&["user", "grant-role", "bob", "app-write"]);
    refused_as(
        None,
        &["user", "add", "bob:again"],
        "user name already exists",
    );
    refused_as(
        None,
        &["user", "grant-role", "bob", "nope"],
        "role name not found",
    );
    // etcdctl creates the root role and grants it when enabling finds it missing.
    let enabled = ctl.ok(&["auth", "enable"]);
    assert!(enabled.contains("Authentication Enabled"), "{enabled}");

    // Without credentials nothing is read or written; wrong ones are refused.
    refused_as(None, &["put", "/app/k", "v"], "user name is empty");
    refused_as(None, &["get", "/app/k"], "user name is empty");
    refused_as(
        Some("alice:wrong"),
        &["get", "/app/k"],
        "invalid user ID or password",
    );
    refused_as(
        Some("mallory:x"),
        &["get", "/app/k"],
        "invalid user ID or password",
    );

    // Read-write on a prefix writes it; read-only reads it and cannot write it; neither
    // reaches a sibling prefix that shares its first characters.
    ok_as(bob, &["put", "/app/k", "v1"]);
    assert_eq!(
        ok_as(alice, &["get", "/app/k", "--print-value-only"]).trim(),
        "v1"
    );
    assert!(ok_as(alice, &["get", "/app/", "--prefix", "--keys-only"]).contains("/app/k"));
    refused_as(Some(alice), &["put", "/app/k", "v2"], "permission denied");
    refused_as(Some(alice), &["del", "/app/k"], "permission denied");
    refused_as(
        Some(bob),
        &["put", "/app-secrets/k", "v"],
        "permission denied",
    );
    refused_as(Some(bob), &["get", "/app-secrets/k"], "permission denied");
    refused_as(Some(bob), &["get", "/app", "--prefix"], "permission denied");
    // A transaction is checked in both branches, so bob cannot smuggle a write through the
    // branch that does not run.
    let txn = "value(\"/app/k\") = \"v1\"\n\nput /app/t yes\n\nput /elsewhere no\n\n";
    let out = ctl.run_with_stdin(&["--user=bob:bobpw", "txn"], txn);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ok_as(bob, &["get", "/app/t", "--print-value-only"]).trim(),
        ""
    );

    // Administration needs the root role: users, roles, hashes, snapshots, membership.
    refused_as(Some(bob), &["user", "list"], "permission denied");
    refused_as(Some(alice), &["role", "add", "x"], "permission denied");
    refused_as(Some(bob), &["endpoint", "hashkv"], "permission denied");
    refused_as(Some(bob), &["defrag"], "permission denied");
    let users = ok_as(root, &["user", "list"]);
    assert_eq!(
        users.split_whitespace().collect::<Vec<_>>(),
        ["alice", "bob", "root"]
    );
    let role = ok_as(root, &["role", "get", "app-read"]);
    assert!(role.contains("/app/"), "{role}");
    assert!(ok_as(root, &["user", "get", "root"]).contains("root"));
    // Status stays open to monitoring, as in etcd.
    ctl.ok(&["endpoint", "status"]);
    refused_as(
        Some(root),
        &["user", "delete", "root"],
        "invalid auth management",
    );

    // A token works on every replica, through followers that forward writes to the leader.
    for endpoint in cluster.endpoints() {
        let one = Etcdctl {
            path: ctl.path.clone(),
            endpoints: endpoint.clone(),
        };
        let out = one.run(&["--user=bob:bobpw", "put", "/app/via", &endpoint]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = one.run(&["--user=alice:alicepw", "put", "/app/via", &endpoint]);
        assert!(!out.status.success(), "alice wrote through {endpoint}");
    }

    // Revoking takes effect for the next call: bob loses write access to /app/.
    ok_as(root, &["user", "revoke-role", "bob", "app-write"]);
    refused_as(Some(bob), &["put", "/app/k", "v3"], "permission denied");
    ok_as(root, &["user", "grant-role", "bob", "app-write"]);
    ok_as(bob, &["put", "/app/k", "v3"]);

    // The users and roles are replicated state: a replica that restarts still enforces them.
    let leader = cluster.leader().await;
    let follower = cluster.follower_of(leader);
    cluster.kill(follower);
    cluster.restart(follower);
    let restarted = Etcdctl {
        path: ctl.path.clone(),
        endpoints: cluster.replica(follower).address.clone(),
    };
    wait_for(
        "the restarted replica to serve",
        Duration::from_secs(30),
        || async {
            restarted
                .run(&[
                    "--user=alice:alicepw",
                    "get",
                    "/app/k",
                    "--print-value-only",
                ])
                .status
                .success()
                .then_some(())
        },
    )
    .await;
    let out = restarted.run(&["--user=alice:alicepw", "put", "/app/k", "v4"]);
    assert!(
        !out.status.success(),
        "the restarted replica let alice write"
    );
    let out = restarted.run(&["get", "/app/k"]);
    assert!(
        !out.status.success(),
        "the restarted replica answered a call without a user"
    );

    // Turning auth off opens the store again.
    ok_as(root, &["auth", "disable"]);
    ctl.ok(&["put", "/anything", "v"]);
    assert_eq!(
        ctl.ok(&["get", "/app/k", "--print-value-only"]).trim(),
        "v3"
    );
}

/// `curl` POSTing `body` (GET when `None`); the HTTP status and the JSON answer.
fn curl(url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    curl_with(url, body, &[])
}

/// [`curl`] with extra request headers.
fn curl_with(url: &str, body: Option<&str>, headers: &[&str]) -> (u16, serde_json::Value) {
    let mut command = Command::new("curl");
    command.args(["-s", "--max-time", "15", "-w", "\n%{http_code}"]);
    for header in headers {
        command.args(["-H", header]);
    }
    if let Some(body) = body {
        command.args([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ]);
    }
    let out = command.arg(url).output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (json, code) = text
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", text.trim()));
    let code = code
        .parse()
        .unwrap_or_else(|_| panic!("curl {url}: no status in {text:?}"));
    (
        code,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The Python client of `examples/etcd-http`, which speaks only HTTP/JSON.
fn http_client(endpoint: &str, args: &[&str]) -> Command {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/etcd-http/etcd_http.py"
    );
    let mut command = Command::new("python3");
    command
        .arg(script)
        .arg(format!("--endpoint=http://{endpoint}"))
        .args(args);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_gateway_answers_curl_and_an_http_only_client() {
    let mut cluster = cluster().await;
    ballast_testkit::etcd::install();
    let leader = cluster.leader().await;
    let follower = cluster.follower_of(leader);
    // Addresses outlive the kill and restart below (which borrow the cluster mutably).
    let addresses: std::collections::HashMap<u64, String> = cluster
        .replicas
        .iter()
        .map(|r| (r.id, r.address.clone()))
        .collect();
    let url = |id: u64, path: &str| format!("http://{}{path}", addresses[&id]);
    let post = |id: u64, path: &str, body: serde_json::Value| -> serde_json::Value {
        let (code, answer) = curl(&url(id, path), Some(&body.to_string()));
        assert_eq!(code, 200, "POST {path} {body}: {answer}");
        answer
    };

    // The probes HTTP-only tools make first.
    for id in addresses.keys() {
        let (code, health) = curl(&url(*id, "/health"), None);
        assert_eq!(
            (code, &health["health"]),
            (200, &serde_json::json!("true")),
            "{health}"
        );
    }
    let (code, version) = curl(&url(follower, "/version"), None);
    assert_eq!(code, 200);
    assert_eq!(version["etcdserver"], "3.4.0", "{version}");
    assert_eq!(version["etcdcluster"], "3.4.0", "{version}");

    // KV through a follower (forwarded to the leader), in etcd's JSON: base64 bytes, 64-bit
    // integers as strings.
    let put = post(
        follower,
        "/v3/kv/put",
        serde_json::json!({"key": b64("foo"), "value": b64("bar")}),
    );
    let revision: i64 = put["header"]["revision"]
        .as_str()
        .expect("revision as a string")
        .parse()
        .expect("a number");
    for prefix in ["/v3", "/v3beta"] {
        let range = post(
            leader,
            &format!("{prefix}/kv/range"),
            serde_json::json!({"key": b64("foo")}),
        );
        assert_eq!(range["kvs"][0]["value"], b64("bar"), "{range}");
        assert_eq!(range["count"], "1", "{range}");
        assert_eq!(
            range["kvs"][0]["mod_revision"],
            revision.to_string(),
            "{range}"
        );
    }
    let txn = post(
        leader,
        "/v3/kv/txn",
        serde_json::json!({
            "compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE", "value": b64("bar")}],
            "success": [{"request_put": {"key": b64("foo"), "value": b64("baz")}}],
        }),
    );
    assert_eq!(txn["succeeded"], true, "{txn}");
    let deleted = post(
        follower,
        "/v3/kv/deleterange",
        serde_json::json!({"key": b64("foo"), "prev_kv": true}),
    );
    assert_eq!(deleted["deleted"], "1", "{deleted}");
    assert_eq!(deleted["prev_kvs"][0]["value"], b64("baz"), "{deleted}");
    post(
        leader,
        "/v3/kv/compaction",
        serde_json::json!({"revision": revision.to_string()}),
    );

    // Errors are etcd's: the gRPC code and message in JSON, with the gateway's HTTP status.
    let (code, error) = curl(
        &url(follower, "/v3/kv/put"),
        Some(&serde_json::json!({"key": "", "value": b64("x")}).to_string()),
    );
    assert_eq!(code, 400, "{error}");
    assert_eq!(error["error"], "etcdserver: key is not provided", "{error}");
    assert_eq!(error["code"], 3, "{error}");
    let (code, _) = curl(&url(leader, "/v3/kv/nothing"), Some("{}"));
    assert_eq!(code, 404);
    let (code, _) = curl(&url(leader, "/v3/kv/range"), None);
    assert_eq!(code, 405);
    let (code, error) = curl(&url(leader, "/v3/kv/range"), Some("{not json"));
    assert_eq!(
        (code, &error["code"]),
        (400, &serde_json::json!(3)),
        "{error}"
    );

    // Leases.
    let grant = post(
        follower,
        "/v3/lease/grant",
        serde_json::json!({"TTL": "30"}),
    );
    let lease = grant["ID"].as_str().expect("lease id").to_string();
    let ttl = post(
        leader,
        "/v3/lease/timetolive",
        serde_json::json!({"ID": lease}),
    );
    assert_eq!(ttl["grantedTTL"], "30", "{ttl}");
    let leases = post(follower, "/v3/lease/leases", serde_json::json!({}));
    assert!(leases["leases"].to_string().contains(&lease), "{leases}");
    let (code, kept) = curl(
        &url(follower, "/v3/lease/keepalive"),
        Some(&serde_json::json!({"ID": lease}).to_string()),
    );
    assert_eq!(code, 200, "{kept}");
    assert_eq!(kept["result"]["TTL"], "30", "{kept}");
    post(
        leader,
        "/v3/kv/lease/revoke",
        serde_json::json!({"ID": lease}),
    );
    let ttl = post(
        leader,
        "/v3/kv/lease/timetolive",
        serde_json::json!({"ID": lease}),
    );
    assert_eq!(ttl["TTL"], "-1", "{ttl}");

    // Cluster and maintenance.
    let members = post(follower, "/v3/cluster/member/list", serde_json::json!({}));
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(3),
        "{members}"
    );
    let status = post(follower, "/v3/maintenance/status", serde_json::json!({}));
    assert_eq!(status["version"], "3.4.0", "{status}");
    assert_eq!(status["leader"], leader.to_string(), "{status}");

    // The HTTP-only client writes, reads, and watches through a follower; the watch rides
    // through a SIGKILL of the leader.
    let python = |args: &[&str]| {
        let out = http_client(&addresses[&follower], args)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    python(&["put", "w/0", "v0"]);
    assert_eq!(python(&["get", "w/", "--prefix"]).trim(), "w/0=v0");
    let mut watcher = http_client(
        &addresses[&follower],
        &["watch", "w/", "--prefix", "--count", "2"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("python3 watch");
    let lines = lines_of(watcher.stdout.take().expect("stdout"));
    let next_line = || {
        lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from the HTTP watch within 30 s")
    };
    assert_eq!(next_line(), "CREATED");
    post(
        leader,
        "/v3/kv/put",
        serde_json::json!({"key": b64("w/1"), "value": b64("v1")}),
    );
    assert_eq!(next_line(), "PUT w/1 v1");
    cluster.kill(leader);
    // Writes through the follower wait for the new leader (the write is forwarded to it).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, answer) = curl(
            &url(follower, "/v3/kv/put"),
            Some(&serde_json::json!({"key": b64("w/2"), "value": b64("v2")}).to_string()),
        );
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write after the leader died: {code} {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(next_line(), "PUT w/2 v2");
    let status = watcher.wait().expect("the watch ends after two events");
    assert!(status.success(), "the HTTP watch failed");
    cluster.restart(leader);
    cluster.leader().await;

    // Auth over HTTP: set up, enable, log in, and the token in `Authorization`.
    let any = follower;
    post(
        any,
        "/v3/auth/user/add",
        serde_json::json!({"name": "root", "password": "pw"}),
    );
    post(
        any,
        "/v3/auth/user/grant",
        serde_json::json!({"user": "root", "role": "root"}),
    );
    post(
        any,
        "/v3/auth/role/add",
        serde_json::json!({"name": "root"}),
    );
    post(any, "/v3/auth/enable", serde_json::json!({}));
    let (code, error) = curl(
        &url(any, "/v3/kv/range"),
        Some(&serde_json::json!({"key": b64("w/1")}).to_string()),
    );
    assert_eq!(code, 400, "{error}");
    assert_eq!(error["error"], "etcdserver: user name is empty", "{error}");
    let token = post(
        any,
        "/v3/auth/authenticate",
        serde_json::json!({"name": "root", "password": "pw"}),
    )["token"]
        .as_str()
        .expect("a token")
        .to_string();
    let authorization = format!("Authorization: {token}");
    let with_token = |path: &str, body: serde_json::Value| {
        curl_with(&url(any, path), Some(&body.to_string()), &[&authorization])
    };
    let (code, range) = with_token("/v3/kv/range", serde_json::json!({"key": b64("w/1")}));
    assert_eq!(code, 200, "{range}");
    assert_eq!(range["kvs"][0]["value"], b64("v1"), "{range}");
    let (code, users) = with_token("/v3/auth/user/list", serde_json::json!({}));
    assert_eq!(
        (code, &users["users"]),
        (200, &serde_json::json!(["root"])),
        "{users}"
    );
    let out = http_client(
        &addresses[&any],
        &["--user", "root:pw", "get", "w/", "--prefix"],
    )
    .output()
    .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("w/2=v2"));
    let (code, _) = with_token("/v3/auth/disable", serde_json::json!({}));
    assert_eq!(code, 200);
    python(&["get", "w/1"]);
}

/// `etcdctl check perf --load=s`: 60 s of 150 puts/s from 50 clients, 256-byte binary keys and
/// 1 KiB values, then a delete of the prefix. What is asserted is what does not depend on the
/// machine's speed — every put succeeds and the cleanup leaves nothing; etcdctl's throughput
/// and latency verdicts are printed here and measured in `docs/benchmarks-kv.md`, not asserted
/// (a test must not fail because the machine was slow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_check_perf_small_load_runs_without_an_error() {
    let cluster = cluster().await;
    let ctl = Etcdctl {
        path: ballast_testkit::etcd::install(),
        endpoints: cluster.endpoints().join(","),
    };
    let out = ctl.run(&["check", "perf", "--load=s"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("etcdctl check perf --load=s:\n{stdout}");
    assert!(
        stdout.contains("Throughput is") || stdout.contains("Throughput too low"),
        "check perf did not run to its verdict: {stdout} {stderr}"
    );
    assert!(
        !stdout.contains("FAIL: too many errors") && !stdout.contains("FAIL: ERROR"),
        "puts failed under check perf: {stdout}"
    );
    assert!(
        !stdout.contains("Cleanup failed"),
        "the cleanup delete failed: {stdout}"
    );
    assert_eq!(
        ctl.ok(&["get", "/etcdctl-check-perf/", "--prefix", "--keys-only"]),
        "",
        "check perf's keys are left behind"
    );
}

/// Replaces `from` with `to` (the same length, so every record still decodes) in every log
/// entry and snapshot of the data dir at `dir`, behind Raft's back: silent on-disk
/// corruption. Returns how many records changed.
fn corrupt_data_dir(dir: &std::path::Path, from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let store = ballast_coordinator::log::raft::data_dir::DataDir::open(dir)
        .expect("opening the stopped replica's data dir");
    let mut changed = 0;
    for keyspace in [&store.log, &store.snapshot] {
        let mut rewrites = Vec::new();
        for item in keyspace.iter() {
            let (key, value) = item.into_inner().expect("reading a record");
            if let Some(at) = value.windows(from.len()).position(|w| w == from) {
                let mut value = value.to_vec();
                value[at..at + to.len()].copy_from_slice(to);
                rewrites.push((key.to_vec(), value));
            }
        }
        for (key, value) in rewrites {
            keyspace.insert(key, value).expect("rewriting a record");
            changed += 1;
        }
    }
    store.sync().expect("syncing the data dir");
    changed
}

/// `endpoint hashkv` is a real corruption check: the replicas hash alike at one revision, and
/// a replica whose copy was changed on disk (behind Raft's back, so nothing else notices)
/// hashes differently at that revision while the others still agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashkv_tells_a_replica_corrupted_on_disk_from_the_others() {
    let mut cluster = cluster().await;
    let ctl = Etcdctl {
        path: ballast_testkit::etcd::install(),
        endpoints: cluster.endpoints().join(","),
    };
    ctl.ok(&["put", "c/marked", "original-value-0001"]);
    for i in 0..5 {
        ctl.ok(&["put", &format!("c/{i}"), "x"]);
    }
    let revision = ctl.revision();
    let before = hashes_at(&ctl, revision);
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.iter().all(|(_, h)| *h == before[0].1), "{before:?}");

    // Every replica answered at `revision`, so each has the value applied and stored.
    let leader = cluster.leader().await;
    let victim = cluster.follower_of(leader);
    cluster.kill(victim);
    let dir = cluster.replica(victim).data_dir.clone();
    let changed = corrupt_data_dir(&dir, b"original-value-0001", b"corrupted-value-001");
    assert!(changed > 0, "the value is in the victim's data dir");
    cluster.restart(victim);

    let victim_address = cluster.replica(victim).address.clone();
    let after = hashes_at(&ctl, revision);
    assert_eq!(after.len(), 3, "{after:?}");
    let (victims, others): (Vec<_>, Vec<_>) = after
        .iter()
        .partition(|(endpoint, _)| *endpoint == victim_address);
    assert_eq!(victims.len(), 1, "{after:?}");
    assert!(
        others
            .iter()
            .all(|(_, h)| before.iter().any(|(_, b)| b == h)),
        "the healthy replicas still hash as before: {before:?} {after:?}"
    );
    assert_ne!(
        victims[0].1, others[0].1,
        "the corrupted replica must hash differently"
    );
    // What it serves shows why.
    let one = Etcdctl {
        path: ctl.path.clone(),
        endpoints: victim_address,
    };
    assert_eq!(
        one.ok(&["get", "c/marked", "--print-value-only", "--consistency=s"])
            .trim(),
        "corrupted-value-001"
    );
}

/// Waits up to `limit` for a line equal to `wanted` on `lines`; panics naming what came.
fn wait_line(lines: &mpsc::Receiver<String>, wanted: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.trim() == wanted => return,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line {wanted:?} within {limit:?}; saw {seen:?}"),
        }
    }
}

/// The etcdctl families the other tests do not reach: `endpoint health`, `compaction`, and
/// etcd's concurrency recipes `lock` and `elect` (session leases, create-revision queues,
/// watches on the predecessor's key), including a lock holder that dies without unlocking and
/// a leader that resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_health_compaction_lock_and_elect_work() {
    let cluster = cluster().await;
    let ctl = Etcdctl {
        path: ballast_testkit::etcd::install(),
        endpoints: cluster.endpoints().join(","),
    };
    // etcdctl 3.4 prints the verdicts on stderr.
    let out = ctl.run(&["endpoint", "health"]);
    let health =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{health}");
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");

    ctl.ok(&["put", "k", "1"]);
    ctl.ok(&["put", "k", "2"]);
    let revision = ctl.revision();
    let compacted = ctl.ok(&["compaction", &revision.to_string()]);
    assert!(
        compacted.contains(&format!("compacted revision {revision}")),
        "{compacted}"
    );
    let out = ctl.run(&["get", "k", &format!("--rev={}", revision - 2)]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("required revision has been compacted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A lock holder that is SIGKILLed never unlocks: its 5 s session lease runs out at the
    // leader, which deletes its key, and the queued locker runs its command.
    let mut holder = ctl
        .command(&["lock", "--ttl=5", "jobs"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl lock");
    let held = lines_of(holder.stdout.take().expect("stdout"));
    let key = held
        .recv_timeout(Duration::from_secs(30))
        .expect("the holder prints its lock key");
    assert!(key.starts_with("jobs/"), "{key}");
    let waiter = ctl
        .command(&["lock", "jobs", "echo", "ran-with-the-lock"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("a second etcdctl lock");
    wait_for(
        "the second locker to queue",
        Duration::from_secs(30),
        || async {
            let keys = ctl.ok(&["get", "jobs/", "--prefix", "--keys-only"]);
            (keys.lines().filter(|l| !l.trim().is_empty()).count() == 2).then_some(())
        },
    )
    .await;
    let (done_tx, done) = mpsc::channel();
    let waiter_pid = waiter.id();
    std::thread::spawn(move || {
        let _ = done_tx.send(waiter.wait_with_output());
    });
    assert!(
        done.try_recv().is_err(),
        "the queued locker ran while the lock was held"
    );
    holder.kill().expect("SIGKILL the holder");
    let _ = holder.wait();
    let out = done
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("locker {waiter_pid} still waiting 60 s after the holder died"))
        .expect("the locker's output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ran-with-the-lock"));

    // Election: p1 wins, p2 waits, an observer follows; p1 resigns (SIGINT closes its
    // session) and p2 leads, which the observer sees.
    let spawn = |args: &[&str]| {
        let mut child = ctl
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl elect");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        (child, lines)
    };
    let (mut first, first_lines) = spawn(&["elect", "leader", "p1"]);
    wait_line(&first_lines, "p1", Duration::from_secs(30));
    let (mut second, second_lines) = spawn(&["elect", "leader", "p2"]);
    let (mut observer, observed) = spawn(&["elect", "--listen", "leader"]);
    wait_line(&observed, "p1", Duration::from_secs(30));
    let interrupted = Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(interrupted.success());
    wait_line(&second_lines, "p2", Duration::from_secs(30));
    wait_line(&observed, "p2", Duration::from_secs(30));
    for child in [&mut first, &mut second, &mut observer] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `member list -w json`: each member's id and learner flag.
fn members_and_learners(ctl: &Etcdctl) -> Vec<(u64, bool)> {
    let list: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["member", "list", "-w", "json"])).expect("member list json");
    list["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            let id = m["ID"].as_u64().expect("member id");
            (id, m["isLearner"].as_bool().unwrap_or(false))
        })
        .collect()
}

/// Learners as an etcd operator runs them: a replica started with `--learner` joins, receives
/// the log and answers serializable reads without voting, stays a learner across a restart
/// that repeats its flags, and becomes a voter only when promoted — through etcd's
/// `member promote` or Ballast's `PromoteMember` (`ballastctl cluster promote`); `member
/// remove` then takes it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_join_stay_learners_and_are_promoted_and_removed_on_request() {
    let mut cluster = cluster().await;
    let voters = cluster.endpoints().join(",");
    let ctl = Etcdctl {
        path: ballast_testkit::etcd::install(),
        endpoints: voters.clone(),
    };
    ctl.ok(&["put", "before", "1"]);
    let limit = Duration::from_secs(60);

    for (id, promote_with_etcdctl) in [(4u64, true), (5, false)] {
        let token = cluster.join_token().await;
        cluster.spawn_joiner_with(id, &token, &["--learner"]);
        let on_learner = Etcdctl {
            path: ctl.path.clone(),
            endpoints: cluster.replica(id).address.clone(),
        };
        let serves_reads = || async {
            let out = on_learner.run(&["get", "before", "--consistency=s"]);
            (String::from_utf8_lossy(&out.stdout) == "before\n1\n").then_some(())
        };
        wait_for(
            "the learner to serve a serializable read",
            limit,
            serves_reads,
        )
        .await;
        assert!(
            members_and_learners(&ctl).contains(&(id, true)),
            "replica {id} is listed as a learner: {:?}",
            members_and_learners(&ctl)
        );

        // Restarted with the same flags (its token already spent), it comes back a learner.
        cluster.kill(id);
        cluster.restart_with(
            id,
            &["--join", &voters, "--join-token", &token, "--learner"],
        );
        let log = cluster.dir().join(format!("replica-{id}.log"));
        wait_for("the restarted learner to join again", limit, || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            (text.matches("joined the cluster").count() == 2).then_some(())
        })
        .await;
        wait_for("the restarted learner to serve reads", limit, serves_reads).await;
        assert!(
            members_and_learners(&ctl).contains(&(id, true)),
            "replica {id} is still a learner after its restart: {:?}",
            members_and_learners(&ctl)
        );

        if promote_with_etcdctl {
            let promoted = ctl.ok(&["member", "promote", &format!("{id:x}")]);
            assert!(promoted.contains("promoted in cluster"), "{promoted}");
        } else {
            cluster
                .client()
                .cluster(|mut c, req| async move {
                    c.promote_member(req.wrap(ballast_protocol::pb::PromoteMemberRequest { id }))
                        .await
                })
                .await
                .expect("PromoteMember of a caught-up learner");
        }
        let members = members_and_learners(&ctl);
        assert_eq!(members.len(), 4, "{members:?}");
        assert!(members.iter().all(|(_, learner)| !learner), "{members:?}");
        let out = ctl.run(&["member", "promote", &format!("{id:x}")]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("can only promote a learner member"),
            "a second promotion is refused as etcd refuses it: {out:?}"
        );
        // The new voter counts: writes still commit, and it holds them.
        ctl.ok(&["put", "after", &id.to_string()]);
        wait_for(
            "the promoted voter to hold the newest write",
            limit,
            || async {
                let out = on_learner.run(&["get", "after", "--consistency=s"]);
                (String::from_utf8_lossy(&out.stdout) == format!("after\n{id}\n")).then_some(())
            },
        )
        .await;

        let removed = ctl.ok(&["member", "remove", &format!("{id:x}")]);
        assert!(removed.contains("removed from cluster"), "{removed}");
        let members = members_and_learners(&ctl);
        assert_eq!(members.len(), 3, "{members:?}");
        assert!(!members.iter().any(|(m, _)| *m == id), "{members:?}");
        cluster.discard(id);
    }
}
