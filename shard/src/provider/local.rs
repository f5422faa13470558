//! The simulated provider built into the shard (`--provider sim`, the default): the reference
//! provider's rules ([`ballast_provider_sim::book::Book`]) run in this process, plus a
//! configurable latency and rate of transient failures. It serves this shard alone and keeps
//! its book in memory (or in a directory, for tests of its own): it cannot fence one shard
//! against another or hand machines over, which is what a provider process shared by the
//! shards (`ballast-provider-sim`, `--provider grpc://...`) is for.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ballast_protocol::provider::Reason;
use ballast_protocol::providerpb::{
    AdoptDomainRequest, ConfigureMachineRequest, CreateMachineRequest, DeleteMachineRequest,
    DescribeResponse, ListMachinesRequest, ListMachinesResponse, Machine, ReleaseMachineRequest,
    Resources,
};
use ballast_provider_sim::book::{Book, Breach, Catalog, Refusal};
use ballast_provider_sim::store::{Store, StoreError};
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
    store: Option<Store>,
    config: SimulatedConfig,
    rng: Mutex<StdRng>,
    /// Set when a change could not be saved: memory and disk disagree from then on, so every
    /// later call fails until the shard restarts and reads the disk again.
    broken: AtomicBool,
}

impl LocalProvider {
    /// A provider whose book lives in `dir` (created if missing), or in memory when `None`.
    pub fn open(dir: Option<&Path>, config: SimulatedConfig) -> Result<LocalProvider, StoreError> {
        let mut book = Book::new(catalog(), Breach::None);
        let store = match dir {
            Some(dir) => {
                let store = Store::open(dir)?;
                store.load(&mut book)?;
                Some(store)
            }
            None => None,
        };
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(LocalProvider {
            book: Mutex::new(book),
            store,
            config,
            rng: Mutex::new(rng),
            broken: AtomicBool::new(false),
        })
    }

    /// Live and deleted machines the provider remembers.
    pub fn machine_count(&self) -> usize {
        self.book.lock().machine_count()
    }

    /// Runs a call after the simulated latency; a simulated failure happens before anything
    /// changes. What the call changed is on disk before it answers.
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
        if self.broken.load(Ordering::Relaxed) {
            return Err(ProviderError::Unreachable(
                "the built-in provider could not save a change; restart the shard".into(),
            ));
        }
        let outcome = act(&mut book);
        let changes = book.take_changes();
        if let Some(store) = &self.store
            && let Err(e) = store.save(&book, &changes)
        {
            // Unlike the standalone provider this one shares the shard's process: it stops
            // answering (the shard backs off and reports it) instead of exiting.
            self.broken.store(true, Ordering::Relaxed);
            tracing::error!(error = %e, "the built-in provider cannot save a change");
            return Err(ProviderError::Unreachable(format!(
                "the built-in provider cannot save a change: {e}"
            )));
        }
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
        Ok(self.book.lock().describe(self.store.is_some()))
    }

    async fn list(
        &self,
        request: ListMachinesRequest,
    ) -> Result<ListMachinesResponse, ProviderError> {
        self.call(|book| book.list_machines(&request)).await
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

    async fn adopt(&self, request: AdoptDomainRequest) -> Result<Vec<Machine>, ProviderError> {
        self.call(|book| book.adopt(&request)).await
    }
}
