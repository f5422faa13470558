//! `ballast-coord`: one coordinator replica.

use ballast_coordinator::config::{CoordArgs, init_logging, run_until_signal, tune_allocator};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            init_logging();
            run_until_signal(CoordArgs::parse()).await
        })?;
    Ok(())
}
