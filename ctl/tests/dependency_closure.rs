//! The operator CLI talks to the cluster and to archives; offline data-dir work belongs to the
//! replica binary (`ballast-coord restore`). So `ballastctl` links neither the replica nor its
//! storage, consensus or etcd client — as `etcdctl` leaves offline work to `etcdutl`.

use ballast_testkit::deps::{closure, metadata};

const FORBIDDEN: &[&str] = &["ballast-coordinator", "openraft", "fjall", "etcd-client"];

#[test]
fn ballastctl_links_only_the_protocol_and_dr() {
    let reached = closure(&metadata(), "ballast-ctl");
    assert!(
        reached.contains("ballast-protocol") && reached.contains("ballast-dr"),
        "closure looks wrong: {reached:?}"
    );
    let bad: Vec<_> = FORBIDDEN.iter().filter(|f| reached.contains(**f)).collect();
    assert!(bad.is_empty(), "ballastctl reaches {bad:?}");
}
