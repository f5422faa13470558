//! `ballastctl cluster ...`

use ballast_protocol::pb;
use clap::Subcommand;
use serde_json::json;

use crate::Context;
use crate::output::{Rendered, table};

/// Cluster commands.
#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Status of the replica reached: role, indexes, placement, fleet counts.
    Status,
    /// Members with AZ, role and replication lag.
    Members,
    /// The current leader.
    Leader,
    /// Move leadership to another voter.
    TransferLeader {
        /// Target replica id.
        id: u64,
    },
    /// Remove a replica from the cluster.
    Remove {
        /// Replica id.
        id: u64,
    },
    /// Make a learner (a replica started with `--learner`) a voter, once it holds the log.
    Promote {
        /// Replica id.
        id: u64,
    },
    /// Take a snapshot on the replica reached (compacting its log).
    Snapshot,
    /// Join tokens: a new replica needs one (`ballast-coord --join-token`).
    #[command(subcommand)]
    Token(TokenCmd),
}

/// `ballastctl cluster token ...`
#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a single-use join token; printed once, the cluster keeps only its hash.
    Create {
        /// How long it stays usable: seconds, or with a unit (90s, 30m, 1h, 2d); at most 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
    },
}

/// Seconds in `90`, `90s`, `30m`, `1h` or `2d`.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?}: use s, m, h or d")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{text:?} is not a positive duration such as 30m or 1h"))
}

async fn status(ctx: &Context) -> anyhow::Result<pb::StatusResponse> {
    let options = ctx.read_options();
    Ok(ctx
        .client
        .cluster(
            |mut c, req| async move { c.status(req.wrap(pb::StatusRequest { options })).await },
        )
        .await?)
}

fn member_json(m: &pb::Member) -> serde_json::Value {
    json!({
        "id": m.id, "address": m.address, "az": m.az, "role": m.role,
        "leader": m.leader, "matched_index": m.matched_index, "lag": m.lag,
        "health": m.health, "last_contact_ms": m.last_contact_ms,
    })
}

fn members_table(members: &[pb::Member]) -> String {
    table(
        &[
            "id", "address", "az", "role", "leader", "health", "matched", "lag",
        ],
        members
            .iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    m.address.clone(),
                    m.az.clone(),
                    m.role.clone(),
                    if m.leader { "*".into() } else { String::new() },
                    m.health.clone(),
                    m.matched_index.to_string(),
                    m.lag.to_string(),
                ]
            })
            .collect(),
    )
}

fn dr_line(dr: &pb::DrStatus, restore_epoch: u64) -> String {
    let epoch = if restore_epoch > 0 {
        format!(" (restore epoch {restore_epoch})")
    } else {
        String::new()
    };
    if dr.exports_total == 0 && dr.failures_total == 0 {
        let schedule = if dr.destination.is_empty() {
            "no scheduled exports".to_string()
        } else {
            format!("every {} s to {}", dr.interval_seconds, dr.destination)
        };
        return format!("no export by this replica yet; {schedule}{epoch}");
    }
    format!(
        "{} exports, {} failures; last {} ({} bytes, {} ms){}{}",
        dr.exports_total,
        dr.failures_total,
        dr.last_archive,
        dr.last_size_bytes,
        dr.last_duration_ms,
        if dr.last_error.is_empty() {
            String::new()
        } else {
            format!("; last error: {}", dr.last_error)
        },
        epoch
    )
}

/// Runs a cluster command.
pub async fn run(ctx: &Context, cmd: ClusterCmd) -> anyhow::Result<Rendered> {
    match cmd {
        ClusterCmd::Status => {
            let s = status(ctx).await?;
            // The status page's shard table: the same facts, one more read.
            let shards = super::shard::list(ctx).await?.shards;
            let h = s.header.clone().unwrap_or_default();
            let p = s.placement.clone().unwrap_or_default();
            let dr = s.dr.clone().unwrap_or_default();
            let json = json!({
                "cluster_id": h.cluster_id, "id": h.member_id, "az": s.az, "address": s.address,
                "state": s.state, "leader": h.leader_id, "leader_address": s.leader_address,
                "term": h.raft_term, "revision": h.revision,
                "applied_index": s.applied_index, "last_log_index": s.last_log_index,
                "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
                "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
                "membership_changing": s.membership_changing,
                "placement": { "healthy": p.healthy, "voter_azs": p.voter_azs, "message": p.message },
                "counts": { "shards": s.shard_count, "domains": s.domain_count,
                    "bindings": s.binding_count, "quotas": s.quota_count, "providers": s.provider_count },
                "restore_epoch": h.restore_epoch,
                "warnings": s.warnings,
                "evacuation": s.evacuation.as_ref().map(|e| json!({
                    "mode": e.mode, "reason": e.reason, "lapsed": e.lapsed,
                    "evacuating": e.evacuating, "allowance_ms": e.allowance_ms,
                    "slowed_azs": e.slowed_azs, "grace_until_unix_ms": e.grace_until_unix_ms,
                    "interval_ms": e.interval_ms, "rounds_carried_over": e.rounds_carried_over,
                    "rounds": e.rounds.iter().map(round_json).collect::<Vec<_>>(),
                })),
                "shards": shards.iter().map(super::shard::shard_json).collect::<Vec<_>>(),
                "dr": {
                    "destination": dr.destination, "interval_seconds": dr.interval_seconds,
                    "encrypted": dr.encrypted, "last_success_unix_ms": dr.last_success_unix_ms,
                    "last_duration_ms": dr.last_duration_ms, "last_size_bytes": dr.last_size_bytes,
                    "last_archive": dr.last_archive, "exports_total": dr.exports_total,
                    "failures_total": dr.failures_total, "last_error": dr.last_error,
                },
            });
            let human = format!(
                "cluster {}\nreplica {} ({}, {}) is {}; leader {} at {}; term {}; revision {}\n\
                 log: applied {} last {} snapshot {} purged {}\n\
                 placement: {} ({}){}\n\
                 fleet: {} shards, {} domains, {} bindings, {} quotas, {} providers\n\
                 dr: {}\n\n{}",
                h.cluster_id,
                h.member_id,
                s.address,
                s.az,
                s.state,
                h.leader_id,
                s.leader_address,
                h.raft_term,
                h.revision,
                s.applied_index,
                s.last_log_index,
                s.snapshot_index,
                s.purged_index,
                if p.healthy { "healthy" } else { "AT RISK" },
                p.message,
                if s.membership_changing {
                    "; a member is being added or removed"
                } else {
                    ""
                },
                s.shard_count,
                s.domain_count,
                s.binding_count,
                s.quota_count,
                s.provider_count,
                dr_line(&dr, h.restore_epoch),
                members_table(&s.members),
            );
            let human = match &s.evacuation {
                Some(e) => format!(
                    "{human}\nevacuation: {} — {} (lapsed: {}; evacuating: {}; leases extended by {} ms)",
                    e.mode,
                    e.reason,
                    list_or_none(&e.lapsed),
                    list_or_none(&e.evacuating),
                    e.allowance_ms
                ),
                None => human,
            };
            let human = match s.evacuation.as_ref().and_then(|e| e.rounds.last()) {
                Some(r) => format!(
                    "{human}\nlast round that acted: {} at {} ms (Unix), {} proposals in {} ms: \
                     {} domains, {} clusters, {} slice tables{}",
                    r.cause,
                    r.started_unix_ms,
                    r.proposals,
                    r.duration_ms,
                    r.domains,
                    r.clusters,
                    r.quotas,
                    if r.carried_over {
                        "; work left for the next round"
                    } else {
                        ""
                    }
                ),
                None => human,
            };
            let human = if s.warnings.is_empty() {
                human
            } else {
                let list: Vec<String> =
                    s.warnings.iter().map(|w| format!("warning: {w}")).collect();
                format!("{human}\n{}", list.join("\n"))
            };
            let human = if shards.is_empty() {
                human
            } else {
                format!("{human}\n\n{}", super::shard::shards_table(&shards))
            };
            Ok(Rendered { json, human })
        }
        ClusterCmd::Members => {
            let s = status(ctx).await?;
            Ok(Rendered {
                json: json!({ "members": s.members.iter().map(member_json).collect::<Vec<_>>() }),
                human: members_table(&s.members),
            })
        }
        ClusterCmd::Leader => {
            let s = status(ctx).await?;
            let h = s.header.unwrap_or_default();
            let leader = s.members.iter().find(|m| m.leader);
            match leader {
                Some(m) => Ok(Rendered {
                    json: json!({ "leader": m.id, "address": m.address, "az": m.az, "term": h.raft_term }),
                    human: format!("{} {} {} (term {})", m.id, m.address, m.az, h.raft_term),
                }),
                None => anyhow::bail!(
                    "replica {} knows no leader (term {}): election in progress or no quorum",
                    h.member_id,
                    h.raft_term
                ),
            }
        }
        ClusterCmd::TransferLeader { id } => {
            ctx.client
                .cluster(|mut c, req| async move {
                    c.transfer_leader(req.wrap(pb::TransferLeaderRequest { target: id }))
                        .await
                })
                .await?;
            Ok(Rendered {
                json: json!({ "leader": id }),
                human: format!("leadership moved to replica {id}"),
            })
        }
        ClusterCmd::Remove { id } => {
            ctx.client
                .cluster(|mut c, req| async move {
                    c.remove_member(req.wrap(pb::RemoveMemberRequest { id }))
                        .await
                })
                .await?;
            Ok(Rendered {
                json: json!({ "removed": id }),
                human: format!("replica {id} removed"),
            })
        }
        ClusterCmd::Promote { id } => {
            ctx.client
                .cluster(|mut c, req| async move {
                    c.promote_member(req.wrap(pb::PromoteMemberRequest { id }))
                        .await
                })
                .await?;
            Ok(Rendered {
                json: json!({ "promoted": id }),
                human: format!("replica {id} promoted to voter"),
            })
        }
        ClusterCmd::Token(TokenCmd::Create { ttl }) => {
            let r = ctx
                .client
                .cluster(|mut c, req| async move {
                    c.create_join_token(req.wrap(pb::CreateJoinTokenRequest { ttl_seconds: ttl }))
                        .await
                })
                .await?;
            Ok(Rendered {
                json: json!({ "token": r.token, "expires_at_unix_ms": r.expires_at_unix_ms }),
                human: r.token,
            })
        }
        ClusterCmd::Snapshot => {
            let r = ctx
                .client
                .cluster(
                    |mut c, req| async move { c.snapshot(req.wrap(pb::SnapshotRequest {})).await },
                )
                .await?;
            let member = r.header.as_ref().map(|h| h.member_id).unwrap_or(0);
            Ok(Rendered {
                json: json!({ "id": member, "snapshot_index": r.snapshot_index }),
                human: format!(
                    "replica {member} snapshot at log index {}",
                    r.snapshot_index
                ),
            })
        }
    }
}

/// Names joined with commas, or `none`.
fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// One of the leader's recent rebalancing rounds, for `--json`.
fn round_json(r: &pb::RebalanceRound) -> serde_json::Value {
    json!({
        "started_unix_ms": r.started_unix_ms, "duration_ms": r.duration_ms,
        "cause": r.cause, "proposals": r.proposals, "domains": r.domains,
        "clusters": r.clusters, "quotas": r.quotas,
        "carried_over": r.carried_over, "allowance_ms": r.allowance_ms,
        "grace_until_unix_ms": r.grace_until_unix_ms, "lost_azs": r.lost_azs,
    })
}
