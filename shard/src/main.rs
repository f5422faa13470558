//! `ballast-shard`: one shard worker.

use ballast_shard::config::{ShardArgs, init_logging, run_until_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = ballast_settings::parse_or_exit::<ShardArgs>();
    run_until_signal(args).await?;
    Ok(())
}
