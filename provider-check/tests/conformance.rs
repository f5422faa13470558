//! The suite against the reference provider served in-process on loopback: it passes when the
//! provider keeps the contract, and names the broken part when it is built to break it.

use std::time::Duration;

use ballast_provider_check::checks::Outcome;
use ballast_provider_check::report::Report;
use ballast_provider_check::{CheckArgs, run};
use ballast_provider_sim::book::Book;
use ballast_provider_sim::config::ProviderArgs;
use ballast_provider_sim::server::{SimProvider, serve};
use ballast_provider_sim::store::Store;
use clap::Parser;

/// Serves the reference provider on a loopback port; returns its address and a handle whose
/// drop stops it.
async fn provider(flags: &[&str], data_dir: Option<&std::path::Path>) -> (String, Stop) {
    let mut argv = vec!["ballast-provider-sim", "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(flags);
    let args = ProviderArgs::try_parse_from(argv).expect("provider flags");
    let mut book = Book::new(args.catalog(), args.breach());
    let store = data_dir.map(|dir| {
        let store = Store::open(dir, args.sync).expect("opening the provider's store");
        store.load(&mut book).expect("loading the provider's store");
        store
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let provider = SimProvider::new(book, store, Duration::ZERO);
    let task = tokio::spawn(async move {
        serve(provider, listener, None, async {
            let _ = stopped.await;
        })
        .await
        .expect("serving the provider");
    });
    (address, Stop(Some(stop), task))
}

struct Stop(
    Option<tokio::sync::oneshot::Sender<()>>,
    tokio::task::JoinHandle<()>,
);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
        self.1.abort();
    }
}

async fn check(address: &str, extra: &[&str]) -> Report {
    let mut argv = vec![
        "ballast-provider-check",
        "--endpoint",
        address,
        "--call-timeout-ms",
        "5000",
        "--settle-timeout-ms",
        "10000",
    ];
    argv.extend_from_slice(extra);
    let args = CheckArgs::try_parse_from(argv).expect("suite flags");
    run(&args).await.expect("the suite runs")
}

fn outcome<'a>(report: &'a Report, name: &str) -> &'a Outcome {
    &report
        .rows
        .iter()
        .find(|row| row.name == name)
        .unwrap_or_else(|| panic!("no check {name} in the report:\n{}", report.text()))
        .outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_provider_passes_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let (address, _stop) = provider(&[], Some(dir.path())).await;
    let report = check(&address, &[]).await;
    assert!(report.passed(), "{}", report.text());
    let (passed, failed, skipped) = report.counts();
    // Only `restart` may be skipped here (no restart command in-process); the process-level
    // test in `sim/tests/providers.rs` runs it.
    assert_eq!((failed, skipped), (0, 1), "{}", report.text());
    assert_eq!(passed, report.rows.len() - 1);
    assert!(
        matches!(outcome(&report, "restart"), Outcome::Skip(why) if why.contains("--restart-command")),
        "{}",
        report.text()
    );
    // The JSON report carries the same verdicts.
    let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
    assert_eq!(json["failed"], 0);
    assert_eq!(json["passed"].as_u64().unwrap() as usize, passed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_ignores_fencing_fails_the_fencing_checks_and_names_the_grants() {
    let (address, _stop) = provider(&["--broken", "ignore-fencing"], None).await;
    let report = check(
        &address,
        &[
            "--only",
            "fencing,concurrency/handover,concurrency/one-winner,idempotency",
        ],
    )
    .await;
    assert!(!report.passed(), "{}", report.text());
    for name in [
        "fencing/domain",
        "fencing/cluster",
        "fencing/implicit-adoption",
        "fencing/quota",
        "fencing/slice",
        "fencing/epoch",
        "concurrency/handover",
        "concurrency/one-winner",
    ] {
        match outcome(&report, name) {
            Outcome::Fail(message) => assert!(
                message.contains("stale-grant")
                    || message.contains("stale-epoch")
                    || message.contains("over-slice")
                    || message.contains("two owners acted"),
                "{name}: the failure should name the refusal the contract expects: {message}"
            ),
            other => panic!(
                "{name} should fail against a provider that ignores fencing: {other:?}\n{}",
                report.text()
            ),
        }
    }
    // Idempotency is intact in this variant, and the suite says so.
    assert_eq!(
        outcome(&report, "idempotency/create"),
        &Outcome::Pass,
        "{}",
        report.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_is_not_idempotent_fails_the_idempotency_checks() {
    let (address, _stop) = provider(&["--broken", "not-idempotent"], None).await;
    let report = check(
        &address,
        &[
            "--only",
            "idempotency,concurrency/same-key,fencing/domain,fencing/cluster",
        ],
    )
    .await;
    for name in ["idempotency/create", "concurrency/same-key"] {
        match outcome(&report, name) {
            Outcome::Fail(message) => assert!(
                message.contains("key") || message.contains("machine"),
                "{name}: {message}"
            ),
            other => panic!(
                "{name} should fail against a provider that is not idempotent: {other:?}\n{}",
                report.text()
            ),
        }
    }
    for name in ["fencing/domain", "fencing/cluster"] {
        assert_eq!(
            outcome(&report, name),
            &Outcome::Pass,
            "{name}\n{}",
            report.text()
        );
    }
}

#[tokio::test]
async fn bad_endpoints_and_selections_are_refused_before_any_call() {
    for (endpoint, expected) in [
        ("ftp://127.0.0.1:1", "scheme"),
        ("127.0.0.1", "host:port"),
        ("127.0.0.1:0", "port"),
        ("http://127.0.0.1:99999", "port"),
    ] {
        let args = CheckArgs::try_parse_from(["x", "--endpoint", endpoint]).unwrap();
        let error = run(&args).await.expect_err(endpoint).to_string();
        assert!(error.contains(expected), "{endpoint}: {error}");
    }
    let args = CheckArgs::try_parse_from(["x", "--endpoint", "127.0.0.1:1", "--only", "nonsense"])
        .unwrap();
    let error = run(&args).await.expect_err("no checks").to_string();
    assert!(
        error.contains("matches no check")
            && error.contains("fencing/domain")
            && error.contains("fencing/cluster")
            && error.contains("fencing/not-owner"),
        "{error}"
    );
    // Nothing listens on port 1: the suite says it cannot reach the provider.
    let args = CheckArgs::try_parse_from([
        "x",
        "--endpoint",
        "127.0.0.1:1",
        "--call-timeout-ms",
        "2000",
    ])
    .unwrap();
    let error = run(&args).await.expect_err("unreachable").to_string();
    assert!(error.contains("cannot reach the provider"), "{error}");
}
