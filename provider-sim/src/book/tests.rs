//! The provider's rules, call by call.

use super::*;

fn catalog() -> Catalog {
    Catalog {
        name: "sim".into(),
        quota_provider: "sim".into(),
        regions: vec!["r1".into()],
        zones: vec!["az1".into()],
        domains: BTreeSet::new(),
        shapes: [(
            "small".to_string(),
            (
                Resources {
                    cpu_millis: 1000,
                    memory_mib: 1024,
                    gpus: 0,
                },
                0.1,
            ),
        )]
        .into_iter()
        .collect(),
        capacity_types: vec!["on-demand".into()],
        capacity: None,
        idempotency_keys: 1000,
    }
}

fn grant(revision: u64) -> Option<Grant> {
    Some(Grant {
        restore_epoch: 1,
        revision,
    })
}

fn token(shard: &str, domain_rev: u64, quota_rev: u64, slice: u64) -> FencingToken {
    FencingToken {
        shard_id: shard.into(),
        shard_epoch: 1,
        sequence: 0,
        domain: Some(DomainGrant {
            domain: "rack-1".into(),
            grant: grant(domain_rev),
        }),
        quota: Some(QuotaGrant {
            quota_provider: "sim".into(),
            region: "r1".into(),
            grant: grant(quota_rev),
            slice,
        }),
        cluster: None,
    }
}

/// `token` acting for `cluster` under the cluster grant of `revision`.
fn for_cluster(mut token: FencingToken, cluster: &str, revision: u64) -> FencingToken {
    token.cluster = Some(ClusterGrant {
        cluster: cluster.into(),
        grant: grant(revision),
    });
    token
}

fn release(key: &str, id: &str, token: FencingToken) -> ReleaseMachineRequest {
    ReleaseMachineRequest {
        idempotency_key: key.into(),
        token: Some(token),
        machine_id: id.into(),
    }
}

fn adopt(key: &str, token: FencingToken) -> AdoptClusterRequest {
    AdoptClusterRequest {
        idempotency_key: key.into(),
        token: Some(token),
    }
}

fn create(key: &str, id: &str, token: FencingToken) -> CreateMachineRequest {
    CreateMachineRequest {
        idempotency_key: key.into(),
        token: Some(token),
        machine_id: id.into(),
        domain: "rack-1".into(),
        shape: "small".into(),
        capacity_type: String::new(),
    }
}

fn configure(key: &str, id: &str, cluster: &str, token: FencingToken) -> ConfigureMachineRequest {
    ConfigureMachineRequest {
        idempotency_key: key.into(),
        token: Some(token),
        machine_id: id.into(),
        cluster: cluster.into(),
    }
}

fn reason<T: std::fmt::Debug>(outcome: Result<T, Refusal>) -> Reason {
    outcome.expect_err("a refusal").reason()
}

#[test]
fn a_repeated_key_answers_the_first_outcome_and_creates_nothing_more() {
    let mut book = Book::new(catalog(), Breach::None);
    let first = book
        .create(&create("k1", "m1", token("s1", 5, 5, 10)))
        .unwrap();
    let mut again = token("s1", 5, 5, 10);
    again.sequence = 99; // a retry renews the sequence; still the same request
    let second = book.create(&create("k1", "m1", again)).unwrap();
    assert_eq!(first, second);
    assert_eq!(book.machine_count(), 1);
    // The same key for another request is a conflict, not a second machine.
    assert_eq!(
        reason(book.create(&create("k1", "m2", token("s1", 5, 5, 10)))),
        Reason::IdempotencyConflict
    );
    // A retry under a renewed token is the same intent.
    let renewed = book
        .create(&create("k1", "m1", token("s1", 6, 6, 10)))
        .unwrap();
    assert_eq!(renewed, first);
    // Keys are the shard's own: another shard's "k1" is another call.
    let mut other = create("k1", "m2", token("s2", 6, 6, 10));
    other
        .token
        .as_mut()
        .unwrap()
        .domain
        .as_mut()
        .unwrap()
        .domain = "rack-2".into();
    other.domain = "rack-2".into();
    assert_eq!(book.create(&other).unwrap().id, "m2");
}

#[test]
fn a_replay_is_refused_once_its_token_is_fenced() {
    let mut book = Book::new(catalog(), Breach::None);
    book.create(&create("a1", "m1", token("old", 5, 5, 10)))
        .unwrap();
    book.claim(&ClaimDomainRequest {
        idempotency_key: "b1".into(),
        token: Some(token("new", 6, 6, 10)),
    })
    .unwrap();
    assert_eq!(
        reason(book.create(&create("a1", "m1", token("old", 5, 5, 10)))),
        Reason::StaleGrant
    );
    // So is a replay under a cluster grant once the cluster moved on.
    book.configure(&configure(
        "a2",
        "m1",
        "c1",
        for_cluster(token("old", 5, 5, 10), "c1", 5),
    ))
    .unwrap();
    book.adopt_cluster(&adopt("b2", for_cluster(token("new", 6, 6, 10), "c1", 6)))
        .unwrap();
    let refused = book
        .configure(&configure(
            "a2",
            "m1",
            "c1",
            for_cluster(token("old", 5, 5, 10), "c1", 5),
        ))
        .unwrap_err();
    assert_eq!(refused.reason(), Reason::StaleGrant);
    assert!(refused.metadata.contains(&("cluster".into(), "c1".into())));
}

#[test]
fn only_the_newest_answers_are_kept() {
    let mut catalog = catalog();
    catalog.idempotency_keys = 2;
    let mut book = Book::new(catalog, Breach::None);
    for i in 0..3 {
        book.create(&create(
            &format!("k{i}"),
            &format!("m{i}"),
            token("s1", 5, 5, 10),
        ))
        .unwrap();
    }
    let changes = book.take_changes();
    assert!(changes.forgotten.contains(&Book::answer_key("s1", "k0")));
    assert!(book.answer(&Book::answer_key("s1", "k0")).is_none());
    // A forgotten key is judged afresh: the machine exists, so the retry is refused.
    assert_eq!(
        reason(book.create(&create("k0", "m0", token("s1", 5, 5, 10)))),
        Reason::AlreadyExists
    );
    assert!(book.answer(&Book::answer_key("s1", "k2")).is_some());
}

#[test]
fn a_newer_domain_grant_fences_creates_and_moves_no_machine() {
    let mut book = Book::new(catalog(), Breach::None);
    let old = || token("old", 5, 5, 10);
    book.create(&create("a1", "m1", old())).unwrap();
    book.configure(&configure("a2", "m1", "c1", for_cluster(old(), "c1", 5)))
        .unwrap();
    // An equal grant from the same shard acts; from another shard it is stale.
    assert_eq!(
        reason(book.create(&create("b0", "m9", token("new", 5, 5, 10)))),
        Reason::StaleGrant
    );
    book.claim(&ClaimDomainRequest {
        idempotency_key: "b1".into(),
        token: Some(token("new", 6, 6, 10)),
    })
    .unwrap();
    assert_eq!(book.domain_mark("rack-1").unwrap().shard, "new");
    // The machine stays with the shard serving its cluster.
    let m1 = book.machine("m1").unwrap();
    assert_eq!(
        (m1.owner_shard.as_str(), m1.cluster.as_str()),
        ("old", "c1")
    );
    // The old owner can no longer create in the domain, naming both grants...
    let refused = book.create(&create("a4", "m2", old())).unwrap_err();
    assert_eq!(refused.reason(), Reason::StaleGrant);
    assert!(
        refused.message.contains("1/5") && refused.message.contains("1/6"),
        "{}",
        refused.message
    );
    assert!(
        refused
            .metadata
            .contains(&("domain".into(), "rack-1".into()))
    );
    // ...but still serves its cluster with the machine it holds there.
    book.release(&release("a5", "m1", for_cluster(old(), "c1", 5)))
        .unwrap();
    book.configure(&configure("a6", "m1", "c1", for_cluster(old(), "c1", 5)))
        .unwrap();
    // The new owner creates there.
    book.create(&create("b2", "m3", token("new", 6, 6, 10)))
        .unwrap();
}

#[test]
fn a_newer_cluster_grant_hands_the_cluster_over_in_place() {
    let mut book = Book::new(catalog(), Breach::None);
    let old = || token("old", 5, 5, 10);
    book.create(&create("a1", "m1", old())).unwrap();
    book.create(&create("a2", "m2", old())).unwrap();
    book.configure(&configure("a3", "m1", "c1", for_cluster(old(), "c1", 5)))
        .unwrap();
    // An equal cluster grant from another shard is stale.
    assert_eq!(
        reason(book.adopt_cluster(&adopt("b0", for_cluster(token("new", 5, 5, 10), "c1", 5)))),
        Reason::StaleGrant
    );
    let adopted = book
        .adopt_cluster(&adopt("b1", for_cluster(token("new", 5, 5, 10), "c1", 6)))
        .unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].id, "m1");
    assert_eq!(adopted[0].owner_shard, "new");
    assert_eq!(adopted[0].cluster, "c1");
    assert_eq!(adopted[0].state, MachineState::Configured as i32);
    // The idle machine stays where it was.
    assert_eq!(book.machine("m2").unwrap().owner_shard, "old");
    // The old owner is refused for the cluster, naming it and both grants.
    let refused = book
        .release(&release("a4", "m1", for_cluster(old(), "c1", 5)))
        .unwrap_err();
    assert_eq!(refused.reason(), Reason::StaleGrant);
    for pair in [("cluster", "c1"), ("presented", "1/5"), ("accepted", "1/6")] {
        assert!(
            refused.metadata.contains(&(pair.0.into(), pair.1.into())),
            "{:?}",
            refused.metadata
        );
    }
    assert_eq!(
        reason(book.configure(&configure("a5", "m2", "c1", for_cluster(old(), "c1", 5)))),
        Reason::StaleGrant
    );
    // A release needs the grant of the cluster the machine serves.
    assert_eq!(
        reason(book.release(&release("b2", "m1", token("new", 5, 5, 10)))),
        Reason::InvalidArgument
    );
    // Another shard's idle machine is not the new owner's to use.
    let refused = book
        .configure(&configure(
            "b3",
            "m2",
            "c1",
            for_cluster(token("new", 5, 5, 10), "c1", 6),
        ))
        .unwrap_err();
    assert_eq!(refused.reason(), Reason::NotOwner);
    assert!(refused.metadata.contains(&("owner".into(), "old".into())));
    book.release(&release(
        "b4",
        "m1",
        for_cluster(token("new", 5, 5, 10), "c1", 6),
    ))
    .unwrap();
    // An idle machine needs no grant, only its owner.
    book.release(&release("a6", "m2", old())).unwrap();
    assert_eq!(
        reason(book.release(&release("b5", "m2", token("new", 5, 5, 10)))),
        Reason::NotOwner
    );
    let listed = book.list(
        &Filter {
            cluster: "c1",
            ..Filter::default()
        },
        "",
        10,
    );
    assert!(listed.0.is_empty(), "m1 was released from c1: {listed:?}");
}

#[test]
fn a_call_under_a_newer_cluster_grant_adopts_implicitly() {
    let mut book = Book::new(catalog(), Breach::None);
    book.create(&create("a1", "m1", token("old", 5, 5, 10)))
        .unwrap();
    book.configure(&configure(
        "a2",
        "m1",
        "c1",
        for_cluster(token("old", 5, 5, 10), "c1", 5),
    ))
    .unwrap();
    let rack2 = |t: FencingToken| {
        let mut t = t;
        t.domain.as_mut().unwrap().domain = "rack-2".into();
        t
    };
    let mut made = create("b1", "m2", rack2(token("new", 7, 7, 10)));
    made.domain = "rack-2".into();
    book.create(&made).unwrap();
    book.configure(&configure(
        "b2",
        "m2",
        "c1",
        for_cluster(token("new", 7, 7, 10), "c1", 7),
    ))
    .unwrap();
    assert_eq!(book.machine("m1").unwrap().owner_shard, "new");
    assert_eq!(
        reason(book.release(&release(
            "a3",
            "m1",
            for_cluster(token("old", 5, 5, 10), "c1", 5)
        ))),
        Reason::StaleGrant
    );
}

#[test]
fn adopted_machines_count_against_the_adopters_slice() {
    let mut book = Book::new(catalog(), Breach::None);
    for (key, id) in [("a1", "m1"), ("a2", "m2")] {
        book.create(&create(key, id, token("old", 5, 5, 2)))
            .unwrap();
    }
    for (key, id) in [("a3", "m1"), ("a4", "m2")] {
        book.configure(&configure(
            key,
            id,
            "c1",
            for_cluster(token("old", 5, 5, 2), "c1", 5),
        ))
        .unwrap();
    }
    book.adopt_cluster(&adopt("b1", for_cluster(token("new", 5, 6, 2), "c1", 6)))
        .unwrap();
    let refused = book
        .create(&create("b2", "m3", token("new", 6, 6, 2)))
        .unwrap_err();
    assert_eq!(refused.reason(), Reason::OverSlice);
    assert!(refused.metadata.contains(&("held".into(), "2".into())));
    // The old owner holds none of them any more: its slice has room again.
    book.create(&create("a5", "m4", token("old", 5, 6, 2)))
        .unwrap();
    book.create(&create("a6", "m5", token("old", 5, 6, 2)))
        .unwrap();
    assert_eq!(
        reason(book.create(&create("a7", "m6", token("old", 5, 6, 2)))),
        Reason::OverSlice
    );
}

#[test]
fn an_older_slice_table_is_refused_and_a_create_past_the_slice_too() {
    let mut book = Book::new(catalog(), Breach::None);
    book.create(&create("k1", "m1", token("s1", 5, 8, 2)))
        .unwrap();
    // The quota moved on to table 8; a call under table 7 is stale even with a good domain.
    assert_eq!(
        reason(book.create(&create("k2", "m2", token("s1", 5, 7, 2)))),
        Reason::StaleGrant
    );
    book.create(&create("k3", "m2", token("s1", 5, 8, 2)))
        .unwrap();
    let refused = book
        .create(&create("k4", "m3", token("s1", 5, 8, 2)))
        .unwrap_err();
    assert_eq!(refused.reason(), Reason::OverSlice);
    assert!(
        refused
            .metadata
            .contains(&("slice".to_string(), "2".to_string()))
    );
    // A newer table with a larger slice lets it through.
    book.create(&create("k5", "m3", token("s1", 5, 9, 3)))
        .unwrap();
    assert_eq!(book.machine_count(), 3);
}

#[test]
fn a_restarted_shard_fences_its_older_incarnation() {
    let mut book = Book::new(catalog(), Breach::None);
    let mut later = token("s1", 5, 5, 10);
    later.shard_epoch = 2;
    book.create(&create("k1", "m1", later)).unwrap();
    let refused = book
        .create(&create("k2", "m2", token("s1", 5, 5, 10)))
        .unwrap_err();
    assert_eq!(refused.reason(), Reason::StaleEpoch);
}

#[test]
fn machines_move_through_their_states_and_refuse_the_wrong_step() {
    let mut book = Book::new(catalog(), Breach::None);
    book.create(&create("k1", "m1", token("s1", 5, 5, 10)))
        .unwrap();
    let s1 = |cluster: &str| for_cluster(token("s1", 5, 5, 10), cluster, 5);
    book.configure(&configure("k2", "m1", "c1", s1("c1")))
        .unwrap();
    // Configured for another cluster: release first.
    assert_eq!(
        reason(book.configure(&configure("k3", "m1", "c2", s1("c2")))),
        Reason::InvalidState
    );
    let idle = book.release(&release("k4", "m1", s1("c1"))).unwrap();
    assert_eq!(idle.state, MachineState::Idle as i32);
    assert!(idle.cluster.is_empty());
    let gone = book
        .delete(&DeleteMachineRequest {
            idempotency_key: "k5".into(),
            token: Some(token("s1", 5, 5, 10)),
            machine_id: "m1".into(),
        })
        .unwrap();
    assert_eq!(gone.state, MachineState::Deleted as i32);
    assert_eq!(
        reason(book.configure(&configure("k6", "m1", "c1", s1("c1")))),
        Reason::InvalidState
    );
    assert_eq!(
        reason(book.configure(&configure("k7", "nope", "c1", s1("c1")))),
        Reason::NotFound
    );
    // A configure without the cluster's grant, or with another cluster's, is malformed.
    book.create(&create("k8", "m2", token("s1", 5, 5, 10)))
        .unwrap();
    for t in [token("s1", 5, 5, 10), s1("c9")] {
        assert_eq!(
            reason(book.configure(&configure("k9", "m2", "c1", t))),
            Reason::InvalidArgument
        );
    }
}

#[test]
fn bad_input_is_refused_as_invalid_and_changes_nothing() {
    let mut book = Book::new(catalog(), Breach::None);
    let mut no_token = create("k1", "m1", token("s1", 5, 5, 10));
    no_token.token = None;
    let mut no_quota = create("k2", "m1", token("s1", 5, 5, 10));
    no_quota.token.as_mut().unwrap().quota = None;
    let mut bad_shape = create("k3", "m1", token("s1", 5, 5, 10));
    bad_shape.shape = "huge".into();
    let mut other_domain = create("k4", "m1", token("s1", 5, 5, 10));
    other_domain.domain = "rack-2".into();
    let mut spaced = create("k5", "m 1", token("s1", 5, 5, 10));
    spaced.machine_id = "m 1".into();
    let mut wrong_region = create("k6", "m1", token("s1", 5, 5, 10));
    wrong_region
        .token
        .as_mut()
        .unwrap()
        .quota
        .as_mut()
        .unwrap()
        .region = "r9".into();
    for request in [
        no_token,
        no_quota,
        bad_shape,
        other_domain,
        spaced,
        wrong_region,
    ] {
        assert_eq!(
            reason(book.create(&request)),
            Reason::InvalidArgument,
            "{request:?}"
        );
    }
    assert_eq!(
        reason(book.create(&create("", "m1", token("s1", 5, 5, 10)))),
        Reason::InvalidArgument
    );
    assert_eq!(book.machine_count(), 0);
    assert!(book.domain_mark("rack-1").is_none());
}

#[test]
fn a_full_provider_refuses_retryably_and_forgets_the_refusal() {
    let mut catalog = catalog();
    catalog.capacity = Some(1);
    let mut book = Book::new(catalog, Breach::None);
    book.create(&create("k1", "m1", token("s1", 5, 5, 10)))
        .unwrap();
    assert_eq!(
        reason(book.create(&create("k2", "m2", token("s1", 5, 5, 10)))),
        Reason::InsufficientCapacity
    );
    book.delete(&DeleteMachineRequest {
        idempotency_key: "k3".into(),
        token: Some(token("s1", 5, 5, 10)),
        machine_id: "m1".into(),
    })
    .unwrap();
    // Retrying the same key once there is room succeeds: transient refusals are not kept.
    book.create(&create("k2", "m2", token("s1", 5, 5, 10)))
        .unwrap();
}

#[test]
fn pages_resume_after_their_cursor() {
    let mut book = Book::new(catalog(), Breach::None);
    for i in 0..25 {
        book.create(&create(
            &format!("k{i}"),
            &format!("m{i:02}"),
            token("s1", 5, 5, 100),
        ))
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (page, next) = book.list(&Filter::default(), &cursor, 10);
        seen.extend(page.into_iter().map(|m| m.id));
        if next.is_empty() {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let domain = |domain| Filter {
        domain,
        ..Filter::default()
    };
    let owner = |owner| Filter {
        owner,
        ..Filter::default()
    };
    assert_eq!(book.list(&domain("rack-2"), "", 10).0.len(), 0);
    assert_eq!(book.list(&owner("s1"), "", 1000).0.len(), 25);
}

#[test]
fn the_breaches_break_what_they_say() {
    let mut book = Book::new(catalog(), Breach::IgnoreFencing);
    book.create(&create("a1", "m1", token("new", 6, 6, 10)))
        .unwrap();
    book.create(&create("b1", "m2", token("old", 5, 5, 10)))
        .unwrap();
    let mut book = Book::new(catalog(), Breach::NotIdempotent);
    book.create(&create("k1", "m1", token("s1", 5, 5, 10)))
        .unwrap();
    assert_eq!(
        reason(book.create(&create("k1", "m1", token("s1", 5, 5, 10)))),
        Reason::AlreadyExists
    );
}

/// One step of a random history: a shard creates, configures for a cluster, deletes, claims
/// a domain or adopts a cluster.
#[derive(Clone, Debug)]
enum Step {
    Create { shard: usize, domain: usize },
    Configure { machine: usize, cluster: usize },
    Delete { machine: usize },
    Claim { shard: usize, domain: usize },
    Adopt { shard: usize, cluster: usize },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (0..3usize, 0..3usize).prop_map(|(shard, domain)| Step::Create { shard, domain }),
        (0..40usize, 0..3usize).prop_map(|(machine, cluster)| Step::Configure { machine, cluster }),
        (0..40usize).prop_map(|machine| Step::Delete { machine }),
        (0..3usize, 0..3usize).prop_map(|(shard, domain)| Step::Claim { shard, domain }),
        (0..3usize, 0..3usize).prop_map(|(shard, cluster)| Step::Adopt { shard, cluster }),
    ]
}

proptest::proptest! {
    /// Whatever happens, the indexes say what a scan of every machine says: live machines per
    /// owner and quota, in all, and the listings by domain, by owner and by cluster.
    #[test]
    fn the_indexes_agree_with_a_scan(steps in proptest::collection::vec(step(), 1..60)) {
        let mut book = Book::new(catalog(), Breach::None);
        let mut revision = 1;
        let mut made: Vec<(String, usize)> = Vec::new();
        let token_for = |shard: usize, domain: usize, revision: u64| FencingToken {
            shard_id: format!("s{shard}"),
            shard_epoch: 1,
            sequence: 0,
            domain: Some(DomainGrant {
                domain: format!("d{domain}"),
                grant: grant(revision),
            }),
            quota: Some(QuotaGrant {
                quota_provider: "sim".into(),
                region: "r1".into(),
                grant: grant(1),
                slice: 1000,
            }),
            cluster: None,
        };
        let owner_of = |book: &Book, id: &str| {
            book.machine(id)
                .map(|m| m.owner_shard.trim_start_matches('s').parse().unwrap_or(0))
                .unwrap_or(0)
        };
        // Each shard's newest grant per cluster: acting for a cluster uses the newest it has.
        let cluster_token = |shard: usize, domain: usize, cluster: &str, revision: u64| {
            for_cluster(token_for(shard, domain, revision), cluster, revision)
        };
        for (n, step) in steps.into_iter().enumerate() {
            revision += 1;
            match step {
                Step::Create { shard, domain } => {
                    let id = format!("m{n}");
                    let mut request = create(&format!("k{n}"), &id, token_for(shard, domain, revision));
                    request.domain = format!("d{domain}");
                    if book.create(&request).is_ok() {
                        made.push((id, domain));
                    }
                }
                Step::Configure { machine, cluster } => {
                    if let Some((id, domain)) = made.get(machine % made.len().max(1)).cloned() {
                        let shard = owner_of(&book, &id);
                        let cluster = format!("c{cluster}");
                        let _ = book.configure(&configure(
                            &format!("k{n}"),
                            &id,
                            &cluster,
                            cluster_token(shard, domain, &cluster, revision),
                        ));
                    }
                }
                Step::Delete { machine } => {
                    if let Some((id, domain)) = made.get(machine % made.len().max(1)).cloned() {
                        let shard = owner_of(&book, &id);
                        let serves = book.machine(&id).map(|m| m.cluster.clone()).unwrap_or_default();
                        let token = if serves.is_empty() {
                            token_for(shard, domain, revision)
                        } else {
                            cluster_token(shard, domain, &serves, revision)
                        };
                        let _ = book.delete(&DeleteMachineRequest {
                            idempotency_key: format!("k{n}"),
                            token: Some(token),
                            machine_id: id,
                        });
                    }
                }
                Step::Claim { shard, domain } => {
                    let _ = book.claim(&ClaimDomainRequest {
                        idempotency_key: format!("k{n}"),
                        token: Some(token_for(shard, domain, revision)),
                    });
                }
                Step::Adopt { shard, cluster } => {
                    let _ = book.adopt_cluster(&adopt(
                        &format!("k{n}"),
                        cluster_token(shard, 0, &format!("c{cluster}"), revision),
                    ));
                }
            }
            let all: Vec<Machine> = book.machines.values().cloned().collect();
            for shard in 0..3 {
                let owner = format!("s{shard}");
                let scanned = all.iter().filter(|m| m.owner_shard == owner && live(m)).count() as u64;
                proptest::prop_assert_eq!(book.index.held(&owner, "sim", "r1"), scanned);
                let filter = Filter { owner: &owner, ..Filter::default() };
                let listed: Vec<String> = book.list(&filter, "", 1000).0.into_iter().map(|m| m.id).collect();
                let expected: Vec<String> = all.iter().filter(|m| m.owner_shard == owner).map(|m| m.id.clone()).collect();
                proptest::prop_assert_eq!(listed, expected);
            }
            for domain in 0..3 {
                let name = format!("d{domain}");
                let filter = Filter { domain: &name, ..Filter::default() };
                let listed: Vec<String> = book.list(&filter, "", 1000).0.into_iter().map(|m| m.id).collect();
                let expected: Vec<String> = all.iter().filter(|m| m.domain == name).map(|m| m.id.clone()).collect();
                proptest::prop_assert_eq!(listed, expected);
            }
            for cluster in 0..3 {
                let name = format!("c{cluster}");
                let filter = Filter { cluster: &name, ..Filter::default() };
                let listed: Vec<String> = book.list(&filter, "", 1000).0.into_iter().map(|m| m.id).collect();
                let expected: Vec<String> = all.iter().filter(|m| m.cluster == name).map(|m| m.id.clone()).collect();
                proptest::prop_assert_eq!(&listed, &expected);
                // Every live machine serving a cluster belongs to the cluster's newest holder.
                if let Some(mark) = book.cluster_mark(&name) {
                    for m in all.iter().filter(|m| m.cluster == name && live(m)) {
                        proptest::prop_assert_eq!(&m.owner_shard, &mark.shard);
                    }
                }
            }
            proptest::prop_assert_eq!(book.index.live(), all.iter().filter(|m| live(m)).count() as u64);
        }
    }
}
