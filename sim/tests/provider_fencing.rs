//! Fencing at the provider and handover in place, with real processes: a coordinator cluster, a
//! provider process (`ballast-sim provider`) shared by two shard workers, and a shard cut off
//! from the coordinator — only from the coordinator — for longer than its lease. Its domain,
//! cluster and slice move to the other shard, which adopts the cluster's machines at the
//! provider without releasing, creating or reconfiguring any (ADR 0016); the cut-off shard keeps trying to act and the
//! provider refuses it. The provider's own record is the judge. Run twice: once as is, once
//! with the provider SIGKILLed and restarted in the middle of the partition.

use std::path::Path;
use std::time::Duration;

use ballast_protocol::providerpb::{Machine, MachineState};
use ballast_testkit::{
    Allocation, ClusterOptions, ProviderProcess, Proxy, ShardProcess, TestCluster, allocate, live,
    provider_machines, wait_for,
};

const DOMAIN: &str = "zone=az-a/rack=r1";

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ballast-sim"))
}

/// Live machines in the domain by owner.
fn owners(record: &[Machine]) -> Vec<(String, String)> {
    let mut owners: Vec<(String, String)> = record
        .iter()
        .filter(|m| live(m) && m.domain == DOMAIN)
        .map(|m| (m.id.clone(), m.owner_shard.clone()))
        .collect();
    owners.sort();
    owners
}

/// Live machines in the domain configured for `cluster`.
fn serving(record: &[Machine], cluster: &str) -> usize {
    record
        .iter()
        .filter(|m| {
            live(m)
                && m.domain == DOMAIN
                && m.cluster == cluster
                && m.state == MachineState::Configured as i32
        })
        .count()
}

/// Each live machine's record version in the domain.
fn versions(record: &[Machine]) -> Vec<(String, u64)> {
    let mut versions: Vec<(String, u64)> = record
        .iter()
        .filter(|m| live(m) && m.domain == DOMAIN)
        .map(|m| (m.id.clone(), m.version))
        .collect();
    versions.sort();
    versions
}

async fn submit(shard: &ShardProcess, count: u32) -> Result<(), tonic::Status> {
    shard.submit_small("c1", count).await
}

async fn a_cut_off_shard_is_fenced_at_the_provider_and_its_domain_handed_over_in_place(
    restart_provider_midway: bool,
) {
    let cluster = TestCluster::start_with(ClusterOptions::sim(program()), 3).await;
    let provider = ProviderProcess::start(
        &format!("'{}' provider", program().display()),
        "--name sim --region local",
    );
    let grpc = format!("grpc://{}", provider.endpoint);
    let mut proxies = Vec::new();
    for endpoint in cluster.endpoints() {
        proxies.push(Proxy::start(&endpoint).await);
    }
    let flags = [
        "--lease-ms",
        "1500",
        "--provider",
        grpc.as_str(),
        "--sim-latency-ms",
        "0",
    ];
    let cut_off = cluster.spawn_shard_via(
        program(),
        &["shard"],
        "sa",
        "az-a",
        proxies.iter().map(|p| p.address.clone()).collect(),
        &flags,
    );
    let other = cluster.spawn_sim_shard(program(), "sb", "az-a", &flags);
    cluster.wait_for_shards(2).await;
    allocate(
        &cluster.client(),
        Allocation {
            provider: "sim",
            endpoint: &grpc,
            region: "local",
            total: 20,
            slices: &[("sa", 10), ("sb", 10)],
            cluster: ("c1", "sa"),
            domain: (DOMAIN, "sa"),
        },
    )
    .await;
    cut_off
        .wait_until("its domain, cluster and slice", |st| {
            st.domains.iter().any(|d| d == DOMAIN)
                && !st.clusters.is_empty()
                && !st.slices.is_empty()
        })
        .await;
    submit(&cut_off, 3).await.expect("demand at sa");
    let before = wait_for(
        "sa's three machines at the provider, configured for c1",
        Duration::from_secs(30),
        || async {
            let record = provider_machines(&provider.endpoint, "").await;
            let owned = owners(&record);
            (owned.len() == 3
                && owned.iter().all(|(_, owner)| owner == "sa")
                && serving(&record, "c1") == 3)
                .then_some(owned)
        },
    )
    .await;

    // The partition: sa reaches neither replica; the coordinator is healthy.
    for proxy in &proxies {
        proxy.cut();
    }
    if restart_provider_midway {
        provider.restart();
    }
    // sa's lease lapses; the rebalancer gives the domain, cluster and slice to sb, which adopts
    // the cluster's machines at the provider.
    other
        .wait_until("the domain and cluster of the cut-off shard", |st| {
            st.domains.iter().any(|d| d == DOMAIN) && st.clusters.iter().any(|c| c == "c1")
        })
        .await;
    let handed = wait_for(
        "the provider to record sb as the owner of the domain's machines",
        Duration::from_secs(30),
        || async {
            let owned = owners(&provider_machines(&provider.endpoint, "").await);
            owned
                .iter()
                .all(|(_, owner)| owner == "sb")
                .then_some(owned)
        },
    )
    .await;
    let ids =
        |owned: &[(String, String)]| owned.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&handed),
        ids(&before),
        "the handover moved exactly the machines that were there: none released, none created"
    );
    let adopted = versions(&provider_machines(&provider.endpoint, "").await);
    // sb serves the cluster from the adopted machines, which still serve it at the provider:
    // nothing is reconfigured either.
    submit(&other, 3).await.expect("demand at sb");
    other
        .wait_until("c1 served from the adopted machines", |st| {
            ballast_testkit::assigned_machines(st) == 3
        })
        .await;
    let record = provider_machines(&provider.endpoint, "").await;
    assert_eq!(serving(&record, "c1"), 3, "{record:?}");
    assert_eq!(
        versions(&record),
        adopted,
        "no adopted machine was touched at the provider after the adoption"
    );

    // sa, still serving from its cache, is asked for more and tries to act in the domain: the
    // provider refuses its grant, and sa stops acting there and says why.
    submit(&cut_off, 6)
        .await
        .expect("more demand at the cut-off shard");
    let fenced = cut_off
        .wait_until("the provider's refusal to fence the domain", |st| {
            st.fenced.contains_key(&format!("domain/{DOMAIN}"))
        })
        .await;
    assert!(
        fenced.fenced[&format!("domain/{DOMAIN}")].contains("older than"),
        "{:?}",
        fenced.fenced
    );
    let record = provider_machines(&provider.endpoint, "").await;
    assert_eq!(
        owners(&record),
        handed,
        "after the new owner's grant was accepted, the cut-off shard created, released or took nothing"
    );
    let live_under_quota = record
        .iter()
        .filter(|m| live(m) && m.quota_provider == "sim" && m.region == "local")
        .count();
    assert!(
        live_under_quota <= 20,
        "the quota is over-committed at the provider: {live_under_quota} live machines, total 20"
    );

    // The partition heals: sa learns it lost the domain and the cluster and forgets the
    // cluster's machines without returning them (they are sb's now).
    for proxy in &proxies {
        proxy.heal();
    }
    cut_off
        .wait_until(
            "the lost domain dropped from the cache and the ledger",
            |st| {
                !st.domains.iter().any(|d| d == DOMAIN)
                    && st.fenced.is_empty()
                    && st.machines_by_state.values().sum::<u64>() == 0
            },
        )
        .await;
    let record = provider_machines(&provider.endpoint, "").await;
    assert_eq!(
        owners(&record),
        handed,
        "the old owner returned nothing after the heal: the machines stay with the new owner"
    );
    let log = cut_off.log();
    assert!(
        log.contains("newer grant for this domain"),
        "the cut-off shard logs why it stopped acting:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_cut_off_from_a_healthy_coordinator_is_fenced_at_the_provider() {
    a_cut_off_shard_is_fenced_at_the_provider_and_its_domain_handed_over_in_place(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_holds_across_a_provider_restart_in_the_partition() {
    a_cut_off_shard_is_fenced_at_the_provider_and_its_domain_handed_over_in_place(true).await;
}
