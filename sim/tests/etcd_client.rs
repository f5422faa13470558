//! The `etcd-client` crate — an etcd v3 client library applications already use — against a
//! 3-replica Ballast: KV with options, transactions, watches from a revision with previous
//! values, leases, compaction, member list and status, etcd's error codes, and a client that
//! keeps working through a leader SIGKILL.

use std::time::Duration;

use ballast_testkit::{ClusterOptions, TestCluster, wait_for};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, Error, EventType, GetOptions,
    LeaseTimeToLiveOptions, Permission, PutOptions, Txn, TxnOp, WatchOptions,
};
use tonic::Code;

async fn cluster() -> TestCluster {
    TestCluster::start_with(ClusterOptions::sim(env!("CARGO_BIN_EXE_ballast-sim")), 3).await
}

fn code(error: Error) -> (Code, String) {
    match error {
        Error::GRpcStatus(status) => (status.code(), status.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

fn value(response: &etcd_client::GetResponse) -> Option<&[u8]> {
    response.kvs().first().map(|kv| kv.value())
}

/// Adds `root` (password `rootpw`, role root) and `reader` (password `readerpw`), who may
/// only read keys under `prefix`.
async fn add_root_and_reader(admin: &mut Client, prefix: &str) {
    admin.user_add("root", "rootpw", None).await.expect("root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("root role");
    admin.role_add("prefix-reader").await.expect("role");
    admin
        .role_grant_permission("prefix-reader", Permission::read(prefix).with_prefix())
        .await
        .expect("grant");
    admin
        .user_add("reader", "readerpw", None)
        .await
        .expect("reader");
    admin
        .user_grant_role("reader", "prefix-reader")
        .await
        .expect("reader's role");
}

/// Options that log in as `user`.
fn login(user: &str, password: &str) -> ConnectOptions {
    ConnectOptions::new()
        .with_user(user, password)
        .with_timeout(Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_crate_works_against_ballast() {
    let mut cluster = cluster().await;
    let mut client = Client::connect(cluster.endpoints(), None)
        .await
        .expect("connect");

    // KV: put with previous value, get with prefix / limit / count-only / keys-only / revision.
    let first = client.put("cfg/a", "1", None).await.expect("put");
    let put = client
        .put("cfg/a", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put with prev");
    assert_eq!(put.prev_key().map(|kv| kv.value()), Some(&b"1"[..]));
    client.put("cfg/b", "3", None).await.expect("put");
    client.put("cfh", "4", None).await.expect("put");
    let prefix = client
        .get("cfg/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get prefix");
    let keys: Vec<&[u8]> = prefix.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, vec![&b"cfg/a"[..], &b"cfg/b"[..]]);
    let a = &prefix.kvs()[0];
    assert_eq!((a.version(), a.value()), (2, &b"2"[..]));
    let limited = client
        .get("cfg/", Some(GetOptions::new().with_prefix().with_limit(1)))
        .await
        .expect("limit");
    assert_eq!(
        (limited.kvs().len(), limited.count(), limited.more()),
        (1, 2, true)
    );
    let counted = client
        .get(
            "cfg/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count only");
    assert_eq!((counted.kvs().len(), counted.count()), (0, 2));
    let old = client
        .get(
            "cfg/a",
            Some(GetOptions::new().with_revision(first.header().expect("header").revision())),
        )
        .await
        .expect("get at a revision");
    assert_eq!(value(&old), Some(&b"1"[..]));
    let stale = client
        .get("cfg/b", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable get");
    assert_eq!(value(&stale), Some(&b"3"[..]));

    // Transactions: compares on value, version and mod revision pick the branch atomically.
    let txn = Txn::new()
        .when([
            Compare::value("cfg/a", CompareOp::Equal, "2"),
            Compare::version("cfg/b", CompareOp::Equal, 1),
        ])
        .and_then([TxnOp::put("cfg/a", "20", None), TxnOp::delete("cfh", None)])
        .or_else([TxnOp::get("cfg/a", None)]);
    let outcome = client.txn(txn.clone()).await.expect("txn");
    assert!(outcome.succeeded());
    let outcome = client.txn(txn).await.expect("txn again");
    assert!(!outcome.succeeded(), "the guard no longer holds");
    assert_eq!(
        value(&client.get("cfg/a", None).await.expect("get")),
        Some(&b"20"[..])
    );
    assert_eq!(client.get("cfh", None).await.expect("get").count(), 0);

    // Watch from a past revision with previous values: the history replays, then live events.
    let from = client
        .put("w/x", "one", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    client.put("w/x", "two", None).await.expect("put");
    let mut watch = client
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(from),
            ),
        )
        .await
        .expect("watch");
    client.delete("w/x", None).await.expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("watch events in time")
            .expect("watch stream")
            .expect("watch open");
        for event in message.events() {
            let kv = event.kv().expect("kv");
            seen.push((
                event.event_type(),
                String::from_utf8_lossy(kv.value()).to_string(),
                kv.mod_revision(),
                event
                    .prev_kv()
                    .map(|p| String::from_utf8_lossy(p.value()).to_string()),
            ));
        }
    }
    assert_eq!(seen[0].0, EventType::Put);
    assert_eq!((seen[0].1.as_str(), seen[0].2), ("one", from));
    assert_eq!(
        (seen[1].1.as_str(), seen[1].3.as_deref()),
        ("two", Some("one"))
    );
    assert_eq!(seen[2].0, EventType::Delete);
    assert_eq!(seen[2].3.as_deref(), Some("two"));
    assert!(
        seen.windows(2).all(|w| w[0].2 < w[1].2),
        "revisions ascend: {seen:?}"
    );

    // Leases: grant, attach, keep alive, time to live with keys, list, revoke deletes the keys.
    let lease = client.lease_grant(30, None).await.expect("grant").id();
    client
        .put("leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.expect("keep alive");
    keeper.keep_alive().await.expect("keep alive request");
    let renewed = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("keep alive answer in time")
        .expect("keep alive stream")
        .expect("keep alive answer");
    assert_eq!((renewed.id(), renewed.ttl()), (lease, 30));
    let ttl = client
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live");
    assert_eq!(ttl.keys(), &[b"leased".to_vec()]);
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 30);
    let listed = client.leases().await.expect("leases");
    assert!(listed.leases().iter().any(|l| l.id() == lease));
    client.lease_revoke(lease).await.expect("revoke");
    assert_eq!(client.get("leased", None).await.expect("get").count(), 0);

    // Compaction: old revisions become unreadable with etcd's error.
    let now = client
        .put("c", "1", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    client.compact(now, None).await.expect("compact");
    let (status, message) = code(
        client
            .get("cfg/a", Some(GetOptions::new().with_revision(from)))
            .await
            .expect_err("compacted revision"),
    );
    assert_eq!(status, Code::OutOfRange);
    assert!(message.contains("compacted"), "{message}");

    // Bad input: etcd's codes and messages, nothing changed.
    let before = client.get("cfg/a", None).await.expect("get");
    let (status, message) = code(client.put("", "v", None).await.expect_err("empty key"));
    assert_eq!(
        (status, message.as_str()),
        (Code::InvalidArgument, "etcdserver: key is not provided")
    );
    let (status, message) = code(
        client
            .put("k", "v", Some(PutOptions::new().with_lease(0x1234_5678)))
            .await
            .expect_err("unknown lease"),
    );
    assert_eq!(
        (status, message.as_str()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    let (status, _) = code(client.lease_revoke(0x1234_5678).await.expect_err("revoke"));
    assert_eq!(status, Code::NotFound);
    let after = client.get("cfg/a", None).await.expect("get");
    assert_eq!(value(&before), value(&after));
    assert_eq!(
        after.header().expect("header").revision(),
        before.header().expect("header").revision()
    );

    // Member list and status as etcd tooling reads them.
    let members = client.member_list().await.expect("member list");
    assert_eq!(members.members().len(), 3);
    assert!(
        members
            .members()
            .iter()
            .all(|m| !m.client_urls().is_empty())
    );
    let status = client.status().await.expect("status");
    let leader = status.leader();
    assert!(members.members().iter().any(|m| m.id() == leader));

    // The client rides through a leader SIGKILL: writes succeed again once a leader is elected.
    let leader_id = cluster.leader().await;
    cluster.kill(leader_id);
    let survivors = cluster.running_endpoints();
    let mut client = Client::connect(survivors, None).await.expect("reconnect");
    let revision = wait_for(
        "a write after the leader kill",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            async move {
                client
                    .put("after-kill", "ok", None)
                    .await
                    .ok()
                    .and_then(|r| r.header().map(|h| h.revision()))
            }
        },
    )
    .await;
    let read = client.get("after-kill", None).await.expect("get");
    assert_eq!(value(&read), Some(&b"ok"[..]));
    assert!(read.header().expect("header").revision() >= revision);
    assert_eq!(
        value(&client.get("cfg/a", None).await.expect("get")),
        Some(&b"20"[..]),
        "acknowledged writes survive the leader kill"
    );
}

/// etcd auth through the crate: an application logs in with `with_user`, reads what its role
/// allows, is refused the rest with etcd's errors, and its watch sees the keys it may read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_crate_logs_in_and_is_held_to_its_role() {
    let cluster = cluster().await;
    let mut admin = Client::connect(cluster.endpoints(), None)
        .await
        .expect("connect");
    add_root_and_reader(&mut admin, "cfg/").await;
    admin.put("cfg/a", "1", None).await.expect("put");
    admin.auth_enable().await.expect("enable");

    let (code_seen, message) = code(admin.get("cfg/a", None).await.expect_err("no user"));
    assert_eq!(
        (code_seen, message.as_str()),
        (Code::InvalidArgument, "etcdserver: user name is empty")
    );
    let wrong = Client::connect(cluster.endpoints(), Some(login("reader", "wrong"))).await;
    let Err(error) = wrong else {
        panic!("a wrong password logged in");
    };
    assert_eq!(
        code(error).1,
        "etcdserver: authentication failed, invalid user ID or password"
    );
    let mut reader = Client::connect(cluster.endpoints(), Some(login("reader", "readerpw")))
        .await
        .expect("the reader logs in");
    let mut root = Client::connect(cluster.endpoints(), Some(login("root", "rootpw")))
        .await
        .expect("root logs in");
    let read = reader
        .get("cfg/a", None)
        .await
        .expect("read inside the role");
    assert_eq!(value(&read), Some(&b"1"[..]));
    let (code_seen, message) = code(reader.put("cfg/a", "2", None).await.expect_err("read-only"));
    assert_eq!(
        (code_seen, message.as_str()),
        (Code::PermissionDenied, "etcdserver: permission denied")
    );
    let (code_seen, _) = code(
        reader
            .get("cfgx", None)
            .await
            .expect_err("beside the prefix"),
    );
    assert_eq!(code_seen, Code::PermissionDenied);

    let mut watch = reader
        .watch("cfg/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch inside the role");
    root.put("cfg/b", "2", None).await.expect("root writes");
    let seen = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("watch events in time")
            .expect("watch stream")
            .expect("watch open");
        assert!(!message.canceled(), "{:?}", message.cancel_reason());
        if let Some(event) = message.events().first() {
            break event.kv().expect("kv").key().to_vec();
        }
    };
    assert_eq!(seen, b"cfg/b");
    root.auth_disable().await.expect("disable");
    admin.put("cfg/c", "3", None).await.expect("open again");
}

/// Writes made through a follower reach the leader in batches (`Raft.Propose`), not one
/// forwarded call each: every one is acknowledged once, at its own revision, and readable;
/// the leader served none of them as a KV call; who wrote still decides (a read-only user
/// is refused through the follower, root is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_its_clients_writes_to_the_leader_in_batches() {
    const WRITES: usize = 200;
    let cluster = cluster().await;
    let leader = cluster.leader().await;
    let follower = cluster.follower_of(leader);
    let through_follower = Client::connect([cluster.replica(follower).address.clone()], None)
        .await
        .expect("connect to the follower");

    let puts = (0..WRITES).map(|i| {
        let mut client = through_follower.clone();
        async move {
            client
                .put(format!("batch/{i:03}"), format!("v{i}"), None)
                .await
                .unwrap_or_else(|e| panic!("put {i} through the follower: {e}"))
                .header()
                .expect("a header")
                .revision()
        }
    });
    let mut revisions = futures::future::join_all(puts).await;
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        WRITES,
        "each write at a revision of its own"
    );

    let mut through_leader = Client::connect([cluster.replica(leader).address.clone()], None)
        .await
        .expect("connect to the leader");
    let listed = through_leader
        .get("batch/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("listing");
    assert_eq!(listed.kvs().len(), WRITES);
    for kv in listed.kvs() {
        let key = kv.key_str().expect("utf-8 key");
        let i: usize = key["batch/".len()..].parse().expect("a numbered key");
        assert_eq!(kv.value_str().expect("utf-8 value"), format!("v{i}"));
        assert_eq!(kv.version(), 1, "{key} written once");
    }

    let leader_metrics = |series: &str| cluster.metric(leader, series).unwrap_or(0.0);
    let put_calls =
        leader_metrics("ballast_rpc_duration_seconds_count{method=\"etcdserverpb.KV/Put\"}");
    let batches =
        leader_metrics("ballast_rpc_duration_seconds_count{method=\"ballast.v1.Raft/Propose\"}");
    assert_eq!(
        put_calls, 0.0,
        "the leader served forwarded puts one call each"
    );
    assert!(
        batches >= 1.0 && batches < WRITES as f64,
        "{WRITES} writes reached the leader in {batches} batches"
    );
    eprintln!("{WRITES} writes through the follower reached the leader in {batches} batches");

    // The caller travels with a batched write: the state machine holds it to its role.
    let mut admin = through_leader.clone();
    add_root_and_reader(&mut admin, "batch/").await;
    admin.auth_enable().await.expect("enable");
    let follower_address = [cluster.replica(follower).address.clone()];
    let mut reader = Client::connect(follower_address.clone(), Some(login("reader", "readerpw")))
        .await
        .expect("the reader logs in");
    let (code_seen, message) = code(
        reader
            .put("batch/000", "no", None)
            .await
            .expect_err("read-only"),
    );
    assert_eq!(
        (code_seen, message.as_str()),
        (Code::PermissionDenied, "etcdserver: permission denied")
    );
    let mut root = Client::connect(follower_address, Some(login("root", "rootpw")))
        .await
        .expect("root logs in");
    root.put("batch/000", "root", None)
        .await
        .expect("root writes");
    let read = root.get("batch/000", None).await.expect("read");
    assert_eq!(value(&read), Some(&b"root"[..]));
    root.auth_disable().await.expect("disable");
}

/// A follower that has not yet applied an auth change leaves the decision on a write to the
/// leader: with the leader's messages to it delayed, a client writes through it right after
/// root turned auth off, and the write applies (the follower's own, older view would refuse
/// it as "user name is empty"). Whoever wrote is still held to the leader's view when the
/// entry applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_on_an_auth_change_leaves_the_write_to_the_leader() {
    let cluster = TestCluster::start_with(
        ClusterOptions {
            faults: true,
            ..ClusterOptions::sim(env!("CARGO_BIN_EXE_ballast-sim"))
        },
        3,
    )
    .await;
    let leader = cluster.leader().await;
    let follower = cluster.follower_of(leader);
    let leader_address = [cluster.replica(leader).address.clone()];
    let mut admin = Client::connect(leader_address.clone(), None)
        .await
        .expect("connect to the leader");
    add_root_and_reader(&mut admin, "cfg/").await;
    admin.auth_enable().await.expect("enable");
    let mut root = Client::connect(leader_address, Some(login("root", "rootpw")))
        .await
        .expect("root logs in");
    let mut anonymous = Client::connect([cluster.replica(follower).address.clone()], None)
        .await
        .expect("connect to the follower");
    // The follower has applied auth being on: it refuses an anonymous write itself.
    wait_for(
        "the follower to apply auth on",
        Duration::from_secs(10),
        || {
            let mut client = anonymous.clone();
            async move {
                let refused = client.put("cfg/early", "no", None).await.err()?;
                (code(refused).0 == Code::InvalidArgument).then_some(())
            }
        },
    )
    .await;

    // Everything the leader sends the follower now arrives 200 ms late (below the election
    // timeout, so the follower keeps its leader), commit indexes included.
    cluster.set_faults(
        leader,
        &format!("delay {} 200 200\n", cluster.replica(follower).address),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    root.auth_disable().await.expect("disable");
    anonymous
        .put("cfg/late", "yes", None)
        .await
        .expect("a write through a follower right after auth went off");
    cluster.set_faults(leader, "");
    let mut open = Client::connect(cluster.endpoints(), None)
        .await
        .expect("connect");
    let read = open.get("cfg/late", None).await.expect("read");
    assert_eq!(value(&read), Some(&b"yes"[..]));
}
