//! The reference provider (`ballast-provider-sim`): a simulated capacity provider served over
//! Ballast's provider contract (`protocol/proto/ballast/provider/v1/provider.proto`). It keeps
//! the contract as a real provider must — idempotent by key, fenced by domain and quota grants
//! and by shard epoch, its machines and fences on disk — so shards, the simulator, the demo and
//! the conformance suite (`ballast-provider-check`) run against a process, not a mock.
//!
//! - [`book`]: the rules, as plain data with no I/O;
//! - [`store`]: the data dir (fjall): a batch per call, group-committed (calls running
//!   together share an fsync, none answered before its batch is on disk);
//! - [`server`]: the gRPC service;
//! - [`config`]: the binary's flags.

pub mod book;
pub mod config;
pub mod server;
pub mod store;

use std::time::Duration;

use anyhow::Context;
use ballast_tls::ServerTls;

use crate::book::Book;
use crate::config::ProviderArgs;
use crate::server::{SimProvider, serve};
use crate::store::Store;

/// Logs to stderr at `info` (`RUST_LOG` overrides), with the storage engine's chatter quieted.
pub fn init_logging() {
    ballast_telemetry::init_logging("info,fjall=warn,lsm_tree=warn");
}

/// Runs the provider `args` describe until SIGTERM or Ctrl-C: loads its data dir, binds, prints
/// `listening on ADDR` on stdout (tests and scripts read the chosen port from it) and serves.
pub async fn run_until_signal(args: ProviderArgs) -> anyhow::Result<()> {
    let mut book = Book::new(args.catalog(), args.breach());
    let store = match &args.data_dir {
        Some(dir) => {
            let store = Store::open(dir, args.sync)?;
            store.load(&mut book)?;
            Some(store)
        }
        None => None,
    };
    let tls = match args.tls.files()? {
        Some(files) => Some(ServerTls::grpc(&files)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    println!("listening on {address}");
    tracing::info!(
        %address,
        name = %args.name,
        durable = store.is_some(),
        machines = book.machine_count(),
        "provider serving {}",
        ballast_protocol::provider::CONTRACT
    );
    let provider = SimProvider::new(book, store, Duration::from_millis(args.latency_ms));
    // Ends with the runtime, when the process does.
    tokio::spawn(ballast_telemetry::memory::trim_loop(std::future::pending()));
    let shutdown = async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    };
    serve(provider, listener, tls, shutdown).await?;
    Ok(())
}
