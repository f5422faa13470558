//! How a shard drives capacity: the provider contract (`ballast.provider.v1`, ADR 0016) as a
//! trait, spoken either to a provider over gRPC ([`grpc`]) or to the simulated provider built
//! into the shard ([`local`], the same rules as `ballast-provider-sim`). The worker holds an
//! `Arc<dyn Provider>` and never knows which.
//!
//! Every mutating call carries an idempotency key and a fencing token with the grants the shard
//! acts under; see [`Grants`].

pub mod grpc;
pub mod local;
pub mod route;

use std::collections::HashMap;

use ballast_protocol::provider::{Reason, reason_of};
use ballast_protocol::providerpb::{
    AdoptClusterRequest, ClaimDomainRequest, ClusterGrant, ConfigureMachineRequest,
    CreateMachineRequest, DeleteMachineRequest, DescribeResponse, DomainGrant, FencingToken, Grant,
    ListMachinesRequest, ListMachinesResponse, Machine, QuotaGrant, ReleaseMachineRequest, Shape,
};

use crate::engine::Resources;

pub use local::SimulatedConfig;
pub use route::Providers;

/// Why a provider call did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused, with one of the contract's reasons.
    #[error("{reason}: {message}", reason = reason.as_str())]
    Refused {
        /// Why.
        reason: Reason,
        /// The provider's words.
        message: String,
        /// The reason's details (a `stale-grant` names `presented` and `accepted`).
        metadata: HashMap<String, String>,
    },
    /// The provider could not be reached, or the connection broke.
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    /// The provider took the call and did not answer within the deadline
    /// (`--provider-timeout-ms`): told apart from [`ProviderError::Unreachable`] because an
    /// operator looks for a hung provider, not a network, when this is what is counted.
    #[error("provider timed out: {0}")]
    TimedOut(String),
    /// The provider answered something the contract does not allow (no reason on a refusal,
    /// another machine than asked for, a malformed record).
    #[error("provider broke the contract: {0}")]
    Contract(String),
}

impl ProviderError {
    /// Whether the same call may succeed if retried later (same idempotency key).
    pub fn retryable(&self) -> bool {
        match self {
            ProviderError::Refused { reason, .. } => reason.retryable(),
            ProviderError::Unreachable(_) | ProviderError::TimedOut(_) => true,
            ProviderError::Contract(_) => false,
        }
    }

    /// Whether the provider may have carried the call out though the shard has no answer it
    /// can use: none came (the provider is unreachable or timed out), or one the contract does
    /// not allow. A refusal says the call changed nothing. A create that ends like this is
    /// retried under the same idempotency key, so a machine the provider made meanwhile is
    /// answered then instead of left behind.
    pub fn outcome_unknown(&self) -> bool {
        !matches!(self, ProviderError::Refused { .. })
    }

    /// The refusal's reason, if the provider refused.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            ProviderError::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// A label for metrics: the reason, `unreachable`, `timeout` or `contract`.
    pub fn label(&self) -> &'static str {
        match self {
            ProviderError::Refused { reason, .. } => reason.as_str(),
            ProviderError::Unreachable(_) => "unreachable",
            ProviderError::TimedOut(_) => "timeout",
            ProviderError::Contract(_) => "contract",
        }
    }

    /// Reads a gRPC status: a refusal with its reason, a transport failure, or a breach.
    pub fn from_status(status: &tonic::Status) -> ProviderError {
        if let Some((reason, metadata)) = reason_of(status) {
            return ProviderError::Refused {
                reason,
                message: status.message().to_string(),
                metadata,
            };
        }
        // A status with a source was made on this side from a transport error (tonic keeps the
        // h2 or hyper error as its source); one the provider sent carries none. An HTTP/2
        // GOAWAY from an overloaded server reads as `ResourceExhausted` ("h2 protocol error"),
        // but it is an outage to retry, not a refusal without a reason.
        if std::error::Error::source(status).is_some() {
            return ProviderError::Unreachable(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ));
        }
        match status.code() {
            tonic::Code::DeadlineExceeded => {
                ProviderError::TimedOut(format!("DeadlineExceeded: {}", status.message()))
            }
            // tonic reports a connection that broke mid-call as `Unknown` ("transport error"):
            // an outage to retry with the same key, not a breach of the contract. (It ends a
            // call past its deadline as `Cancelled`; `GrpcProvider` tells that one apart.)
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                ProviderError::Unreachable(format!("{:?}: {}", status.code(), status.message()))
            }
            code => ProviderError::Contract(format!(
                "a {code:?} refusal without a reason of the contract: {}",
                status.message()
            )),
        }
    }
}

/// A capacity provider, as the contract defines it. Implementations check the answers they
/// return: a machine answered for a call is the machine the call named.
#[tonic::async_trait]
pub trait Provider: Send + Sync {
    /// Whether shards share this provider, so a cluster bound to another shard is adopted
    /// there with its machines (ADR 0016). The built-in simulation serves one shard: a shard
    /// keeps what it holds there and puts it to other work.
    fn shared(&self) -> bool {
        true
    }

    /// What the provider offers.
    async fn describe(&self) -> Result<DescribeResponse, ProviderError>;
    /// One page of machines.
    async fn list(
        &self,
        request: ListMachinesRequest,
    ) -> Result<ListMachinesResponse, ProviderError>;
    /// One machine as the provider has it now (`not-found` if it has none by that id).
    async fn get(&self, id: &str) -> Result<Machine, ProviderError>;
    /// Creates a machine.
    async fn create(&self, request: CreateMachineRequest) -> Result<Machine, ProviderError>;
    /// Configures a machine for a cluster.
    async fn configure(&self, request: ConfigureMachineRequest) -> Result<Machine, ProviderError>;
    /// Drains a machine of its cluster.
    async fn release(&self, request: ReleaseMachineRequest) -> Result<Machine, ProviderError>;
    /// Deletes a machine.
    async fn delete(&self, request: DeleteMachineRequest) -> Result<Machine, ProviderError>;
    /// Claims a domain (creates under older grants stop); no machine moves.
    async fn claim(&self, request: ClaimDomainRequest) -> Result<(), ProviderError>;
    /// Takes a cluster over with the machines configured for it; answers them.
    async fn adopt_cluster(
        &self,
        request: AdoptClusterRequest,
    ) -> Result<Vec<Machine>, ProviderError>;
}

/// The grants a shard acts under in one call, from its cache: the restore epoch of its
/// assignments, the domain's grant (creates and claims), the cluster's grant (calls on a
/// machine serving a cluster, adoptions) and, for creates, the quota's slice table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Restore epoch of the cached assignments.
    pub restore_epoch: u64,
    /// The domain and the revision it was granted at.
    pub domain: Option<(String, u64)>,
    /// The cluster and the revision it was bound to this shard at.
    pub cluster: Option<(String, u64)>,
    /// (quota provider, region, slice table revision, slice), for creates.
    pub quota: Option<(String, String, u64, u64)>,
}

/// Who acts: the shard, its restart epoch and this attempt's sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// Shard id.
    pub shard: String,
    /// Restart epoch.
    pub epoch: u64,
    /// Sequence of this attempt.
    pub sequence: u64,
}

/// The fencing token of a call.
pub fn token(actor: &Actor, grants: &Grants) -> FencingToken {
    let grant = |revision| Grant {
        restore_epoch: grants.restore_epoch,
        revision,
    };
    FencingToken {
        shard_id: actor.shard.clone(),
        shard_epoch: actor.epoch,
        sequence: actor.sequence,
        domain: grants
            .domain
            .as_ref()
            .map(|(domain, revision)| DomainGrant {
                domain: domain.clone(),
                grant: Some(grant(*revision)),
            }),
        cluster: grants
            .cluster
            .as_ref()
            .map(|(cluster, revision)| ClusterGrant {
                cluster: cluster.clone(),
                grant: Some(grant(*revision)),
            }),
        quota: grants
            .quota
            .as_ref()
            .map(|(provider, region, revision, slice)| QuotaGrant {
                quota_provider: provider.clone(),
                region: region.clone(),
                grant: Some(grant(*revision)),
                slice: *slice,
            }),
    }
}

/// The cheapest shape (then the smallest) with at least `resources`, if the provider offers one.
pub fn shape_for<'a>(shapes: &'a [Shape], resources: &Resources) -> Option<&'a Shape> {
    shapes
        .iter()
        .filter(|shape| {
            shape.resources.as_ref().is_some_and(|r| {
                i128::from(r.cpu_millis) >= i128::from(resources.cpu_millis)
                    && i128::from(r.memory_mib) >= i128::from(resources.memory_mib)
                    && i128::from(r.gpus) >= i128::from(resources.gpus)
            })
        })
        .min_by(|a, b| {
            let size = |s: &Shape| {
                s.resources
                    .as_ref()
                    .map(|r| (r.cpu_millis, r.memory_mib, r.gpus))
            };
            a.price_per_hour
                .total_cmp(&b.price_per_hour)
                .then_with(|| size(a).cmp(&size(b)))
        })
}

/// The resources of a machine the provider answered, or why they are unusable.
pub fn resources_of(machine: &Machine) -> Result<Resources, ProviderError> {
    let r = machine.resources.as_ref().ok_or_else(|| {
        ProviderError::Contract(format!("machine {} has no resources", machine.id))
    })?;
    let negative = |name: &str, value: i64| {
        ProviderError::Contract(format!("machine {} has {name} {value}", machine.id))
    };
    Ok(Resources {
        cpu_millis: u64::try_from(r.cpu_millis)
            .map_err(|_| negative("cpu_millis", r.cpu_millis))?,
        memory_mib: u64::try_from(r.memory_mib)
            .map_err(|_| negative("memory_mib", r.memory_mib))?,
        gpus: u32::try_from(r.gpus).map_err(|_| negative("gpus", r.gpus))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_protocol::providerpb::Resources as ShapeResources;

    fn shape(name: &str, cpu: i64, memory: i64, gpus: i64, price: f64) -> Shape {
        Shape {
            name: name.into(),
            resources: Some(ShapeResources {
                cpu_millis: cpu,
                memory_mib: memory,
                gpus,
            }),
            price_per_hour: price,
        }
    }

    #[test]
    fn the_cheapest_shape_that_covers_the_need_is_chosen() {
        let shapes = vec![
            shape("large", 16_000, 65_536, 0, 0.8),
            shape("small", 2_000, 8_192, 0, 0.1),
            shape("gpu", 32_000, 262_144, 8, 12.0),
            shape("broken", -1, 0, 0, 0.0),
            Shape {
                name: "no-resources".into(),
                resources: None,
                price_per_hour: 0.0,
            },
        ];
        let need = |cpu, memory, gpus| Resources {
            cpu_millis: cpu,
            memory_mib: memory,
            gpus,
        };
        let pick = |r| shape_for(&shapes, &r).map(|s| s.name.as_str());
        assert_eq!(pick(need(1_000, 1_024, 0)), Some("small"));
        assert_eq!(pick(need(4_000, 1_024, 0)), Some("large"));
        assert_eq!(pick(need(1_000, 1_024, 1)), Some("gpu"));
        assert_eq!(pick(need(64_000, 1, 0)), None);
        assert_eq!(pick(need(u64::MAX, 0, 0)), None, "no overflow");
    }

    #[test]
    fn statuses_map_to_refusals_outages_and_breaches() {
        let refused = ballast_protocol::provider::refusal(
            Reason::StaleGrant,
            "older",
            &[("domain", "d1".into())],
        );
        let error = ProviderError::from_status(&refused);
        assert_eq!(error.reason(), Some(Reason::StaleGrant));
        assert!(!error.retryable());
        assert_eq!(error.label(), "stale-grant");
        let outage = ProviderError::from_status(&tonic::Status::unavailable("down"));
        assert!(matches!(outage, ProviderError::Unreachable(_)) && outage.retryable());
        // A connection broken mid-call, as tonic reports it.
        let reset = ProviderError::from_status(&tonic::Status::unknown("transport error"));
        assert!(matches!(reset, ProviderError::Unreachable(_)) && reset.retryable());
        let bare = ProviderError::from_status(&tonic::Status::failed_precondition("no reason"));
        assert!(matches!(bare, ProviderError::Contract(_)) && !bare.retryable());
        let late = ProviderError::from_status(&tonic::Status::deadline_exceeded("late"));
        assert!(matches!(late, ProviderError::TimedOut(_)) && late.retryable());
        assert_eq!(late.label(), "timeout");
        // Whether a create may have made its machine: unless the provider refused.
        assert!(!error.outcome_unknown());
        assert!(outage.outcome_unknown() && late.outcome_unknown() && bare.outcome_unknown());
        // The same code made locally from a transport error (an HTTP/2 GOAWAY with
        // ENHANCE_YOUR_CALM, as a loaded provider sends it) is an outage.
        let mut calm = tonic::Status::resource_exhausted("h2 protocol error: http2 error");
        calm.set_source(std::sync::Arc::new(std::io::Error::other("GOAWAY")));
        let calm = ProviderError::from_status(&calm);
        assert!(matches!(calm, ProviderError::Unreachable(_)) && calm.retryable());
        let sent = ProviderError::from_status(&tonic::Status::resource_exhausted("no reason"));
        assert!(matches!(sent, ProviderError::Contract(_)));
    }

    #[test]
    fn tokens_carry_the_grants_under_the_restore_epoch() {
        let grants = Grants {
            restore_epoch: 3,
            domain: Some(("d1".into(), 17)),
            cluster: Some(("c1".into(), 21)),
            quota: Some(("aws".into(), "r1".into(), 9, 40)),
        };
        let actor = Actor {
            shard: "s1".into(),
            epoch: 5,
            sequence: 77,
        };
        let t = token(&actor, &grants);
        assert_eq!(
            (t.shard_id.as_str(), t.shard_epoch, t.sequence),
            ("s1", 5, 77)
        );
        let domain = t.domain.expect("domain grant");
        assert_eq!(domain.domain, "d1");
        assert_eq!(
            domain.grant.map(|g| (g.restore_epoch, g.revision)),
            Some((3, 17))
        );
        let cluster = t.cluster.expect("cluster grant");
        assert_eq!(
            (
                cluster.cluster.as_str(),
                cluster.grant.map(|g| (g.restore_epoch, g.revision))
            ),
            ("c1", Some((3, 21)))
        );
        let quota = t.quota.expect("quota grant");
        assert_eq!(
            (
                quota.quota_provider.as_str(),
                quota.region.as_str(),
                quota.slice,
                quota.grant.map(|g| (g.restore_epoch, g.revision))
            ),
            ("aws", "r1", 40, Some((3, 9)))
        );
    }
}
