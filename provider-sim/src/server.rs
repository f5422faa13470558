//! The reference provider's gRPC service: each call runs against the [`Book`] under one lock,
//! and what it changed is made durable before the answer goes out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::provider::Reason;
use ballast_protocol::provider::refusal;
use ballast_protocol::providerpb::provider_server::{Provider, ProviderServer};
use ballast_protocol::providerpb::{
    AdoptClusterRequest, AdoptClusterResponse, ClaimDomainRequest, ClaimDomainResponse,
    ConfigureMachineRequest, CreateMachineRequest, DeleteMachineRequest, DescribeRequest,
    DescribeResponse, FencingToken, GetMachineRequest, ListMachinesRequest, ListMachinesResponse,
    MachineResponse, ReleaseMachineRequest,
};
use ballast_tls::identity::{AuthLayer, Policy, identity};
use ballast_tls::{Identity, Role, ServerTls};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::book::{Book, Refusal};
use crate::store::Store;

/// The service: the book, its store (none: not durable) and a simulated latency per call.
pub struct SimProvider {
    book: Mutex<Book>,
    store: Option<Store>,
    latency: Duration,
}

impl SimProvider {
    /// Serves `book` (already loaded from `store`, if any).
    pub fn new(book: Book, store: Option<Store>, latency: Duration) -> Arc<Self> {
        Arc::new(Self {
            book: Mutex::new(book),
            store,
            latency,
        })
    }

    /// Runs a mutating call and persists what it changed. A store that cannot write ends the
    /// process: a provider must not answer for a change it could not keep.
    async fn mutate<R, T>(
        &self,
        request: Request<R>,
        token: impl Fn(&R) -> Option<&FencingToken>,
        call: impl FnOnce(&mut Book, &R) -> Result<T, Refusal>,
    ) -> Result<T, Status> {
        // Under mutual TLS a shard acts only as itself: the token's shard id must be one its
        // certificate grants (admins may act as any shard, as the conformance suite does).
        if let Some(caller) = identity(&request)
            && let Some(token) = token(request.get_ref())
        {
            caller
                .check_shard(&token.shard_id)
                .map_err(Status::permission_denied)?;
        }
        let request = request.into_inner();
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let mut book = self.book.lock();
        let outcome = call(&mut book, &request);
        let changes = book.take_changes();
        if let Some(store) = &self.store
            && let Err(e) = store.save(&book, &changes)
        {
            tracing::error!(error = %e, "cannot persist a change; exiting");
            std::process::exit(70);
        }
        outcome.map_err(status)
    }
}

fn status(refused: Refusal) -> Status {
    let metadata: Vec<(&str, String)> = refused
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    refusal(refused.reason(), refused.message, &metadata)
}

#[tonic::async_trait]
impl Provider for SimProvider {
    async fn describe(
        &self,
        _: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        Ok(Response::new(
            self.book.lock().describe(self.store.is_some()),
        ))
    }

    async fn list_machines(
        &self,
        request: Request<ListMachinesRequest>,
    ) -> Result<Response<ListMachinesResponse>, Status> {
        self.book
            .lock()
            .list_machines(request.get_ref())
            .map(Response::new)
            .map_err(status)
    }

    async fn get_machine(
        &self,
        request: Request<GetMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        let id = request.into_inner().id;
        match self.book.lock().machine(&id) {
            Some(machine) => Ok(Response::new(MachineResponse {
                machine: Some(machine.clone()),
            })),
            None => Err(refusal(
                Reason::NotFound,
                format!("no machine {id}"),
                &[("machine", id.clone())],
            )),
        }
    }

    async fn create_machine(
        &self,
        request: Request<CreateMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        let machine = self
            .mutate(request, |r| r.token.as_ref(), |book, r| book.create(r))
            .await?;
        Ok(Response::new(MachineResponse {
            machine: Some(machine),
        }))
    }

    async fn configure_machine(
        &self,
        request: Request<ConfigureMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        let machine = self
            .mutate(request, |r| r.token.as_ref(), |book, r| book.configure(r))
            .await?;
        Ok(Response::new(MachineResponse {
            machine: Some(machine),
        }))
    }

    async fn release_machine(
        &self,
        request: Request<ReleaseMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        let machine = self
            .mutate(request, |r| r.token.as_ref(), |book, r| book.release(r))
            .await?;
        Ok(Response::new(MachineResponse {
            machine: Some(machine),
        }))
    }

    async fn delete_machine(
        &self,
        request: Request<DeleteMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        let machine = self
            .mutate(request, |r| r.token.as_ref(), |book, r| book.delete(r))
            .await?;
        Ok(Response::new(MachineResponse {
            machine: Some(machine),
        }))
    }

    async fn claim_domain(
        &self,
        request: Request<ClaimDomainRequest>,
    ) -> Result<Response<ClaimDomainResponse>, Status> {
        self.mutate(request, |r| r.token.as_ref(), |book, r| book.claim(r))
            .await?;
        Ok(Response::new(ClaimDomainResponse {}))
    }

    async fn adopt_cluster(
        &self,
        request: Request<AdoptClusterRequest>,
    ) -> Result<Response<AdoptClusterResponse>, Status> {
        let machines = self
            .mutate(
                request,
                |r| r.token.as_ref(),
                |book, r| book.adopt_cluster(r),
            )
            .await?;
        Ok(Response::new(AdoptClusterResponse { machines }))
    }
}

/// Who may call a provider under mutual TLS: any Ballast role reads; shards and admins act
/// (each shard only as itself, checked against the token in the handler).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProviderPolicy;

impl Policy for ProviderPolicy {
    fn check(&self, identity: &Identity, path: &str) -> Result<(), String> {
        if identity.roles.is_empty() {
            return Err("the certificate carries no Ballast role".into());
        }
        let read = matches!(
            path.rsplit('/').next(),
            Some("Describe" | "ListMachines" | "GetMachine")
        );
        let acts = identity.has(&Role::Admin)
            || identity.roles.iter().any(|r| matches!(r, Role::Shard(_)));
        if read || acts {
            Ok(())
        } else {
            Err("acting on machines needs role shard/<id> or admin".into())
        }
    }
}

/// Serves `provider` on `listener` (with mutual TLS when `tls` is given) until `shutdown`.
pub async fn serve(
    provider: Arc<SimProvider>,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder()
        .layer(
            tower::ServiceBuilder::new()
                .option_layer(tls.as_ref().map(|_| AuthLayer::new(ProviderPolicy))),
        )
        .add_service(ProviderServer::from_arc(provider));
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls.incoming(listener), shutdown)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        }
    }
}
