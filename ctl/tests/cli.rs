//! `ballastctl` as a script sees it: exit codes, one-line errors, JSON and tables, against a
//! real single-replica cluster (in-process replica, real gRPC on loopback, real fjall).

use std::process::{Command, Output};
use std::time::Duration;

use ballast_coordinator::dr::DrConfig;
use ballast_coordinator::node::{self, NodeConfig, RunningNode};
use serde_json::Value;

async fn start_replica(dir: &std::path::Path) -> RunningNode {
    start_replica_with(dir, DrConfig::default()).await
}

async fn start_replica_with(dir: &std::path::Path, dr: DrConfig) -> RunningNode {
    start_replica_secured(dir, dr, None).await
}

async fn start_replica_secured(
    dir: &std::path::Path,
    dr: DrConfig,
    tls: Option<ballast_tls::TlsFiles>,
) -> RunningNode {
    node::start(NodeConfig {
        id: 1,
        az: "az-a".into(),
        listen: "127.0.0.1:0".parse().expect("address"),
        advertise: None,
        data_dir: dir.to_path_buf(),
        bootstrap: true,
        join: Vec::new(),
        join_token: String::new(),
        learner: false,
        heartbeat: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
        read_policy: Default::default(),
        snapshot_entries: 1000,
        snapshot_interval: Duration::from_secs(300),
        logs_to_keep: 100,
        default_shard_lease: Duration::from_secs(10),
        rebalance_interval: None,
        evacuation: Default::default(),
        slices: None,
        dr,
        force_new_cluster: false,
        backend: Default::default(),
        http_listen: None,
        tls,
        http_open_probes: false,
        fault_rules: None,
        autopilot: Default::default(),
    })
    .await
    .expect("starting a replica")
}

fn ctl(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ballastctl"))
        .arg("--endpoints")
        .arg(endpoint)
        .arg("--timeout-secs")
        .arg("5")
        .args(args)
        .output()
        .expect("running ballastctl")
}

fn ok_json(endpoint: &str, args: &[&str]) -> Value {
    let out = ctl(endpoint, args);
    assert!(
        out.status.success(),
        "ballastctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ballastctl {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn refused(endpoint: &str, args: &[&str], code: i32, needle: &str) {
    let out = ctl(endpoint, args);
    assert_eq!(out.status.code(), Some(code), "ballastctl {args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one-line error: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{stderr:?} should mention {needle:?}"
    );
}

/// Waits until the single voter at `endpoint` leads.
async fn wait_for_leader(endpoint: &str) {
    for _ in 0..100 {
        if ctl(endpoint, &["cluster", "leader", "--json"])
            .status
            .success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replica never became leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ballastctl_end_to_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start_replica(dir.path()).await;
    let endpoint = running.local_addr.to_string();
    let e = endpoint.as_str();
    wait_for_leader(e).await;

    let status = ok_json(e, &["cluster", "status", "--json"]);
    assert_eq!(status["state"], "leader");
    assert_eq!(status["members"].as_array().map(|m| m.len()), Some(1));
    assert_eq!(status["placement"]["healthy"], false);

    ok_json(
        e,
        &[
            "provider",
            "set",
            "aws",
            "--endpoint",
            "https://ec2.example",
            "--region",
            "us-east-1",
            "--json",
        ],
    );
    ok_json(
        e,
        &[
            "shard",
            "register",
            "s1",
            "--address",
            "10.0.0.1:7801",
            "--az",
            "az-a",
            "--json",
        ],
    );
    ok_json(
        e,
        &[
            "shard",
            "register",
            "s2",
            "--address",
            "10.0.0.2:7801",
            "--az",
            "az-b",
            "--json",
        ],
    );
    let w = ok_json(
        e,
        &["domain", "assign", "zone=az-a/rack=r1", "s1", "--json"],
    );
    assert_eq!(w["changed"], true);
    // `cluster status` carries the status page's shard table too.
    let with_shards = ok_json(e, &["cluster", "status", "--json"]);
    let listed = with_shards["shards"].as_array().expect("shards in status");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], "s1");
    assert_eq!(listed[0]["domains"], 1);
    let out = ctl(e, &["cluster", "status"]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("LEASE") && human.contains("s left"),
        "{human}"
    );
    let again = ok_json(
        e,
        &["domain", "assign", "zone=az-a/rack=r1", "s1", "--json"],
    );
    assert_eq!(again["changed"], false);
    ok_json(
        e,
        &[
            "quota",
            "set",
            "aws",
            "us-east-1",
            "--total",
            "100",
            "--slice",
            "s1=60",
            "--slice",
            "s2=40",
            "--json",
        ],
    );
    ok_json(e, &["binding", "bind", "c1", "s2", "--json"]);

    let shards = ok_json(e, &["shard", "list", "--json"]);
    assert_eq!(shards["shards"].as_array().map(|s| s.len()), Some(2));
    let domains = ok_json(e, &["domain", "list", "--shard", "s1", "--json", "--stale"]);
    assert_eq!(domains["domains"][0]["domain"], "zone=az-a/rack=r1");
    let quotas = ok_json(e, &["quota", "list", "--json"]);
    assert_eq!(quotas["quotas"][0]["unallocated"], 0);
    let show = ok_json(e, &["shard", "show", "s2", "--json"]);
    assert_eq!(show["clusters"][0], "c1");

    // Human output is a table with a header row.
    let out = ctl(e, &["shard", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().next().is_some_and(|l| l.starts_with("ID")),
        "{text}"
    );

    // Refusals: exit 1, one line naming the problem.
    refused(e, &["domain", "assign", "zone=az-a/rack=r1", "s2"], 1, "s1");
    refused(
        e,
        &["domain", "assign", "zone=az-a/rack=r2", "nope"],
        1,
        "not_found",
    );
    refused(
        e,
        &["domain", "assign", "not-a-domain", "s1"],
        1,
        "invalid_argument",
    );
    refused(
        e,
        &[
            "quota",
            "set",
            "aws",
            "us-east-1",
            "--total",
            "50",
            "--slice",
            "s1=60",
        ],
        1,
        "failed_precondition",
    );
    refused(e, &["shard", "show", "ghost"], 1, "not_found");
    refused(
        e,
        &["--cluster-id", "other", "shard", "list"],
        1,
        "cluster id mismatch",
    );
    // Usage errors exit 2 (clap), unreachable coordinators exit 3.
    let out = ctl(e, &["quota", "set", "aws", "us-east-1", "--total", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_ballastctl"))
        .args([
            "--endpoints",
            "127.0.0.1:1",
            "--timeout-secs",
            "1",
            "shard",
            "list",
        ])
        .output()
        .expect("running ballastctl");
    assert_eq!(out.status.code(), Some(3));

    // Removing a shard cascades.
    ok_json(e, &["shard", "remove", "s1", "--json"]);
    let domains = ok_json(e, &["domain", "list", "--json"]);
    assert_eq!(domains["domains"].as_array().map(|d| d.len()), Some(0));
    let quotas = ok_json(e, &["quota", "list", "--json"]);
    assert_eq!(
        quotas["quotas"][0]["slices"].as_array().map(|s| s.len()),
        Some(1)
    );

    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dr_export_list_verify_restore_and_refusals() {
    // `ballastctl dr restore` runs the replica binary next to it (`ballast-coord restore`),
    // which `cargo test --workspace` builds for the coordinator's own tests.
    let replica_binary =
        std::path::Path::new(env!("CARGO_BIN_EXE_ballastctl")).with_file_name("ballast-coord");
    assert!(
        replica_binary.exists(),
        "{} is missing: run `cargo build -p ballast-coordinator` (or the whole workspace's tests) first",
        replica_binary.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let archives = dir.path().join("archives");
    let key_file = dir.path().join("dr.key");
    std::fs::write(&key_file, "42".repeat(32)).expect("key file");
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, "17".repeat(32)).expect("key file");
    let running = start_replica_with(
        &dir.path().join("replica"),
        DrConfig {
            destination: Some(archives.display().to_string()),
            key: Some(ballast_dr::Key::from_file(&key_file).expect("key")),
            ..DrConfig::default()
        },
    )
    .await;
    let endpoint = running.local_addr.to_string();
    let e = endpoint.as_str();
    wait_for_leader(e).await;
    ok_json(
        e,
        &[
            "shard",
            "register",
            "s1",
            "--address",
            "10.0.0.1:7801",
            "--az",
            "az-a",
            "--json",
        ],
    );

    // Export to the configured destination, encrypted with the replica's key.
    let exported = ok_json(e, &["dr", "export", "--json"]);
    assert_eq!(exported["encrypted"], true);
    let url = exported["archive"]
        .as_str()
        .expect("archive url")
        .to_string();
    let listed = ok_json(
        e,
        &[
            "dr",
            "list",
            "--from",
            archives.to_str().expect("utf-8"),
            "--json",
        ],
    );
    assert_eq!(listed.as_array().map(|a| a.len()), Some(1));
    assert_eq!(listed[0]["revision"], exported["revision"]);
    let key_arg = key_file.to_str().expect("utf-8");
    let verified = ok_json(e, &["dr", "verify", &url, "--key-file", key_arg, "--json"]);
    assert_eq!(verified["decrypted"], true);
    let status = ok_json(e, &["cluster", "status", "--json"]);
    assert!(
        status["dr"]["exports_total"].as_u64() >= Some(1),
        "{status}"
    );

    // A restore that dies halfway through writing its data dir (crash point) leaves the target
    // untouched; the next restore clears the dead one's staging dir and succeeds.
    let crashed = dir.path().join("crashed");
    let crashed_arg = crashed.to_str().expect("utf-8");
    let restore_crashed = |failpoints: &str| {
        Command::new(env!("CARGO_BIN_EXE_ballastctl"))
            .args([
                "--endpoints",
                e,
                "dr",
                "restore",
                &url,
                "--data-dir",
                crashed_arg,
            ])
            .args(["--az", "az-a", "--advertise", "127.0.0.1:7999"])
            .args(["--key-file", key_file.to_str().expect("utf-8")])
            .env("BALLAST_FAILPOINTS", failpoints)
            .output()
            .expect("running ballastctl")
    };
    let staging_dirs = || {
        std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".crashed.restoring-")
            })
            .count()
    };
    let out = restore_crashed("restore-rewrite");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("failpoint restore-rewrite"));
    assert!(
        !crashed.exists(),
        "a crashed restore must not leave a data dir"
    );
    assert_eq!(staging_dirs(), 1);
    let out = restore_crashed("");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(crashed.join("db").exists() || crashed.read_dir().map(|d| d.count()).unwrap_or(0) > 0);
    assert_eq!(
        staging_dirs(),
        0,
        "the dead restore's staging dir was cleared"
    );

    // Restore into a fresh data dir.
    let restored_dir = dir.path().join("restored");
    let target = restored_dir.to_str().expect("utf-8");
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "dr",
            "restore",
            &url,
            "--data-dir",
            target,
            "--az",
            "az-a",
            "--advertise",
            "127.0.0.1:7999",
            "--json",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let args = restore(&["--key-file", key_arg]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = ok_json(e, &args);
    assert_eq!(done["restore_epoch"], 1);
    assert!(done["revision"].as_u64() > exported["revision"].as_u64());

    // Refusals leave the target untouched: a non-empty dir without --force, no key, the
    // wrong key, a damaged archive.
    let marker = restored_dir.join("keep-me");
    std::fs::write(&marker, "x").expect("marker");
    let untouched = || assert!(marker.exists(), "the data dir was touched");
    let args = restore(&["--key-file", key_arg]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(e, &args, 1, "not empty");
    untouched();
    let args = restore(&["--force"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(e, &args, 1, "encrypted");
    untouched();
    let args = restore(&["--force", "--key-file", other_key.to_str().expect("utf-8")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(e, &args, 1, "not with the given key");
    untouched();
    let name = url.rsplit('/').next().expect("name");
    let data = archives.join(name).join("data");
    let mut bytes = std::fs::read(&data).expect("archive data");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&data, bytes).expect("truncate");
    let args = restore(&["--force", "--key-file", key_arg]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(e, &args, 1, "truncated");
    untouched();
    refused(
        e,
        &["dr", "verify", &url, "--key-file", key_arg],
        1,
        "corrupt",
    );
    refused(
        e,
        &["dr", "list", "--from", "gs://nowhere"],
        1,
        "only local paths",
    );

    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_exports_run_on_the_leader_and_keep_the_newest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let archives = dir.path().join("archives");
    let running = start_replica_with(
        &dir.path().join("replica"),
        DrConfig {
            destination: Some(archives.display().to_string()),
            interval: Some(Duration::from_millis(200)),
            retention: ballast_dr::Retention {
                keep_last: Some(2),
                max_age: None,
            },
            key: None,
        },
    )
    .await;
    let endpoint = running.local_addr.to_string();
    let e = endpoint.as_str();
    wait_for_leader(e).await;
    let from = archives.to_str().expect("utf-8");
    let mut exports = 0;
    for _ in 0..100 {
        let status = ok_json(e, &["cluster", "status", "--json"]);
        exports = status["dr"]["exports_total"].as_u64().unwrap_or(0);
        if exports >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(exports >= 4, "only {exports} scheduled exports");
    // Retention after every export keeps the two newest.
    let listed = ok_json(e, &["dr", "list", "--from", from, "--json"]);
    assert_eq!(listed.as_array().map(|a| a.len()), Some(2), "{listed}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_and_lease_commands() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start_replica(dir.path()).await;
    let endpoint = running.local_addr.to_string();
    let e = endpoint.as_str();
    wait_for_leader(e).await;

    ok_json(e, &["kv", "put", "cfg/a", "1", "--json"]);
    let last = ok_json(e, &["kv", "put", "cfg/b", "2", "--json"])["revision"]
        .as_i64()
        .expect("revision of the put");
    let got = ok_json(e, &["kv", "get", "cfg/", "--prefix", "--json"]);
    assert_eq!(got["count"], 2);
    assert_eq!(got["kvs"][1]["value"], "2");

    // A watch sees the next change. It starts right after the last revision, so the change is
    // delivered however long the watch takes to be established.
    let from = (last + 1).to_string();
    let watcher = std::process::Command::new(env!("CARGO_BIN_EXE_ballastctl"))
        .args([
            "--endpoints",
            e,
            "kv",
            "watch",
            "cfg/",
            "--prefix",
            "--rev",
            &from,
            "--count",
            "1",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("watch");
    ok_json(e, &["kv", "put", "cfg/c", "3", "--json"]);
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(watcher.wait_with_output()));
    let out = outcome
        .recv_timeout(Duration::from_secs(30))
        .expect("the watch did not report the change within 30 s")
        .expect("watch output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PUT cfg/c 3"), "{text}");

    // Transactions: the same one twice, the guard decides the branch.
    let txn = [
        "kv",
        "txn",
        "--if",
        "value(cfg/a) = 1",
        "--then",
        "put cfg/a 10",
        "--else",
        "get cfg/a",
        "--json",
    ];
    assert_eq!(ok_json(e, &txn)["succeeded"], true);
    let txn = ok_json(e, &txn);
    assert_eq!(txn["succeeded"], false);
    assert_eq!(txn["responses"][0]["kvs"][0]["value"], "10");
    refused(
        e,
        &["kv", "txn", "--if", "colour(cfg/a) = 1"],
        1,
        "unknown field",
    );

    // Leases own keys; revoking deletes them.
    let granted = ok_json(e, &["lease", "grant", "60", "--json"]);
    let id = granted["id"].as_str().expect("id").to_string();
    ok_json(e, &["kv", "put", "tmp", "x", "--lease", &id, "--json"]);
    ok_json(e, &["lease", "keepalive", &id, "--once", "--json"]);
    let leases = ok_json(e, &["lease", "list", "--json"]);
    assert_eq!(leases["leases"][0], id.as_str());
    ok_json(e, &["lease", "revoke", &id, "--json"]);
    assert_eq!(ok_json(e, &["kv", "get", "tmp", "--json"])["count"], 0);
    refused(e, &["lease", "revoke", &id], 1, "requested lease not found");
    refused(e, &["kv", "put", "", "v"], 1, "key is not provided");

    let deleted = ok_json(e, &["kv", "del", "cfg/", "--prefix", "--json"]);
    assert_eq!(deleted["deleted"], 3);
    running.shutdown().await;
}

/// Turns etcd auth on at `endpoint` with a root user and `ann`, who may only read `cfg/`.
async fn enable_auth_with_a_reader(endpoint: &str) {
    use ballast_protocol::etcdserverpb as epb;
    let channel = tonic::transport::Channel::from_shared(format!("http://{endpoint}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connecting");
    let mut auth = epb::auth_client::AuthClient::new(channel);
    for (name, password) in [("root", "rootpw"), ("ann", "annpw")] {
        auth.user_add(epb::AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .expect("user add");
    }
    auth.role_add(epb::AuthRoleAddRequest {
        name: "reader".into(),
    })
    .await
    .expect("role add");
    auth.role_grant_permission(epb::AuthRoleGrantPermissionRequest {
        name: "reader".into(),
        perm: Some(ballast_protocol::authpb::Permission {
            perm_type: ballast_protocol::authpb::permission::Type::Read as i32,
            key: b"cfg/".to_vec(),
            range_end: ballast_protocol::coordination::prefix_end(b"cfg/"),
        }),
    })
    .await
    .expect("grant");
    for (user, role) in [("root", "root"), ("ann", "reader")] {
        auth.user_grant_role(epb::AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .expect("user grant role");
    }
    auth.auth_enable(epb::AuthEnableRequest {})
        .await
        .expect("auth enable");
}

/// `--user` as etcdctl's: once etcd auth is on, kv and lease commands log in (password after a
/// colon, in --password or in BALLAST_ETCD_PASSWORD), are held to the user's roles, and a
/// missing or wrong password is a one-line error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_commands_log_in_as_an_etcd_user_once_auth_is_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start_replica(dir.path()).await;
    let endpoint = running.local_addr.to_string();
    let e = endpoint.as_str();
    wait_for_leader(e).await;
    enable_auth_with_a_reader(e).await;

    refused(e, &["kv", "get", "cfg/a"], 1, "user name is empty");
    ok_json(
        e,
        &["--user", "root:rootpw", "kv", "put", "cfg/a", "1", "--json"],
    );
    let got = ok_json(
        e,
        &[
            "--user",
            "ann",
            "--password",
            "annpw",
            "kv",
            "get",
            "cfg/a",
            "--json",
        ],
    );
    assert_eq!(got["kvs"][0]["value"], "1");
    refused(
        e,
        &["--user", "ann:annpw", "kv", "put", "cfg/a", "2"],
        1,
        "permission denied",
    );
    refused(
        e,
        &["--user", "ann:annpw", "kv", "get", "other"],
        1,
        "permission denied",
    );
    refused(
        e,
        &["--user", "ann:wrong", "kv", "get", "cfg/a"],
        1,
        "authentication failed, invalid user ID or password",
    );
    refused(
        e,
        &["--user", "ann", "kv", "get", "cfg/a"],
        1,
        "needs a password",
    );
    let from_env = Command::new(env!("CARGO_BIN_EXE_ballastctl"))
        .args([
            "--endpoints",
            e,
            "--user",
            "ann",
            "kv",
            "get",
            "cfg/a",
            "--json",
        ])
        .env("BALLAST_ETCD_PASSWORD", "annpw")
        .output()
        .expect("running ballastctl");
    assert!(from_env.status.success(), "{from_env:?}");
    let granted = ok_json(
        e,
        &["--user", "root:rootpw", "lease", "grant", "60", "--json"],
    );
    assert!(granted["id"].is_string(), "{granted}");
    // As in etcd, any logged-in user may grant a lease; a caller with no token may not.
    refused(e, &["lease", "grant", "60"], 1, "user name is empty");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_a_config_file_and_flags_override_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start_replica(&dir.path().join("data")).await;
    let endpoint = running.local_addr.to_string();
    let file = dir.path().join("ctl.toml");
    std::fs::write(
        &file,
        format!("endpoints = [\"{endpoint}\"]\ntimeout_secs = 5\n"),
    )
    .expect("writing the config");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ballastctl"))
            .arg("--config")
            .arg(&file)
            .args(args)
            .output()
            .expect("running ballastctl")
    };
    let out = run(&["cluster", "status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["address"], endpoint.as_str());
    // A flag beats the file: an unreachable endpoint fails fast.
    let out = run(&[
        "--endpoints",
        "127.0.0.1:1",
        "--timeout-secs",
        "1",
        "cluster",
        "status",
    ]);
    assert_eq!(out.status.code(), Some(3), "unreachable endpoint");
    // An unknown key is refused with the file and the key.
    std::fs::write(&file, "endpoint = \"x\"\n").expect("writing the config");
    let out = run(&["cluster", "status"]);
    assert_eq!(out.status.code(), Some(2));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("ctl.toml") && message.contains("field `endpoint`: unknown setting"),
        "{message}"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_refuses_hostile_input_cleanly_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start_replica(dir.path()).await;
    let endpoint = running.local_addr.to_string();
    let ok = ctl(
        &endpoint,
        &[
            "shard",
            "register",
            "s1",
            "--address",
            "127.0.0.1:7801",
            "--az",
            "az-a",
        ],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let revision = || running.replica.state.revision();
    let before = revision();
    let long = "x".repeat(70_000);
    let cases: Vec<Vec<&str>> = vec![
        // Missing arguments and values of the wrong type: flag errors.
        vec!["cluster", "transfer-leader"],
        vec!["cluster", "remove", "minus-one"],
        vec!["cluster", "token", "create", "--ttl", "0"],
        vec!["cluster", "token", "create", "--ttl", "1y"],
        vec!["shard", "register", "s2"],
        vec![
            "shard",
            "register",
            "s2",
            "--address",
            "127.0.0.1:7802",
            "--az",
            "az-b",
            "--lease-ms",
            "-5",
        ],
        vec!["quota", "set", "aws", "eu", "--total", "ten"],
        vec![
            "quota", "set", "aws", "eu", "--total", "10", "--slice", "s1",
        ],
        vec!["kv", "get", "k", "--limit", "many"],
        vec!["nonsense"],
        // Well-formed but refused by the cluster: validation errors, nothing written.
        vec![
            "shard",
            "register",
            "BAD ID",
            "--address",
            "127.0.0.1:7802",
            "--az",
            "az-b",
        ],
        vec![
            "shard",
            "register",
            "s2",
            "--address",
            "not an address",
            "--az",
            "az-b",
        ],
        vec![
            "shard",
            "register",
            &long,
            "--address",
            "127.0.0.1:7802",
            "--az",
            "az-b",
        ],
        vec!["shard", "drain", "no-such-shard"],
        vec!["shard", "show", "no-such-shard"],
        vec!["domain", "assign", "no-equals-sign", "s1"],
        vec!["domain", "assign", "zone=az-a", "no-such-shard"],
        vec!["domain", "unassign", "zone=nowhere"],
        vec!["binding", "bind", "c1", "no-such-shard"],
        vec![
            "quota", "set", "aws", "eu", "--total", "10", "--slice", "s1=11",
        ],
        vec!["quota", "delete", "aws", "nowhere"],
        vec!["provider", "set", "p", "--endpoint", "", "--region", "eu"],
        vec!["provider", "remove", "no-such-provider"],
        vec!["kv", "put", "", "v"],
        vec!["kv", "put", "k", "v", "--lease", "zz-not-hex"],
        vec!["lease", "revoke", "12345"],
        vec!["lease", "grant", "-10"],
        vec!["cluster", "remove", "99"],
        vec!["cluster", "transfer-leader", "99"],
    ];
    for args in &cases {
        let out = ctl(&endpoint, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must be refused");
        assert!(
            matches!(out.status.code(), Some(1..=3)),
            "{args:?}: exit code {:?}",
            out.status.code()
        );
        assert!(!stderr.trim().is_empty(), "{args:?}: no reason given");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(revision(), before, "{args:?} changed the state");
    }
    // The replica is still serving.
    let status = ok_json(&endpoint, &["cluster", "status", "--json"]);
    assert_eq!(status["revision"], before);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ballastctl_over_mutual_tls() {
    use ballast_testkit::pki::{TestPki, tls_flags};
    use ballast_tls::Role;
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(&dir.path().join("pki"), "ballast");
    let replica = pki.issue("replica-1", &[Role::Peer]);
    let running =
        start_replica_secured(&dir.path().join("data"), DrConfig::default(), Some(replica)).await;
    let endpoint = running.local_addr.to_string();
    let e = endpoint.as_str();
    let admin = tls_flags(&pki.issue("operator", &[Role::Admin]));
    let readonly = tls_flags(&pki.issue("dashboard", &[Role::Readonly]));
    let with = |flags: &[String], args: &[&str]| -> Vec<String> {
        flags
            .iter()
            .cloned()
            .chain(args.iter().map(|a| a.to_string()))
            .collect()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl(e, &args)
    };
    let mut led = false;
    for _ in 0..100 {
        if run(with(&admin, &["cluster", "leader", "--json"]))
            .status
            .success()
        {
            led = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(led, "the replica never led (over TLS)");

    let out = run(with(
        &admin,
        &[
            "provider",
            "set",
            "aws",
            "--endpoint",
            "https://aws.example",
            "--region",
            "us-east-1",
        ],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(with(&admin, &["kv", "put", "greeting", "hello"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(with(&readonly, &["kv", "get", "greeting", "--json"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));

    // readonly: reads yes, writes refused with the reason (exit 1), nothing changed.
    let out = run(with(&readonly, &["provider", "list", "--json"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = String::from_utf8_lossy(&out.stdout).to_string();
    for args in [
        &[
            "provider",
            "set",
            "gcp",
            "--endpoint",
            "https://gcp.example",
            "--region",
            "eu",
        ][..],
        &["kv", "put", "greeting", "bye"][..],
        &["cluster", "token", "create", "--ttl", "1h"][..],
    ] {
        let out = run(with(&readonly, args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("needs role admin"), "{args:?}: {stderr}");
    }
    let out = run(with(&readonly, &["provider", "list", "--json"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), before);
    let out = run(with(&readonly, &["kv", "get", "greeting", "--json"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));

    // No TLS flags against a TLS cluster: unreachable (exit 3). Some flags only: usage (2).
    let out = ctl(e, &["cluster", "status"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(e, &["--tls-ca", "ca.pem", "cluster", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-cert"));
    drop(running);
}
