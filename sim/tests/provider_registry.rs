//! `--provider registry`: a shard finds its providers in the coordinator's registry
//! (`ballastctl provider set NAME --endpoint URL`) instead of its own flags, keeps the list in
//! its cache so a restart with every replica dead still reaches them, and follows the registry
//! when an endpoint moves.

use std::path::Path;
use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use ballast_testkit::{
    ClusterOptions, ProviderProcess, TestCluster, allocate_to_s1, assigned_machines, live,
    provider_machines, wait_for,
};

const DOMAIN: &str = "zone=az-a/rack=r1";

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ballast-sim"))
}

/// Live machines a provider records for shard s1.
async fn live_of_s1(endpoint: &str) -> usize {
    provider_machines(endpoint, "s1")
        .await
        .into_iter()
        .filter(live)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_takes_its_providers_from_the_registry_caches_them_and_follows_a_move() {
    let mut cluster = TestCluster::start_with(ClusterOptions::sim(program()), 3).await;
    let serve = format!("'{}' provider", program().display());
    let first = ProviderProcess::start(&serve, "--name sim --region local");
    let mut shard = cluster.spawn_sim_shard(
        program(),
        "s1",
        "az-a",
        &["--lease-ms", "3000", "--provider", "registry"],
    );
    cluster.wait_for_shards(1).await;
    let endpoint = format!("grpc://{}", first.endpoint);
    allocate_to_s1(&cluster.client(), &endpoint, DOMAIN, 20).await;
    shard.wait_for_grants().await;
    shard.submit_small("c1", 3).await.expect("demand");
    shard
        .wait_until("three machines at work", |st| assigned_machines(st) == 3)
        .await;
    assert_eq!(
        live_of_s1(&first.endpoint).await,
        3,
        "made at the registered provider"
    );

    // Every replica dies, then the shard: restarted, it finds the provider in its cache.
    for id in 1..=3u64 {
        cluster.kill(id);
    }
    shard.kill();
    shard.restart();
    shard
        .wait_until("the restarted shard answering", |_| true)
        .await;
    shard.submit_small("c1", 5).await.expect("demand");
    shard
        .wait_until("five machines at work with no coordinator", |st| {
            assigned_machines(st) == 5
        })
        .await;
    assert_eq!(live_of_s1(&first.endpoint).await, 5);
    assert!(
        shard.log().contains("provider from the cached registry"),
        "{}",
        shard.log()
    );

    // The coordinator is back and the operator moves the provider's endpoint: the shard
    // follows, and its next machines are made at the new address.
    for id in 1..=3u64 {
        cluster.restart(id);
    }
    let second = ProviderProcess::start(&serve, "--name sim --region local");
    cluster
        .client()
        .write(pb::Command {
            command: Some(Wire::SetProvider(pb::SetProvider {
                name: "sim".into(),
                endpoint: format!("grpc://{}", second.endpoint),
                region: "local".into(),
                capacity_types: vec![],
            })),
        })
        .await
        .expect("moving the provider's endpoint");
    let moved = format!(
        "provider registry changed change=sim at grpc://{}",
        second.endpoint
    );
    wait_for(
        "the shard to say it follows the registry",
        Duration::from_secs(60),
        || async { shard.log().contains(&moved).then_some(()) },
    )
    .await;
    shard.submit_small("c1", 7).await.expect("demand");
    wait_for(
        "two machines made at the provider's new endpoint",
        Duration::from_secs(60),
        || async { (live_of_s1(&second.endpoint).await == 2).then_some(()) },
    )
    .await;
    assert_eq!(
        live_of_s1(&first.endpoint).await,
        5,
        "nothing more at the old endpoint"
    );
}
