//! The simulated provider built into the shard (`--provider sim`, the default): the reference
//! provider's rules ([`ballast_provider_sim::book::Book`]) run in this process, plus a
//! configurable latency and rate of transient failures. It serves this shard alone and keeps
//! its book in memory (it says `durable: false`): it cannot fence one shard against another or
//! hand machines over, which is what a provider process shared by the shards
//! (`ballast-provider-sim`, `--provider grpc://...`) is for.

use std::time::Duration;

use ballast_protocol::provider::Reason;
use ballast_protocol::providerpb::{
    AdoptClusterRequest, ClaimDomainRequest, ConfigureMachineRequest, CreateMachineRequest,
    DeleteMachineRequest, DescribeResponse, ListMachinesRequest, ListMachinesResponse, Machine,
    ReleaseMachineRequest, Resources,
};
use ballast_provider_sim::book::{Book, Breach, Catalog, Refusal};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Provider, ProviderError};

/// Settings of the simulated provider.
#[derive(Clone, Debug)]
pub struct SimulatedConfig {
    /// Delay of every call.
    pub latency: Duration,
    /// Probability (0..=1) that a call fails before acting (`unavailable`, retryable).
    pub failure_rate: f64,
    /// Seed, for reproducible runs.
    pub seed: u64,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            failure_rate: 0.0,
            seed: 1,
        }
    }
}

/// Answers remembered per shard-local provider: a shard retries a call within seconds, and a
/// fleet simulation runs hundreds of these in one machine.
const REMEMBERED_ANSWERS: usize = 10_000;

/// The shapes the simulation offers (the fleet simulator's demand asks for `standard`).
fn catalog() -> Catalog {
    let shape = |cpu_millis, memory_mib, gpus, price| {
        (
            Resources {
                cpu_millis,
                memory_mib,
                gpus,
            },
            price,
        )
    };
    Catalog {
        name: "sim".into(),
        // Any quota the fleet gives, in any region, in any domain.
        quota_provider: String::new(),
        regions: Vec::new(),
        zones: Vec::new(),
        domains: Default::default(),
        shapes: [
            ("small".to_string(), shape(2_000, 8_192, 0, 0.10)),
            ("standard".to_string(), shape(4_000, 16_384, 0, 0.20)),
            ("large".to_string(), shape(16_000, 65_536, 0, 0.80)),
            ("gpu".to_string(), shape(32_000, 262_144, 8, 12.0)),
        ]
        .into_iter()
        .collect(),
        capacity_types: vec!["on-demand".into()],
        capacity: None,
        idempotency_keys: REMEMBERED_ANSWERS,
    }
}

/// The built-in provider.
pub struct LocalProvider {
    book: Mutex<Book>,
    config: SimulatedConfig,
    rng: Mutex<StdRng>,
}

impl LocalProvider {
    /// An empty provider.
    pub fn new(config: SimulatedConfig) -> LocalProvider {
        let rng = StdRng::seed_from_u64(config.seed);
        LocalProvider {
            book: Mutex::new(Book::new(catalog(), Breach::None)),
            config,
            rng: Mutex::new(rng),
        }
    }

    /// Live and deleted machines the provider remembers.
    pub fn machine_count(&self) -> usize {
        self.book.lock().machine_count()
    }

    /// Runs a call after the simulated latency; a simulated failure happens before anything
    /// changes.
    async fn call<T>(
        &self,
        act: impl FnOnce(&mut Book) -> Result<T, Refusal>,
    ) -> Result<T, ProviderError> {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        if self.config.failure_rate > 0.0
            && self
                .rng
                .lock()
                .random_bool(self.config.failure_rate.min(1.0))
        {
            return Err(ProviderError::Refused {
                reason: Reason::Unavailable,
                message: "simulated failure".into(),
                metadata: Default::default(),
            });
        }
        let mut book = self.book.lock();
        let outcome = act(&mut book);
        // Nothing to persist: what changed only matters to a store.
        book.take_changes();
        outcome.map_err(|refused| ProviderError::Refused {
            reason: refused.reason(),
            message: refused.message,
            metadata: refused.metadata.into_iter().collect(),
        })
    }
}

#[tonic::async_trait]
impl Provider for LocalProvider {
    async fn describe(&self) -> Result<DescribeResponse, ProviderError> {
        Ok(self.book.lock().describe(false))
    }

    async fn list(
        &self,
        request: ListMachinesRequest,
    ) -> Result<ListMachinesResponse, ProviderError> {
        self.call(|book| book.list_machines(&request)).await
    }

    async fn get(&self, id: &str) -> Result<Machine, ProviderError> {
        self.call(|book| Ok(book.machine(id).cloned()))
            .await?
            .ok_or_else(|| ProviderError::Refused {
                reason: Reason::NotFound,
                message: format!("no machine {id}"),
                metadata: Default::default(),
            })
    }

    async fn create(&self, request: CreateMachineRequest) -> Result<Machine, ProviderError> {
        self.call(|book| book.create(&request)).await
    }

    async fn configure(&self, request: ConfigureMachineRequest) -> Result<Machine, ProviderError> {
        self.call(|book| book.configure(&request)).await
    }

    async fn release(&self, request: ReleaseMachineRequest) -> Result<Machine, ProviderError> {
        self.call(|book| book.release(&request)).await
    }

    async fn delete(&self, request: DeleteMachineRequest) -> Result<Machine, ProviderError> {
        self.call(|book| book.delete(&request)).await
    }

    fn shared(&self) -> bool {
        false
    }

    async fn claim(&self, request: ClaimDomainRequest) -> Result<(), ProviderError> {
        self.call(|book| book.claim(&request)).await
    }

    async fn adopt_cluster(
        &self,
        request: AdoptClusterRequest,
    ) -> Result<Vec<Machine>, ProviderError> {
        self.call(|book| book.adopt_cluster(&request)).await
    }
}
