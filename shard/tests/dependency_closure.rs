//! Static stability needs a shard worker that can run with every coordinator dead; the
//! simplest guard is that it cannot even link coordinator code. This walks the resolved
//! dependency graph from `cargo metadata` (normal and build dependencies, transitively).

use ballast_testkit::deps::{closure, metadata};

const FORBIDDEN: &[&str] = &["ballast-coordinator", "ballast-dr"];

#[test]
fn shard_never_depends_on_the_coordinator_or_dr() {
    let reached = closure(&metadata(), "ballast-shard");
    assert!(
        reached.contains("ballast-protocol"),
        "closure looks wrong: {reached:?}"
    );
    let bad: Vec<_> = FORBIDDEN.iter().filter(|f| reached.contains(**f)).collect();
    assert!(
        bad.is_empty(),
        "ballast-shard reaches {bad:?}: static stability forbids it"
    );
}

#[test]
fn the_check_sees_a_real_dependency_edge() {
    // The same walk from the coordinator must find the protocol crate, or the test above
    // would pass vacuously.
    let reached = closure(&metadata(), "ballast-coordinator");
    assert!(reached.contains("ballast-protocol"));
    assert!(reached.contains("openraft"));
}
