//! Archive exports: where they go, one at a time, followed by retention, and how they went.
//! The archive is the fleet state encoded as in Raft snapshots; the leader takes it after a
//! linearizable barrier so it holds every acknowledged write ([`crate::leader::dr`], which
//! also runs the schedule).

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use ballast_dr::{ArchiveInput, Destination, Key, NoProgress, Retention};
use ballast_protocol::pb;

use crate::error::ReplicaError;

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
        self.status.lock().clone()
    }

    /// Exports the state `take` gives (the archive's input and the header to answer with) to
    /// `to` (or the configured destination) and applies the retention policy there. `take`
    /// runs after the destination is checked, one export at a time.
    pub async fn export<F, Fut>(
        &self,
        to: Option<&str>,
        take: F,
    ) -> Result<pb::ExportResponse, ReplicaError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(ArchiveInput, pb::ResponseHeader), ReplicaError>>,
    {
        let _one_at_a_time = self.busy.lock().await;
        let started = Instant::now();
        let result = async {
            let destination = self.destination(to)?;
            let (input, header) = take().await?;
            self.write(&destination, input, header).await
        }
        .await;
        let mut status = self.status.lock();
        match &result {
            Ok(done) => {
                status.last_success_unix_ms = ballast_protocol::clock::unix_ms();
                status.last_duration_ms = started.elapsed().as_millis() as u64;
                status.last_size_bytes = done.size_bytes;
                status.last_archive = done.archive_url.clone();
                status.exports_total += 1;
                status.last_error.clear();
            }
            Err(e) => {
                status.failures_total += 1;
                status.last_error = e.to_string();
            }
        }
        result
    }

    /// Where an export goes: `to`, or the configured destination.
    fn destination(&self, to: Option<&str>) -> Result<Destination, ReplicaError> {
        let url = match to.filter(|t| !t.is_empty()) {
            Some(url) => url.to_string(),
            None => self.config.destination.clone().ok_or_else(|| {
                ReplicaError::precondition(
                    "no destination: pass one (--to) or start the replica with --dr-destination",
                )
            })?,
        };
        Destination::parse(&url).map_err(|e| ReplicaError::invalid(e.to_string()))
    }

    /// Writes one archive of `input` to `destination`, then applies retention there.
    async fn write(
        &self,
        destination: &Destination,
        input: ArchiveInput,
        header: pb::ResponseHeader,
    ) -> Result<pb::ExportResponse, ReplicaError> {
        let started = Instant::now();
        let manifest =
            ballast_dr::export(destination, &input, self.config.key.as_ref(), &NoProgress)
                .await
                .map_err(|e| ReplicaError::retry(e.to_string()))?;
        let pruned = ballast_dr::retain(destination, self.config.retention)
            .await
            .map_err(|e| {
                ReplicaError::retry(format!(
                    "archive {} written; retention failed: {e}",
                    manifest.name
                ))
            })?;
        tracing::info!(
            archive = %destination.archive_url(&manifest.name), revision = manifest.revision,
            size = manifest.size, pruned = pruned.len(), "exported an archive"
        );
        Ok(pb::ExportResponse {
            header: Some(header),
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
