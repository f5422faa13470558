//! A worker that uses Ballast as its coordinator, the way a job scheduler would: it announces
//! itself under `workers/` with a session lease (membership disappears when it dies), takes
//! the lease of one shard of work with a lock (fencing token included), and campaigns to be
//! the single scheduler leader.
//!
//! Run three in parallel against the demo cluster (`cargo run -p ballast-sim -- demo`):
//!
//! ```sh
//! cargo run -p ballast-protocol --example coordination -- worker-1 3
//! cargo run -p ballast-protocol --example coordination -- worker-2 3
//! ```
//! Arguments: worker name, shard count; endpoints from BALLAST_ENDPOINTS (default the demo's).

use std::time::Duration;

use ballast_protocol::coordination::{Coordinator, Election, Lock, Session};
use ballast_protocol::etcdserverpb as epb;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "worker-1".into());
    let shards: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let endpoints: Vec<String> = std::env::var("BALLAST_ENDPOINTS")
        .unwrap_or_else(|_| "127.0.0.1:7701,127.0.0.1:7702,127.0.0.1:7703".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let coordinator = Coordinator::new(&endpoints)?;
    let session = Session::new(&coordinator, 10).await?;

    // Membership: a key that lives as long as this process keeps its lease.
    coordinator
        .kv()
        .put(epb::PutRequest {
            key: format!("workers/{name}").into_bytes(),
            value: b"ready".to_vec(),
            lease: session.lease(),
            ..Default::default()
        })
        .await?;
    println!(
        "{name}: registered as workers/{name} (lease {:x})",
        session.lease()
    );

    // A shard of work: the first free one, by trying locks in turn.
    let mut shard = None;
    for n in 0..shards {
        let lock = Lock::new(&format!("shard-{n}"));
        if let Ok(Ok(held)) =
            tokio::time::timeout(Duration::from_millis(300), lock.lock(&session)).await
        {
            println!(
                "{name}: owns shard-{n}, fencing token {}",
                held.fencing_token
            );
            shard = Some((lock, held));
            break;
        }
    }
    if shard.is_none() {
        println!("{name}: every shard is taken; standing by");
    }

    // Leadership: wait to be the one scheduler.
    let election = Election::new("scheduler");
    let leadership = election.campaign(&session, name.as_bytes()).await?;
    println!(
        "{name}: leads the scheduler election, fencing token {}",
        leadership.fencing_token
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    election.resign(&session, leadership).await?;
    if let Some((lock, held)) = shard {
        lock.unlock(&session, held).await?;
    }
    session.close().await?;
    println!("{name}: resigned, released its shard and left");
    Ok(())
}
