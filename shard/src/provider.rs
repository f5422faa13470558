//! The `Provider` trait — how a shard creates and releases machines — and a simulated provider
//! with configurable latency and failure rate for tests, the demo and the simulator.
//!
//! Every mutating action carries a fencing token (shard id, restart epoch, sequence). A
//! provider keeps the highest token per (shard, machine) and refuses anything not newer, so a
//! zombie shard from an earlier epoch can never act after its successor started. Actions are
//! idempotent by machine id: retrying a provision returns the machine already made.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::Resources;

/// Who is acting, in which incarnation, and in what order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FencingToken {
    /// Shard id.
    pub shard: String,
    /// Restart epoch of the shard (from its cache, incremented at every start).
    pub epoch: u64,
    /// Per-process sequence number, fresh for every attempt.
    pub sequence: u64,
}

/// Create one machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionAction {
    /// Fencing token.
    pub token: FencingToken,
    /// Machine id chosen by the shard; the idempotency key.
    pub machine_id: String,
    /// Domain to create it in.
    pub domain: String,
    /// Resources asked for.
    pub resources: Resources,
}

/// A machine as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvidedMachine {
    /// Machine id.
    pub id: String,
    /// Domain it is in.
    pub domain: String,
    /// Resources it has.
    pub resources: Resources,
}

/// Why a provider refused or failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The token is not newer than one already seen for this machine: a stale actor.
    #[error("fenced: {token:?} is not newer than {seen:?} for machine {machine}")]
    Fenced {
        /// Machine.
        machine: String,
        /// Refused token.
        token: FencingToken,
        /// Highest token seen.
        seen: (u64, u64),
    },
    /// The action failed; it may be retried with a fresh token.
    #[error("provider failed: {0}")]
    Failed(String),
}

/// A capacity provider.
pub trait Provider: Send + Sync {
    /// Creates a machine (idempotent by `machine_id`).
    fn provision(
        &self,
        action: ProvisionAction,
    ) -> impl Future<Output = Result<ProvidedMachine, ProviderError>> + Send;

    /// Releases a machine (idempotent: releasing an unknown machine succeeds).
    fn release(
        &self,
        machine_id: &str,
        token: FencingToken,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
}

/// Settings of the simulated provider.
#[derive(Clone, Debug)]
pub struct SimulatedConfig {
    /// Delay of every action.
    pub latency: Duration,
    /// Probability (0..=1) that an action fails after passing the fence.
    pub failure_rate: f64,
    /// Seed, for reproducible runs.
    pub seed: u64,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(0),
            failure_rate: 0.0,
            seed: 1,
        }
    }
}

struct SimState {
    machines: HashMap<String, ProvidedMachine>,
    /// Highest (epoch, sequence) seen per (shard, machine).
    marks: HashMap<(String, String), (u64, u64)>,
    rng: StdRng,
}

/// An in-process provider that behaves like a real one: latency, failures, fencing,
/// idempotency.
pub struct SimulatedProvider {
    config: SimulatedConfig,
    state: Mutex<SimState>,
}

impl SimulatedProvider {
    /// A provider with `config`.
    pub fn new(config: SimulatedConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self {
            config,
            state: Mutex::new(SimState {
                machines: HashMap::new(),
                marks: HashMap::new(),
                rng,
            }),
        }
    }

    /// Machines currently provided.
    pub fn machine_count(&self) -> usize {
        self.state.lock().machines.len()
    }

    /// Checks and advances the fence, then rolls for failure. The mark advances even when the
    /// action then fails, so a retry must use a fresh sequence.
    fn admit(
        &self,
        state: &mut SimState,
        machine: &str,
        token: &FencingToken,
    ) -> Result<(), ProviderError> {
        let key = (token.shard.clone(), machine.to_string());
        let offered = (token.epoch, token.sequence);
        if let Some(seen) = state.marks.get(&key)
            && offered <= *seen
        {
            return Err(ProviderError::Fenced {
                machine: machine.to_string(),
                token: token.clone(),
                seen: *seen,
            });
        }
        state.marks.insert(key, offered);
        if self.config.failure_rate > 0.0
            && state.rng.random_bool(self.config.failure_rate.min(1.0))
        {
            return Err(ProviderError::Failed(format!(
                "simulated failure for machine {machine}"
            )));
        }
        Ok(())
    }
}

impl Provider for SimulatedProvider {
    async fn provision(&self, action: ProvisionAction) -> Result<ProvidedMachine, ProviderError> {
        tokio::time::sleep(self.config.latency).await;
        let mut state = self.state.lock();
        self.admit(&mut state, &action.machine_id, &action.token)?;
        let machine = state
            .machines
            .entry(action.machine_id.clone())
            .or_insert_with(|| ProvidedMachine {
                id: action.machine_id.clone(),
                domain: action.domain.clone(),
                resources: action.resources,
            })
            .clone();
        Ok(machine)
    }

    async fn release(&self, machine_id: &str, token: FencingToken) -> Result<(), ProviderError> {
        tokio::time::sleep(self.config.latency).await;
        let mut state = self.state.lock();
        self.admit(&mut state, machine_id, &token)?;
        state.machines.remove(machine_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(epoch: u64, sequence: u64) -> FencingToken {
        FencingToken {
            shard: "s1".into(),
            epoch,
            sequence,
        }
    }

    fn action(id: &str, epoch: u64, sequence: u64) -> ProvisionAction {
        ProvisionAction {
            token: token(epoch, sequence),
            machine_id: id.into(),
            domain: "zone=a".into(),
            resources: Resources::default(),
        }
    }

    #[tokio::test]
    async fn provisioning_is_idempotent_and_fenced() {
        let p = SimulatedProvider::new(SimulatedConfig::default());
        let first = p.provision(action("m1", 2, 1)).await.expect("provision");
        let again = p.provision(action("m1", 2, 2)).await.expect("retry");
        assert_eq!(first, again);
        assert_eq!(p.machine_count(), 1);
        // A zombie from epoch 1 is refused, as is a replayed token.
        assert!(matches!(
            p.provision(action("m1", 1, 99)).await,
            Err(ProviderError::Fenced { .. })
        ));
        assert!(matches!(
            p.release("m1", token(2, 2)).await,
            Err(ProviderError::Fenced { .. })
        ));
        p.release("m1", token(3, 1))
            .await
            .expect("release by the successor");
        assert_eq!(p.machine_count(), 0);
    }

    #[tokio::test]
    async fn the_failure_rate_is_honoured() {
        let always = SimulatedProvider::new(SimulatedConfig {
            failure_rate: 1.0,
            ..SimulatedConfig::default()
        });
        assert!(matches!(
            always.provision(action("m1", 1, 1)).await,
            Err(ProviderError::Failed(_))
        ));
        let half = SimulatedProvider::new(SimulatedConfig {
            failure_rate: 0.5,
            seed: 7,
            ..SimulatedConfig::default()
        });
        let mut failures = 0;
        for n in 0..200 {
            if half
                .provision(action(&format!("m{n}"), 1, 1))
                .await
                .is_err()
            {
                failures += 1;
            }
        }
        assert!(
            (60..140).contains(&failures),
            "{failures} failures out of 200"
        );
    }
}
