//! Static stability with a provider outside the shard: every coordinator replica SIGKILLed, the
//! shard keeps provisioning from its cache through a provider process; SIGKILLed and restarted
//! in the middle of the outage, it reconciles its ledger with the provider's `ListMachines`
//! (the provider is the truth about machines) and goes on: a machine deleted behind its back is
//! forgotten and replaced, one made for it behind its back joins its ledger and goes to work.

use std::path::Path;
use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::providerpb::provider_client::ProviderClient;
use ballast_protocol::providerpb::{
    ClusterGrant, CreateMachineRequest, DeleteMachineRequest, DomainGrant, FencingToken, Grant,
    MachineState, QuotaGrant,
};
use ballast_testkit::{
    ClusterOptions, ProviderProcess, ShardProcess, TestCluster, allocate_to_s1, assigned_machines,
    live, provider_machines, wait_for,
};

const DOMAIN: &str = "zone=az-a/rack=r1";

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ballast-sim"))
}

async fn provider_client(endpoint: &str) -> ProviderClient<tonic::transport::Channel> {
    ProviderClient::connect(format!("http://{endpoint}"))
        .await
        .expect("connecting to the provider")
}

/// The live machines the provider records for shard s1, by id.
async fn live_of_s1(endpoint: &str) -> Vec<String> {
    let mut ids: Vec<String> = provider_machines(endpoint, "s1")
        .await
        .into_iter()
        .filter(live)
        .map(|m| m.id)
        .collect();
    ids.sort();
    ids
}

async fn submit(shard: &ShardProcess, count: u32) {
    shard.submit_small("c1", count).await.expect("demand");
}

/// A token acting as shard s1 under the grants its status shows (what an operator's tool, or
/// a provider's own repair job, would present).
fn token_of(status: &pb::ShardStatusResponse) -> FencingToken {
    let grant = |revision| Grant {
        restore_epoch: status.restore_epoch,
        revision,
    };
    let slice = &status.slices[0];
    FencingToken {
        shard_id: "s1".into(),
        shard_epoch: status.epoch,
        sequence: 1,
        domain: Some(DomainGrant {
            domain: DOMAIN.into(),
            grant: Some(grant(status.domain_grants[DOMAIN])),
        }),
        quota: Some(QuotaGrant {
            quota_provider: slice.provider.clone(),
            region: slice.region.clone(),
            grant: Some(grant(slice.granted)),
            slice: slice.amount,
        }),
        // Its machines serve c1: calls on them present c1's grant.
        cluster: Some(ClusterGrant {
            cluster: "c1".into(),
            grant: Some(grant(status.cluster_grants["c1"])),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_restarted_in_a_full_outage_reconciles_with_its_provider_and_goes_on() {
    let mut cluster = TestCluster::start_with(ClusterOptions::sim(program()), 3).await;
    let provider = ProviderProcess::start(
        &format!("'{}' provider", program().display()),
        "--name sim --region local",
    );
    let grpc = format!("grpc://{}", provider.endpoint);
    let mut shard = cluster.spawn_sim_shard(
        program(),
        "s1",
        "az-a",
        // Named after the quota provider whose machines live there, beside a built-in
        // simulated provider for every other quota: the shard routes by quota.
        &[
            "--lease-ms",
            "3000",
            "--provider",
            &format!("sim={grpc},sim"),
        ],
    );
    cluster.wait_for_shards(1).await;
    allocate_to_s1(&cluster.client(), &grpc, DOMAIN, 10).await;
    shard.wait_for_grants().await;
    submit(&shard, 3).await;
    shard
        .wait_until("three machines at work", |st| assigned_machines(st) == 3)
        .await;

    // Every replica dies; the shard serves more demand through the provider.
    for id in 1..=3u64 {
        cluster.kill(id);
    }
    submit(&shard, 5).await;
    let status = shard
        .wait_until("five machines at work with no coordinator", |st| {
            assigned_machines(st) == 5
        })
        .await;
    let before = live_of_s1(&provider.endpoint).await;
    assert_eq!(before.len(), 5, "{before:?}");

    // The shard dies too. Behind its back one of its machines is deleted and one is made for
    // it, under its own grants.
    shard.kill();
    let token = token_of(&status);
    let mut client = provider_client(&provider.endpoint).await;
    let deleted = before[0].clone();
    client
        .delete_machine(DeleteMachineRequest {
            idempotency_key: "repair-delete".into(),
            token: Some(token.clone()),
            machine_id: deleted.clone(),
        })
        .await
        .expect("deleting one of s1's machines");
    client
        .create_machine(CreateMachineRequest {
            idempotency_key: "repair-create".into(),
            token: Some(token),
            machine_id: "made-behind-its-back".into(),
            domain: DOMAIN.into(),
            shape: "small".into(),
            capacity_type: String::new(),
        })
        .await
        .expect("making a machine for s1");

    // Restarted with every replica still down: it reconciles and serves its demand again with
    // the machine it was given, making none.
    shard.restart();
    shard
        .wait_until("five machines at work again", |st| {
            assigned_machines(st) == 5 && st.machines_by_state.values().sum::<u64>() == 5
        })
        .await;
    let log = shard.log();
    assert!(
        log.contains("ledger reconciled with the provider") && log.contains("joined=1"),
        "the restarted shard reconciles and says what changed:\n{log}"
    );
    assert!(log.contains("forgotten=1"), "{log}");
    let after = wait_for(
        "the provider's record to settle at five live machines",
        Duration::from_secs(30),
        || async {
            let live = live_of_s1(&provider.endpoint).await;
            (live.len() == 5).then_some(live)
        },
    )
    .await;
    assert!(!after.contains(&deleted), "{after:?}");
    assert!(
        after.iter().any(|id| id == "made-behind-its-back"),
        "the machine made for it joined its ledger and went to work: {after:?}"
    );
    let mut expected: Vec<String> = before[1..].to_vec();
    expected.push("made-behind-its-back".into());
    expected.sort();
    assert_eq!(
        after, expected,
        "no machine created or returned beyond the repair"
    );
    // And the provider learns which cluster each serves, the joined one included.
    wait_for(
        "every live machine of s1 configured for c1 at the provider",
        Duration::from_secs(30),
        || async {
            provider_machines(&provider.endpoint, "s1")
                .await
                .iter()
                .filter(|m| live(m))
                .all(|m| m.cluster == "c1" && m.state == MachineState::Configured as i32)
                .then_some(())
        },
    )
    .await;
}

/// A machine the provider made for the shard without the shard knowing (a create that timed
/// out after the provider had made it) fills the shard's slice at the provider: the next
/// create is refused `over-slice`, and the shard reconciles its ledger with the provider's
/// list, so the machine joins and goes to work instead of the shard staying short for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_refused_over_the_slice_makes_the_shard_reconcile_and_use_what_it_has() {
    let cluster = TestCluster::start_with(ClusterOptions::sim(program()), 1).await;
    let provider = ProviderProcess::start(
        &format!("'{}' provider", program().display()),
        "--name sim --region local",
    );
    let grpc = format!("grpc://{}", provider.endpoint);
    let shard = cluster.spawn_sim_shard(program(), "s1", "az-a", &["--provider", &grpc]);
    cluster.wait_for_shards(1).await;
    allocate_to_s1(&cluster.client(), &grpc, DOMAIN, 3).await;
    shard.wait_for_grants().await;
    submit(&shard, 2).await;
    let status = shard
        .wait_until("two machines at work", |st| assigned_machines(st) == 2)
        .await;

    // The provider makes a third for s1 under its own grants; the slice (3) is now full there.
    provider_client(&provider.endpoint)
        .await
        .create_machine(CreateMachineRequest {
            idempotency_key: "made-unknown".into(),
            token: Some(token_of(&status)),
            machine_id: "made-unknown".into(),
            domain: DOMAIN.into(),
            shape: "small".into(),
            capacity_type: String::new(),
        })
        .await
        .expect("making a machine s1 does not know of");

    assert_eq!(status.provider_failures, 0, "{status:?}");
    submit(&shard, 3).await;
    let status = shard
        .wait_until("three machines at work, the unknown one among them", |st| {
            assigned_machines(st) == 3 && st.shortfall == 0
        })
        .await;
    // The refusal counts as a failed provider call in the shard's status.
    assert!(status.provider_failures >= 1, "{status:?}");
    let log = shard.log();
    assert!(
        log.contains("after it refused a create over the slice") && log.contains("joined=1"),
        "{log}"
    );
    let live = live_of_s1(&provider.endpoint).await;
    assert_eq!(live.len(), 3, "no machine made beyond the slice: {live:?}");
    assert!(live.iter().any(|id| id == "made-unknown"), "{live:?}");
}
