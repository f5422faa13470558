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

/// Two shard workers of one AZ on a shared provider process, either with hold points armed
/// (see `ballast-failpoints`), c1 bound to sa with one machine serving it, and the domain and
/// slices given out.
struct TwoShards {
    cluster: TestCluster,
    provider: ProviderProcess,
    sa: ShardProcess,
    sb: ShardProcess,
    holds: tempfile::TempDir,
}

impl TwoShards {
    async fn start(sa_holds: &str, sb_holds: &str) -> TwoShards {
        let cluster = TestCluster::start_with(ClusterOptions::sim(program()), 3).await;
        let provider = ProviderProcess::start(
            &format!("'{}' provider", program().display()),
            "--name sim --region local",
        );
        let grpc = format!("grpc://{}", provider.endpoint);
        let holds = tempfile::tempdir().expect("a directory for the hold points");
        let hold_dir = holds.path().to_str().expect("a UTF-8 path");
        let flags = ["--provider", grpc.as_str(), "--sim-latency-ms", "0"];
        let spawn = |id: &str, armed: &str| {
            cluster.spawn_sim_shard_with_env(
                program(),
                id,
                "az-a",
                &flags,
                &[
                    ("BALLAST_FAILPOINTS", armed),
                    ("BALLAST_FAILPOINT_DIR", hold_dir),
                ],
            )
        };
        let (sa, sb) = (spawn("sa", sa_holds), spawn("sb", sb_holds));
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
        sa.wait_for_grants().await;
        // One machine: whatever a hold point stops concerns that machine.
        sa.submit_small("c1", 1).await.expect("demand at sa");
        let shards = TwoShards {
            cluster,
            provider,
            sa,
            sb,
            holds,
        };
        shards.wait_for_owner("sa").await;
        shards
    }

    /// Waits until the provider records the one machine as `owner`'s, configured for c1.
    async fn wait_for_owner(&self, owner: &str) {
        wait_for(
            &format!("the provider to record {owner} as the owner of c1's machine"),
            Duration::from_secs(30),
            || async {
                let record = provider_machines(&self.provider.endpoint, "").await;
                let owned = owners(&record);
                (owned.len() == 1 && owned[0].1 == owner && serving(&record, "c1") == 1)
                    .then_some(())
            },
        )
        .await;
    }

    async fn write(&self, command: ballast_protocol::pb::command::Command) {
        self.cluster
            .client()
            .write(ballast_protocol::pb::Command {
                command: Some(command),
            })
            .await
            .unwrap_or_else(|e| panic!("writing {e:?}"));
    }

    async fn move_c1(&self, to: &str) {
        use ballast_protocol::pb;
        self.write(pb::command::Command::MoveCluster(pb::MoveCluster {
            cluster: "c1".into(),
            shard: to.into(),
        }))
        .await;
    }

    /// Waits until a task is held at hold point `name`.
    async fn wait_held(&self, name: &str) {
        let marker = self.holds.path().join(format!("{name}.held"));
        wait_for(
            &format!("a task held at {name}"),
            Duration::from_secs(30),
            || async { marker.exists().then_some(()) },
        )
        .await;
    }

    fn release(&self, name: &str) {
        std::fs::write(self.holds.path().join(format!("{name}.release")), b"")
            .expect("releasing a hold point");
    }
}

/// A surplus machine's return is sent under the grant of the cluster it serves; meanwhile the
/// cluster moves to another shard and back, and the shard adopts it again under a newer grant.
/// The provider refuses the return as stale, but the machine is still the shard's (it adopted
/// it back): the shard must retry under the grant it holds, not forget the machine (which
/// leaves it counted against the shard's slice at the provider and missing from the ledger:
/// every later create refused "over-slice" while the engine sees room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_refused_under_a_grant_the_shard_has_since_replaced_is_retried() {
    use ballast_protocol::pb;
    let shards = TwoShards::start("shard-delete-hold,shard-placement-hold", "").await;
    let sa = &shards.sa;

    // The slice shrinks to nothing and the demand goes: the machine becomes surplus. The
    // placement controller is held (the machine stays configured for c1 at the provider) and
    // so is its return, after it chose c1's grant.
    shards
        .write(pb::command::Command::SetQuota(pb::SetQuota {
            provider: "sim".into(),
            region: "local".into(),
            total: 20,
            slices: vec![
                pb::QuotaSlice {
                    shard: "sa".into(),
                    amount: 0,
                },
                pb::QuotaSlice {
                    shard: "sb".into(),
                    amount: 20,
                },
            ],
        }))
        .await;
    sa.wait_until("its slice gone", |st| {
        st.slices.iter().all(|s| s.amount == 0)
    })
    .await;
    sa.submit_small("c1", 0).await.expect("no demand at sa");
    shards.wait_held("shard-delete-hold").await;
    shards.wait_held("shard-placement-hold").await;

    // c1 moves to sb (which adopts the machine) and back to sa (which adopts it again).
    for to in ["sb", "sa"] {
        shards.move_c1(to).await;
        shards.wait_for_owner(to).await;
    }
    sa.wait_until("c1 taken over again", |st| {
        st.clusters.iter().any(|c| c == "c1") && st.takeovers.is_empty()
    })
    .await;

    // The held return goes out under the grant sa no longer holds and is refused as stale.
    // The placement controller stays held until the refusal is answered: released first, it
    // would release the machine to idle under the new grant, and the return would need no
    // cluster's grant at all.
    shards.release("shard-delete-hold");
    wait_for(
        "sa to act on the refused return",
        Duration::from_secs(30),
        || async {
            let log = sa.log();
            (log.contains("returning a machine failed; retried later")
                || log.contains("no longer counts this machine as ours"))
            .then_some(())
        },
    )
    .await;
    shards.release("shard-placement-hold");
    let machines = |st: &pb::ShardStatusResponse| st.machines_by_state.values().sum::<u64>();
    wait_for(
        "the provider and sa's ledger to agree that sa holds nothing",
        Duration::from_secs(30),
        || async {
            let at_provider = provider_machines(&shards.provider.endpoint, "")
                .await
                .iter()
                .filter(|m| live(m) && m.owner_shard == "sa")
                .count();
            let in_ledger = machines(&sa.status().await?);
            (at_provider == 0 && in_ledger == 0).then_some(())
        },
    )
    .await;
}

/// A cluster moves to sb, whose takeover is held after it chose its grant; meanwhile the
/// cluster moves back to sa (which adopts it) and to sb again. sb's watch cannot start a
/// second takeover beside the running one; the held one presents the old grant and is refused
/// as stale. sb must take over under the grant it holds now, not end there with the machine
/// left at sa (which handed it over): the cluster's demand would then be served by new
/// machines while the old one serves nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_refused_under_a_grant_replaced_meanwhile_goes_on_under_the_new_one() {
    let shards = TwoShards::start("", "shard-takeover-hold").await;
    let grant_of =
        |st: &ballast_protocol::pb::ShardStatusResponse| st.cluster_grants.get("c1").copied();
    shards.move_c1("sb").await;
    shards.wait_held("shard-takeover-hold").await;
    let first = grant_of(&shards.sb.status().await.expect("sb answers")).expect("sb holds c1");
    shards.move_c1("sa").await;
    let back = shards
        .sa
        .wait_until("c1 taken over again", |st| {
            grant_of(st).is_some_and(|g| g > first) && st.takeovers.is_empty()
        })
        .await;
    let back = grant_of(&back).expect("sa holds c1");
    wait_for(
        "the provider to accept sa's newer grant",
        Duration::from_secs(30),
        || async {
            let record = provider_machines(&shards.provider.endpoint, "").await;
            record
                .iter()
                .any(|m| {
                    live(m)
                        && m.owner_shard == "sa"
                        && m.owner_grant.is_some_and(|g| g.revision == back)
                })
                .then_some(())
        },
    )
    .await;
    shards.move_c1("sb").await;
    shards
        .sb
        .wait_until("c1 bound again, under a newer grant", |st| {
            grant_of(st).is_some_and(|g| g > back)
        })
        .await;
    shards.release("shard-takeover-hold");
    shards.wait_for_owner("sb").await;
    let st = shards
        .sb
        .wait_until("the takeover finished", |st| st.takeovers.is_empty())
        .await;
    assert_eq!(st.fenced.len(), 0, "nothing fenced at sb: {:?}", st.fenced);
}

/// sb adopts c1's machine, but before the machine joins its ledger c1 moves back to sa, which
/// adopts it again. sb must not put the machine in its ledger: it would count against sb's
/// slice and could be given to sb's demand while the provider lets only sa act on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_adopted_for_a_cluster_lost_meanwhile_stay_out_of_the_ledger() {
    let shards = TwoShards::start("", "shard-adopted-hold").await;
    shards.move_c1("sb").await;
    shards.wait_held("shard-adopted-hold").await;
    shards.move_c1("sa").await;
    shards
        .sb
        .wait_until("c1 gone again", |st| !st.clusters.iter().any(|c| c == "c1"))
        .await;
    shards.wait_for_owner("sa").await;
    shards.release("shard-adopted-hold");
    let st = shards
        .sb
        .wait_until("the takeover finished", |st| st.takeovers.is_empty())
        .await;
    assert_eq!(
        st.machines_by_state.values().sum::<u64>(),
        0,
        "sb's ledger holds a machine of a cluster it lost: {:?}",
        st.machines_by_state
    );
}
