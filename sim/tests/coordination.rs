//! Leader election and locks from Ballast's client library over the etcd-compatible KV of a
//! 3-replica cluster: one leader at a time, fencing tokens that grow, and a crashed leader's
//! session expiring hands leadership on.

use std::time::Duration;

use ballast_protocol::coordination::{Coordinator, Election, Lock, Session};
use ballast_testkit::{ClusterOptions, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_with_growing_fencing_tokens() {
    let cluster =
        TestCluster::start_with(ClusterOptions::sim(env!("CARGO_BIN_EXE_ballast-sim")), 3).await;
    let coordinator = Coordinator::new(&cluster.endpoints()).expect("coordinator");
    let election = std::sync::Arc::new(Election::new("scheduler"));

    let first = Session::new(&coordinator, 10).await.expect("session");
    let held = tokio::time::timeout(
        Duration::from_secs(10),
        election.campaign(&first, b"worker-1"),
    )
    .await
    .expect("an uncontested campaign wins at once")
    .expect("lead");
    assert_eq!(
        election.leader(&coordinator).await.expect("leader"),
        Some((b"worker-1".to_vec(), held.fencing_token))
    );

    // An observer sees every change of leader.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let observer = {
        let (election, coordinator, seen) = (election.clone(), coordinator.clone(), seen.clone());
        tokio::spawn(async move {
            election
                .observe(&coordinator, |leader| {
                    let value = leader.map(|l| l.0);
                    let done = value.as_deref() == Some(b"worker-2".as_slice());
                    seen.lock().expect("lock").push(value);
                    !done
                })
                .await
        })
    };

    // A second campaigner waits while the first leads.
    let second = std::sync::Arc::new(Session::new(&coordinator, 2).await.expect("session"));
    let waiting = {
        let (election, second) = (election.clone(), second.clone());
        tokio::spawn(async move { election.campaign(&second, b"worker-2").await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "two campaigners both believe they lead"
    );

    // Resigning hands leadership on, with a larger fencing token.
    election.resign(&first, held.clone()).await.expect("resign");
    let next = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("second leads after the resignation")
        .expect("task")
        .expect("campaign");
    assert!(next.fencing_token > held.fencing_token);
    assert_eq!(
        election
            .leader(&coordinator)
            .await
            .expect("leader")
            .map(|l| l.0),
        Some(b"worker-2".to_vec())
    );

    tokio::time::timeout(Duration::from_secs(10), observer)
        .await
        .expect("the observer saw the changes")
        .expect("task")
        .expect("observe");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen[0], Some(b"worker-1".to_vec()));
    assert_eq!(seen.last(), Some(&Some(b"worker-2".to_vec())), "{seen:?}");

    // A leader that crashes (stops renewing) loses its lease and the next one takes over.
    let third = Session::new(&coordinator, 10).await.expect("session");
    let waiting = {
        let election = election.clone();
        tokio::spawn(async move {
            let held = election.campaign(&third, b"worker-3").await;
            (held, third)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished());
    std::sync::Arc::into_inner(second)
        .expect("only owner")
        .abandon();
    let (after_crash, _third) = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("third leads after the second's lease expired")
        .expect("task");
    assert!(after_crash.expect("campaign").fencing_token > next.fencing_token);

    // Locks: mutual exclusion the same way.
    let lock = std::sync::Arc::new(Lock::new("shard-7"));
    let a = Session::new(&coordinator, 10).await.expect("session");
    let b = Session::new(&coordinator, 10).await.expect("session");
    let held_a = lock.lock(&a).await.expect("lock");
    let waiting = {
        let lock = lock.clone();
        tokio::spawn(async move {
            let held = lock.lock(&b).await;
            (held, b)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "two holders of one lock");
    lock.unlock(&a, held_a.clone()).await.expect("unlock");
    let (held_b, _b) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("b locks after a unlocks")
        .expect("task");
    assert!(held_b.expect("lock").fencing_token > held_a.fencing_token);
    a.close().await.expect("close");
}
