//! An application that runs a Ballast coordinator replica inside itself, next to its own work:
//! as a single node (solo deploys, a laptop), or as one of three (HA). Its own work here is
//! registering itself as a shard worker and assigning it a few topology domains through the
//! replica's client, and keeping a counter in the coordination KV through etcd's v3 API.
//!
//! ```sh
//! cargo run -p ballast-coordinator --example embedded -- solo
//! cargo run -p ballast-coordinator --example embedded -- three
//! ```

use std::path::Path;
use std::time::Duration;

use ballast_coordinator::{Coordinator, CoordinatorBuilder};
use ballast_protocol::etcdserverpb::kv_client::KvClient;
use ballast_protocol::etcdserverpb::{PutRequest, RangeRequest};
use ballast_protocol::pb;
use ballast_protocol::pb::command::Command;

/// What the application's own work saw.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    /// Replicas this process ran.
    pub replicas: usize,
    /// Domains the application assigned itself, as the cluster lists them.
    pub domains: usize,
    /// The counter in the coordination KV after the work.
    pub counter: u64,
}

/// One replica in this process, bootstrapping its own cluster; the application works against
/// it, and it shuts down cleanly with the application.
pub async fn solo(dir: &Path) -> anyhow::Result<Report> {
    let coordinator = replica(dir, 1, "az-a").bootstrap().start().await?;
    coordinator.ready(Duration::from_secs(20)).await?;
    let report = work(&coordinator, 1).await?;
    coordinator.shutdown().await;
    Ok(report)
}

/// Three replicas, one per AZ (in a real deployment each runs in its own copy of the
/// application): the first bootstraps, the others join with single-use tokens; the
/// application works through the last one, a follower, which forwards writes to the leader.
pub async fn three(dir: &Path) -> anyhow::Result<Report> {
    let first = replica(dir, 1, "az-a").bootstrap().start().await?;
    first.ready(Duration::from_secs(20)).await?;
    let mut replicas = vec![first];
    for (id, az) in [(2, "az-b"), (3, "az-c")] {
        let token = replicas[0]
            .client()
            .cluster(|mut c, req| async move {
                c.create_join_token(req.wrap(pb::CreateJoinTokenRequest { ttl_seconds: 600 }))
                    .await
            })
            .await?
            .token;
        let members: Vec<String> = replicas.iter().map(|r| r.address().to_string()).collect();
        let joined = replica(dir, id, az).join(&members, &token).start().await?;
        joined.ready(Duration::from_secs(30)).await?;
        replicas.push(joined);
    }
    let report = work(&replicas[2], replicas.len()).await?;
    for replica in replicas {
        replica.shutdown().await;
    }
    Ok(report)
}

/// Replica `id` in `az`, on a free port, with its data dir under `dir`.
fn replica(dir: &Path, id: u64, az: &str) -> CoordinatorBuilder {
    Coordinator::builder()
        .id(id)
        .az(az)
        .listen("127.0.0.1:0")
        .data_dir(dir.join(format!("replica-{id}")))
}

/// The application's own work: register as a shard, take three domains, count in the KV.
async fn work(coordinator: &Coordinator, replicas: usize) -> anyhow::Result<Report> {
    let client = coordinator.client();
    client
        .write(pb::Command {
            command: Some(Command::RegisterShard(pb::RegisterShard {
                id: "app-1".into(),
                address: "127.0.0.1:9901".into(),
                az: "az-a".into(),
                lease_ttl_ms: 60_000,
            })),
        })
        .await?;
    let assignments = (0..3)
        .map(|n| pb::DomainAssignment {
            domain: format!("zone=az-a/rack=app-{n}"),
            shard: "app-1".into(),
        })
        .collect();
    client
        .write(pb::Command {
            command: Some(Command::AssignDomains(pb::AssignDomains {
                assignments,
                allow_move: false,
            })),
        })
        .await?;
    let listed = client
        .fleet(|mut c, req| async move {
            c.list_domains(req.wrap(pb::ListDomainsRequest {
                options: None,
                shard: "app-1".into(),
                after: String::new(),
                limit: 100,
            }))
            .await
        })
        .await?;
    let mut kv = KvClient::connect(format!("http://{}", coordinator.address())).await?;
    for n in 1..=5u64 {
        kv.put(PutRequest {
            key: b"app/counter".to_vec(),
            value: n.to_string().into_bytes(),
            ..Default::default()
        })
        .await?;
    }
    let read = kv
        .range(RangeRequest {
            key: b"app/counter".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let counter = read
        .kvs
        .first()
        .and_then(|kv| String::from_utf8_lossy(&kv.value).parse().ok())
        .unwrap_or(0);
    Ok(Report {
        replicas,
        domains: listed.domains.len(),
        counter,
    })
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "solo".into());
    let dir = tempfile::tempdir()?;
    let report = match mode.as_str() {
        "solo" => solo(dir.path()).await?,
        "three" => three(dir.path()).await?,
        other => anyhow::bail!("unknown mode {other:?}: use solo or three"),
    };
    println!("{report:?}");
    Ok(())
}
