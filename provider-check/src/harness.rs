//! What every check needs: a client with a deadline on every call, names that are unique to
//! this run, grants that only go up, the tokens a shard sends (a domain grant and a slice table
//! for creates and domain claims, the cluster's grant for calls that concern a cluster), and
//! the expectations checks are written in (a success, a refusal with a given reason, a machine
//! that reads back the same through `GetMachine` and `ListMachines`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ballast_protocol::provider::{Reason, describe, reason_of};
use ballast_protocol::providerpb::provider_client::ProviderClient;
use ballast_protocol::providerpb::{
    AdoptClusterRequest, ClaimDomainRequest, ClusterGrant, ConfigureMachineRequest,
    CreateMachineRequest, DeleteMachineRequest, DescribeRequest, DescribeResponse, DomainGrant,
    FencingToken, GetMachineRequest, Grant, ListMachinesRequest, Machine, MachineState, QuotaGrant,
    ReleaseMachineRequest,
};
use tonic::Status;
use tonic::transport::Channel;

/// Why a check failed, in words a provider author can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

/// A check's outcome: `Ok`, or what was wrong.
pub type Verdict = Result<(), Failure>;

/// Fails the check with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err($crate::harness::Failure(format!($($message)+)));
        }
    };
}

/// Fails the check with a formatted message.
pub fn fail<T>(message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(message.into()))
}

/// Tunables of a run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deadline of every call.
    pub call: Duration,
    /// How long a machine may stay in a transitional state (CREATING, DELETING, ...).
    pub settle: Duration,
}

/// One shard as the checks play it: who it is, its restart epoch, the domain it creates in
/// and the grants it holds.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Shard id.
    pub shard: String,
    /// Restart epoch.
    pub epoch: u64,
    /// The domain it creates in.
    pub domain: String,
    /// When the domain was given to it (its domain grant: the right to create there).
    pub grant: Grant,
    /// The quota grant (slice table and slice).
    pub quota: QuotaGrant,
    /// The clusters it serves, each with the grant it presents for it. A call about a
    /// cluster it holds no grant for carries no cluster grant.
    pub clusters: BTreeMap<String, Grant>,
}

impl Actor {
    /// The same shard holding another grant for its domain (newer: a handover to itself).
    pub fn with_grant(&self, grant: Grant) -> Actor {
        Actor {
            grant,
            ..self.clone()
        }
    }

    /// The same shard presenting `grant` for `cluster` (older, equal or newer than what it
    /// held: the check decides).
    pub fn with_cluster(&self, cluster: &str, grant: Grant) -> Actor {
        let mut actor = self.clone();
        actor.clusters.insert(cluster.to_string(), grant);
        actor
    }

    /// The grant it presents for `cluster`, if it serves it.
    pub fn cluster_grant(&self, cluster: &str) -> Option<Grant> {
        self.clusters.get(cluster).copied()
    }
}

/// Shared state of one run against one provider.
pub struct Harness {
    client: ProviderClient<Channel>,
    /// What the provider said about itself.
    pub describe: DescribeResponse,
    /// Tunables.
    pub limits: Limits,
    run: u64,
    counter: AtomicU64,
    quota_revision: AtomicU64,
}

/// Text of a call's outcome, for failure messages.
pub fn show<T: std::fmt::Debug>(outcome: &Result<T, Status>) -> String {
    match outcome {
        Ok(value) => format!("success ({})", brief(value)),
        Err(status) => show_status(status),
    }
}

fn brief<T: std::fmt::Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    if text.len() > 300 {
        format!("{}...", &text[..300])
    } else {
        text
    }
}

/// A status as `CODE reason: message`.
pub fn show_status(status: &Status) -> String {
    let reason = match reason_of(status) {
        Some((reason, _)) => reason.as_str().to_string(),
        None => "(no google.rpc.ErrorInfo of domain ballast.provider.v1 with a known reason)"
            .to_string(),
    };
    format!("{:?} {reason}: {}", status.code(), status.message())
}

/// Whether a machine counts against quota (not deleted or failed).
pub fn live(machine: &Machine) -> bool {
    !matches!(
        MachineState::try_from(machine.state),
        Ok(MachineState::Deleted) | Ok(MachineState::Failed)
    )
}

fn settled(machine: &Machine) -> bool {
    !matches!(
        MachineState::try_from(machine.state),
        Ok(MachineState::Creating)
            | Ok(MachineState::Configuring)
            | Ok(MachineState::Draining)
            | Ok(MachineState::Deleting)
    )
}

/// The answer of a successful call, or a failure naming `what`.
pub fn success<T>(what: &str, outcome: Result<T, Status>) -> Result<T, Failure> {
    match outcome {
        Ok(machine) => Ok(machine),
        Err(status) => fail(format!(
            "{what}: expected success, got {}",
            show_status(&status)
        )),
    }
}

/// The refusal in an answer if it carries `reason` under the contract's code, or a failure
/// naming `what`.
pub fn refusal<T: std::fmt::Debug>(
    what: &str,
    outcome: Result<T, Status>,
    reason: Reason,
) -> Result<(Status, BTreeMap<String, String>), Failure> {
    match outcome {
        Err(status) => match reason_of(&status) {
            Some((got, metadata)) if got == reason => Ok((status, metadata.into_iter().collect())),
            _ if status.code() == reason.code() && reason_of(&status).is_none() => fail(format!(
                "{what}: expected {:?} {} with a google.rpc.ErrorInfo (domain ballast.provider.v1) naming the reason; the code is right but the details are missing or unreadable ({})",
                reason.code(),
                reason.as_str(),
                status.message()
            )),
            _ => fail(format!(
                "{what}: expected {:?} {}, got {}",
                reason.code(),
                reason.as_str(),
                show_status(&status)
            )),
        },
        Ok(value) => fail(format!(
            "{what}: expected {:?} {}, got success ({})",
            reason.code(),
            reason.as_str(),
            brief(&value)
        )),
    }
}

/// Which grant a `stale-grant` refusal is about, as its metadata names it: `domain` (the
/// domain), `cluster` (the cluster) or `quota` (`provider/region`). A shard needs to know
/// which of its grants to stop acting under.
#[derive(Debug, Clone, Copy)]
pub enum Stale<'a> {
    /// A domain grant, for the domain named.
    Domain(&'a str),
    /// A cluster grant, for the cluster named.
    Cluster(&'a str),
    /// A slice table, for the quota `provider/region` named.
    Quota(&'a str),
}

impl Stale<'_> {
    fn key_value(&self) -> (&'static str, &str) {
        match self {
            Stale::Domain(domain) => ("domain", domain),
            Stale::Cluster(cluster) => ("cluster", cluster),
            Stale::Quota(quota) => ("quota", quota),
        }
    }
}

/// Checks that a `stale-grant` refusal's metadata says which grant is stale and names both
/// grants (`presented` and `accepted`, each `restore_epoch/revision`).
pub fn names_both(
    what: &str,
    metadata: &BTreeMap<String, String>,
    stale: Stale<'_>,
    presented: &Grant,
    accepted: &Grant,
) -> Verdict {
    let (p, a) = (describe(Some(presented)), describe(Some(accepted)));
    ensure!(
        metadata.get("presented") == Some(&p) && metadata.get("accepted") == Some(&a),
        "{what}: a stale-grant refusal names both grants in its metadata (presented={p}, accepted={a}); got {metadata:?}"
    );
    let (key, value) = stale.key_value();
    ensure!(
        metadata.get(key).map(String::as_str) == Some(value),
        "{what}: a stale-grant refusal says which grant is stale ({key}={value}); got {metadata:?}"
    );
    Ok(())
}

/// Expects a `stale-grant` refusal naming `stale`, the `presented` grant and the `accepted`
/// one.
pub fn stale_grant<T: std::fmt::Debug>(
    what: &str,
    outcome: Result<T, Status>,
    stale: Stale<'_>,
    presented: &Grant,
    accepted: &Grant,
) -> Verdict {
    let (_, metadata) = refusal(what, outcome, Reason::StaleGrant)?;
    names_both(what, &metadata, stale, presented, accepted)
}

/// Expects a `not-owner` refusal naming the `machine` and its `owner`.
pub fn not_owner<T: std::fmt::Debug>(
    what: &str,
    outcome: Result<T, Status>,
    machine: &str,
    owner: &str,
) -> Verdict {
    let (_, metadata) = refusal(what, outcome, Reason::NotOwner)?;
    ensure!(
        metadata.get("machine").map(String::as_str) == Some(machine)
            && metadata.get("owner").map(String::as_str) == Some(owner),
        "{what}: a not-owner refusal names the machine and its owner in its metadata (machine={machine}, owner={owner}); got {metadata:?}"
    );
    Ok(())
}

/// A machine's state.
pub fn state_of(machine: &Machine) -> MachineState {
    MachineState::try_from(machine.state).unwrap_or_default()
}

/// The ids of `machines`, sorted.
pub fn ids(machines: &[Machine]) -> Vec<String> {
    let mut ids: Vec<String> = machines.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    ids
}

impl Harness {
    /// Connects through `channel` and reads `Describe`.
    pub async fn connect(channel: Channel, limits: Limits) -> Result<Harness, Status> {
        let client = ProviderClient::new(channel);
        let mut harness = Harness {
            client,
            describe: DescribeResponse::default(),
            limits,
            // Grants of this run order after every earlier run's: a rerun against the same
            // durable provider must not be fenced by what the last one left behind.
            run: ballast_protocol::clock::unix_ms(),
            counter: AtomicU64::new(0),
            quota_revision: AtomicU64::new(1),
        };
        harness.describe = harness.call_describe().await?;
        Ok(harness)
    }

    /// The run's id (also the restore epoch of its grants).
    pub fn run(&self) -> u64 {
        self.run
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn with_deadline<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.limits.call);
        request
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        // The client deadline covers the server; this covers a connection that never answers.
        match tokio::time::timeout(self.limits.call + Duration::from_secs(1), call).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {:?}",
                self.limits.call
            ))),
        }
    }

    /// `Describe`.
    pub async fn call_describe(&self) -> Result<DescribeResponse, Status> {
        let mut client = self.client.clone();
        self.bounded(client.describe(self.with_deadline(DescribeRequest {})))
            .await
    }

    /// A name no earlier call of this run used.
    pub fn unique(&self, what: &str) -> String {
        format!("chk-{}-{what}-{}", self.run, self.next())
    }

    /// A grant newer than every grant handed out before in this run.
    pub fn grant(&self) -> Grant {
        Grant {
            restore_epoch: self.run,
            revision: self.next(),
        }
    }

    /// A domain to act in: a fresh one if the provider serves any domain (`Describe` lists
    /// none), else one of its own (cycling, so checks spread over them).
    pub fn domain(&self) -> String {
        if self.describe.domains.is_empty() {
            self.unique("domain")
        } else {
            let n = self.next() as usize;
            self.describe.domains[n % self.describe.domains.len()].clone()
        }
    }

    /// The quota checks count against: the provider's quota in its first region.
    pub fn quota_key(&self) -> (String, String) {
        (
            self.describe.quota_provider.clone(),
            self.describe.regions.first().cloned().unwrap_or_default(),
        )
    }

    /// The newest slice table of this run, with `slice` for the caller.
    pub fn quota(&self, slice: u64) -> QuotaGrant {
        let (quota_provider, region) = self.quota_key();
        QuotaGrant {
            quota_provider,
            region,
            grant: Some(Grant {
                restore_epoch: self.run,
                revision: self.quota_revision.load(Ordering::SeqCst),
            }),
            slice,
        }
    }

    /// Publishes a newer slice table (later [`Harness::quota`] calls carry it).
    pub fn bump_quota(&self) -> u64 {
        self.quota_revision.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A new shard `name` holding a fresh grant for a domain, with `slice`; it serves no
    /// cluster yet (see [`Harness::serve`]).
    pub fn actor(&self, name: &str, slice: u64) -> Actor {
        Actor {
            shard: self.unique(name),
            epoch: 1,
            domain: self.domain(),
            grant: self.grant(),
            quota: self.quota(slice),
            clusters: BTreeMap::new(),
        }
    }

    /// Another shard creating in `of`'s domain, with a newer domain grant (and `of`'s slice
    /// table); it serves no cluster yet.
    pub fn successor(&self, of: &Actor, name: &str) -> Actor {
        Actor {
            shard: self.unique(name),
            epoch: 1,
            domain: of.domain.clone(),
            grant: self.grant(),
            quota: of.quota.clone(),
            clusters: BTreeMap::new(),
        }
    }

    /// A cluster name no earlier call of this run used.
    pub fn cluster(&self) -> String {
        self.unique("cluster")
    }

    /// Gives `actor` a new cluster with a grant newer than every grant before; returns the
    /// cluster's name.
    pub fn serve(&self, actor: &mut Actor) -> String {
        let cluster = self.cluster();
        actor.clusters.insert(cluster.clone(), self.grant());
        cluster
    }

    /// A token with `actor`'s identity and no grant (a fresh sequence per call).
    fn bare_token(&self, actor: &Actor) -> FencingToken {
        FencingToken {
            shard_id: actor.shard.clone(),
            shard_epoch: actor.epoch,
            sequence: self.next(),
            domain: None,
            quota: None,
            cluster: None,
        }
    }

    /// The token `actor` creates and claims its domain with: its domain grant and slice table.
    pub fn token(&self, actor: &Actor) -> FencingToken {
        FencingToken {
            domain: Some(DomainGrant {
                domain: actor.domain.clone(),
                grant: Some(actor.grant),
            }),
            quota: Some(actor.quota.clone()),
            ..self.bare_token(actor)
        }
    }

    /// The token `actor` acts on a machine with: the grant it holds for `cluster` (the
    /// cluster a configure is for, or the one a released or deleted machine serves; "" for an
    /// idle machine, which needs no grant), and no domain grant or slice table.
    pub fn cluster_token(&self, actor: &Actor, cluster: &str) -> FencingToken {
        FencingToken {
            cluster: (!cluster.is_empty())
                .then(|| actor.cluster_grant(cluster))
                .flatten()
                .map(|grant| ClusterGrant {
                    cluster: cluster.to_string(),
                    grant: Some(grant),
                }),
            ..self.bare_token(actor)
        }
    }

    /// The first shape and default capacity type.
    pub fn shape(&self) -> String {
        self.describe
            .shapes
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    /// A create request by `actor` for a new machine id under a new key.
    pub fn create_request(&self, actor: &Actor) -> CreateMachineRequest {
        CreateMachineRequest {
            idempotency_key: self.unique("key"),
            token: Some(self.token(actor)),
            machine_id: self.unique("m"),
            domain: actor.domain.clone(),
            shape: self.shape(),
            capacity_type: String::new(),
        }
    }

    /// Sends a create as it is.
    pub async fn send_create(&self, request: CreateMachineRequest) -> Result<Machine, Status> {
        let mut client = self.client.clone();
        self.bounded(client.create_machine(self.with_deadline(request)))
            .await
            .and_then(machine_of)
    }

    /// Creates a new machine for `actor`.
    pub async fn create(&self, actor: &Actor) -> Result<Machine, Status> {
        self.send_create(self.create_request(actor)).await
    }

    /// A configure request, under `actor`'s grant for `cluster`.
    pub fn configure_request(
        &self,
        actor: &Actor,
        id: &str,
        cluster: &str,
    ) -> ConfigureMachineRequest {
        ConfigureMachineRequest {
            idempotency_key: self.unique("key"),
            token: Some(self.cluster_token(actor, cluster)),
            machine_id: id.to_string(),
            cluster: cluster.to_string(),
        }
    }

    /// Sends a configure as it is.
    pub async fn send_configure(
        &self,
        request: ConfigureMachineRequest,
    ) -> Result<Machine, Status> {
        let mut client = self.client.clone();
        self.bounded(client.configure_machine(self.with_deadline(request)))
            .await
            .and_then(machine_of)
    }

    /// Configures `id` for `cluster`, under `actor`'s grant for it.
    pub async fn configure(
        &self,
        actor: &Actor,
        id: &str,
        cluster: &str,
    ) -> Result<Machine, Status> {
        self.send_configure(self.configure_request(actor, id, cluster))
            .await
    }

    /// A release request of a machine serving `serving` ("" for an idle one), under `actor`'s
    /// grant for that cluster.
    pub fn release_request(&self, actor: &Actor, id: &str, serving: &str) -> ReleaseMachineRequest {
        ReleaseMachineRequest {
            idempotency_key: self.unique("key"),
            token: Some(self.cluster_token(actor, serving)),
            machine_id: id.to_string(),
        }
    }

    /// Sends a release as it is.
    pub async fn send_release(&self, request: ReleaseMachineRequest) -> Result<Machine, Status> {
        let mut client = self.client.clone();
        self.bounded(client.release_machine(self.with_deadline(request)))
            .await
            .and_then(machine_of)
    }

    /// Releases `id` from `serving`, the cluster it serves ("" when it is idle).
    pub async fn release(&self, actor: &Actor, id: &str, serving: &str) -> Result<Machine, Status> {
        self.send_release(self.release_request(actor, id, serving))
            .await
    }

    /// A delete request of a machine serving `serving` ("" for an idle one), under `actor`'s
    /// grant for that cluster.
    pub fn delete_request(&self, actor: &Actor, id: &str, serving: &str) -> DeleteMachineRequest {
        DeleteMachineRequest {
            idempotency_key: self.unique("key"),
            token: Some(self.cluster_token(actor, serving)),
            machine_id: id.to_string(),
        }
    }

    /// Sends a delete as it is.
    pub async fn send_delete(&self, request: DeleteMachineRequest) -> Result<Machine, Status> {
        let mut client = self.client.clone();
        self.bounded(client.delete_machine(self.with_deadline(request)))
            .await
            .and_then(machine_of)
    }

    /// Deletes `id`, which serves `serving` ("" when it is idle).
    pub async fn delete(&self, actor: &Actor, id: &str, serving: &str) -> Result<Machine, Status> {
        self.send_delete(self.delete_request(actor, id, serving))
            .await
    }

    /// A domain claim by `actor` (its domain grant and slice table).
    pub fn claim_request(&self, actor: &Actor) -> ClaimDomainRequest {
        ClaimDomainRequest {
            idempotency_key: self.unique("key"),
            token: Some(self.token(actor)),
        }
    }

    /// Sends a domain claim as it is.
    pub async fn send_claim(&self, request: ClaimDomainRequest) -> Result<(), Status> {
        let mut client = self.client.clone();
        self.bounded(client.claim_domain(self.with_deadline(request)))
            .await
            .map(|_| ())
    }

    /// `actor` claims its domain.
    pub async fn claim(&self, actor: &Actor) -> Result<(), Status> {
        self.send_claim(self.claim_request(actor)).await
    }

    /// A cluster adoption by `actor`, under its grant for `cluster`.
    pub fn adopt_request(&self, actor: &Actor, cluster: &str) -> AdoptClusterRequest {
        AdoptClusterRequest {
            idempotency_key: self.unique("key"),
            token: Some(self.cluster_token(actor, cluster)),
        }
    }

    /// Sends a cluster adoption as it is; answers the cluster's machines.
    pub async fn send_adopt(&self, request: AdoptClusterRequest) -> Result<Vec<Machine>, Status> {
        let mut client = self.client.clone();
        self.bounded(client.adopt_cluster(self.with_deadline(request)))
            .await
            .map(|r| r.machines)
    }

    /// `actor` adopts `cluster` under its grant for it.
    pub async fn adopt_cluster(
        &self,
        actor: &Actor,
        cluster: &str,
    ) -> Result<Vec<Machine>, Status> {
        self.send_adopt(self.adopt_request(actor, cluster)).await
    }

    /// `GetMachine`.
    pub async fn get(&self, id: &str) -> Result<Machine, Status> {
        let mut client = self.client.clone();
        self.bounded(
            client.get_machine(self.with_deadline(GetMachineRequest { id: id.to_string() })),
        )
        .await
        .and_then(machine_of)
    }

    /// One `ListMachines` page.
    pub async fn list_page(
        &self,
        request: ListMachinesRequest,
    ) -> Result<(Vec<Machine>, String), Status> {
        let mut client = self.client.clone();
        self.bounded(client.list_machines(self.with_deadline(request)))
            .await
            .map(|r| (r.machines, r.next_cursor))
    }

    /// Every machine of `domain` (and `owner`, "" for any), page by page; fails on a cursor
    /// that repeats or a machine listed twice.
    pub async fn list_all(
        &self,
        domain: &str,
        owner: &str,
        limit: u32,
    ) -> Result<Vec<Machine>, Failure> {
        self.list_where(domain, owner, "", limit).await
    }

    /// Every machine matching all of `domain`, `owner` and `cluster` ("" for any), page by
    /// page; fails on a cursor that repeats, a machine listed twice or one that does not
    /// match the filters.
    pub async fn list_where(
        &self,
        domain: &str,
        owner: &str,
        cluster: &str,
        limit: u32,
    ) -> Result<Vec<Machine>, Failure> {
        let filters = format!("domain {domain:?}, owner {owner:?}, cluster {cluster:?}");
        let mut machines: Vec<Machine> = Vec::new();
        let mut seen_cursors = std::collections::HashSet::new();
        let mut seen_ids = std::collections::HashSet::new();
        let mut cursor = String::new();
        for _ in 0..100_000 {
            let (page, next) = self
                .list_page(ListMachinesRequest {
                    domain: domain.to_string(),
                    owner_shard: owner.to_string(),
                    cluster: cluster.to_string(),
                    cursor: cursor.clone(),
                    limit,
                })
                .await
                .or_else(|s| fail(format!("ListMachines({filters}): {}", show_status(&s))))?;
            ensure!(
                limit == 0 || page.len() <= limit as usize,
                "ListMachines({filters}) returned {} machines for limit {limit}",
                page.len()
            );
            for machine in page {
                ensure!(
                    seen_ids.insert(machine.id.clone()),
                    "ListMachines({filters}) listed machine {} twice",
                    machine.id
                );
                ensure!(
                    domain.is_empty() || machine.domain == domain,
                    "ListMachines({filters}) listed machine {} of domain {:?}",
                    machine.id,
                    machine.domain
                );
                ensure!(
                    owner.is_empty() || machine.owner_shard == owner,
                    "ListMachines({filters}) listed machine {} of owner {:?}",
                    machine.id,
                    machine.owner_shard
                );
                ensure!(
                    cluster.is_empty() || machine.cluster == cluster,
                    "ListMachines({filters}) listed machine {} configured for cluster {:?}",
                    machine.id,
                    machine.cluster
                );
                machines.push(machine);
            }
            if next.is_empty() {
                return Ok(machines);
            }
            ensure!(
                seen_cursors.insert(next.clone()),
                "ListMachines({filters}) returned cursor {next:?} twice: paging would never end"
            );
            cursor = next;
        }
        fail(format!(
            "ListMachines({filters}) did not end after 100,000 pages"
        ))
    }

    /// Live machines of `domain`.
    pub async fn live_in(&self, domain: &str) -> Result<Vec<Machine>, Failure> {
        Ok(self
            .list_all(domain, "", 0)
            .await?
            .into_iter()
            .filter(live)
            .collect())
    }

    /// Checks that `machine` (just answered by a call) reads back the same through
    /// `GetMachine` and `ListMachines`, or newer (a higher version) if it moved on.
    pub async fn consistent(&self, what: &str, machine: &Machine) -> Verdict {
        let got = match self.get(&machine.id).await {
            Ok(got) => got,
            Err(status) => {
                return fail(format!(
                    "{what}: GetMachine({}) after the call answered {}",
                    machine.id,
                    show_status(&status)
                ));
            }
        };
        same_or_newer(&format!("{what}: GetMachine"), machine, &got)?;
        let listed = self.list_all(&machine.domain, "", 0).await?;
        let Some(found) = listed.iter().find(|m| m.id == machine.id) else {
            return fail(format!(
                "{what}: machine {} is missing from ListMachines(domain {:?}) ({} listed)",
                machine.id,
                machine.domain,
                listed.len()
            ));
        };
        same_or_newer(&format!("{what}: ListMachines"), machine, found)
    }

    /// Polls `GetMachine` until `id` leaves its transitional state (bounded by
    /// [`Limits::settle`]).
    pub async fn settle(&self, id: &str) -> Result<Machine, Failure> {
        let deadline = Instant::now() + self.limits.settle;
        loop {
            let machine = self
                .get(id)
                .await
                .or_else(|s| fail(format!("GetMachine({id}): {}", show_status(&s))))?;
            if settled(&machine) {
                return Ok(machine);
            }
            if Instant::now() >= deadline {
                return fail(format!(
                    "machine {id} stayed {:?} for {:?} (--settle-timeout-ms)",
                    MachineState::try_from(machine.state).unwrap_or_default(),
                    self.limits.settle
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes every live machine `actor` owns, in any domain (under its grant for the
    /// cluster a machine serves), so later checks start clean.
    pub async fn clean_up(&self, actor: &Actor) -> Verdict {
        for machine in self.list_all("", &actor.shard, 0).await? {
            if live(&machine) {
                success(
                    &format!(
                        "cleaning up: DeleteMachine({}) by its owner {} (serving cluster {:?})",
                        machine.id, actor.shard, machine.cluster
                    ),
                    self.delete(actor, &machine.id, &machine.cluster).await,
                )?;
            }
        }
        Ok(())
    }
}

fn machine_of(response: ballast_protocol::providerpb::MachineResponse) -> Result<Machine, Status> {
    response
        .machine
        .ok_or_else(|| Status::internal("the answer carries no machine"))
}

/// `got` (read later) is `expected` or a newer version of it; the fields a call sets agree.
pub fn same_or_newer(what: &str, expected: &Machine, got: &Machine) -> Verdict {
    ensure!(
        got.id == expected.id,
        "{what}: asked for machine {}, got {}",
        expected.id,
        got.id
    );
    ensure!(
        got.version >= expected.version,
        "{what}: machine {} went back from version {} to {}",
        expected.id,
        expected.version,
        got.version
    );
    if got.version == expected.version {
        ensure!(
            got == expected,
            "{what}: machine {} at the same version {} reads differently:\n  answered {}\n  read     {}",
            expected.id,
            expected.version,
            brief(expected),
            brief(got)
        );
    }
    for (field, a, b) in [
        ("domain", &expected.domain, &got.domain),
        ("shape", &expected.shape, &got.shape),
        (
            "quota_provider",
            &expected.quota_provider,
            &got.quota_provider,
        ),
        ("region", &expected.region, &got.region),
    ] {
        ensure!(
            a == b,
            "{what}: machine {} changed {field} from {a:?} to {b:?}",
            expected.id
        );
    }
    Ok(())
}
