//! Archive exports from the leader: on demand (`Cluster.Export`, `ballastctl dr export`) and on
//! a schedule, followed by retention. The archive is the fleet state encoded as in Raft
//! snapshots, taken after a linearizable barrier so it holds every acknowledged write.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ballast_dr::{ArchiveInput, Destination, Key, NoProgress, Retention};
use ballast_protocol::pb;
use tokio::sync::watch;
use tonic::Status;

use crate::replica::Replica;

/// Payload description written into manifests.
pub const PAYLOAD: &str = "ballast-fleet-state/postcard-v1";

/// DR settings of a replica.
#[derive(Clone, Debug, Default)]
pub struct DrConfig {
    /// Where scheduled exports (and exports without `--to`) go.
    pub destination: Option<String>,
    /// Scheduled export interval (`None`: on demand only).
    pub interval: Option<Duration>,
    /// What to keep after each export.
    pub retention: Retention,
    /// Encrypt archives with this key.
    pub key: Option<Key>,
}

/// Runs exports and remembers how they went.
pub struct DrExporter {
    config: DrConfig,
    status: Mutex<pb::DrStatus>,
    /// One export at a time.
    busy: tokio::sync::Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl DrExporter {
    /// An exporter with `config`.
    pub fn new(config: DrConfig) -> DrExporter {
        let status = pb::DrStatus {
            destination: config.destination.clone().unwrap_or_default(),
            interval_seconds: config.interval.map(|i| i.as_secs()).unwrap_or(0),
            encrypted: config.key.is_some(),
            ..Default::default()
        };
        DrExporter {
            config,
            status: Mutex::new(status),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Export figures for status pages and metrics.
    pub fn status(&self) -> pb::DrStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Exports the current state to `to` (or the configured destination) and applies the
    /// retention policy there. Must run on the leader.
    pub async fn export(
        &self,
        replica: &Replica,
        to: Option<&str>,
    ) -> Result<pb::ExportResponse, Status> {
        let _one_at_a_time = self.busy.lock().await;
        let started = Instant::now();
        let result = self.export_once(replica, to).await;
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(done) => {
                status.last_success_unix_ms = now_ms();
                status.last_duration_ms = started.elapsed().as_millis() as u64;
                status.last_size_bytes = done.size_bytes;
                status.last_archive = done.archive_url.clone();
                status.exports_total += 1;
                status.last_error.clear();
            }
            Err(e) => {
                status.failures_total += 1;
                status.last_error = e.message().to_string();
            }
        }
        result
    }

    async fn export_once(
        &self,
        replica: &Replica,
        to: Option<&str>,
    ) -> Result<pb::ExportResponse, Status> {
        let url = match to.filter(|t| !t.is_empty()) {
            Some(url) => url.to_string(),
            None => self.config.destination.clone().ok_or_else(|| {
                Status::failed_precondition(
                    "no destination: pass one (--to) or start the replica with --dr-destination",
                )
            })?,
        };
        let destination =
            Destination::parse(&url).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Every write acknowledged before this call is applied here before the state is taken.
        replica.linearize().await?;
        let input = {
            let fleet = replica.state.fleet();
            let applied = replica.state.applied_log_id();
            ArchiveInput {
                cluster_id: replica.cluster_id.clone(),
                term: applied.map(|l| l.leader_id.term).unwrap_or(0),
                log_index: applied.map(|l| l.index).unwrap_or(0),
                revision: fleet.revision(),
                restore_epoch: fleet.restore_epoch(),
                payload: PAYLOAD.to_string(),
                data: fleet.encode(),
            }
        };
        let started = Instant::now();
        let manifest =
            ballast_dr::export(&destination, &input, self.config.key.as_ref(), &NoProgress)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        let pruned = ballast_dr::retain(&destination, self.config.retention)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "archive {} written; retention failed: {e}",
                    manifest.name
                ))
            })?;
        tracing::info!(
            archive = %destination.archive_url(&manifest.name), revision = manifest.revision,
            size = manifest.size, pruned = pruned.len(), "exported an archive"
        );
        Ok(pb::ExportResponse {
            header: Some(replica.header()),
            archive_url: destination.archive_url(&manifest.name),
            name: manifest.name,
            revision: manifest.revision,
            size_bytes: manifest.size,
            checksum: manifest.checksum,
            encrypted: self.config.key.is_some(),
            duration_ms: started.elapsed().as_millis() as u64,
            pruned,
        })
    }

    /// The export interval, if scheduled exports are on.
    pub fn interval(&self) -> Option<Duration> {
        self.config
            .interval
            .filter(|_| self.config.destination.is_some())
    }
}

/// Exports on the configured schedule while this replica leads.
pub async fn export_loop(replica: std::sync::Arc<Replica>, mut stopped: watch::Receiver<bool>) {
    let Some(interval) = replica.dr.interval() else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        if replica.leader().map(|(id, _)| id) != Some(replica.id) {
            continue;
        }
        if let Err(e) = replica.dr.export(&replica, None).await {
            tracing::warn!(error = %e.message(), "scheduled archive export failed");
        }
    }
}
