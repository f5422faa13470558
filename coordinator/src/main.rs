//! `ballast-coord`: one coordinator replica.

use ballast_coordinator::config::{CoordArgs, init_logging, run_until_signal, runtime};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    runtime()?.block_on(async {
        init_logging();
        run_until_signal(CoordArgs::parse()).await
    })?;
    Ok(())
}
