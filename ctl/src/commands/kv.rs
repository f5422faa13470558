//! `ballastctl kv ...` and `ballastctl lease ...`: the coordination KV through its etcd API.

use anyhow::{Context as _, bail};
use ballast_protocol::coordination::Coordinator;
use ballast_protocol::coordination::prefix_end;
use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::mvccpb;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::output::{Rendered, table};

/// KV commands.
#[derive(Subcommand, Debug)]
pub enum KvCmd {
    /// Set a key.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Attach to this lease (hex id from `lease grant`).
        #[arg(long)]
        lease: Option<String>,
    },
    /// Read a key or a prefix.
    Get {
        /// Key (or prefix with --prefix).
        key: String,
        /// Every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// At most this many keys.
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Read as of this revision.
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// Keys only.
        #[arg(long)]
        keys_only: bool,
    },
    /// Delete a key or a prefix.
    Del {
        /// Key (or prefix with --prefix).
        key: String,
        /// Every key starting with KEY.
        #[arg(long)]
        prefix: bool,
    },
    /// Print changes to a key or prefix as they happen.
    Watch {
        /// Key (or prefix with --prefix).
        key: String,
        /// Every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (replaying history).
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// Stop after this many events (0 = run until interrupted).
        #[arg(long, default_value_t = 0)]
        count: usize,
    },
    /// Atomic transaction: if every --if holds, run the --then ops, else the --else ops.
    /// Compares: `value(KEY) = V`, `version(KEY) > N`, `create(KEY) = N`, `mod(KEY) < N`,
    /// `lease(KEY) != N`. Ops: `put KEY VALUE`, `get KEY`, `del KEY`.
    Txn {
        /// A compare (repeatable).
        #[arg(long = "if")]
        compares: Vec<String>,
        /// An op when all compares hold (repeatable).
        #[arg(long = "then")]
        success: Vec<String>,
        /// An op otherwise (repeatable).
        #[arg(long = "else")]
        failure: Vec<String>,
    },
}

/// Lease commands.
#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    /// Create a lease of TTL seconds.
    Grant {
        /// Seconds.
        ttl: i64,
    },
    /// Keep a lease alive (once, or every TTL/3 until interrupted).
    Keepalive {
        /// Lease id (hex).
        id: String,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Revoke a lease and delete its keys.
    Revoke {
        /// Lease id (hex).
        id: String,
    },
    /// List leases.
    List,
}

fn lease_id(text: &str) -> anyhow::Result<i64> {
    i64::from_str_radix(text.trim_start_matches("0x"), 16)
        .with_context(|| format!("lease id {text:?} is not a hex number"))
}

fn range_end(key: &str, prefix: bool) -> Vec<u8> {
    if prefix {
        prefix_end(key.as_bytes())
    } else {
        Vec::new()
    }
}

fn kv_json(kv: &mvccpb::KeyValue) -> Value {
    json!({
        "key": String::from_utf8_lossy(&kv.key), "value": String::from_utf8_lossy(&kv.value),
        "create_revision": kv.create_revision, "mod_revision": kv.mod_revision,
        "version": kv.version, "lease": format!("{:x}", kv.lease),
    })
}

fn compare(text: &str) -> anyhow::Result<epb::Compare> {
    use epb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let (field, rest) = text
        .split_once('(')
        .with_context(|| format!("compare {text:?}: expected field(KEY) OP VALUE"))?;
    let (key, rest) = rest
        .split_once(')')
        .with_context(|| format!("compare {text:?}: missing ')'"))?;
    let rest = rest.trim();
    let (op, operand) = ["!=", "=", ">", "<"]
        .iter()
        .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v.trim())))
        .with_context(|| format!("compare {text:?}: operator must be =, !=, > or <"))?;
    let number = || -> anyhow::Result<i64> {
        operand
            .parse()
            .with_context(|| format!("compare {text:?}: {operand:?} is not a number"))
    };
    let (target, union) = match field.trim() {
        "value" => (
            T::Value,
            U::Value(operand.trim_matches('"').as_bytes().to_vec()),
        ),
        "version" => (T::Version, U::Version(number()?)),
        "create" => (T::Create, U::CreateRevision(number()?)),
        "mod" => (T::Mod, U::ModRevision(number()?)),
        "lease" => (T::Lease, U::Lease(lease_id(operand)?)),
        other => bail!("compare {text:?}: unknown field {other:?}"),
    };
    let result = match op {
        "=" => R::Equal,
        "!=" => R::NotEqual,
        ">" => R::Greater,
        _ => R::Less,
    };
    Ok(epb::Compare {
        result: result as i32,
        target: target as i32,
        key: key.trim_matches('"').as_bytes().to_vec(),
        target_union: Some(union),
        range_end: Vec::new(),
    })
}

fn op(text: &str) -> anyhow::Result<epb::RequestOp> {
    use epb::request_op::Request;
    let words: Vec<&str> = text.split_whitespace().collect();
    let request = match words.as_slice() {
        ["put", key, value] => Request::RequestPut(epb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        ["get", key] => Request::RequestRange(epb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        }),
        ["del", key] => Request::RequestDeleteRange(epb::DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        }),
        _ => bail!("op {text:?}: expected `put KEY VALUE`, `get KEY` or `del KEY`"),
    };
    Ok(epb::RequestOp {
        request: Some(request),
    })
}

/// Runs a KV command.
pub async fn run_kv(coordinator: &Coordinator, cmd: KvCmd) -> anyhow::Result<Rendered> {
    let mut kv = coordinator.kv();
    match cmd {
        KvCmd::Put { key, value, lease } => {
            let lease = lease.as_deref().map(lease_id).transpose()?.unwrap_or(0);
            let r = kv
                .put(epb::PutRequest {
                    key: key.into_bytes(),
                    value: value.into_bytes(),
                    lease,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let revision = r.header.map(|h| h.revision).unwrap_or(0);
            Ok(Rendered {
                json: json!({ "revision": revision }),
                human: format!("OK (revision {revision})"),
            })
        }
        KvCmd::Get {
            key,
            prefix,
            limit,
            rev,
            keys_only,
        } => {
            let r = kv
                .range(epb::RangeRequest {
                    range_end: range_end(&key, prefix),
                    key: key.into_bytes(),
                    limit,
                    revision: rev,
                    keys_only,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let rows = r
                .kvs
                .iter()
                .map(|kv| {
                    vec![
                        String::from_utf8_lossy(&kv.key).to_string(),
                        String::from_utf8_lossy(&kv.value).to_string(),
                        kv.create_revision.to_string(),
                        kv.mod_revision.to_string(),
                        kv.version.to_string(),
                        if kv.lease == 0 {
                            String::new()
                        } else {
                            format!("{:x}", kv.lease)
                        },
                    ]
                })
                .collect();
            Ok(Rendered {
                json: json!({
                    "revision": r.header.map(|h| h.revision).unwrap_or(0),
                    "count": r.count, "more": r.more,
                    "kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>(),
                }),
                human: table(
                    &["key", "value", "created", "modified", "version", "lease"],
                    rows,
                ),
            })
        }
        KvCmd::Del { key, prefix } => {
            let r = kv
                .delete_range(epb::DeleteRangeRequest {
                    range_end: range_end(&key, prefix),
                    key: key.into_bytes(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok(Rendered {
                json: json!({ "deleted": r.deleted, "revision": r.header.map(|h| h.revision).unwrap_or(0) }),
                human: format!("{} deleted", r.deleted),
            })
        }
        KvCmd::Watch {
            key,
            prefix,
            rev,
            count,
        } => {
            let mut stream = coordinator
                .watch_one(epb::WatchCreateRequest {
                    range_end: range_end(&key, prefix),
                    key: key.into_bytes(),
                    start_revision: rev,
                    prev_kv: true,
                    ..Default::default()
                })
                .await?;
            let mut seen = Vec::new();
            while let Some(response) = stream.message().await? {
                if response.canceled {
                    bail!("watch cancelled: {}", response.cancel_reason);
                }
                for event in response.events {
                    let kind = if event.r#type == mvccpb::event::EventType::Delete as i32 {
                        "DELETE"
                    } else {
                        "PUT"
                    };
                    let kv = event.kv.unwrap_or_default();
                    println!(
                        "{kind} {} {} (revision {})",
                        String::from_utf8_lossy(&kv.key),
                        String::from_utf8_lossy(&kv.value),
                        kv.mod_revision
                    );
                    seen.push(json!({"type": kind, "kv": kv_json(&kv)}));
                    if count > 0 && seen.len() >= count {
                        return Ok(Rendered {
                            json: json!({ "events": seen }),
                            human: String::new(),
                        });
                    }
                }
            }
            Ok(Rendered {
                json: json!({ "events": seen }),
                human: String::new(),
            })
        }
        KvCmd::Txn {
            compares,
            success,
            failure,
        } => {
            let request = epb::TxnRequest {
                compare: compares
                    .iter()
                    .map(|c| compare(c))
                    .collect::<Result<_, _>>()?,
                success: success.iter().map(|o| op(o)).collect::<Result<_, _>>()?,
                failure: failure.iter().map(|o| op(o)).collect::<Result<_, _>>()?,
            };
            let r = kv.txn(request).await?.into_inner();
            let mut lines = vec![if r.succeeded { "SUCCESS" } else { "FAILURE" }.to_string()];
            let mut results = Vec::new();
            for response in &r.responses {
                use epb::response_op::Response;
                match &response.response {
                    Some(Response::ResponseRange(range)) => {
                        for kv in &range.kvs {
                            lines.push(format!(
                                "{} = {}",
                                String::from_utf8_lossy(&kv.key),
                                String::from_utf8_lossy(&kv.value)
                            ));
                        }
                        results.push(
                            json!({"kvs": range.kvs.iter().map(kv_json).collect::<Vec<_>>()}),
                        );
                    }
                    Some(Response::ResponsePut(_)) => {
                        lines.push("OK".into());
                        results.push(json!({"put": true}));
                    }
                    Some(Response::ResponseDeleteRange(d)) => {
                        lines.push(format!("{} deleted", d.deleted));
                        results.push(json!({"deleted": d.deleted}));
                    }
                    _ => {}
                }
            }
            Ok(Rendered {
                json: json!({
                    "succeeded": r.succeeded, "responses": results,
                    "revision": r.header.map(|h| h.revision).unwrap_or(0),
                }),
                human: lines.join("\n"),
            })
        }
    }
}

/// Runs a lease command.
pub async fn run_lease(coordinator: &Coordinator, cmd: LeaseCmd) -> anyhow::Result<Rendered> {
    let mut lease = coordinator.lease();
    match cmd {
        LeaseCmd::Grant { ttl } => {
            let r = lease
                .lease_grant(epb::LeaseGrantRequest { ttl, id: 0 })
                .await?
                .into_inner();
            Ok(Rendered {
                json: json!({ "id": format!("{:x}", r.id), "ttl": r.ttl }),
                human: format!("lease {:x} granted with TTL {} s", r.id, r.ttl),
            })
        }
        LeaseCmd::Keepalive { id, once } => {
            let id = lease_id(&id)?;
            loop {
                let mut answers = lease
                    .lease_keep_alive(tokio_stream::once(epb::LeaseKeepAliveRequest { id }))
                    .await?
                    .into_inner();
                let ttl = answers.message().await?.map(|r| r.ttl).unwrap_or(0);
                if ttl <= 0 {
                    bail!("lease {id:x} not found (expired or revoked)");
                }
                if once {
                    return Ok(Rendered {
                        json: json!({ "id": format!("{id:x}"), "ttl": ttl }),
                        human: format!("lease {id:x} kept alive, TTL {ttl} s"),
                    });
                }
                println!("lease {id:x} kept alive, TTL {ttl} s");
                tokio::time::sleep(std::time::Duration::from_millis((ttl as u64 * 1000) / 3)).await;
            }
        }
        LeaseCmd::Revoke { id } => {
            let id = lease_id(&id)?;
            lease.lease_revoke(epb::LeaseRevokeRequest { id }).await?;
            Ok(Rendered {
                json: json!({ "revoked": format!("{id:x}") }),
                human: format!("lease {id:x} revoked"),
            })
        }
        LeaseCmd::List => {
            let r = lease
                .lease_leases(epb::LeaseLeasesRequest {})
                .await?
                .into_inner();
            let ids: Vec<String> = r.leases.iter().map(|l| format!("{:x}", l.id)).collect();
            Ok(Rendered {
                json: json!({ "leases": ids }),
                human: table(&["lease"], ids.iter().map(|i| vec![i.clone()]).collect()),
            })
        }
    }
}
