//! `ballast-coord`: one coordinator replica.

use ballast_coordinator::config::{CoordArgs, init_logging, run_until_signal};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    run_until_signal(CoordArgs::parse()).await?;
    Ok(())
}
