//! `ballast-coord`: one coordinator replica.

use ballast_coordinator::config::{CoordArgs, init_logging, run_until_signal, runtime};

fn main() -> anyhow::Result<()> {
    runtime()?.block_on(async {
        init_logging();
        let args = ballast_settings::parse_or_exit::<CoordArgs>();
        run_until_signal(args).await
    })?;
    Ok(())
}
