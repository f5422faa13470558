//! Running `ballast-coord` as a process: logging, the allocator and the async runtime, and
//! running a replica until SIGINT or SIGTERM. (Its settings are [`crate::config`].)

use crate::config::CoordArgs;
use crate::node::{self, NodeError};

/// Installs the log subscriber used by replica processes (stderr, `RUST_LOG` filter).
pub fn init_logging() {
    ballast_telemetry::init_logging("info,openraft=warn,fjall=warn,lsm_tree=warn");
}

/// The runtime for processes that run a replica: allocator tuned first, then a multi-threaded
/// tokio runtime.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    ballast_telemetry::memory::limit_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Runs a replica until SIGINT or SIGTERM, then shuts it down cleanly.
pub async fn run_until_signal(args: CoordArgs) -> Result<(), NodeError> {
    let config = args.into_config()?;
    let mut running = node::start(config).await?;
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| NodeError::Runtime(format!("installing the SIGTERM handler: {e}")))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = terminate.recv() => tracing::info!("terminated; shutting down"),
        result = running.wait() => {
            return result.map_err(|e| NodeError::Runtime(format!("server stopped: {e}")));
        }
    }
    running.shutdown().await;
    Ok(())
}
