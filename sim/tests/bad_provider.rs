//! A shard facing a provider process that misbehaves, with real processes: a coordinator, a
//! reference provider (`ballast-sim provider`) and a shard worker driving it over gRPC. The
//! shard first makes two machines with the provider healthy; then the provider is restarted on
//! the same address and data dir with a hidden `--broken` breach (answers about another
//! machine, in another domain, empty answers, or no answers to mutating calls) and the demand
//! rises to five. Through the breach the shard must stay up and keep answering, record nothing
//! from a bad answer, report the three machines it lacks, keep its creates in flight bounded,
//! and show what went wrong in its log and metrics. Then the provider is restarted healthy and
//! the shard must meet the demand by itself, its ledger agreeing with the provider's record.
//! `never_answers_from_the_start` does the same with a provider that hangs before the shard
//! has taken its cluster over. The breaches are listed in docs/providers.md ("What a shard
//! does when its provider misbehaves").

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use ballast_protocol::pb;
use ballast_protocol::providerpb::MachineState;
use ballast_testkit::{
    ClusterOptions, ProviderProcess, ShardProcess, TestCluster, allocate_to_s1, assigned_machines,
    http_get, live, provider_machines, wait_for,
};

const DOMAIN: &str = "zone=az-a/rack=r1";
const HEALTHY: &str = "--name sim --region local";
/// The shard's deadline for every provider call (`--provider-timeout-ms`).
const PROVIDER_TIMEOUT: Duration = Duration::from_millis(1000);
/// Machines asked for before the breach, and during it.
const BEFORE: u64 = 2;
const DURING: u64 = 5;
/// Longest any one call to the shard may take: a shard that stops answering fails the test
/// instead of hanging it.
const ANSWER: Duration = Duration::from_secs(5);

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ballast-sim"))
}

/// `call`, which must end within [`ANSWER`].
async fn bounded<T>(what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(ANSWER, call)
        .await
        .unwrap_or_else(|_| panic!("the shard did not answer {what} within {ANSWER:?}"))
}

/// The shard's status; it must answer.
async fn status(shard: &ShardProcess) -> pb::ShardStatusResponse {
    bounded("Status", shard.status())
        .await
        .unwrap_or_else(|| panic!("the shard stopped answering Status:\n{}", shard.log()))
}

/// Every machine in the shard's ledger, the shortfalls and the creates in flight; it must
/// answer.
async fn allocations(shard: &ShardProcess) -> pb::AllocationsResponse {
    let mut client = shard.client();
    bounded(
        "Allocations",
        client.allocations(pb::AllocationsRequest {
            cluster: String::new(),
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("the shard refused Allocations: {e}\n{}", shard.log()))
    .into_inner()
}

/// The shard's Prometheus page; it must answer.
async fn metrics(shard: &ShardProcess) -> String {
    let address = shard.http_address.clone();
    let page = bounded(
        "/metrics",
        tokio::task::spawn_blocking(move || http_get(&address, "/metrics")),
    )
    .await
    .expect("the metrics request ran");
    match page {
        Some((200, page)) => page,
        other => panic!("the shard's /metrics answered {other:?}"),
    }
}

/// `ballast_shard_provider_errors_total` for `call` and `reason` (0 when not counted yet).
fn provider_errors(page: &str, call: &str, reason: &str) -> f64 {
    let (call, reason) = (format!("call=\"{call}\""), format!("reason=\"{reason}\""));
    page.lines()
        .filter(|l| l.starts_with("ballast_shard_provider_errors_total{"))
        .filter(|l| l.contains(&call) && l.contains(&reason))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, n| sum + n)
}

/// The value of an unlabelled gauge.
fn gauge(page: &str, name: &str) -> Option<f64> {
    ballast_testkit::metric(page, name)
}

/// Sets cluster c1's demand: one row of `count` small machines at `priority`.
async fn submit(shard: &ShardProcess, count: u32, priority: i32) {
    let mut client = shard.client();
    bounded(
        "SubmitDemand",
        client.submit_demand(pb::SubmitDemandRequest {
            cluster: "c1".into(),
            rows: vec![pb::DemandRow {
                id: "web".into(),
                count,
                resources: Some(pb::ResourceSpec {
                    cpu_millis: 1000,
                    memory_mib: 1024,
                    gpus: 0,
                }),
                priority,
                az: String::new(),
                domain: String::new(),
            }],
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("the shard refused the demand: {e}"));
}

fn ids(machines: &[pb::MachineInfo]) -> BTreeSet<String> {
    machines.iter().map(|m| m.id.clone()).collect()
}

/// Every machine the provider records for shard s1 (reads answer in every breach).
async fn provider_record_of_s1(endpoint: &str) -> Vec<ballast_protocol::providerpb::Machine> {
    tokio::time::timeout(ANSWER, provider_machines(endpoint, "s1"))
        .await
        .unwrap_or_else(|_| panic!("the provider did not answer ListMachines within {ANSWER:?}"))
}

/// The live machines the provider records for shard s1.
async fn provider_record(endpoint: &str) -> BTreeSet<String> {
    provider_record_of_s1(endpoint)
        .await
        .into_iter()
        .filter(live)
        .map(|m| m.id)
        .collect()
}

/// How the shard must say what went wrong.
struct Expected {
    /// `--broken` value.
    breach: &'static str,
    /// The `reason` label of `ballast_shard_provider_errors_total{call="create"}`.
    label: &'static str,
    /// Words of the shard's log line about the failed create.
    logged: &'static str,
}

/// A coordinator, a provider started with `flags` and shard s1 driving it, holding cluster c1,
/// the domain and a slice of 10 of the provider's quota.
async fn set_up(flags: &str) -> (TestCluster, ProviderProcess, ShardProcess) {
    // One replica: the coordinator is not under test here, and the machine has two cores.
    let cluster = TestCluster::start_with(ClusterOptions::sim(program()), 1).await;
    let provider = ProviderProcess::start(&format!("'{}' provider", program().display()), flags);
    let grpc = format!("grpc://{}", provider.endpoint);
    let timeout_ms = PROVIDER_TIMEOUT.as_millis().to_string();
    let shard = cluster.spawn_sim_shard(
        program(),
        "s1",
        "az-a",
        &[
            "--provider",
            &grpc,
            "--provider-timeout-ms",
            &timeout_ms,
            "--sim-latency-ms",
            "0",
        ],
    );
    cluster.wait_for_shards(1).await;
    allocate_to_s1(&cluster.client(), &grpc, DOMAIN, 10).await;
    shard.wait_for_grants().await;
    (cluster, provider, shard)
}

/// After the provider is back healthy: the shard meets a demand of `count` by itself, and its
/// ledger and the provider's record agree (nothing left at the provider that the shard does
/// not record, nothing recorded that the provider does not have).
async fn recovered(
    shard: &ShardProcess,
    provider: &ProviderProcess,
    count: u64,
) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let st = status(shard).await;
        let ledger = ids(&allocations(shard).await.machines);
        let record = provider_record(&provider.endpoint).await;
        let met = assigned_machines(&st) == count && st.shortfall == 0;
        if met && ledger.len() as u64 == count && record == ledger && st.fenced.is_empty() {
            return ledger;
        }
        assert!(
            Instant::now() < deadline,
            "40 s after the provider came back healthy the shard has not met its demand of \
             {count} with its ledger agreeing with the provider:\nstatus {st:?}\nledger \
             {ledger:?}\nprovider's record {record:?}\nlog:\n{}",
            shard.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two machines made and put to work for c1, then idle again, in the ledger and at the
/// provider, with the shard's status also showing `also` (described by `what`): the status and
/// one of the machines.
async fn two_idle_machines(
    shard: &ShardProcess,
    provider: &ProviderProcess,
    what: &str,
    also: impl Fn(&pb::ShardStatusResponse) -> bool,
) -> (pb::ShardStatusResponse, String) {
    submit(shard, BEFORE as u32, 0).await;
    shard
        .wait_until("two machines at work", |st| {
            assigned_machines(st) == BEFORE && st.placements_pending == 0
        })
        .await;
    submit(shard, 0, 0).await;
    let status = shard
        .wait_until(&format!("both machines idle, {what}"), |st| {
            assigned_machines(st) == 0 && st.placements_pending == 0 && also(st)
        })
        .await;
    wait_for(
        "the provider to record both machines idle",
        Duration::from_secs(30),
        || async {
            let record = provider_record_of_s1(&provider.endpoint).await;
            let idle = record
                .iter()
                .filter(|m| live(m) && m.state == MachineState::Idle as i32)
                .count() as u64;
            (idle == BEFORE).then_some(())
        },
    )
    .await;
    let machine = ids(&allocations(shard).await.machines)
        .into_iter()
        .next()
        .expect("a machine in the ledger");
    (status, machine)
}

/// Whether the shard is healthy as a process (`/healthz`).
async fn healthy(shard: &ShardProcess) {
    let address = shard.http_address.clone();
    let health = bounded(
        "/healthz",
        tokio::task::spawn_blocking(move || http_get(&address, "/healthz")),
    )
    .await
    .expect("the probe ran");
    assert_eq!(health.map(|(code, _)| code), Some(200));
}

async fn a_shard_survives_a_provider_that(expected: Expected) {
    let (_cluster, provider, shard) = set_up(HEALTHY).await;

    // Healthy: two machines, made, recorded and configured for c1 at the provider.
    submit(&shard, BEFORE as u32, 0).await;
    shard
        .wait_until("two machines at work", |st| {
            assigned_machines(st) == BEFORE && st.placements_pending == 0
        })
        .await;
    let held = ids(&allocations(&shard).await.machines);
    assert_eq!(held.len() as u64, BEFORE, "{held:?}");
    wait_for(
        "the provider to record both machines configured for c1",
        Duration::from_secs(30),
        || async {
            let record = provider_record_of_s1(&provider.endpoint).await;
            let configured: BTreeSet<String> = record
                .iter()
                .filter(|m| live(m) && m.cluster == "c1")
                .filter(|m| m.state == MachineState::Configured as i32)
                .map(|m| m.id.clone())
                .collect();
            (configured == held).then_some(())
        },
    )
    .await;

    // The breach, at the same address and data dir; then more demand.
    provider.restart_with(&format!("{HEALTHY} --broken {}", expected.breach));
    submit(&shard, DURING as u32, 0).await;
    let asked = Instant::now();
    let short = DURING - BEFORE;
    let (mut first_error, mut max_in_flight, mut reported_short) = (None, 0u64, false);
    let deadline = asked + Duration::from_secs(40);
    for sample in 0.. {
        // The cluster's client sends its demand again now and then, with another priority
        // each time: the engine looks at the need again, and only the creates in flight
        // counting toward it keep it from starting more.
        if sample % 5 == 4 {
            submit(&shard, DURING as u32, sample / 5 % 2).await;
        }
        // Every sample: the shard answers, its ledger holds only the machines it made before
        // (nothing from a bad answer), nothing more is at work, and no more creates are in
        // flight than machines are missing (what bounds them: provisions in flight count
        // toward their need).
        let st = status(&shard).await;
        let alloc = allocations(&shard).await;
        let page = metrics(&shard).await;
        let ledger = ids(&alloc.machines);
        assert_eq!(
            ledger, held,
            "the ledger took in a machine through the breach ({}): {:?}",
            expected.breach, alloc.machines
        );
        assert!(
            assigned_machines(&st) <= BEFORE,
            "more machines at work than the shard has: {st:?}"
        );
        let in_flight_gauge = gauge(&page, "ballast_shard_provisions_in_flight").unwrap_or(0.0);
        max_in_flight = max_in_flight
            .max(alloc.in_flight)
            .max(in_flight_gauge as u64);
        assert!(
            max_in_flight <= short,
            "{max_in_flight} creates in flight for {short} missing machines"
        );
        let errors = provider_errors(&page, "create", expected.label);
        if errors > 0.0 && first_error.is_none() {
            first_error = Some(asked.elapsed());
        }
        // The shortfall, in the status and in Allocations, need by need (not "demand met").
        let missing: u64 = alloc
            .shortfalls
            .iter()
            .filter(|s| s.need == "c1/web")
            .map(|s| u64::from(s.missing))
            .sum();
        if st.shortfall == short && missing == short {
            reported_short = true;
        }
        // At least two rounds of failed creates (three each): the shard keeps trying, bounded.
        if reported_short && errors >= (2 * short) as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "through the breach ({}) the shard did not count two rounds of failed creates as \
             {:?} and report {short} machines short within 40 s: errors {errors}, reported short \
             {reported_short}, status {st:?}\nmetrics:\n{}\nlog:\n{}",
            expected.breach,
            expected.label,
            page.lines()
                .filter(|l| l.starts_with("ballast_shard_provi"))
                .collect::<Vec<_>>()
                .join("\n"),
            shard.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_error = first_error.expect("errors were counted");
    if expected.breach == "hang" {
        // The creates did go out (the bound was put to the test), and the first ended at the
        // shard's deadline: not sooner (it waited for the answer), not much later (not at the
        // default `--provider-timeout-ms`, ten seconds).
        assert!(
            max_in_flight > 0,
            "no create was ever seen in flight during the hang"
        );
        assert!(
            first_error >= PROVIDER_TIMEOUT
                && first_error < PROVIDER_TIMEOUT + Duration::from_secs(3),
            "the first create to a hanging provider ended {first_error:?} after the demand; the \
             deadline is {PROVIDER_TIMEOUT:?}"
        );
    }
    let log = shard.log();
    assert!(
        log.contains("provisioning failed") && log.contains(expected.logged),
        "the shard's log says a create failed and why ({:?}):\n{log}",
        expected.logged
    );
    healthy(&shard).await;

    // The provider comes back healthy at the same address: the shard meets the demand by
    // itself, with the machines it had and without leaving any behind at the provider.
    provider.restart_with(HEALTHY);
    let ledger = recovered(&shard, &provider, DURING).await;
    assert!(ledger.is_superset(&held), "{ledger:?} lost {held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_about_another_machine() {
    a_shard_survives_a_provider_that(Expected {
        breach: "wrong-id",
        label: "contract",
        logged: "broke the contract",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_the_machine_in_another_domain() {
    a_shard_survives_a_provider_that(Expected {
        breach: "wrong-domain",
        label: "contract",
        logged: "the answer puts it in",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_an_empty_machine() {
    a_shard_survives_a_provider_that(Expected {
        breach: "garbage",
        label: "contract",
        logged: "broke the contract",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_answers_a_mutating_call() {
    a_shard_survives_a_provider_that(Expected {
        breach: "hang",
        label: "timeout",
        logged: "did not answer",
    })
    .await;
}

/// A provider that hangs from before the shard is given its cluster: the shard starts (reads
/// answer), but taking the cluster and the domain over (`AdoptCluster`, `ClaimDomain`) never
/// gets an answer, so the cluster's demand waits and is reported short. The failed takeovers
/// must show in the metrics, as timeouts, and in the log; once the provider is healthy the
/// takeover completes and the demand is met.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_answers_from_the_start() {
    let (_cluster, provider, shard) = set_up(&format!("{HEALTHY} --broken hang")).await;
    submit(&shard, DURING as u32, 0).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let st = status(&shard).await;
        let alloc = allocations(&shard).await;
        let page = metrics(&shard).await;
        assert!(alloc.machines.is_empty(), "{:?}", alloc.machines);
        assert_eq!(
            alloc.in_flight, 0,
            "nothing is created for a cluster not yet taken over"
        );
        let errors = provider_errors(&page, "take-over", "timeout");
        if st.shortfall == DURING && errors >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shard did not count failed takeovers as timeouts and report {DURING} machines \
             short within 40 s: errors {errors}, status {st:?}\nmetrics:\n{}\nlog:\n{}",
            page.lines()
                .filter(|l| l.starts_with("ballast_shard_provi"))
                .collect::<Vec<_>>()
                .join("\n"),
            shard.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = shard.log();
    assert!(
        log.contains("taking over failed") && log.contains("did not answer"),
        "the shard's log says the takeover failed and why:\n{log}"
    );
    healthy(&shard).await;

    provider.restart_with(HEALTHY);
    recovered(&shard, &provider, DURING).await;
}

/// A provider that refuses every return (`refuse-deletes`, answered `invalid-argument`): the
/// shard's surplus goes back at the pace of its backoff, not again every cycle, and once the
/// provider takes machines back the shard returns them by itself, its ledger agreeing with the
/// provider's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_every_return() {
    use ballast_protocol::pb::command::Command as Wire;
    let (cluster, provider, shard) = set_up(HEALTHY).await;
    submit(&shard, BEFORE as u32, 0).await;
    shard
        .wait_until("two machines at work", |st| {
            assigned_machines(st) == BEFORE && st.placements_pending == 0
        })
        .await;
    provider.restart_with(&format!("{HEALTHY} --broken refuse-deletes"));

    // The slice shrinks to nothing and the demand goes: both machines are surplus.
    cluster
        .client()
        .write(pb::Command {
            command: Some(Wire::SetQuota(pb::SetQuota {
                provider: "sim".into(),
                region: "local".into(),
                total: 10,
                slices: vec![pb::QuotaSlice {
                    shard: "s1".into(),
                    amount: 0,
                }],
            })),
        })
        .await
        .expect("shrinking the slice");
    shard
        .wait_until("its slice gone", |st| {
            st.slices.iter().all(|s| s.amount == 0)
        })
        .await;
    submit(&shard, 0, 0).await;
    let refused = |page: &str| provider_errors(page, "delete", "invalid-argument");
    let first = wait_for(
        "the provider to refuse a return",
        Duration::from_secs(30),
        || async { (refused(&metrics(&shard).await) >= 1.0).then(Instant::now) },
    )
    .await;
    // A window to count in (the sleep measures; it synchronises nothing).
    const WINDOW: Duration = Duration::from_secs(3);
    tokio::time::sleep(WINDOW.saturating_sub(first.elapsed())).await;
    let page = metrics(&shard).await;
    let returns = refused(&page);
    // Sent again every cycle (200 ms), the two returns make 30 refusals in 3 s; the backoff
    // (50 ms, doubling with each failure, up to 5 s) lets about 8 through. A slow machine only
    // makes fewer.
    assert!(
        returns <= 12.0,
        "{returns} refused returns in {WINDOW:?}: the shard sends them again every cycle\n{}",
        shard.log()
    );
    assert!(
        shard
            .log()
            .contains("returning a machine failed; retried later"),
        "the refusal is logged:\n{}",
        shard.log()
    );

    // The provider takes machines back again: the shard returns both by itself.
    provider.restart_with(HEALTHY);
    recovered(&shard, &provider, 0).await;
    let record = provider_record_of_s1(&provider.endpoint).await;
    assert!(
        record.iter().all(|m| !live(m)),
        "the provider still has machines of s1: {record:?}"
    );
}

/// A provider that carries out every configure and loses the answer
/// (`lose-configure-answers`): the shard cannot know whether its machines now serve their
/// cluster. When the cluster's demand then goes away, the machines must be released at the
/// provider too — under the cluster's grant, which only a shard that asks the provider what the
/// machine serves knows to present. Believing them still idle (as before the configure), the
/// shard sent the release with no cluster grant, the provider refused it, and the machines
/// stayed configured for the cluster at the provider while idle in the ledger: the full-scale
/// simulator's "ledger agrees with the provider" drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loses_the_answers_to_configures() {
    let (_cluster, provider, shard) =
        set_up(&format!("{HEALTHY} --broken lose-configure-answers")).await;
    submit(&shard, BEFORE as u32, 0).await;
    let serving_c1 = |record: &[ballast_protocol::providerpb::Machine]| {
        record
            .iter()
            .filter(|m| live(m) && m.cluster == "c1")
            .count() as u64
    };
    wait_for(
        "the provider to configure both machines for c1 (answers lost)",
        Duration::from_secs(30),
        || async {
            (serving_c1(&provider_record_of_s1(&provider.endpoint).await) == BEFORE).then_some(())
        },
    )
    .await;
    submit(&shard, 0, 0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = provider_record_of_s1(&provider.endpoint).await;
        let machines = allocations(&shard).await.machines;
        let idle_in_ledger = machines.iter().all(|m| m.need.is_empty());
        if serving_c1(&record) == 0 && idle_in_ledger && machines.len() as u64 == BEFORE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after c1's demand went away the provider still has {} machines serving it \
             (ledger: {machines:?}; provider: {record:?})\nlog:\n{}",
            serving_c1(&record),
            shard.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A machine the shard believes idle is configured for another of its clusters at the
/// provider, as when a configure that timed out reaches the provider after the shard asked
/// about the machine and moved on (an overloaded provider runs a queued call whose caller
/// gave up). The shard then wants it for c1: the provider refuses the configure (the machine
/// serves c2), and the shard must find out what the machine serves and release it under c2's
/// grant before configuring it for c1. It sent that release with no cluster grant at all (its
/// belief), the provider refused it, and the machine stayed serving c2 for good while the
/// ledger had it at work for c1: the drift of the loaded full-scale simulator runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_behind_the_shards_back() {
    use ballast_protocol::providerpb::{
        ClusterGrant, ConfigureMachineRequest, FencingToken, Grant, provider_client::ProviderClient,
    };
    let (cluster, provider, shard) = set_up(HEALTHY).await;
    cluster
        .client()
        .write(pb::Command {
            command: Some(pb::command::Command::BindCluster(pb::BindCluster {
                cluster: "c2".into(),
                shard: "s1".into(),
            })),
        })
        .await
        .expect("binding c2 to s1");
    let (status, machine) = two_idle_machines(&shard, &provider, "c2 granted", |st| {
        st.cluster_grants.contains_key("c2")
    })
    .await;

    // Behind the shard's back: configured for c2, under the shard's own grant of c2.
    let mut client = ProviderClient::connect(format!("http://{}", provider.endpoint))
        .await
        .expect("connecting to the provider");
    client
        .configure_machine(ConfigureMachineRequest {
            idempotency_key: "late-configure".into(),
            token: Some(FencingToken {
                shard_id: "s1".into(),
                shard_epoch: status.epoch,
                sequence: 1,
                cluster: Some(ClusterGrant {
                    cluster: "c2".into(),
                    grant: Some(Grant {
                        restore_epoch: status.restore_epoch,
                        revision: status.cluster_grants["c2"],
                    }),
                }),
                ..Default::default()
            }),
            machine_id: machine.clone(),
            cluster: "c2".into(),
        })
        .await
        .expect("configuring the machine for c2 at the provider");

    // c1 wants both machines again: the provider must end up with both serving c1.
    submit(&shard, BEFORE as u32, 0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = provider_record_of_s1(&provider.endpoint).await;
        let machines = allocations(&shard).await.machines;
        let agree = machines.iter().all(|m| {
            let serves = m.need.split('/').next().unwrap_or("");
            record
                .iter()
                .any(|r| r.id == m.id && live(r) && r.cluster == serves)
        });
        let at_work = machines.iter().filter(|m| !m.need.is_empty()).count() as u64;
        if agree && at_work == BEFORE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after c1 asked for its machines again, the ledger and the provider disagree \
             about what {machine} serves (ledger: {machines:?}; provider: {record:?})\nlog:\n{}",
            shard.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A machine the shard holds idle is deleted at the provider behind its back (an operator, or
/// the provider's own clean-up). When the shard next puts it to work the provider says it is
/// deleted: the shard must forget it and make another, rather than count it as capacity for
/// ever while every configure of it fails (a phantom of the kind the loaded full-scale
/// simulator run found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_a_machine_behind_the_shards_back() {
    use ballast_protocol::providerpb::{
        DeleteMachineRequest, FencingToken, provider_client::ProviderClient,
    };
    let (_cluster, provider, shard) = set_up(HEALTHY).await;
    let (status, deleted) = two_idle_machines(&shard, &provider, "nothing more", |_| true).await;

    // Behind the shard's back: deleted at the provider, under the shard's own token.
    let mut client = ProviderClient::connect(format!("http://{}", provider.endpoint))
        .await
        .expect("connecting to the provider");
    client
        .delete_machine(DeleteMachineRequest {
            idempotency_key: "behind-the-back".into(),
            token: Some(FencingToken {
                shard_id: "s1".into(),
                shard_epoch: status.epoch,
                sequence: 1,
                ..Default::default()
            }),
            machine_id: deleted.clone(),
        })
        .await
        .expect("deleting the machine at the provider");

    // c1 wants two machines again: the provider must end up with two live machines serving
    // it, and the shard's ledger without the deleted one.
    submit(&shard, BEFORE as u32, 0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = provider_record_of_s1(&provider.endpoint).await;
        let ledger = ids(&allocations(&shard).await.machines);
        let serving = record
            .iter()
            .filter(|m| live(m) && m.cluster == "c1")
            .count() as u64;
        if serving == BEFORE && !ledger.contains(&deleted) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after c1 asked for two machines again, {serving} serve it at the provider and \
             the ledger {} {deleted}, deleted behind the shard's back (ledger: {ledger:?}; \
             provider: {record:?})\nlog:\n{}",
            if ledger.contains(&deleted) {
                "still holds"
            } else {
                "no longer holds"
            },
            shard.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
