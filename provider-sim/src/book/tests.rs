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
    book.adopt(&AdoptDomainRequest {
        idempotency_key: "b1".into(),
        token: Some(token("new", 6, 6, 10)),
    })
    .unwrap();
    assert_eq!(
        reason(book.create(&create("a1", "m1", token("old", 5, 5, 10)))),
        Reason::StaleGrant
    );
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
fn a_newer_domain_grant_fences_the_older_one_and_takes_the_machines_in_place() {
    let mut book = Book::new(catalog(), Breach::None);
    book.create(&create("a1", "m1", token("old", 5, 5, 10)))
        .unwrap();
    book.configure(&configure("a2", "m1", "c1", token("old", 5, 5, 10)))
        .unwrap();
    // An equal grant from the same shard acts; from another shard it is stale.
    assert_eq!(
        reason(book.create(&create("b0", "m9", token("new", 5, 5, 10)))),
        Reason::StaleGrant
    );
    // The new owner adopts under a newer grant: same machine, same cluster, new owner.
    let adopted = book
        .adopt(&AdoptDomainRequest {
            idempotency_key: "b1".into(),
            token: Some(token("new", 6, 6, 10)),
        })
        .unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].owner_shard, "new");
    assert_eq!(adopted[0].cluster, "c1");
    assert_eq!(adopted[0].state, MachineState::Configured as i32);
    // From now on the old owner is refused, naming both grants.
    let refused = book
        .configure(&configure("a3", "m1", "c2", token("old", 5, 5, 10)))
        .unwrap_err();
    assert_eq!(refused.reason(), Reason::StaleGrant);
    assert!(
        refused.message.contains("1/5") && refused.message.contains("1/6"),
        "{}",
        refused.message
    );
    assert_eq!(
        reason(book.create(&create("a4", "m2", token("old", 5, 5, 10)))),
        Reason::StaleGrant
    );
    // The new owner acts on the machine as its own.
    book.configure(&configure("b2", "m1", "c1", token("new", 6, 6, 10)))
        .unwrap();
}

#[test]
fn a_call_under_a_newer_grant_adopts_implicitly() {
    let mut book = Book::new(catalog(), Breach::None);
    book.create(&create("a1", "m1", token("old", 5, 5, 10)))
        .unwrap();
    let made = book
        .create(&create("b1", "m2", token("new", 7, 7, 10)))
        .unwrap();
    assert_eq!(made.owner_shard, "new");
    assert_eq!(book.machine("m1").unwrap().owner_shard, "new");
    assert_eq!(
        reason(book.release(&ReleaseMachineRequest {
            idempotency_key: "a2".into(),
            token: Some(token("old", 5, 5, 10)),
            machine_id: "m1".into(),
        })),
        Reason::StaleGrant
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
fn a_create_that_would_adopt_counts_the_adopted_machines_against_the_slice() {
    let mut book = Book::new(catalog(), Breach::None);
    book.create(&create("a1", "m1", token("old", 5, 5, 2)))
        .unwrap();
    book.create(&create("a2", "m2", token("old", 5, 5, 2)))
        .unwrap();
    // "new" would take both machines with the domain: a slice of 2 has no room for a third.
    assert_eq!(
        reason(book.create(&create("b1", "m3", token("new", 6, 6, 2)))),
        Reason::OverSlice
    );
    // The refusal changed nothing: the domain is still "old"'s.
    assert_eq!(book.domain_mark("rack-1").unwrap().shard, "old");
    assert_eq!(book.machine("m1").unwrap().owner_shard, "old");
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
    book.configure(&configure("k2", "m1", "c1", token("s1", 5, 5, 10)))
        .unwrap();
    // Configured for another cluster: release first.
    assert_eq!(
        reason(book.configure(&configure("k3", "m1", "c2", token("s1", 5, 5, 10)))),
        Reason::InvalidState
    );
    let idle = book
        .release(&ReleaseMachineRequest {
            idempotency_key: "k4".into(),
            token: Some(token("s1", 5, 5, 10)),
            machine_id: "m1".into(),
        })
        .unwrap();
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
        reason(book.configure(&configure("k6", "m1", "c1", token("s1", 5, 5, 10)))),
        Reason::InvalidState
    );
    assert_eq!(
        reason(book.configure(&configure("k7", "nope", "c1", token("s1", 5, 5, 10)))),
        Reason::NotFound
    );
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
        let (page, next) = book.list("", "", &cursor, 10);
        seen.extend(page.into_iter().map(|m| m.id));
        if next.is_empty() {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(book.list("rack-2", "", "", 10).0.len(), 0);
    assert_eq!(book.list("", "s1", "", 1000).0.len(), 25);
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

/// One step of a random history: a shard creates, deletes, or takes a domain over.
#[derive(Clone, Debug)]
enum Step {
    Create { shard: usize, domain: usize },
    Delete { machine: usize },
    Adopt { shard: usize, domain: usize },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (0..3usize, 0..3usize).prop_map(|(shard, domain)| Step::Create { shard, domain }),
        (0..40usize).prop_map(|machine| Step::Delete { machine }),
        (0..3usize, 0..3usize).prop_map(|(shard, domain)| Step::Adopt { shard, domain }),
    ]
}

proptest::proptest! {
    /// Whatever happens, the indexes say what a scan of every machine says: live machines per
    /// owner and quota, in all, and the listings by domain and by owner.
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
                Step::Delete { machine } => {
                    if let Some((id, domain)) = made.get(machine % made.len().max(1)).cloned() {
                        let owner = book.machine(&id).map(|m| m.owner_shard.clone()).unwrap_or_default();
                        let shard: usize = owner.trim_start_matches('s').parse().unwrap_or(0);
                        let _ = book.delete(&DeleteMachineRequest {
                            idempotency_key: format!("k{n}"),
                            token: Some(token_for(shard, domain, revision)),
                            machine_id: id,
                        });
                    }
                }
                Step::Adopt { shard, domain } => {
                    let _ = book.adopt(&AdoptDomainRequest {
                        idempotency_key: format!("k{n}"),
                        token: Some(token_for(shard, domain, revision)),
                    });
                }
            }
            let all: Vec<Machine> = book.machines.values().cloned().collect();
            for shard in 0..3 {
                let owner = format!("s{shard}");
                let scanned = all.iter().filter(|m| m.owner_shard == owner && live(m)).count() as u64;
                proptest::prop_assert_eq!(book.index.held(&owner, "sim", "r1"), scanned);
                let listed: Vec<String> = book.list("", &owner, "", 1000).0.into_iter().map(|m| m.id).collect();
                let expected: Vec<String> = all.iter().filter(|m| m.owner_shard == owner).map(|m| m.id.clone()).collect();
                proptest::prop_assert_eq!(listed, expected);
            }
            for domain in 0..3 {
                let name = format!("d{domain}");
                let listed: Vec<String> = book.list(&name, "", "", 1000).0.into_iter().map(|m| m.id).collect();
                let expected: Vec<String> = all.iter().filter(|m| m.domain == name).map(|m| m.id.clone()).collect();
                proptest::prop_assert_eq!(listed, expected);
            }
            proptest::prop_assert_eq!(book.index.live(), all.iter().filter(|m| live(m)).count() as u64);
        }
    }
}
