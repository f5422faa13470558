//! What each kind of record costs the book in heap, as glibc counts it (chunk overhead and the
//! maps' slack included), at the scale of one fleet provider: 100K domains claimed by 200
//! shards, 20K clusters adopted, 4K machines made and configured. A measurement, not a check:
//! `cargo test --release -p ballast-provider-sim --test book_bytes -- --ignored --nocapture`.

use ballast_protocol::providerpb::{
    AdoptClusterRequest, ClaimDomainRequest, ClusterGrant, ConfigureMachineRequest,
    CreateMachineRequest, DomainGrant, FencingToken, Grant, QuotaGrant, Resources,
};
use ballast_provider_sim::book::{Book, Breach, Catalog};

/// Bytes glibc has handed out and not had back: chunks in its arenas and the large blocks
/// (a big table's array) it maps on their own.
fn heap() -> usize {
    ballast_telemetry::memory::heap()
        .expect("glibc reports its heap")
        .live_bytes as usize
}

fn catalog(idempotency_keys: usize) -> Catalog {
    Catalog {
        name: "provider-0".into(),
        quota_provider: "provider-0".into(),
        regions: vec!["region-0".into()],
        shapes: [(
            "small".to_string(),
            (
                Resources {
                    cpu_millis: 2000,
                    memory_mib: 8192,
                    gpus: 0,
                },
                0.1,
            ),
        )]
        .into_iter()
        .collect(),
        capacity_types: vec!["on-demand".into()],
        idempotency_keys,
        ..Catalog::default()
    }
}

fn grant(revision: u64) -> Option<Grant> {
    Some(Grant {
        restore_epoch: 1,
        revision,
    })
}

fn token(shard: usize) -> FencingToken {
    FencingToken {
        shard_id: format!("shard-{shard:03}"),
        shard_epoch: 1,
        ..FencingToken::default()
    }
}

fn domain(n: usize) -> String {
    format!("topology.kubernetes.io/zone=az-{}/rack=r{n:06}", n % 3)
}

const DOMAINS: usize = 100_000;
const CLUSTERS: usize = 20_000;
const MACHINES: usize = 4_000;
const SHARDS: usize = 200;

/// Claims, adoptions and machines as one fleet provider sees them; the heap each phase added.
fn fill(book: &mut Book) -> [usize; 3] {
    let start = heap();
    for n in 0..DOMAINS {
        let domain = domain(n);
        let mut token = token(n % SHARDS);
        token.domain = Some(DomainGrant {
            domain: domain.clone(),
            grant: grant(1),
        });
        book.claim(&ClaimDomainRequest {
            idempotency_key: format!("take/domain/{domain}/1/1"),
            token: Some(token),
        })
        .unwrap();
        book.take_changes();
    }
    let claimed = heap();
    for n in 0..CLUSTERS {
        let cluster = format!("cluster-{n:06}");
        let mut token = token(n % SHARDS);
        token.cluster = Some(ClusterGrant {
            cluster: cluster.clone(),
            grant: grant(1),
        });
        book.adopt_cluster(&AdoptClusterRequest {
            idempotency_key: format!("take/cluster/{cluster}/1/1"),
            token: Some(token),
        })
        .unwrap();
        book.take_changes();
    }
    let adopted = heap();
    for n in 0..MACHINES {
        let (shard, domain, cluster) = (n % SHARDS, domain(n), format!("cluster-{n:06}"));
        let id = format!("m-{shard:03}-{n:05}");
        let mut create = token(shard);
        create.domain = Some(DomainGrant {
            domain: domain.clone(),
            grant: grant(1),
        });
        create.quota = Some(QuotaGrant {
            quota_provider: "provider-0".into(),
            region: "region-0".into(),
            grant: grant(1),
            slice: 1 << 40,
        });
        book.create(&CreateMachineRequest {
            idempotency_key: format!("create/{id}"),
            token: Some(create),
            machine_id: id.clone(),
            domain,
            shape: "small".into(),
            capacity_type: String::new(),
        })
        .unwrap();
        let mut configure = token(shard);
        configure.cluster = Some(ClusterGrant {
            cluster: cluster.clone(),
            grant: grant(1),
        });
        book.configure(&ConfigureMachineRequest {
            idempotency_key: format!("configure/{id}/{cluster}"),
            token: Some(configure),
            machine_id: id,
            cluster,
        })
        .unwrap();
        book.take_changes();
    }
    [claimed - start, adopted - claimed, heap() - adopted]
}

/// Every domain moves to the next shard (a newer grant, a new key): the kept answers turn
/// over once, as rebalancing and AZ evacuations turn them over in a long run.
fn turn_over(book: &mut Book) {
    for n in 0..DOMAINS {
        let domain = domain(n);
        let mut token = token((n + 1) % SHARDS);
        token.domain = Some(DomainGrant {
            domain: domain.clone(),
            grant: grant(2),
        });
        book.claim(&ClaimDomainRequest {
            idempotency_key: format!("take/domain/{domain}/1/2"),
            token: Some(token),
        })
        .unwrap();
        book.take_changes();
    }
}

#[test]
#[ignore = "a measurement: run alone, in release, with --nocapture"]
fn bytes_per_record() {
    // Answers kept (the default 100K) against answers forgotten at once (1 kept): the
    // difference is what the answers cost.
    let mut kept = Book::new(catalog(100_000), Breach::None);
    let [claims, adoptions, machines] = fill(&mut kept);
    let mut forgotten = Book::new(catalog(1), Breach::None);
    let [marks, cluster_marks, bare_machines] = fill(&mut forgotten);
    let per = |bytes: usize, n: usize| bytes as f64 / n as f64;
    println!(
        "domain mark: {:.0} B; cluster mark: {:.0} B; machine (and its indexes): {:.0} B",
        per(marks, DOMAINS),
        per(cluster_marks, CLUSTERS),
        per(bare_machines, MACHINES),
    );
    println!(
        "with answers kept: per claim {:.0} B, per adoption {:.0} B, per machine made and configured {:.0} B",
        per(claims, DOMAINS),
        per(adoptions, CLUSTERS),
        per(machines, MACHINES),
    );
    let before = heap();
    turn_over(&mut kept);
    let turned = heap() as f64 - before as f64;
    println!(
        "the book in all: {:.1} MiB with 100K answers kept, {:.1} MiB with 1; \
         {:.1} MiB with 100K kept once every domain moved again",
        (claims + adoptions + machines) as f64 / 1048576.0,
        (marks + cluster_marks + bare_machines) as f64 / 1048576.0,
        ((claims + adoptions + machines) as f64 + turned) / 1048576.0,
    );
    drop((kept, forgotten));
}
