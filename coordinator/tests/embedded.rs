//! The embedding example (`examples/embedded.rs`), run: a replica inside the application as a
//! single node, and three of them joined into one group, each serving the application's own
//! fleet writes and KV work, then shut down gracefully.

#[path = "../examples/embedded.rs"]
mod embedded;

use embedded::Report;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solo_replica_serves_the_application_that_embeds_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = embedded::solo(dir.path()).await.expect("the solo example");
    assert_eq!(
        report,
        Report {
            replicas: 1,
            domains: 3,
            counter: 5
        }
    );
    // A graceful shutdown released the data dir: it starts again from it.
    let again = ballast_coordinator::Coordinator::builder()
        .id(1)
        .az("az-a")
        .listen("127.0.0.1:0")
        .data_dir(dir.path().join("replica-1"))
        .start()
        .await
        .expect("restarting from the data dir");
    again
        .ready(std::time::Duration::from_secs(20))
        .await
        .expect("ready again");
    assert!(again.is_leader(), "the only voter leads");
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_embedded_replicas_form_one_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = embedded::three(dir.path())
        .await
        .expect("the three-replica example");
    assert_eq!(
        report,
        Report {
            replicas: 3,
            domains: 3,
            counter: 5
        }
    );
}

#[tokio::test]
async fn settings_are_checked_as_the_flags_are() {
    let refused = ballast_coordinator::Coordinator::builder()
        .id(0)
        .az("az-a")
        .data_dir("/nonexistent/never-created")
        .start()
        .await
        .err()
        .expect("id 0 is refused");
    assert!(refused.to_string().contains("id"), "{refused}");
    assert!(!std::path::Path::new("/nonexistent/never-created").exists());
}
