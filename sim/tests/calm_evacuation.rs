//! Calm evacuation, with real processes: three replicas and six shard workers, two per AZ, each
//! holding one domain. The leader evacuates a shard whose lease lapsed, but not when shards
//! lapse together in every AZ (the common cause is then on the coordinator's side, such as a
//! network fault or a starved leader, and evacuating would move work off shards that are
//! serving); a whole AZ lost while the others heartbeat is still evacuated; and a leader
//! stopped past the shards' lease judges nobody until they have had a lease to reach it again.
//! See docs/reliability.md, "Calm evacuation".

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ballast_protocol::pb;
use ballast_testkit::{
    ClusterOptions, ShardProcess, TestCluster, assign_domain, fleet::list_fleet, wait_for,
};

/// The shards' lease (`--lease-ms`).
const LEASE: Duration = Duration::from_millis(1500);

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ballast-sim"))
}

fn domain_of(shard: &str) -> String {
    format!("zone=az-{}/rack={shard}", &shard[..1])
}

/// Three replicas (`--disruption-threshold 0.4`: evacuation stops when more than 40% of the
/// shards of every AZ lapse, one of two here, and slows when more than 40% of all shards do; a
/// lost AZ is a third) and shards a1 a2 b1 b2 c1 c2 in az-a, az-b, az-c, each holding its domain.
async fn start() -> (TestCluster, Vec<ShardProcess>) {
    let (cluster, shards) = start_with(&["--disruption-threshold", "0.4"]).await;
    for shard in &shards {
        assign_domain(&cluster.client(), &domain_of(&shard.id), &shard.id, false).await;
    }
    (cluster, shards)
}

/// Three replicas with `flags` and shards a1 a2 b1 b2 c1 c2 in az-a, az-b, az-c, holding
/// nothing yet.
async fn start_with(flags: &[&str]) -> (TestCluster, Vec<ShardProcess>) {
    let cluster =
        TestCluster::start_with(ClusterOptions::sim(program()).with_extra(flags), 3).await;
    let lease = LEASE.as_millis().to_string();
    let shards: Vec<ShardProcess> = ["a1", "a2", "b1", "b2", "c1", "c2"]
        .into_iter()
        .map(|id| {
            cluster.spawn_sim_shard(
                program(),
                id,
                &format!("az-{}", &id[..1]),
                &["--lease-ms", &lease],
            )
        })
        .collect();
    cluster.wait_for_shards(shards.len()).await;
    (cluster, shards)
}

/// Domain → the shard holding it, as the coordinator lists it.
async fn holders(cluster: &TestCluster) -> BTreeMap<String, String> {
    let listing = list_fleet(&cluster.client())
        .await
        .expect("listing the fleet");
    listing
        .domains
        .into_iter()
        .map(|d| (d.domain, d.shard))
        .collect()
}

/// The leader's evacuation report, if a replica leads and has judged a round.
async fn evacuation(cluster: &TestCluster) -> Option<pb::Evacuation> {
    cluster.leader_status().await?.evacuation
}

async fn wait_for_mode(cluster: &TestCluster, mode: &str) -> pb::Evacuation {
    wait_for(
        &format!("the leader to report evacuation mode {mode}"),
        Duration::from_secs(30),
        || async { evacuation(cluster).await.filter(|e| e.mode == mode) },
    )
    .await
}

/// Watches the domain holders for `span` (a window to look in, not a synchronisation): any
/// move fails the test with what moved.
async fn nothing_moves(
    cluster: &TestCluster,
    before: &BTreeMap<String, String>,
    span: Duration,
    why: &str,
) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        let now = holders(cluster).await;
        assert_eq!(&now, before, "{why}: domains moved");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapses_in_every_az_together_stop_evacuation_and_a_lost_az_is_still_evacuated() {
    let (cluster, shards) = start().await;
    let shard = |id: &str| shards.iter().find(|s| s.id == id).expect("a shard");
    let before = holders(&cluster).await;
    assert_eq!(before.len(), 6, "{before:?}");

    // One shard in every AZ stops (SIGSTOP) past its lease: the leader stops evacuating and
    // says why; nothing moves while they are stopped.
    for id in ["a1", "b1", "c1"] {
        shard(id).pause();
    }
    let stopped = wait_for_mode(&cluster, "stopped").await;
    assert!(stopped.reason.contains("every AZ"), "{stopped:?}");
    assert_eq!(stopped.lapsed.len(), 3, "{stopped:?}");
    assert!(stopped.evacuating.is_empty(), "{stopped:?}");
    nothing_moves(
        &cluster,
        &before,
        LEASE * 2,
        "with one shard of every AZ lapsed",
    )
    .await;
    for id in ["a1", "b1", "c1"] {
        shard(id).resume();
    }
    wait_for_mode(&cluster, "normal").await;

    // The leader alone stops for two leases: the others elect a leader, which every shard
    // must find within its lease (a shard whose calls kept waiting on the stopped leader
    // lapsed at the new one and lost its domain).
    let leader = cluster.leader().await;
    cluster.pause(leader);
    tokio::time::sleep(LEASE * 2).await;
    cluster.resume(leader);
    nothing_moves(&cluster, &before, LEASE * 2, "after the leader was stopped").await;

    // Every replica stops past the shards' lease while the shards keep trying: the leader
    // comes back late and gives every shard a lease to reach it before judging any.
    for id in 1..=3 {
        cluster.pause(id);
    }
    tokio::time::sleep(LEASE * 2).await;
    for id in 1..=3 {
        cluster.resume(id);
    }
    nothing_moves(
        &cluster,
        &before,
        LEASE * 2,
        "after the replicas were stopped",
    )
    .await;

    // A whole AZ is lost while the others heartbeat: its domains are evacuated.
    for id in ["c1", "c2"] {
        shard(id).pause();
    }
    wait_for(
        "az-c's domains to move to live shards",
        Duration::from_secs(30),
        || async {
            let now = holders(&cluster).await;
            ["c1", "c2"]
                .iter()
                .all(|c| now[&domain_of(c)] != *c)
                .then_some(())
        },
    )
    .await;
    let lost = evacuation(&cluster).await.expect("the leader reports");
    assert_eq!(lost.mode, "normal", "{lost:?}");
}

/// A lost AZ holding more than one proposal's worth of domains (`--evacuation-batch-domains
/// 40`; 50 domains a shard) is evacuated by the round that finds it lost, in as many proposals
/// as it takes: no round leaves work behind and no later round has any of its domains to move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_az_larger_than_one_proposal_moves_in_one_round() {
    let (cluster, mut shards) = start_with(&["--evacuation-batch-domains", "40"]).await;
    let assignments = shards
        .iter()
        .flat_map(|s| {
            (0..50).map(|n| pb::DomainAssignment {
                domain: format!("{}/host=h{n:02}", domain_of(&s.id)),
                shard: s.id.clone(),
            })
        })
        .collect();
    cluster
        .client()
        .write(pb::Command {
            command: Some(pb::command::Command::AssignDomains(pb::AssignDomains {
                assignments,
                allow_move: false,
            })),
        })
        .await
        .expect("assigning 300 domains");
    let killed_ms = ballast_protocol::clock::unix_ms();
    for shard in shards.iter_mut().filter(|s| s.id.starts_with('c')) {
        shard.kill();
    }
    wait_for(
        "az-c's 100 domains to move to live shards",
        Duration::from_secs(30),
        || async {
            let now = holders(&cluster).await;
            (now.len() == 300 && now.values().all(|s| !s.starts_with('c'))).then_some(())
        },
    )
    .await;
    let report = evacuation(&cluster).await.expect("the leader reports");
    let rounds: Vec<&pb::RebalanceRound> = report
        .rounds
        .iter()
        .filter(|r| r.started_unix_ms >= killed_ms && r.domains > 0)
        .collect();
    assert!(
        rounds.iter().all(|r| !r.carried_over),
        "a round left work behind: {rounds:?}"
    );
    assert_eq!(
        rounds.iter().map(|r| r.domains).sum::<u64>(),
        100,
        "{rounds:?}"
    );
    // The last round to move domains is the one that found az-c lost (its first shard to lapse
    // may have gone in a round of its own), and it needed more than one proposal.
    let last = rounds.last().expect("a round moved az-c's domains");
    assert_eq!(last.lost_azs, ["az-c"], "{rounds:?}");
    assert!(last.proposals >= 2, "{rounds:?}");
    assert_eq!(report.rounds_carried_over, 0, "{report:?}");
}
