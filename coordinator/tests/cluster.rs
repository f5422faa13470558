//! Three real `ballast-coord` processes on loopback: formation, replication through any
//! replica, leader SIGKILL under writes, follower restart, snapshot install on a new replica,
//! membership changes and leadership transfer.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::kv_client::KvClient;
use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use ballast_testkit::{FAST_FLAGS, TestCluster, wait_for};
use common::{assign, cmd, coord_binary, domains, register};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_replica_reach_all_three() {
    let cluster = TestCluster::start(coord_binary(), 3, FAST_FLAGS).await;
    let status = cluster.status(1).await.expect("status of replica 1");
    let placement = status.placement.expect("placement");
    assert!(placement.healthy, "{}", placement.message);
    assert_eq!(placement.voter_azs, vec!["az-a", "az-b", "az-c"]);

    cluster
        .client()
        .write(register("s1", "az-a"))
        .await
        .expect("registering s1");
    let mut last_revision = 0;
    for id in 1..=3u64 {
        // Each write goes to one replica only: followers must forward to the leader.
        let client = cluster.client_of(id);
        for n in 0..5 {
            let answer = client
                .write(assign(&format!("zone=az-a/rack=r{id}-{n}"), "s1"))
                .await
                .unwrap_or_else(|e| panic!("write through replica {id}: {e}"));
            let header = answer.header.expect("header");
            assert!(header.revision > last_revision, "revisions increase");
            last_revision = header.revision;
        }
    }
    for id in 1..=3u64 {
        cluster.wait_for_revision(id, last_revision).await;
    }
    let reference = domains(&cluster.client_of(1), true).await;
    assert_eq!(reference.len(), 15);
    for id in 2..=3u64 {
        assert_eq!(domains(&cluster.client_of(id), true).await, reference);
    }
    // A linearizable read through a follower sees every write the leader acknowledged before
    // the read began: each read goes out the moment the write is acknowledged, before the
    // follower has been told the entry is committed (it learns that with the next append).
    let leader = cluster.leader().await;
    let follower = cluster.follower_of(leader);
    let (to_leader, to_follower) = (cluster.client_of(leader), cluster.client_of(follower));
    for n in 0..40 {
        let domain = format!("zone=az-b/rack=fresh-{n:02}");
        to_leader
            .write(assign(&domain, "s1"))
            .await
            .unwrap_or_else(|e| panic!("write through the leader: {e}"));
        let read = to_follower
            .fleet(|mut c, req| {
                let domain = domain.clone();
                async move {
                    c.list_domains(req.wrap(pb::ListDomainsRequest {
                        options: None,
                        shard: String::new(),
                        after: String::new(),
                        limit: 10_000,
                    }))
                    .await
                    .map(|r| r.map(|l| l.domains.iter().any(|d| d.domain == domain)))
                }
            })
            .await
            .expect("linearizable read through the follower");
        assert!(
            read,
            "read {n} through follower {follower} missed {domain}, acknowledged before it began"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start(coord_binary(), 3, FAST_FLAGS).await;
    let client = Arc::new(cluster.client());
    client
        .write(register("s1", "az-a"))
        .await
        .expect("register");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0u64;
            // Bounded: at most 2000 writes or until told to stop.
            while !stop.load(Ordering::Relaxed) && n < 2000 {
                let domain = format!("zone=az-a/rack=r{n}");
                if client.write(assign(&domain, "s1")).await.is_ok() {
                    acknowledged.push(domain);
                }
                n += 1;
            }
            acknowledged
        })
    };
    wait_for(
        "30 acknowledged writes",
        Duration::from_secs(30),
        || async {
            let status = cluster.status(1).await?;
            (status.header?.revision >= 30).then_some(())
        },
    )
    .await;
    let old_leader = cluster.leader().await;
    cluster.kill(old_leader);
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    // Keep writing through the new leader for a while.
    let revision_at_kill = cluster
        .status(new_leader)
        .await
        .and_then(|s| s.header)
        .map(|h| h.revision)
        .unwrap_or(0);
    wait_for("writes after failover", Duration::from_secs(30), || async {
        let status = cluster.status(new_leader).await?;
        // 30 before the kill + 25 after leaves room for the register write and a write
        // whose acknowledgement the kill swallowed.
        (status.header?.revision >= revision_at_kill + 25).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.await.expect("writer task");
    assert!(
        acknowledged.len() >= 50,
        "only {} writes acknowledged",
        acknowledged.len()
    );

    let present: BTreeSet<String> = domains(&client, false)
        .await
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|d| !present.contains(*d))
        .collect();
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");

    // The killed replica comes back from its own disk and converges.
    cluster.restart(old_leader);
    let revision = cluster
        .status(new_leader)
        .await
        .and_then(|s| s.header)
        .map(|h| h.revision)
        .expect("revision");
    cluster.wait_for_revision(old_leader, revision).await;
    assert_eq!(
        domains(&cluster.client_of(old_leader), true).await.len(),
        present.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_catches_up_and_new_replica_gets_a_snapshot() {
    let mut flags = FAST_FLAGS.to_vec();
    flags.extend(["--snapshot-entries", "50", "--logs-to-keep", "0"]);
    let mut cluster = TestCluster::start(coord_binary(), 3, &flags).await;
    let client = cluster.client();
    client
        .write(register("s1", "az-a"))
        .await
        .expect("register");
    let leader = cluster.leader().await;
    // KV values long enough to live in each replica's value store (ADR 0019), then written
    // again, so the history holds both versions: they must come back from the snapshot and
    // the log on a restarted replica and on one that installs a snapshot.
    let first_values = put_values(&cluster, leader, "first").await;
    put_values(&cluster, leader, "second").await;
    let follower = cluster.follower_of(leader);
    cluster.kill(follower);

    let mut revision = 0;
    for n in 0..120 {
        let answer = client
            .write(assign(&format!("zone=az-b/rack=r{n}"), "s1"))
            .await
            .expect("write with one follower down");
        revision = answer.header.expect("header").revision;
    }
    cluster.restart(follower);
    cluster.wait_for_revision(follower, revision).await;
    assert_eq!(domains(&cluster.client_of(follower), true).await.len(), 120);

    // The leader has compacted its log; a new replica can only catch up from a snapshot.
    // More writes with every follower up, then an on-demand snapshot: the leader purges.
    for n in 0..60 {
        revision = client
            .write(assign(&format!("zone=az-c/rack=r{n}"), "s1"))
            .await
            .expect("write")
            .header
            .expect("header")
            .revision;
    }
    let snapshot = cluster
        .client_of(leader)
        .cluster(|mut c, req| async move {
            c.snapshot(req.wrap(ballast_protocol::pb::SnapshotRequest {}))
                .await
        })
        .await
        .expect("on-demand snapshot");
    assert!(snapshot.snapshot_index > 0);
    wait_for(
        "the leader to purge its log",
        Duration::from_secs(30),
        || async {
            let status = cluster.status(leader).await?;
            (status.purged_index > 0).then_some(())
        },
    )
    .await;
    cluster.add(4).await;
    cluster.wait_for_revision(4, revision).await;
    let status4 = cluster.status(4).await.expect("status of replica 4");
    assert!(
        status4.snapshot_index > 0,
        "replica 4 did not install a snapshot"
    );
    assert_eq!(domains(&cluster.client_of(4), true).await.len(), 180);
    let everywhere = cluster.state_of(leader, "kv/").await.expect("leader state");
    assert!(everywhere.contains("second-19-vvvv"), "{everywhere}");
    for id in [follower, 4] {
        let state = cluster.state_of(id, "kv/").await.expect("replica state");
        assert_eq!(state, everywhere, "replica {id} against the leader");
        // The values before the overwrite, from the history the snapshot carried.
        let then = kv_range(&cluster, id, first_values).await;
        assert_eq!(then.len(), 20, "replica {id} at revision {first_values}");
        for (n, (key, value)) in then.iter().enumerate() {
            assert_eq!(key, &format!("kv/{n:02}"));
            assert!(value.starts_with(&format!("first-{n}-v")), "{value}");
        }
    }
}

/// Puts 20 keys `kv/NN` with 200-byte values tagged `tag` through replica `id`; the revision
/// of the last.
async fn put_values(cluster: &TestCluster, id: u64, tag: &str) -> i64 {
    let mut kv = KvClient::new(cluster.channel(id));
    let mut revision = 0;
    for n in 0..20 {
        let value = format!("{tag}-{n}-{}", "v".repeat(200));
        revision = kv
            .put(epb::PutRequest {
                key: format!("kv/{n:02}").into_bytes(),
                value: value.into_bytes(),
                ..Default::default()
            })
            .await
            .expect("put")
            .into_inner()
            .header
            .expect("header")
            .revision;
    }
    revision
}

/// Keys and values under `kv/` on replica `id` as of `revision`, read there.
async fn kv_range(cluster: &TestCluster, id: u64, revision: i64) -> Vec<(String, String)> {
    KvClient::new(cluster.channel(id))
        .range(epb::RangeRequest {
            key: b"kv/".to_vec(),
            range_end: b"kv0".to_vec(),
            revision,
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("historic range")
        .into_inner()
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_a_voter_add_a_fresh_one_and_transfer_leadership() {
    let mut cluster = TestCluster::start(coord_binary(), 3, FAST_FLAGS).await;
    let client = cluster.client();
    let leader = cluster.leader().await;
    let victim = cluster.follower_of(leader);

    client
        .cluster(|mut c, req| async move {
            c.remove_member(req.wrap(ballast_protocol::pb::RemoveMemberRequest { id: victim }))
                .await
        })
        .await
        .expect("removing a voter");
    cluster.wait_for_voters(2).await;
    cluster.discard(victim);

    cluster.add(4).await;
    let status = cluster
        .status(cluster.leader().await)
        .await
        .expect("status");
    let ids: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
    assert!(
        !ids.contains(&victim) && ids.contains(&4),
        "members now {ids:?}"
    );

    let leader = cluster.leader().await;
    let target = cluster.follower_of(leader);
    let client = cluster.client();
    client
        .cluster(|mut c, req| async move {
            c.transfer_leader(req.wrap(ballast_protocol::pb::TransferLeaderRequest { target }))
                .await
        })
        .await
        .expect("transferring leadership");
    assert_eq!(cluster.leader().await, target);
    // The cluster still takes writes after the transfer.
    client
        .write(register("s9", "az-c"))
        .await
        .expect("write after transfer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_sigkill_and_restart_keeps_every_acknowledged_write() {
    let mut cluster = TestCluster::start(coord_binary(), 3, FAST_FLAGS).await;
    let client = cluster.client();
    client
        .write(register("s1", "az-a"))
        .await
        .expect("register");
    let mut acknowledged = Vec::new();
    for n in 0..40 {
        let domain = format!("zone=az-a/rack=r{n}");
        client.write(assign(&domain, "s1")).await.expect("write");
        acknowledged.push(domain);
    }
    // No replica gets to shut down cleanly: every acknowledged write must already be on disk.
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.leader().await;
    let present: BTreeSet<String> = domains(&cluster.client(), false)
        .await
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    for domain in &acknowledged {
        assert!(
            present.contains(domain),
            "{domain} lost after a full-cluster SIGKILL"
        );
    }
    // Exactly once: replaying a request id after the restart does not apply it again. The
    // command is one whose second apply would be refused: the cluster has moved on since.
    client
        .write(register("s2", "az-b"))
        .await
        .expect("register s2");
    let bind = cmd(Wire::BindCluster(pb::BindCluster {
        cluster: "c-once".into(),
        shard: "s1".into(),
    }));
    let first = client
        .write_with_id("replayed-id".into(), bind.clone())
        .await
        .expect("first apply");
    assert!(first.changed, "a brand-new binding changes the state");
    client
        .write(cmd(Wire::MoveCluster(pb::MoveCluster {
            cluster: "c-once".into(),
            shard: "s2".into(),
        })))
        .await
        .expect("moving the cluster");
    let replay = client
        .write_with_id("replayed-id".into(), bind)
        .await
        .unwrap_or_else(|e| panic!("a replay must answer the first outcome, not apply again: {e}"));
    assert_eq!(
        (replay.changed, replay.header.map(|h| h.revision)),
        (true, first.header.map(|h| h.revision)),
        "a replayed request id must return the first outcome"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_needs_a_single_use_unexpired_token() {
    let mut cluster = TestCluster::start(coord_binary(), 3, FAST_FLAGS).await;
    let client = cluster.client();
    let join = |id: u64, token: &str| {
        let request = pb::JoinRequest {
            id,
            address: "127.0.0.1:1".into(),
            az: "az-x".into(),
            token: token.into(),
            learner: false,
        };
        let client = &client;
        async move {
            client
                .cluster(|mut c, req| {
                    let request = request.clone();
                    async move { c.join(req.wrap(request)).await }
                })
                .await
                .expect_err("refused")
                .to_string()
        }
    };

    // A replica started without a token is refused and stays out.
    cluster.spawn_joiner(4, "");
    wait_for(
        "the refusal in replica 4's log",
        Duration::from_secs(30),
        || async {
            cluster
                .logs()
                .contains("refused to let this replica join")
                .then_some(())
        },
    )
    .await;
    assert!(join(6, "").await.contains("needs a join token"));
    let members = cluster
        .status(cluster.leader().await)
        .await
        .expect("status")
        .members;
    assert_eq!(members.len(), 3, "replica 4 is not a member");
    cluster.discard(4);

    // With a token it joins; the token is then spent.
    let token = cluster.join_token().await;
    cluster.spawn_joiner(5, &token);
    cluster.wait_for_voters(4).await;
    let refused = join(6, &token).await;
    assert!(
        refused.contains("PermissionDenied") || refused.contains("permission"),
        "{refused}"
    );
    assert!(refused.contains("already used by replica 5"), "{refused}");

    // Expired, unknown and malformed tokens are refused too.
    let short = client
        .cluster(|mut c, req| async move {
            c.create_join_token(req.wrap(pb::CreateJoinTokenRequest { ttl_seconds: 1 }))
                .await
        })
        .await
        .expect("token")
        .token;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(join(6, &short).await.contains("expired"));
    assert!(join(6, "abc.def").await.contains("unknown token"));
    assert!(join(6, "nonsense").await.contains("<id>.<secret>"));
    let too_long = client
        .cluster(|mut c, req| async move {
            c.create_join_token(req.wrap(pb::CreateJoinTokenRequest {
                ttl_seconds: 8 * 24 * 3600,
            }))
            .await
        })
        .await
        .expect_err("over 7 days");
    assert!(too_long.to_string().contains("ttl_seconds"), "{too_long}");
    let members = cluster
        .status(cluster.leader().await)
        .await
        .expect("status")
        .members;
    assert_eq!(members.len(), 4, "no refused join changed the membership");
}

/// A killed leader's kernel closes its connections at once, so a voter campaigns when the
/// lease it granted runs out instead of after a random election timeout on top. A frozen
/// leader (SIGSTOP) keeps its connections open: only the election timer finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_through_its_closed_connections() {
    const EARLY: &str = "the leader's connection closed";
    let mut cluster = TestCluster::start(coord_binary(), 3, FAST_FLAGS).await;
    let client = cluster.client();
    client
        .write(register("s1", "az-a"))
        .await
        .expect("register");

    let frozen = cluster.leader().await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != frozen).collect();
    cluster.pause(frozen);
    let successor = leader_among(&cluster, &others).await;
    assert!(
        !cluster.logs().contains(EARLY),
        "a frozen leader's connections stay open; the election timer replaced it"
    );
    cluster.resume(frozen);
    client
        .write(assign("zone=az-a/rack=after-freeze", "s1"))
        .await
        .expect("a write after the freeze");

    cluster.kill(successor);
    let survivors: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|id| *id != successor)
        .collect();
    let last = leader_among(&cluster, &survivors).await;
    assert_ne!(last, successor);
    wait_for(
        "the early campaign logged",
        Duration::from_secs(10),
        || async { cluster.logs().contains(EARLY).then_some(()) },
    )
    .await;
    client
        .write(assign("zone=az-a/rack=after-kill", "s1"))
        .await
        .expect("a write after the kill");
}

/// The leader among `ids` only: a frozen replica answers nothing, not even status.
async fn leader_among(cluster: &TestCluster, ids: &[u64]) -> u64 {
    wait_for("a leader", Duration::from_secs(20), || async {
        for id in ids {
            if cluster.status(*id).await?.state == "leader" {
                return Some(*id);
            }
        }
        None
    })
    .await
}

/// A removal that the old configuration cannot commit (two voters, one dead) stays in
/// flight, and status says so, until the dead voter answers again; then it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_membership_change_shows_in_status_until_it_commits() {
    let mut cluster = TestCluster::start(coord_binary(), 2, FAST_FLAGS).await;
    let leader = cluster.leader().await;
    let other = if leader == 1 { 2 } else { 1 };
    let status = cluster.status(leader).await.expect("status");
    assert!(!status.membership_changing);
    cluster.kill(other);

    let client = cluster.client_of(leader);
    let removal = tokio::spawn(async move {
        client
            .cluster(|mut c, req| async move {
                c.remove_member(req.wrap(pb::RemoveMemberRequest { id: other }))
                    .await
            })
            .await
    });
    let status = wait_for(
        "the removal reported in flight",
        Duration::from_secs(10),
        || async {
            let status = cluster.status(leader).await?;
            status.membership_changing.then_some(status)
        },
    )
    .await;
    let voters = status.members.iter().filter(|m| m.role == "voter").count();
    assert_eq!(
        voters, 2,
        "the dead voter still votes in the joint configuration"
    );

    cluster.restart(other);
    cluster.wait_for_voters(1).await;
    let status = cluster.status(leader).await.expect("status");
    assert!(!status.membership_changing);
    assert_eq!(
        status.members.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![leader]
    );
    // The caller's answer depends on whether its first attempt outlived the stall; the
    // membership above is what must hold.
    let _ = removal.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopilot_reports_and_removes_a_dead_voter_while_quorum_holds() {
    let flags: Vec<&str> = FAST_FLAGS
        .iter()
        .copied()
        .chain([
            "--autopilot-unhealthy-after-ms",
            "500",
            "--autopilot-remove-dead-after-secs",
            "5",
            "--autopilot-min-voters",
            "2",
        ])
        .collect();
    let mut cluster = TestCluster::start(coord_binary(), 3, &flags).await;
    let leader = cluster.leader().await;
    let victim = cluster.follower_of(leader);
    cluster.kill(victim);

    // The leader reports it unreachable, with a warning, before removing it.
    let status = wait_for(
        "the dead voter reported",
        Duration::from_secs(4),
        || async {
            let status = cluster.status(leader).await?;
            status
                .members
                .iter()
                .any(|m| m.id == victim && m.health == "unreachable")
                .then_some(status)
        },
    )
    .await;
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.contains(&format!("replica {victim}")) && w.contains("has not answered")),
        "{:?}",
        status.warnings
    );
    assert!(
        status
            .members
            .iter()
            .filter(|m| m.id != victim)
            .all(|m| m.health == "healthy")
    );

    // Then removes it: two voters remain, both healthy, and writes go on.
    wait_for(
        "the dead voter removed",
        Duration::from_secs(30),
        || async {
            let status = cluster.status(leader).await?;
            (status.members.len() == 2).then_some(())
        },
    )
    .await;
    let client = cluster.client();
    client
        .write(register("after-removal", "az-a"))
        .await
        .expect("a write with two voters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopilot_warns_about_shared_azs_and_keeps_the_minimum() {
    let flags: Vec<&str> = FAST_FLAGS
        .iter()
        .copied()
        .chain(["--autopilot-remove-dead-after-secs", "1"])
        .collect();
    let mut cluster = TestCluster::start_with(
        ballast_testkit::ClusterOptions {
            program: coord_binary().to_path_buf(),
            extra: flags.iter().map(|s| s.to_string()).collect(),
            azs: vec!["az-a".into(), "az-a".into(), "az-b".into()],
            ..Default::default()
        },
        3,
    )
    .await;
    let leader = cluster.leader().await;
    let status = cluster.status(leader).await.expect("status");
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w == "voters 1 and 2 share AZ az-a: losing that AZ loses 2 votes"),
        "{:?}",
        status.warnings
    );
    assert!(!status.placement.expect("placement").healthy);

    // With the default minimum of three voters, a dead voter is reported but kept.
    let victim = cluster.follower_of(leader);
    cluster.kill(victim);
    wait_for(
        "autopilot declining the removal",
        Duration::from_secs(30),
        || async {
            cluster
                .logs()
                .contains("autopilot keeps an unreachable voter")
                .then_some(())
        },
    )
    .await;
    let status = cluster.status(leader).await.expect("status");
    assert_eq!(status.members.len(), 3);
}
