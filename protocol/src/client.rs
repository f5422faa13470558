//! The leader-aware client: the only way Ballast binaries talk to the coordinator.
//!
//! It holds one lazily connected channel per endpoint, prefers the endpoint that last named
//! itself (or was named) leader, fails over across endpoints on transport errors, and retries
//! writes with the same request id so that a write retried after a failover applies once.
//! The first answer pins the cluster id; from then on every request carries it and a replica
//! of a different cluster refuses the request instead of silently serving it.

use parking_lot::Mutex;
use std::future::Future;
use std::sync::Arc;

use ballast_tls::ClientTls;
use ballast_tls::client::lazy_channel;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::pb;
use crate::pb::assignments_client::AssignmentsClient;
use crate::pb::cluster_client::ClusterClient;
use crate::pb::fleet_client::FleetClient;
use crate::{CLUSTER_ID_HEADER, LEADER_ADDRESS_HEADER};

/// Largest message the client sends or accepts (bulk commands, large listings).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Settings of a [`BallastClient`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Coordinator client addresses (`host:port` or `http://host:port`).
    pub endpoints: Vec<String>,
    /// Expected cluster id; when `None` the first answer pins it.
    pub cluster_id: Option<String>,
    /// Deadline of one attempt against one endpoint.
    pub attempt_timeout: Duration,
    /// How long a call keeps retrying retryable failures across endpoints.
    pub retry_budget: Duration,
    /// Mutual TLS to the coordinators (`None`: plain connections).
    pub tls: Option<Arc<ClientTls>>,
}

impl ClientConfig {
    /// Defaults suited to operators and services: 5 s per attempt, 15 s of retries.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            cluster_id: None,
            attempt_timeout: Duration::from_secs(5),
            retry_budget: Duration::from_secs(15),
            tls: None,
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration cannot work (no endpoints, unparsable address).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The coordinator answered with an error that retrying cannot fix.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rejected(Status),
    /// No endpoint gave an answer before the retry budget ran out.
    #[error("no coordinator endpoint answered within {budget:?} ({endpoints}); last error: {last}")]
    Unavailable {
        /// Retry budget that was spent.
        budget: Duration,
        /// The endpoints tried.
        endpoints: String,
        /// The last failure seen.
        last: String,
    },
}

impl ClientError {
    /// The gRPC status code behind this error (`Unavailable` when nothing answered).
    pub fn code(&self) -> Code {
        match self {
            ClientError::Config(_) => Code::InvalidArgument,
            ClientError::Rejected(status) => status.code(),
            ClientError::Unavailable { .. } => Code::Unavailable,
        }
    }
}

/// Lower-case snake name of a gRPC code, as operators see it in etcd and grpcurl output.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Codes after which another attempt (possibly on another endpoint) can succeed. Writes are
/// safe to retry because they carry a request id the state machine deduplicates.
fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
    ) || (status.code() == Code::Unknown && status.message().contains("transport"))
        || is_broken_connection(status)
}

/// The connection broke below gRPC: a TLS port reached in plain text (or the reverse) ends
/// in an HTTP/2 protocol error rather than an answer, so it counts as "did not answer".
fn is_broken_connection(status: &Status) -> bool {
    status.code() == Code::Internal && status.message().contains("h2 protocol error")
}

/// Normalises `host:port` to a URI tonic can dial.
pub fn endpoint_uri(address: &str) -> String {
    if address.starts_with("http://") || address.starts_with("https://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// Strips the scheme so addresses compare equal however they were written.
fn bare_address(address: &str) -> &str {
    address
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
}

/// A client for a Ballast coordinator cluster; cheap to share behind an `Arc`.
pub struct BallastClient {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    preferred: AtomicUsize,
    cluster_id: Mutex<Option<String>>,
    config: ClientConfig,
}

impl BallastClient {
    /// Builds a client; connections are opened lazily on first use.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::Config("no endpoints given".into()));
        }
        let mut channels = Vec::with_capacity(config.endpoints.len());
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for raw in &config.endpoints {
            let raw = raw.trim();
            if raw.is_empty() {
                return Err(ClientError::Config("empty endpoint in the list".into()));
            }
            let endpoint = Endpoint::from_shared(endpoint_uri(raw))
                .map_err(|e| ClientError::Config(format!("endpoint {raw:?}: {e}")))?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .timeout(config.attempt_timeout);
            channels.push(lazy_channel(endpoint, config.tls.as_ref()));
            endpoints.push(bare_address(raw).to_string());
        }
        Ok(Self {
            endpoints,
            channels,
            preferred: AtomicUsize::new(0),
            cluster_id: Mutex::new(config.cluster_id.clone()),
            config,
        })
    }

    /// Convenience for `BallastClient::new(ClientConfig::new(endpoints))`.
    pub fn connect(endpoints: &[String]) -> Result<Self, ClientError> {
        Self::new(ClientConfig::new(endpoints.to_vec()))
    }

    /// The cluster id this client is pinned to, once known.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.lock().clone()
    }

    /// Applies a fleet command. A fresh request id is drawn once and reused by every retry.
    pub async fn write(&self, command: pb::Command) -> Result<pb::WriteResponse, ClientError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        self.write_with_id(request_id, command).await
    }

    /// Applies a fleet command under a caller-chosen request id (for callers that persist ids
    /// across their own restarts).
    pub async fn write_with_id(
        &self,
        request_id: String,
        command: pb::Command,
    ) -> Result<pb::WriteResponse, ClientError> {
        let message = pb::WriteRequest {
            request_id,
            command: Some(command),
        };
        self.fleet(move |mut c, req| {
            let message = message.clone();
            async move { c.write(req.wrap(message)).await }
        })
        .await
    }

    /// The cluster's current fleet revision, read linearizably (through the smallest table).
    pub async fn revision(&self) -> Result<u64, ClientError> {
        let answer = self
            .fleet(|mut c, req| async move {
                c.list_providers(req.wrap(pb::ListProvidersRequest { options: None }))
                    .await
            })
            .await?;
        Ok(answer.header.map(|h| h.revision).unwrap_or(0))
    }

    /// Runs one call on the `Fleet` service with failover and retries.
    pub async fn fleet<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: Fn(FleetClient<Channel>, RequestFactory) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(|channel, factory| {
            op(
                FleetClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                factory,
            )
        })
        .await
    }

    /// Runs one call on the `Assignments` service (shard heartbeats and watches) with failover
    /// and retries.
    pub async fn assignments<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: Fn(AssignmentsClient<Channel>, RequestFactory) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(|channel, factory| {
            op(
                AssignmentsClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                factory,
            )
        })
        .await
    }

    /// Opens a shard's assignment watch after `from_revision` (of restore epoch
    /// `restore_epoch`) on whichever replica answers.
    pub async fn watch_assignments(
        &self,
        shard_id: &str,
        from_revision: u64,
        restore_epoch: u64,
    ) -> Result<tonic::Streaming<pb::AssignmentUpdate>, ClientError> {
        self.assignments(|mut c, req| {
            let request = pb::WatchAssignmentsRequest {
                shard_id: shard_id.to_string(),
                from_revision,
                restore_epoch,
            };
            async move { c.watch(req.wrap(request)).await }
        })
        .await
    }

    /// Runs one call on the `Cluster` service with failover and retries.
    pub async fn cluster<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: Fn(ClusterClient<Channel>, RequestFactory) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(|channel, factory| {
            op(
                ClusterClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                factory,
            )
        })
        .await
    }

    /// Runs `op` against the preferred endpoint, then the others, until it succeeds, fails with
    /// a non-retryable status, or the retry budget is spent.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: Fn(Channel, RequestFactory) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let started = tokio::time::Instant::now();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut attempt: usize = 0;
        let mut last_error: String;
        loop {
            let index = (first + attempt) % self.endpoints.len();
            let factory = RequestFactory {
                cluster_id: self.cluster_id(),
            };
            match op(self.channels[index].clone(), factory).await {
                Ok(response) => {
                    self.learn(index, response.metadata())?;
                    return Ok(response.into_inner());
                }
                Err(status) if is_retryable(&status) => {
                    tracing::debug!(endpoint = %self.endpoints[index], %status, "retrying on another endpoint");
                    // Off a failing endpoint for the next call too: one that stopped answering
                    // (a paused leader keeps its socket) costs a whole attempt's deadline, and a
                    // budget shorter than that would otherwise send every call back to it.
                    let _ = self.preferred.compare_exchange(
                        index,
                        (index + 1) % self.endpoints.len(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    last_error = format!(
                        "{}: {}: {}",
                        self.endpoints[index],
                        code_name(status.code()),
                        status.message()
                    );
                    if is_broken_connection(&status) {
                        last_error.push_str(match self.config.tls {
                            None => " (does the cluster use TLS? pass --tls-ca, --tls-cert and --tls-key)",
                            Some(_) => " (does the cluster serve plain text?)",
                        });
                    }
                }
                Err(status) => return Err(ClientError::Rejected(status)),
            }
            attempt += 1;
            if started.elapsed() >= self.config.retry_budget {
                return Err(ClientError::Unavailable {
                    budget: self.config.retry_budget,
                    endpoints: self.endpoints.join(","),
                    last: last_error,
                });
            }
            // A full pass over every endpoint failed: an election is usually under way. Pause
            // briefly rather than spin; a short fixed pause keeps failover latency low while
            // bounding the load to one request per endpoint every 25 ms.
            if attempt.is_multiple_of(self.endpoints.len()) {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }

    /// Pins the cluster id from the first answer and steers future calls to the leader.
    fn learn(&self, index: usize, metadata: &MetadataMap) -> Result<(), ClientError> {
        if let Some(answered) = metadata
            .get(CLUSTER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            let mut pinned = self.cluster_id.lock();
            match pinned.as_deref() {
                None => *pinned = Some(answered.to_string()),
                Some(expected) if expected != answered => {
                    return Err(ClientError::Rejected(Status::failed_precondition(format!(
                        "endpoint {} belongs to cluster {answered}, not {expected}",
                        self.endpoints[index]
                    ))));
                }
                Some(_) => {}
            }
        }
        let leader = metadata
            .get(LEADER_ADDRESS_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(bare_address);
        let next = leader
            .and_then(|leader| self.endpoints.iter().position(|e| e == leader))
            .unwrap_or(index);
        self.preferred.store(next, Ordering::Relaxed);
        Ok(())
    }
}

/// Wraps request messages with the metadata every Ballast request carries.
#[derive(Clone, Debug)]
pub struct RequestFactory {
    cluster_id: Option<String>,
}

impl RequestFactory {
    /// A request carrying `message` and the pinned cluster id, if any.
    pub fn wrap<M>(&self, message: M) -> Request<M> {
        let mut request = Request::new(message);
        if let Some(id) = &self.cluster_id
            && let Ok(value) = MetadataValue::try_from(id.as_str())
        {
            request.metadata_mut().insert(CLUSTER_ID_HEADER, value);
        }
        request
    }
}
