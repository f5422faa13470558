//! The clients of a chaos run: each loops over random operations on a few registers — KV keys
//! through the etcd API (put, get, compare-and-set as a transaction) and domain owners through
//! the fleet API (assign with a request id, linearizable listing) — against random replicas,
//! and records invoke time, return time and outcome of each.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ballast_protocol::client::{BallastClient, ClientConfig, ClientError};
use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::kv_client::KvClient;
use ballast_protocol::pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::checker::{Input, Operation, Output};

/// A register the clients work on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Register {
    /// A key of the etcd-compatible KV.
    Key(String),
    /// The owner of a topology domain.
    Domain(String),
}

/// One recorded operation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    /// Register touched.
    pub register: Register,
    /// The operation.
    pub op: Operation,
}

/// Shards the domain writes choose from (registered before the runs).
pub const SHARDS: [&str; 3] = ["chaos-s1", "chaos-s2", "chaos-s3"];

/// What every client of one schedule shares.
pub struct Workload {
    /// Registers of this schedule.
    pub registers: Vec<Register>,
    /// Replica addresses.
    pub endpoints: Vec<String>,
    /// Start of the schedule (time zero of the history).
    pub started: Instant,
    /// Set when the clients should stop.
    pub stop: AtomicBool,
    /// Read KV keys with `serializable` (local, possibly stale) reads: not linearizable, so
    /// the checker must find violations — a check of the checker.
    pub stale_reads: bool,
    /// Everything recorded so far.
    pub history: Mutex<Vec<Record>>,
    /// Bindings of brand-new clusters and what their acknowledgement said (`changed`), or
    /// `None` when the outcome is unknown. A retried write applied twice would answer
    /// `changed: false` for a cluster nobody bound before.
    pub binds: Mutex<Vec<(String, Option<bool>)>>,
}

impl Workload {
    fn now(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Operations recorded so far with a known outcome.
    pub fn definite(&self) -> usize {
        self.history
            .lock()
            .iter()
            .filter(|r| r.op.ret.is_some())
            .count()
    }

    fn record(&self, register: &Register, op: Operation) {
        self.history.lock().push(Record {
            register: register.clone(),
            op,
        });
    }
}

/// A lazily connected channel to one replica for the etcd API, with short timeouts.
pub(super) fn kv_channel(address: &str) -> Channel {
    Endpoint::from_shared(format!("http://{address}"))
        .expect("replica addresses are valid URIs")
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(1))
        .connect_lazy()
}

/// A failure after which the request certainly did not reach the state machine: the
/// connection of a single attempt was never made, or the request was refused as invalid.
fn not_applied(status: &tonic::Status) -> bool {
    match status.code() {
        Code::InvalidArgument | Code::NotFound | Code::AlreadyExists | Code::PermissionDenied => {
            true
        }
        Code::Unavailable => status.message().contains("tcp connect error"),
        _ => false,
    }
}

/// Runs client `client` until the workload stops.
pub async fn client(workload: Arc<Workload>, client: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (client as u64).wrapping_mul(0x9e37_79b9));
    let channels: Vec<Channel> = workload.endpoints.iter().map(|a| kv_channel(a)).collect();
    let mut config = ClientConfig::new(workload.endpoints.clone());
    config.attempt_timeout = Duration::from_millis(500);
    config.retry_budget = Duration::from_secs(1);
    let fleet = match BallastClient::new(config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("chaos client {client} cannot start: {e}");
            return;
        }
    };
    let mut seq = 0u64;
    let mut last_seen: std::collections::HashMap<Register, String> = Default::default();
    while !workload.stop.load(Ordering::Relaxed) {
        seq += 1;
        let register = workload.registers[rng.random_range(0..workload.registers.len())].clone();
        let value = format!("c{client}-{seq}");
        let roll: u32 = rng.random_range(0..100);
        if matches!(register, Register::Domain(_)) && (80..90).contains(&roll) {
            let cluster = format!("chaos-{seed}-c{client}-{seq}");
            let shard = SHARDS[rng.random_range(0..SHARDS.len())];
            let answer = fleet
                .write(pb::Command {
                    command: Some(pb::command::Command::BindCluster(pb::BindCluster {
                        cluster: cluster.clone(),
                        shard: shard.to_string(),
                    })),
                })
                .await;
            let outcome = match answer {
                Ok(r) => Some(Some(r.changed)),
                Err(ClientError::Rejected(s)) if not_applied(&s) => None,
                Err(_) => Some(None),
            };
            if let Some(outcome) = outcome {
                workload.binds.lock().push((cluster, outcome));
            }
            continue;
        }
        if matches!(register, Register::Domain(_)) && roll >= 90 {
            // Re-slice the quota, often beyond its total (refused): the invariant checks
            // that no accepted mix ever exceeds it. Not a register, so not recorded.
            let slices = SHARDS
                .iter()
                .map(|s| pb::QuotaSlice {
                    shard: s.to_string(),
                    amount: rng.random_range(0..50),
                })
                .collect();
            let _ = fleet
                .write(pb::Command {
                    command: Some(pb::command::Command::SetQuotaSlices(pb::SetQuotaSlices {
                        provider: "chaos".into(),
                        region: "r1".into(),
                        slices,
                    })),
                })
                .await;
            continue;
        }
        let call = workload.now();
        let (input, output) = match &register {
            Register::Key(key) => {
                let mut kv = KvClient::new(channels[rng.random_range(0..channels.len())].clone());
                let expected = last_seen.get(&register).cloned();
                match (roll, expected) {
                    (0..35, _) | (75.., None) => {
                        let answer = kv
                            .put(epb::PutRequest {
                                key: key.clone().into_bytes(),
                                value: value.clone().into_bytes(),
                                ..Default::default()
                            })
                            .await;
                        (Input::Put(value.clone()), answer.map(|_| Output::Put))
                    }
                    (35..75, _) => {
                        let answer = kv
                            .range(epb::RangeRequest {
                                key: key.clone().into_bytes(),
                                serializable: workload.stale_reads,
                                ..Default::default()
                            })
                            .await;
                        let output = answer.map(|r| {
                            Output::Get(
                                r.into_inner()
                                    .kvs
                                    .first()
                                    .map(|kv| String::from_utf8_lossy(&kv.value).to_string()),
                            )
                        });
                        (Input::Get, output)
                    }
                    (_, Some(expected)) => {
                        let answer = kv.txn(cas(key, &expected, &value)).await;
                        let output = answer.map(|r| Output::Cas(r.into_inner().succeeded));
                        (
                            Input::Cas {
                                expected,
                                new: value.clone(),
                            },
                            output,
                        )
                    }
                }
            }
            Register::Domain(domain) => {
                if roll < 50 {
                    let shard = SHARDS[rng.random_range(0..SHARDS.len())].to_string();
                    let answer = fleet.write(assign(domain, &shard)).await;
                    (
                        Input::Put(shard),
                        answer.map(|_| Output::Put).map_err(status),
                    )
                } else {
                    let answer = all_domains(&fleet).await;
                    let output = answer.map_err(status).map(|domains| {
                        Output::Get(
                            domains
                                .iter()
                                .find(|d| &d.domain == domain)
                                .map(|d| d.shard.clone()),
                        )
                    });
                    (Input::Get, output)
                }
            }
        };
        let ret = workload.now();
        let op = match output {
            Ok(output) => {
                match &output {
                    Output::Get(Some(v)) => {
                        last_seen.insert(register.clone(), v.clone());
                    }
                    Output::Put => {
                        if let Input::Put(v) = &input {
                            last_seen.insert(register.clone(), v.clone());
                        }
                    }
                    _ => {}
                }
                Some(Operation {
                    client,
                    call,
                    ret: Some(ret),
                    input,
                    output,
                })
            }
            Err(status) if not_applied(&status) => None,
            Err(_) => Some(Operation {
                client,
                call,
                ret: None,
                input,
                output: Output::Unknown,
            }),
        };
        if let Some(op) = op {
            workload.record(&register, op);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
    }
}

/// A fleet client error as a status. The client retries across replicas, so only a refusal
/// (`Rejected`) says anything definite; running out of retries says nothing about whether an
/// earlier attempt was applied, whatever the last attempt's error was.
fn status(error: ClientError) -> tonic::Status {
    match error {
        ClientError::Rejected(status) => status,
        other => tonic::Status::deadline_exceeded(format!("outcome unknown: {other}")),
    }
}

/// Every domain and its owner, read linearizably.
pub async fn all_domains(client: &BallastClient) -> Result<Vec<pb::DomainAssignment>, ClientError> {
    client
        .fleet(|mut c, req| async move {
            c.list_domains(req.wrap(pb::ListDomainsRequest {
                options: None,
                shard: String::new(),
                after: String::new(),
                limit: 10_000,
            }))
            .await
        })
        .await
        .map(|r| r.domains)
}

/// Put `new` if `key` holds `expected`.
pub fn cas(key: &str, expected: &str, new: &str) -> epb::TxnRequest {
    use epb::compare::{CompareResult, CompareTarget, TargetUnion};
    epb::TxnRequest {
        compare: vec![epb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::Value(expected.as_bytes().to_vec())),
        }],
        success: vec![epb::RequestOp {
            request: Some(epb::request_op::Request::RequestPut(epb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: new.as_bytes().to_vec(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    }
}

/// Assigns `domain` to `shard`, moving it if another shard owns it.
pub fn assign(domain: &str, shard: &str) -> pb::Command {
    pb::Command {
        command: Some(pb::command::Command::AssignDomains(pb::AssignDomains {
            assignments: vec![pb::DomainAssignment {
                domain: domain.to_string(),
                shard: shard.to_string(),
            }],
            allow_move: true,
        })),
    }
}
