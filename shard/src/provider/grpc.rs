//! A provider over gRPC (`--provider grpc://HOST:PORT`, or `https://` for mutual TLS with the
//! shard's certificate): every call bounded by a deadline, every answer checked against the
//! call it answers, so a provider that hangs or talks nonsense costs the shard a retry, never
//! its ledger.

use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::providerpb::provider_client::ProviderClient;
use ballast_protocol::providerpb::{
    AdoptClusterRequest, ClaimDomainRequest, ConfigureMachineRequest, CreateMachineRequest,
    DeleteMachineRequest, DescribeRequest, DescribeResponse, GetMachineRequest,
    ListMachinesRequest, ListMachinesResponse, Machine, MachineResponse, ReleaseMachineRequest,
};
use ballast_tls::ClientTls;
use tonic::transport::{Channel, Endpoint};

use super::{Provider, ProviderError};

/// A provider reached over gRPC.
pub struct GrpcProvider {
    client: ProviderClient<Channel>,
    timeout: Duration,
    endpoint: String,
}

/// Why a provider address is unusable.
#[derive(Debug, thiserror::Error)]
#[error("provider {endpoint:?}: {reason}")]
pub struct EndpointError {
    /// As given.
    pub endpoint: String,
    /// What is wrong.
    pub reason: String,
}

impl GrpcProvider {
    /// A provider at `endpoint` (`grpc://` or `http://` plain, `https://` with `tls`), each call
    /// bounded by `timeout`. Connects lazily: an unreachable provider shows as failed calls.
    pub fn new(
        endpoint: &str,
        tls: Option<&Arc<ClientTls>>,
        timeout: Duration,
    ) -> Result<GrpcProvider, EndpointError> {
        let bad = |reason: &str| EndpointError {
            endpoint: endpoint.to_string(),
            reason: reason.to_string(),
        };
        let (rest, secure) = if let Some(rest) = endpoint.strip_prefix("https://") {
            (rest, true)
        } else if let Some(rest) = endpoint
            .strip_prefix("grpc://")
            .or_else(|| endpoint.strip_prefix("http://"))
        {
            (rest, false)
        } else {
            return Err(bad(
                "expected grpc://HOST:PORT, http://HOST:PORT or https://HOST:PORT",
            ));
        };
        if secure && tls.is_none() {
            return Err(bad("an https:// provider needs the --tls-* flags"));
        }
        if !secure && tls.is_some() {
            return Err(bad(
                "with --tls-* on, providers are reached over mutual TLS: use https://",
            ));
        }
        let rest = rest.trim_end_matches('/');
        match rest.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty()
                    && !rest.contains('/')
                    && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => return Err(bad("expected HOST:PORT with a port from 1 to 65535")),
        }
        // Always an http:// URI: with TLS the connector (`ballast_tls`) makes the TLS session
        // itself; tonic given https:// wants its own TLS and refuses to connect ("Connecting
        // to HTTPS without TLS enabled").
        let uri = Endpoint::from_shared(format!("http://{rest}"))
            .map_err(|e| bad(&e.to_string()))?
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        let channel = ballast_tls::client::lazy_channel(uri, tls);
        Ok(GrpcProvider {
            client: ProviderClient::new(channel),
            timeout,
            endpoint: endpoint.to_string(),
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Runs a call under the deadline (the client's deadline covers the server; this covers a
    /// connection that never answers at all). A call that ran out its deadline is
    /// [`ProviderError::TimedOut`], whichever side ended it.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ProviderError> {
        let started = std::time::Instant::now();
        let timed_out = || {
            ProviderError::TimedOut(format!(
                "{} did not answer within {:?}",
                self.endpoint, self.timeout
            ))
        };
        match tokio::time::timeout(self.timeout + Duration::from_millis(500), call).await {
            Ok(Ok(answer)) => Ok(answer.into_inner()),
            // tonic ends a call whose deadline passed as `Cancelled` ("Timeout expired"), the
            // same code as a call cancelled for other reasons: the clock tells them apart.
            Ok(Err(status))
                if status.code() == tonic::Code::Cancelled && started.elapsed() >= self.timeout =>
            {
                Err(timed_out())
            }
            Ok(Err(status)) => Err(ProviderError::from_status(&status)),
            Err(_) => Err(timed_out()),
        }
    }

    /// The machine of a one-machine answer, which must be the one asked for.
    fn machine(answer: MachineResponse, asked: &str) -> Result<Machine, ProviderError> {
        let machine = answer.machine.ok_or_else(|| {
            ProviderError::Contract(format!("the answer for machine {asked} holds no machine"))
        })?;
        if machine.id != asked {
            return Err(ProviderError::Contract(format!(
                "asked about machine {asked}, the answer is about {:?}",
                machine.id
            )));
        }
        Ok(machine)
    }
}

#[tonic::async_trait]
impl Provider for GrpcProvider {
    async fn describe(&self) -> Result<DescribeResponse, ProviderError> {
        let mut client = self.client.clone();
        self.bounded(client.describe(self.request(DescribeRequest {})))
            .await
    }

    async fn list(
        &self,
        request: ListMachinesRequest,
    ) -> Result<ListMachinesResponse, ProviderError> {
        let mut client = self.client.clone();
        let limit = request.limit;
        let page = self
            .bounded(client.list_machines(self.request(request)))
            .await?;
        if limit > 0 && page.machines.len() > limit as usize {
            return Err(ProviderError::Contract(format!(
                "asked for at most {limit} machines, got {}",
                page.machines.len()
            )));
        }
        Ok(page)
    }

    async fn get(&self, id: &str) -> Result<Machine, ProviderError> {
        let mut client = self.client.clone();
        let answer = self
            .bounded(client.get_machine(self.request(GetMachineRequest { id: id.to_string() })))
            .await?;
        Self::machine(answer, id)
    }

    async fn create(&self, request: CreateMachineRequest) -> Result<Machine, ProviderError> {
        let mut client = self.client.clone();
        let (asked, domain) = (request.machine_id.clone(), request.domain.clone());
        let answer = self
            .bounded(client.create_machine(self.request(request)))
            .await?;
        let machine = Self::machine(answer, &asked)?;
        if machine.domain != domain {
            return Err(ProviderError::Contract(format!(
                "machine {asked} was asked for in domain {domain}, the answer puts it in {:?}",
                machine.domain
            )));
        }
        Ok(machine)
    }

    async fn configure(&self, request: ConfigureMachineRequest) -> Result<Machine, ProviderError> {
        let mut client = self.client.clone();
        let asked = request.machine_id.clone();
        let answer = self
            .bounded(client.configure_machine(self.request(request)))
            .await?;
        Self::machine(answer, &asked)
    }

    async fn release(&self, request: ReleaseMachineRequest) -> Result<Machine, ProviderError> {
        let mut client = self.client.clone();
        let asked = request.machine_id.clone();
        let answer = self
            .bounded(client.release_machine(self.request(request)))
            .await?;
        Self::machine(answer, &asked)
    }

    async fn delete(&self, request: DeleteMachineRequest) -> Result<Machine, ProviderError> {
        let mut client = self.client.clone();
        let asked = request.machine_id.clone();
        let answer = self
            .bounded(client.delete_machine(self.request(request)))
            .await?;
        Self::machine(answer, &asked)
    }

    async fn claim(&self, request: ClaimDomainRequest) -> Result<(), ProviderError> {
        let mut client = self.client.clone();
        self.bounded(client.claim_domain(self.request(request)))
            .await?;
        Ok(())
    }

    async fn adopt_cluster(
        &self,
        request: AdoptClusterRequest,
    ) -> Result<Vec<Machine>, ProviderError> {
        let mut client = self.client.clone();
        let (shard, cluster) = request
            .token
            .as_ref()
            .map(|t| {
                let cluster = t.cluster.as_ref().map(|c| c.cluster.clone());
                (t.shard_id.clone(), cluster.unwrap_or_default())
            })
            .unwrap_or_default();
        let answer = self
            .bounded(client.adopt_cluster(self.request(request)))
            .await?;
        if let Some(stranger) = answer
            .machines
            .iter()
            .find(|m| m.cluster != cluster || m.owner_shard != shard)
        {
            return Err(ProviderError::Contract(format!(
                "adopting cluster {cluster} answered machine {} serving {:?} owned by {:?}",
                stranger.id, stranger.cluster, stranger.owner_shard
            )));
        }
        Ok(answer.machines)
    }
}
