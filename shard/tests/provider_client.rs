//! The shard's provider client against providers that misbehave, on loopback: one that answers
//! about another machine, one that refuses without a reason, one that never answers. Each must
//! come back as an error the worker can act on (a breach of the contract, or an outage to back
//! off from) within the deadline — never as a machine the ledger would record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_protocol::providerpb::provider_server::{Provider as ProviderService, ProviderServer};
use ballast_protocol::providerpb::{
    AdoptClusterRequest, AdoptClusterResponse, ClaimDomainRequest, ClaimDomainResponse,
    ConfigureMachineRequest, CreateMachineRequest, DeleteMachineRequest, DescribeRequest,
    DescribeResponse, GetMachineRequest, ListMachinesRequest, ListMachinesResponse, Machine,
    MachineResponse, ReleaseMachineRequest,
};
use ballast_shard::provider::grpc::GrpcProvider;
use ballast_shard::provider::{Provider, ProviderError};
use tonic::{Request, Response, Status};

/// How the fake provider misbehaves.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Answers about a machine other than the one asked for, in another domain.
    WrongMachine,
    /// Refuses with a bare status, no reason of the contract.
    BareRefusal,
    /// Never answers.
    Hang,
}

struct Fake(Misbehaviour);

impl Fake {
    async fn answer(&self) -> Result<Response<MachineResponse>, Status> {
        match self.0 {
            Misbehaviour::WrongMachine => Ok(Response::new(MachineResponse {
                machine: Some(Machine {
                    id: "somebody-else".into(),
                    domain: "elsewhere".into(),
                    ..Default::default()
                }),
            })),
            Misbehaviour::BareRefusal => Err(Status::failed_precondition("no")),
            Misbehaviour::Hang => {
                std::future::pending::<()>().await;
                unreachable!()
            }
        }
    }
}

#[tonic::async_trait]
impl ProviderService for Fake {
    async fn describe(
        &self,
        _: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        Ok(Response::new(DescribeResponse::default()))
    }
    async fn list_machines(
        &self,
        _: Request<ListMachinesRequest>,
    ) -> Result<Response<ListMachinesResponse>, Status> {
        // Twice the machines asked for.
        Ok(Response::new(ListMachinesResponse {
            machines: vec![Machine::default(); 4],
            next_cursor: String::new(),
        }))
    }
    async fn get_machine(
        &self,
        _: Request<GetMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        self.answer().await
    }
    async fn create_machine(
        &self,
        _: Request<CreateMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        self.answer().await
    }
    async fn configure_machine(
        &self,
        _: Request<ConfigureMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        self.answer().await
    }
    async fn release_machine(
        &self,
        _: Request<ReleaseMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        self.answer().await
    }
    async fn delete_machine(
        &self,
        _: Request<DeleteMachineRequest>,
    ) -> Result<Response<MachineResponse>, Status> {
        self.answer().await
    }
    async fn claim_domain(
        &self,
        _: Request<ClaimDomainRequest>,
    ) -> Result<Response<ClaimDomainResponse>, Status> {
        Ok(Response::new(ClaimDomainResponse {}))
    }
    async fn adopt_cluster(
        &self,
        _: Request<AdoptClusterRequest>,
    ) -> Result<Response<AdoptClusterResponse>, Status> {
        Ok(Response::new(AdoptClusterResponse {
            machines: vec![Machine {
                id: "m1".into(),
                cluster: "another-cluster".into(),
                owner_shard: "s1".into(),
                ..Default::default()
            }],
        }))
    }
}

async fn serve(misbehaviour: Misbehaviour) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProviderServer::from_arc(Arc::new(Fake(misbehaviour))))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    address
}

fn create() -> CreateMachineRequest {
    CreateMachineRequest {
        idempotency_key: "create/m1".into(),
        token: None,
        machine_id: "m1".into(),
        domain: "d1".into(),
        shape: "small".into(),
        capacity_type: String::new(),
    }
}

#[tokio::test]
async fn answers_about_other_machines_are_breaches_of_the_contract() {
    let address = serve(Misbehaviour::WrongMachine).await;
    let provider = GrpcProvider::new(&format!("grpc://{address}"), None, Duration::from_secs(5))
        .expect("a valid endpoint");
    let error = provider
        .create(create())
        .await
        .expect_err("a wrong machine");
    assert!(
        matches!(&error, ProviderError::Contract(m) if m.contains("somebody-else")),
        "{error:?}"
    );
    assert!(!error.retryable());
    let error = provider
        .adopt_cluster(AdoptClusterRequest {
            idempotency_key: "adopt".into(),
            token: Some(ballast_shard::provider::token(
                &ballast_shard::provider::Actor {
                    shard: "s1".into(),
                    epoch: 1,
                    sequence: 1,
                },
                &ballast_shard::provider::Grants {
                    cluster: Some(("c1".into(), 1)),
                    ..Default::default()
                },
            )),
        })
        .await
        .expect_err("a machine of another cluster");
    assert!(
        matches!(&error, ProviderError::Contract(m) if m.contains("another-cluster")),
        "{error:?}"
    );
    let error = provider
        .list(ListMachinesRequest {
            limit: 2,
            ..Default::default()
        })
        .await
        .expect_err("a page above the limit");
    assert!(matches!(error, ProviderError::Contract(_)), "{error:?}");
}

#[tokio::test]
async fn refusals_without_a_reason_are_breaches_of_the_contract() {
    let address = serve(Misbehaviour::BareRefusal).await;
    let provider = GrpcProvider::new(&format!("grpc://{address}"), None, Duration::from_secs(5))
        .expect("a valid endpoint");
    let error = provider.create(create()).await.expect_err("a bare refusal");
    assert!(matches!(error, ProviderError::Contract(_)), "{error:?}");
}

#[tokio::test]
async fn a_provider_that_hangs_is_an_outage_within_the_deadline() {
    let address = serve(Misbehaviour::Hang).await;
    let provider = GrpcProvider::new(
        &format!("grpc://{address}"),
        None,
        Duration::from_millis(300),
    )
    .expect("a valid endpoint");
    let started = Instant::now();
    let error = provider.create(create()).await.expect_err("no answer");
    assert!(error.retryable(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the call was bounded by its deadline: took {:?}",
        started.elapsed()
    );
}

#[test]
fn bad_endpoints_are_refused_with_the_reason() {
    for (endpoint, expected) in [
        ("ftp://h:1", "expected grpc://"),
        ("grpc://h", "HOST:PORT"),
        ("grpc://h:0", "HOST:PORT"),
        ("https://h:1", "--tls-*"),
    ] {
        let error = GrpcProvider::new(endpoint, None, Duration::from_secs(1))
            .err()
            .unwrap_or_else(|| panic!("{endpoint} accepted"));
        assert!(error.to_string().contains(expected), "{endpoint}: {error}");
    }
}
