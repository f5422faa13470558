//! Lock holders of a chaos run: clients that take a lock the way etcd's clients do — a lease,
//! a key created on it only if absent, keep-alives while holding, a revoke to let go — through
//! one replica at a time, and record how long each one was entitled to believe it held the
//! lock. Two such beliefs must never overlap: that is mutual exclusion, and what a deposed or
//! isolated leader that kept renewing leases from its own memory would break.
//!
//! A holder's belief starts when its create is acknowledged and ends at the latest of (a
//! keep-alive's send time + the TTL it answered) and (the grant's send time + TTL) — what a
//! careful client may assume without asking again — or when it begins to revoke, if earlier.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::kv_client::KvClient;
use ballast_protocol::etcdserverpb::lease_client::LeaseClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use super::workload::{Workload, kv_channel};

/// TTL asked for a lock's lease (seconds): short, so pauses and partitions outlast it. Like
/// etcd, Ballast raises it to its 2 s minimum; the holder goes by the TTL answered.
pub const LOCK_TTL: i64 = 1;

/// How long one answer may take before the attempt counts as failed.
const ANSWER_WITHIN: Duration = Duration::from_millis(700);

/// One lock holding as its holder saw it (microseconds since the schedule started).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Holding {
    /// Lock client.
    pub client: usize,
    /// Replica it talked to.
    pub endpoint: String,
    /// When its create was acknowledged.
    pub start: u64,
    /// The end of what it may believe.
    pub end: u64,
    /// Keep-alives answered with a TTL while holding.
    pub renewals: u32,
}

/// What the lock clients of one schedule record.
#[derive(Default)]
pub struct Locks {
    /// Every holding, in no particular order.
    pub holdings: Mutex<Vec<Holding>>,
}

async fn within<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Option<T> {
    match tokio::time::timeout(ANSWER_WITHIN, call).await {
        Ok(Ok(answer)) => Some(answer.into_inner()),
        _ => None,
    }
}

/// One keep-alive on its own stream: the TTL answered, if any.
async fn keep_alive(leases: &mut LeaseClient<Channel>, id: i64) -> Option<i64> {
    let outbound = futures::stream::iter([epb::LeaseKeepAliveRequest { id }]);
    let mut answers = within(leases.lease_keep_alive(outbound)).await?;
    let answer = tokio::time::timeout(ANSWER_WITHIN, answers.message())
        .await
        .ok()?
        .ok()??;
    (answer.ttl > 0).then_some(answer.ttl)
}

/// Runs lock client `client` on lock key `key` until the workload stops.
pub async fn client(
    workload: Arc<Workload>,
    locks: Arc<Locks>,
    (key, seed): (String, u64),
    client: usize,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (client as u64 + 1).wrapping_mul(0x51_7cc1));
    let micros = |d: Duration| d.as_micros() as u64;
    while !workload.stop.load(Ordering::Relaxed) {
        let endpoint = workload.endpoints[rng.random_range(0..workload.endpoints.len())].clone();
        let channel = kv_channel(&endpoint);
        let (mut leases, mut kv) = (LeaseClient::new(channel.clone()), KvClient::new(channel));
        let granted_at = workload.started.elapsed();
        let Some(grant) = within(leases.lease_grant(epb::LeaseGrantRequest {
            ttl: LOCK_TTL,
            id: 0,
        }))
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut end = granted_at + Duration::from_secs(grant.ttl.max(0) as u64);
        let create = epb::TxnRequest {
            compare: vec![epb::Compare {
                result: epb::compare::CompareResult::Equal as i32,
                target: epb::compare::CompareTarget::Create as i32,
                key: key.clone().into_bytes(),
                target_union: Some(epb::compare::TargetUnion::CreateRevision(0)),
                ..Default::default()
            }],
            success: vec![epb::RequestOp {
                request: Some(epb::request_op::Request::RequestPut(epb::PutRequest {
                    key: key.clone().into_bytes(),
                    value: format!("holder-{client}").into_bytes(),
                    lease: grant.id,
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        };
        // An unanswered create may have taken the lock; this client does not act on it, and
        // the key goes when the unrenewed lease does.
        let taken = within(kv.txn(create)).await.is_some_and(|t| t.succeeded);
        if !taken {
            let _ = within(leases.lease_revoke(epb::LeaseRevokeRequest { id: grant.id })).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            continue;
        }
        let start = workload.started.elapsed();
        let hold = Duration::from_millis(rng.random_range(500..2_500));
        let mut renewals = 0;
        while workload.started.elapsed() < start + hold && !workload.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let sent = workload.started.elapsed();
            match keep_alive(&mut leases, grant.id).await {
                Some(ttl) => {
                    renewals += 1;
                    end = end.max(sent + Duration::from_secs(ttl as u64));
                }
                // A holder that cannot renew stops acting as one.
                None => break,
            }
        }
        end = end.min(workload.started.elapsed());
        let _ = within(leases.lease_revoke(epb::LeaseRevokeRequest { id: grant.id })).await;
        locks.holdings.lock().push(Holding {
            client,
            endpoint,
            start: micros(start),
            end: micros(end),
            renewals,
        });
    }
}

/// Pairs of holdings by different clients whose beliefs overlap.
pub fn overlaps(holdings: &[Holding]) -> Vec<String> {
    let mut sorted: Vec<&Holding> = holdings.iter().collect();
    sorted.sort_by_key(|h| h.start);
    let mut violations = Vec::new();
    for (i, a) in sorted.iter().enumerate() {
        for b in &sorted[i + 1..] {
            if b.start >= a.end {
                break;
            }
            if a.client != b.client {
                violations.push(format!(
                    "two lock holders: client {} (via {}) held it {}..{} µs, client {} (via {}) \
                     took it at {} µs",
                    a.client, a.endpoint, a.start, a.end, b.client, b.endpoint, b.start
                ));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(client: usize, start: u64, end: u64) -> Holding {
        Holding {
            client,
            endpoint: String::new(),
            start,
            end,
            renewals: 0,
        }
    }

    #[test]
    fn only_overlapping_beliefs_of_different_clients_are_violations() {
        assert!(overlaps(&[holding(0, 0, 10), holding(1, 10, 20), holding(0, 25, 30)]).is_empty());
        assert_eq!(overlaps(&[holding(0, 0, 10), holding(1, 5, 20)]).len(), 1);
        // A long belief overlapping a later holding, with a short one in between.
        assert_eq!(
            overlaps(&[holding(0, 0, 100), holding(1, 20, 30), holding(1, 50, 60)]).len(),
            2
        );
        assert!(overlaps(&[holding(0, 0, 10), holding(0, 5, 20)]).is_empty());
    }
}
