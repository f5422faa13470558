//! Mutual TLS on every port, with roles from client certificates: three replicas and a shard
//! worker as real processes, every one with its own certificate from a test CA. Checks the
//! refusals the operations issue names (no certificate, wrong CA, readonly writing, a shard
//! acting for another, a client certificate on Raft traffic), that nothing they tried changed
//! the state, the HTTPS port, certificate rotation without restart, and the flag checks.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::etcdserverpb::PutRequest;
use ballast_protocol::etcdserverpb::kv_client::KvClient;
use ballast_protocol::pb;
use ballast_protocol::pb::assignments_client::AssignmentsClient;
use ballast_protocol::pb::cluster_client::ClusterClient;
use ballast_protocol::pb::fleet_client::FleetClient;
use ballast_protocol::pb::raft_client::RaftClient;
use ballast_testkit::fleet::{FleetShape, load_fleet};
use ballast_testkit::{
    ClusterOptions, TestCluster, TestPki, assign_domain, current_revision, http_get, https_get,
    pki, wait_for,
};
use ballast_tls::{ClientTls, Role};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

fn sim() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ballast-sim"))
}

async fn tls_cluster(pki: &Arc<TestPki>, size: u64) -> TestCluster {
    TestCluster::start_with(
        ClusterOptions {
            tls: Some(pki.clone()),
            ..ClusterOptions::sim(sim())
        },
        size,
    )
    .await
}

fn channel(address: &str, tls: Option<&Arc<ClientTls>>) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    ballast_tls::client::lazy_channel(endpoint, tls)
}

async fn status_with(address: &str, tls: Option<&Arc<ClientTls>>) -> Result<u64, tonic::Status> {
    ClusterClient::new(channel(address, tls))
        .status(pb::StatusRequest { options: None })
        .await
        .map(|r| r.into_inner().header.map(|h| h.revision).unwrap_or(0))
}

fn assign(domain: &str, shard: &str) -> pb::WriteRequest {
    pb::WriteRequest {
        request_id: String::new(),
        command: Some(pb::Command {
            command: Some(pb::command::Command::AssignDomains(pb::AssignDomains {
                assignments: vec![pb::DomainAssignment {
                    domain: domain.into(),
                    shard: shard.into(),
                }],
                allow_move: true,
            })),
        }),
    }
}

fn heartbeat(shard: &str) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        shard_id: shard.into(),
        address: "127.0.0.1:1".into(),
        az: "az-a".into(),
        lease_ttl_ms: 0,
        epoch: 1,
        summary: None,
    }
}

fn denied<T: std::fmt::Debug>(outcome: Result<T, tonic::Status>, says: &str) {
    let status = outcome.expect_err("the call should be refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(says),
        "{:?} should say {says:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_refusals_on_every_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Arc::new(TestPki::new(&dir.path().join("pki"), "ballast"));
    let cluster = tls_cluster(&pki, 3).await;
    let admin_client = cluster.client();
    load_fleet(
        &admin_client,
        FleetShape {
            shards: 3,
            domains: 30,
            bindings: 6,
            quotas: 1,
        },
    )
    .await
    .expect("an admin certificate writes");
    let before = current_revision(&admin_client).await;
    let address = cluster.replicas[0].address.clone();

    let readonly = pki.client("ops-dashboard", &[Role::Readonly]);
    let admin = pki.client("operator", &[Role::Admin]);
    let shard1 = pki.client("shard-s1", &[Role::Shard("s1".into())]);
    let roleless = pki.client("someone", &[]);
    let stranger_ca = TestPki::new(&dir.path().join("other"), "other");
    let foreign = stranger_ca.client("intruder", &[Role::Admin]);

    // No certificate, a certificate from another CA, or no TLS at all: no connection.
    assert!(
        status_with(&address, Some(&pki.anonymous_client()))
            .await
            .is_err()
    );
    assert!(status_with(&address, Some(&foreign)).await.is_err());
    assert!(status_with(&address, None).await.is_err());
    // A client that trusts another CA refuses the replica's certificate.
    let wrong_trust = stranger_ca.client("operator", &[Role::Admin]);
    assert!(status_with(&address, Some(&wrong_trust)).await.is_err());

    // readonly reads, never writes (fleet or KV).
    assert!(status_with(&address, Some(&readonly)).await.is_ok());
    let listed = FleetClient::new(channel(&address, Some(&readonly)))
        .list_domains(pb::ListDomainsRequest::default())
        .await
        .expect("readonly lists domains")
        .into_inner();
    assert_eq!(listed.domains.len(), 30);
    denied(
        FleetClient::new(channel(&address, Some(&readonly)))
            .write(assign("d-new", "s-0"))
            .await,
        "needs role admin",
    );
    denied(
        KvClient::new(channel(&address, Some(&readonly)))
            .put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await,
        "needs role admin",
    );
    denied(
        ClusterClient::new(channel(&address, Some(&readonly)))
            .create_join_token(pb::CreateJoinTokenRequest { ttl_seconds: 60 })
            .await,
        "needs role admin",
    );
    // A certificate with no Ballast role gets nothing.
    denied(
        ClusterClient::new(channel(&address, Some(&roleless)))
            .status(pb::StatusRequest { options: None })
            .await,
        "no Ballast role",
    );

    // A shard certificate acts only as its own shard, and does nothing else.
    let assignments = || AssignmentsClient::new(channel(&address, Some(&shard1)));
    assignments()
        .heartbeat(heartbeat("s1"))
        .await
        .expect("s1 heartbeats as s1");
    denied(
        assignments().heartbeat(heartbeat("s2")).await,
        "cannot act as shard \"s2\"",
    );
    denied(
        assignments()
            .watch(pb::WatchAssignmentsRequest {
                shard_id: "s2".into(),
                from_revision: 0,
                restore_epoch: 0,
            })
            .await,
        "cannot act as shard \"s2\"",
    );
    denied(
        FleetClient::new(channel(&address, Some(&shard1)))
            .write(assign("d-1", "s1"))
            .await,
        "needs role admin",
    );
    denied(
        FleetClient::new(channel(&address, Some(&shard1)))
            .list_shards(pb::ListShardsRequest::default())
            .await,
        "reads need role readonly",
    );

    // Raft traffic is for replicas: even an admin certificate is refused there.
    denied(
        RaftClient::new(channel(&address, Some(&admin)))
            .vote(pb::RaftMessage::default())
            .await,
        "only from replicas",
    );

    // Nothing refused changed anything (s1's heartbeat is the one accepted write).
    let after = current_revision(&admin_client).await;
    assert_eq!(after, before + 1, "only s1's registration was applied");
    let shards = admin_client
        .fleet(|mut c, req| async move {
            c.list_shards(req.wrap(pb::ListShardsRequest { options: None }))
                .await
        })
        .await
        .expect("listing shards");
    assert!(shards.shards.iter().any(|s| s.id == "s1"));
    assert!(!shards.shards.iter().any(|s| s.id == "s2"));

    // The HTTP port: HTTPS only, any role reads it, no certificate gets 401.
    let http = &cluster.replicas[1].http_address;
    let (code, page) = https_get(http, "/metrics", &readonly)
        .await
        .expect("readonly reads /metrics");
    assert_eq!(code, 200);
    assert!(page.contains("ballast_raft_term"));
    let (code, _) = https_get(http, "/", &shard1).await.expect("status page");
    assert_eq!(code, 200);
    let (code, body) = https_get(http, "/healthz", &pki.anonymous_client())
        .await
        .expect("an anonymous TLS client gets an answer");
    assert_eq!(code, 401, "{body}");
    assert!(https_get(http, "/metrics", &foreign).await.is_none());
    assert!(
        !matches!(http_get(http, "/healthz"), Some((200, _))),
        "plain HTTP must not be served"
    );

    // A real shard worker with its own certificate registers, follows its assignments and
    // serves its API over TLS (readonly reads it, a foreign CA cannot).
    let shard = cluster.spawn_sim_shard(sim(), "s1", "az-a", &["--lease-ms", "3000"]);
    assign_domain(&admin_client, "zone=az-a/rack=tls", "s1", true).await;
    shard
        .wait_until("holds rack-tls", |s| {
            s.domains.iter().any(|d| d == "zone=az-a/rack=tls")
        })
        .await;
    let mut by_readonly =
        pb::shard_worker_client::ShardWorkerClient::new(channel(&shard.address, Some(&readonly)));
    assert!(by_readonly.status(pb::ShardStatusRequest {}).await.is_ok());
    denied(
        by_readonly
            .submit_demand(pb::SubmitDemandRequest {
                cluster: "c".into(),
                rows: vec![],
            })
            .await,
        "needs role admin",
    );
    let mut by_foreign =
        pb::shard_worker_client::ShardWorkerClient::new(channel(&shard.address, Some(&foreign)));
    assert!(by_foreign.status(pb::ShardStatusRequest {}).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_used_without_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Arc::new(TestPki::new(&dir.path().join("pki"), "first"));
    let cluster = tls_cluster(&pki, 1).await;
    let address = cluster.replicas[0].address.clone();
    let old_admin = pki.client("operator", &[Role::Admin]);
    assert!(status_with(&address, Some(&old_admin)).await.is_ok());
    let pid = cluster.replicas[0].pid();

    // Rotate to a new CA: the replica's CA bundle, certificate and key are replaced in place.
    let next = TestPki::new(&dir.path().join("next"), "next");
    let rotated = next.issue("replica-1-rotated", &[Role::Peer]);
    let pki_dir = dir.path().join("pki");
    std::fs::copy(&rotated.key, pki_dir.join("replica-1-key.pem")).expect("key");
    std::fs::copy(&rotated.cert, pki_dir.join("replica-1.pem")).expect("cert");
    std::fs::copy(next.ca_path(), pki.ca_path()).expect("ca");

    let new_admin = next.client("operator", &[Role::Admin]);
    wait_for(
        "the rotated files in use",
        Duration::from_secs(20),
        || async { status_with(&address, Some(&new_admin)).await.ok() },
    )
    .await;
    assert!(
        status_with(&address, Some(&old_admin)).await.is_err(),
        "the old CA is no longer trusted"
    );
    let http = &cluster.replicas[0].http_address;
    let (code, _) = https_get(http, "/metrics", &new_admin)
        .await
        .expect("the HTTP port uses the rotated files too");
    assert_eq!(code, 200);
    assert_eq!(cluster.replicas[0].pid(), pid, "no restart happened");

    // A broken rotation (a key that does not match) keeps the last good files.
    std::fs::write(
        pki_dir.join("replica-1-key.pem"),
        next.issue_pem("x", &[]).1,
    )
    .expect("key");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(status_with(&address, Some(&new_admin)).await.is_ok());
    assert!(
        cluster
            .logs()
            .contains("cannot be used; keeping the previous ones")
    );
}

#[test]
fn tls_flags_are_all_or_nothing_and_checked_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path(), "ballast");
    let peer = pki.issue("replica", &[Role::Peer]);
    let admin = pki.issue("operator", &[Role::Admin]);
    let run = |tls: &[&str]| {
        let output = std::process::Command::new(sim())
            .args([
                "replica",
                "--id",
                "1",
                "--az",
                "az-a",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--bootstrap")
            .args(tls)
            .output()
            .expect("running the replica");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let path = |p: &Path| p.display().to_string();
    let (code, stderr) = run(&["--tls-cert", &path(&peer.cert)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--tls-ca") && stderr.contains("--tls-key"),
        "{stderr}"
    );
    // A replica certificate without the peer role would be refused by every other replica.
    let (code, stderr) = run(&[
        "--tls-ca",
        &path(&admin.ca),
        "--tls-cert",
        &path(&admin.cert),
        "--tls-key",
        &path(&admin.key),
    ]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("ballast://role/peer"), "{stderr}");
    // A key that does not belong to the certificate.
    let (code, stderr) = run(&[
        "--tls-ca",
        &path(&peer.ca),
        "--tls-cert",
        &path(&peer.cert),
        "--tls-key",
        &path(&admin.key),
    ]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("replica.pem"), "{stderr}");
    assert!(
        !dir.path().join("data").exists()
            || std::fs::read_dir(dir.path().join("data"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0,
        "a refused start creates nothing"
    );
}

/// Lists every machine at a provider served over mutual TLS, as `client`.
async fn provider_record_over_tls(
    address: &str,
    client: &Arc<ClientTls>,
) -> Vec<ballast_protocol::providerpb::Machine> {
    use ballast_protocol::providerpb::ListMachinesRequest;
    use ballast_protocol::providerpb::provider_client::ProviderClient;
    ProviderClient::new(channel(address, Some(client)))
        .list_machines(ListMachinesRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("listing the provider's machines")
        .into_inner()
        .machines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_drives_a_provider_process_over_mutual_tls_and_acts_only_as_itself() {
    use ballast_protocol::providerpb::provider_client::ProviderClient;
    use ballast_protocol::providerpb::{
        CreateMachineRequest, DomainGrant, FencingToken, Grant, QuotaGrant,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Arc::new(TestPki::new(&dir.path().join("pki"), "fleet"));
    let cluster = tls_cluster(&pki, 1).await;
    let provider_tls = pki::tls_flags(&pki.issue("provider", &[]));
    let provider = ballast_testkit::ProviderProcess::start(
        &format!("'{}' provider", sim().display()),
        &format!("--name sim --region local {}", provider_tls.join(" ")),
    );
    let url = format!("https://{}", provider.endpoint);
    // The shard presents its own certificate (role shard/s1) to the provider, as it does to
    // the coordinator: the same --tls-* flags.
    let shard = cluster.spawn_sim_shard(
        sim(),
        "s1",
        "az-a",
        &["--lease-ms", "3000", "--provider", &url],
    );
    cluster.wait_for_shards(1).await;
    ballast_testkit::allocate_to_s1(&cluster.client(), &url, "zone=az-a/rack=tls", 10).await;
    shard.wait_for_grants().await;
    shard.submit_small("c1", 3).await.expect("demand");
    shard
        .wait_until("three machines at work", |s| {
            ballast_testkit::assigned_machines(s) == 3
        })
        .await;
    let admin = pki.client("operator", &[Role::Admin]);
    let record = wait_for(
        "three machines at the provider, s1's, configured for c1",
        Duration::from_secs(20),
        || async {
            let record = provider_record_over_tls(&provider.endpoint, &admin).await;
            let at_work = record
                .iter()
                .filter(|m| ballast_testkit::live(m) && m.owner_shard == "s1" && m.cluster == "c1")
                .count();
            (at_work == 3).then_some(record)
        },
    )
    .await;

    // Another shard's certificate cannot act as s1, a readonly one cannot act at all, and a
    // client without a certificate is not served; none of them changed the record.
    let create_as_s1 = || CreateMachineRequest {
        idempotency_key: "intruder".into(),
        token: Some(FencingToken {
            shard_id: "s1".into(),
            shard_epoch: u64::MAX,
            sequence: 1,
            domain: Some(DomainGrant {
                domain: "zone=az-a/rack=tls".into(),
                grant: Some(Grant {
                    restore_epoch: u64::MAX,
                    revision: u64::MAX,
                }),
            }),
            quota: Some(QuotaGrant {
                quota_provider: "sim".into(),
                region: "local".into(),
                grant: Some(Grant {
                    restore_epoch: u64::MAX,
                    revision: u64::MAX,
                }),
                slice: 100,
            }),
            cluster: None,
        }),
        machine_id: "intruder-1".into(),
        domain: "zone=az-a/rack=tls".into(),
        shape: "small".into(),
        capacity_type: String::new(),
    };
    let other_shard = pki.client("shard-s2", &[Role::Shard("s2".into())]);
    denied(
        ProviderClient::new(channel(&provider.endpoint, Some(&other_shard)))
            .create_machine(create_as_s1())
            .await,
        "cannot act as shard \"s1\"",
    );
    let readonly = pki.client("viewer", &[Role::Readonly]);
    denied(
        ProviderClient::new(channel(&provider.endpoint, Some(&readonly)))
            .create_machine(create_as_s1())
            .await,
        "needs role shard/<id> or admin",
    );
    assert!(
        ProviderClient::new(channel(&provider.endpoint, Some(&readonly)))
            .list_machines(ballast_protocol::providerpb::ListMachinesRequest::default())
            .await
            .is_ok(),
        "readonly reads"
    );
    let anonymous = pki.anonymous_client();
    assert!(
        ProviderClient::new(channel(&provider.endpoint, Some(&anonymous)))
            .create_machine(create_as_s1())
            .await
            .is_err(),
        "a client without a certificate is refused"
    );
    assert_eq!(
        provider_record_over_tls(&provider.endpoint, &admin).await,
        record,
        "the refused calls changed nothing at the provider"
    );

    // The conformance suite reaches a provider over mutual TLS too (as an admin, which may act
    // as any shard).
    let suite = pki::tls_flags(&pki.issue("provider-check", &[Role::Admin]));
    let output = ballast_testkit::run_bounded(
        std::process::Command::new(sim())
            .arg("provider-check")
            .arg("--endpoint")
            .arg(&url)
            .args(&suite),
        "ballast-sim provider-check over mutual TLS",
        Duration::from_secs(120),
    );
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the suite passes over mutual TLS:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificates_common_name_is_its_etcd_user_once_auth_is_on() {
    use ballast_protocol::authpb;
    use ballast_protocol::etcdserverpb as epb;
    use ballast_protocol::etcdserverpb::auth_client::AuthClient;
    let dir = tempfile::tempdir().expect("a directory");
    let pki = Arc::new(TestPki::new(&dir.path().join("pki"), "ballast"));
    let cluster = tls_cluster(&pki, 3).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower_of(leader);
    // Ballast admins by certificate role, each with a common name of its own.
    let carol = pki.client("carol", &[Role::Admin]);
    let dave = pki.client("dave", &[Role::Admin]);
    let at = |id: u64, tls: &Arc<ClientTls>| channel(&cluster.replica(id).address, Some(tls));

    // Root, and carol without a password (certificate only), read-write on /app/.
    let mut auth = AuthClient::new(at(leader, &carol));
    auth.user_add(epb::AuthUserAddRequest {
        name: "root".into(),
        password: "rootpw".into(),
        ..Default::default()
    })
    .await
    .expect("root");
    auth.user_grant_role(epb::AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .expect("root role");
    auth.role_add(epb::AuthRoleAddRequest { name: "app".into() })
        .await
        .expect("role");
    auth.role_grant_permission(epb::AuthRoleGrantPermissionRequest {
        name: "app".into(),
        perm: Some(authpb::Permission {
            perm_type: authpb::permission::Type::Readwrite as i32,
            key: b"/app/".to_vec(),
            range_end: b"/app0".to_vec(),
        }),
    })
    .await
    .expect("grant");
    auth.user_add(epb::AuthUserAddRequest {
        name: "carol".into(),
        options: Some(authpb::UserAddOptions { no_password: true }),
        ..Default::default()
    })
    .await
    .expect("carol");
    auth.user_grant_role(epb::AuthUserGrantRoleRequest {
        user: "carol".into(),
        role: "app".into(),
    })
    .await
    .expect("carol's role");
    auth.auth_enable(epb::AuthEnableRequest {})
        .await
        .expect("enable");

    let put = |key: &str| PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    // Carol's certificate makes her carol: she writes /app/ on the leader and through a
    // follower (which forwards her name to the leader), and nothing else, Ballast admin or not.
    for id in [leader, follower] {
        KvClient::new(at(id, &carol))
            .put(put("/app/k"))
            .await
            .unwrap_or_else(|e| panic!("carol's put through replica {id}: {e}"));
        let refused = KvClient::new(at(id, &carol))
            .put(put("/other"))
            .await
            .expect_err("outside carol's permissions");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert_eq!(refused.message(), "etcdserver: permission denied");
    }
    // A certificate naming no etcd user gets nothing; a password-less user cannot log in.
    let refused = KvClient::new(at(follower, &dave))
        .put(put("/app/k"))
        .await
        .expect_err("dave is no etcd user");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = AuthClient::new(at(follower, &dave))
        .authenticate(epb::AuthenticateRequest {
            name: "carol".into(),
            password: String::new(),
        })
        .await
        .expect_err("carol has no password");
    assert_eq!(
        refused.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );
    let refused = AuthClient::new(at(leader, &carol))
        .user_list(epb::AuthUserListRequest {})
        .await
        .expect_err("carol is no etcd administrator");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Root's token works over any certificate (the token names the user).
    let token = AuthClient::new(at(follower, &dave))
        .authenticate(epb::AuthenticateRequest {
            name: "root".into(),
            password: "rootpw".into(),
        })
        .await
        .expect("root logs in")
        .into_inner()
        .token;
    let mut request = tonic::Request::new(epb::AuthUserListRequest {});
    request
        .metadata_mut()
        .insert("token", token.parse().expect("ascii token"));
    let users = AuthClient::new(at(follower, &dave))
        .user_list(request)
        .await
        .expect("root lists users")
        .into_inner()
        .users;
    assert_eq!(users, ["carol", "root"]);
}
