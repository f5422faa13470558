//! `ballast-shard`: one shard worker.

use ballast_shard::config::{ShardArgs, init_logging, run_until_signal};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    run_until_signal(ShardArgs::parse()).await?;
    Ok(())
}
