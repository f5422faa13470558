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
    Machine, MachineResponse, ReleaseMachineRequest,
};
use ballast_tls::identity::{AuthLayer, Policy, identity};
use ballast_tls::{Identity, Role, ServerTls};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::book::{Book, Breach, Refusal};
use crate::store::Store;

/// The service: the book, its store (none: not durable) and a simulated latency per call.
pub struct SimProvider {
    book: Mutex<Book>,
    store: Option<Store>,
    latency: Duration,
    /// The book's breach, for the ones the service commits (wrong answers, no answers).
    breach: Breach,
}

/// How long a call "never" answers under [`Breach::Hang`]: far past any caller's deadline.
const HANG: Duration = Duration::from_secs(24 * 3600);

impl SimProvider {
    /// Serves `book` (already loaded from `store`, if any).
    pub fn new(book: Book, store: Option<Store>, latency: Duration) -> Arc<Self> {
        let breach = book.breach();
        Arc::new(Self {
            book: Mutex::new(book),
            store,
            latency,
            breach,
        })
    }

    /// The answer to a create (`create`) or a configure of `machine` under the breach, if it
    /// breaks one: the book has done the call right, only the answer is wrong, as a provider
    /// with a bug in its answering layer would do.
    fn answer(&self, mut machine: Machine, create: bool) -> MachineResponse {
        match self.breach {
            Breach::WrongId => machine.id = format!("{}-wrong", machine.id),
            Breach::WrongDomain if create => machine.domain = WRONG_DOMAIN.to_string(),
            Breach::Garbage if create => machine = Machine::default(),
            _ => {}
        }
        MachineResponse {
            machine: Some(machine),
        }
    }

    /// Runs a mutating call, writes what it changed and answers once that is durable.
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
        let (outcome, written) = {
            let mut book = self.book.lock();
            let outcome = call(&mut book, &request);
            let changes = book.take_changes();
            let written = match &self.store {
                Some(store) => store.save(&book, &changes).unwrap_or_else(|e| fail(&e)),
                None => 0,
            };
            (outcome, written)
        };
        // Refusals too: a refusal may rest on a change another call has not yet made durable.
        self.durable_through(written).await;
        if self.breach == Breach::Hang {
            // Done and durable, never answered: as if every answer were lost on the way. The
            // caller gives up at its deadline, which drops this future.
            tokio::time::sleep(HANG).await;
        }
        outcome.map_err(status)
    }

    /// Waits until what was written up to `sequence` is on disk (nothing to wait for without
    /// a store).
    async fn durable_through(&self, sequence: u64) {
        if let Some(store) = &self.store
            && let Err(e) = store.durable_through(sequence).await
        {
            fail(&e);
        }
    }

    /// Runs a read against the book and answers once everything it may show is durable: a
    /// listing must not show a machine a crash could still take back.
    async fn read<T>(&self, call: impl FnOnce(&Book) -> Result<T, Status>) -> Result<T, Status> {
        let (answer, written) = {
            let book = self.book.lock();
            let written = self.store.as_ref().map_or(0, Store::written);
            (call(&book), written)
        };
        self.durable_through(written).await;
        answer
    }
}

/// A store that cannot write ends the process: a provider must not answer for a change it
/// could not keep.
fn fail(e: &crate::store::StoreError) -> ! {
    tracing::error!(error = %e, "cannot persist a change; exiting");
    std::process::exit(70);
}

/// Where [`Breach::WrongDomain`] says a created machine is.
pub const WRONG_DOMAIN: &str = "zone=elsewhere/rack=wrong";

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
        self.read(|book| book.list_machines(request.get_ref()).map_err(status))
            .await
            .map(Response::new)
    }

    async fn get_machine(
        &self,
        request: Request<GetMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        let id = request.into_inner().id;
        self.read(|book| match book.machine(&id) {
            Some(machine) => Ok(Response::new(MachineResponse {
                machine: Some(machine.clone()),
            })),
            None => Err(refusal(
                Reason::NotFound,
                format!("no machine {id}"),
                &[("machine", id.clone())],
            )),
        })
        .await
    }

    async fn create_machine(
        &self,
        request: Request<CreateMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        let machine = self
            .mutate(request, |r| r.token.as_ref(), |book, r| book.create(r))
            .await?;
        Ok(Response::new(self.answer(machine, true)))
    }

    async fn configure_machine(
        &self,
        request: Request<ConfigureMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        let machine = self
            .mutate(request, |r| r.token.as_ref(), |book, r| book.configure(r))
            .await?;
        if self.breach == Breach::LoseConfigureAnswers {
            // Done and durable; the answer is lost on the way.
            tokio::time::sleep(HANG).await;
        }
        Ok(Response::new(self.answer(machine, false)))
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

/// Calls one connection may have open at once (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`); a
/// caller's further calls wait on its side until one is answered. 32 still fills a group
/// commit for one caller at 32 in flight (as many creates/s as with no limit) and bounds what
/// 200 shards can park here to 6,400 calls (~45 MB).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// Serves `provider` on `listener` (with mutual TLS when `tls` is given) until `shutdown`.
pub async fn serve(
    provider: Arc<SimProvider>,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder()
        // Shards cancel calls whose deadline passed; under load many are reset before the
        // server accepted them, and hyper's default (20) answers that with a GOAWAY
        // (ENHANCE_YOUR_CALM) that fails every call on the connection. The limit guards
        // against rapid-reset floods from strangers; shards are known callers.
        .http2_max_pending_accept_reset_streams(Some(4096))
        // tonic's default admits every stream a client opens. A shard takes over its ~500
        // domains and ~100 clusters with one call each, all at once, and every admitted call
        // holds ~7 KB here (its h2 stream and buffered frames, hyper's task, tonic's codec,
        // the handler's future) until answered: 200 shards did that to 720 MB. With a limit,
        // HTTP/2 keeps the rest waiting in the caller, which holds them anyway, and each
        // connection's stream slabs (which never shrink) stay small.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Catalog;

    fn answered(breach: Breach, create: bool) -> Option<Machine> {
        let provider =
            SimProvider::new(Book::new(Catalog::default(), breach), None, Duration::ZERO);
        let machine = Machine {
            id: "m1".into(),
            domain: "zone=a".into(),
            ..Machine::default()
        };
        provider.answer(machine, create).machine
    }

    #[test]
    fn breaches_answer_wrong_and_the_rest_answer_the_book() {
        let plain = |breach, create| answered(breach, create).map(|m| (m.id, m.domain));
        let right = Some(("m1".to_string(), "zone=a".to_string()));
        assert_eq!(plain(Breach::None, true), right);
        assert_eq!(plain(Breach::Hang, true), right);
        assert_eq!(
            plain(Breach::WrongId, false),
            Some(("m1-wrong".into(), "zone=a".into()))
        );
        assert_eq!(
            plain(Breach::WrongDomain, true),
            Some(("m1".into(), WRONG_DOMAIN.into()))
        );
        assert_eq!(plain(Breach::WrongDomain, false), right);
        assert_eq!(answered(Breach::Garbage, true), Some(Machine::default()));
        assert_eq!(plain(Breach::Garbage, false), right);
    }
}
