//! `ballast-coord`: one coordinator replica; `ballast-coord restore ...` restores an archive
//! into a data dir (offline).

use ballast_coordinator::config::CoordArgs;
use ballast_coordinator::offline::{RestoreArgs, restore};
use ballast_coordinator::process::{init_logging, run_until_signal, runtime};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("restore") {
        let args = RestoreArgs::parse_from(std::env::args().skip(1));
        let json = args.json;
        let outcome = runtime()?.block_on(restore(args));
        return match outcome {
            Ok(done) if json => {
                println!("{done}");
                Ok(())
            }
            Ok(done) => {
                println!("{}", done["message"].as_str().unwrap_or_default());
                Ok(())
            }
            Err(e) => {
                eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
                std::process::exit(1);
            }
        };
    }
    runtime()?.block_on(async {
        init_logging();
        let args = ballast_settings::parse_or_exit::<CoordArgs>();
        run_until_signal(args).await
    })?;
    Ok(())
}
