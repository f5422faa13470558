//! Reading a running [`TestCluster`]: clients and channels, status, the leader, per-replica
//! state, and the waits tests build on them (voters, revisions, shards).

use std::time::Duration;

use ballast_protocol::client::{BallastClient, ClientConfig};
use ballast_protocol::pb;
use ballast_protocol::pb::cluster_client::ClusterClient;

use super::TestCluster;
use crate::wait_for;

impl TestCluster {
    /// A fresh single-use join token from the cluster.
    pub async fn join_token(&self) -> String {
        self.client()
            .cluster(|mut c, req| async move {
                c.create_join_token(req.wrap(pb::CreateJoinTokenRequest { ttl_seconds: 600 }))
                    .await
            })
            .await
            .expect("creating a join token")
            .token
    }

    /// Replica `id`'s own applied state as text — revision, domains, shards, quotas and the
    /// KV keys under `kv_prefix` — read without going to the leader, for comparing replicas.
    pub async fn state_of(&self, id: u64, kv_prefix: &str) -> Result<String, tonic::Status> {
        let stale = Some(pb::ReadOptions { stale: true });
        let mut fleet = pb::fleet_client::FleetClient::new(self.channel(id));
        let domains = fleet
            .list_domains(pb::ListDomainsRequest {
                options: stale,
                shard: String::new(),
                after: String::new(),
                limit: 10_000,
            })
            .await?
            .into_inner();
        let shards = fleet
            .list_shards(pb::ListShardsRequest { options: stale })
            .await?
            .into_inner();
        let quotas = fleet
            .list_quotas(pb::ListQuotasRequest { options: stale })
            .await?
            .into_inner();
        let kv = ballast_protocol::etcdserverpb::kv_client::KvClient::new(self.channel(id))
            .max_decoding_message_size(ballast_protocol::client::MAX_MESSAGE_BYTES)
            .range(ballast_protocol::etcdserverpb::RangeRequest {
                // An empty prefix means every key: etcd's "\0" to "\0".
                key: if kv_prefix.is_empty() {
                    vec![0]
                } else {
                    kv_prefix.as_bytes().to_vec()
                },
                range_end: ballast_protocol::coordination::prefix_end(kv_prefix.as_bytes()),
                serializable: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        let revision = domains.header.as_ref().map_or(0, |h| h.revision);
        let shards: Vec<(String, String)> = shards
            .shards
            .iter()
            .map(|s| (s.id.clone(), s.status.clone()))
            .collect();
        let quotas: Vec<String> = quotas.quotas.iter().map(|q| format!("{q:?}")).collect();
        let kvs: Vec<(String, String, i64)> = kv
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).to_string(),
                    String::from_utf8_lossy(&kv.value).to_string(),
                    kv.mod_revision,
                )
            })
            .collect();
        let domains: Vec<(String, String)> = domains
            .domains
            .iter()
            .map(|d| (d.domain.clone(), d.shard.clone()))
            .collect();
        // The tables are read one call after another: a write applied in between (a lease
        // expiring, the rebalancer) would make one replica's reads describe two revisions. Both
        // ends go in the first line, so callers comparing replicas only compare reads that
        // describe one revision each.
        let kv_revision = kv.header.as_ref().map_or(0, |h| h.revision);
        Ok(format!(
            "revision {revision} (kv read at {kv_revision})\n{domains:?}\n{shards:?}\n{quotas:?}\n{kvs:?}"
        ))
    }

    /// Addresses of the replicas the harness believes are running.
    pub fn running_endpoints(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|r| r.is_running())
            .map(|r| r.address.clone())
            .collect()
    }

    /// Addresses of every replica, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.address.clone()).collect()
    }

    /// A leader-aware client over every replica.
    pub fn client(&self) -> BallastClient {
        let mut config = ClientConfig::new(self.endpoints());
        config.tls = self.client_tls.clone();
        BallastClient::new(config).expect("building a client")
    }

    /// A lazily connected channel to replica `id` (over the cluster's TLS, if any).
    pub fn channel(&self, id: u64) -> tonic::transport::Channel {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.replica(id).address))
                .expect("replica addresses are valid URIs")
                .connect_timeout(Duration::from_secs(2));
        ballast_tls::client::lazy_channel(endpoint, self.client_tls.as_ref())
    }

    /// A client that talks to replica `id` only.
    pub fn client_of(&self, id: u64) -> BallastClient {
        let mut config = ClientConfig::new(vec![self.replica(id).address.clone()]);
        config.retry_budget = Duration::from_secs(10);
        config.tls = self.client_tls.clone();
        BallastClient::new(config).expect("building a client")
    }

    /// One series of replica `id`'s Prometheus metrics, read over plain HTTP; `None` when it
    /// does not answer or does not export the series.
    pub fn metric(&self, id: u64, series: &str) -> Option<f64> {
        let (_, page) = crate::http_get(&self.replica(id).http_address, "/metrics")?;
        crate::metric(&page, series)
    }

    /// Status as replica `id` sees it (no retries beyond its own endpoint).
    pub async fn status(&self, id: u64) -> Option<pb::StatusResponse> {
        let mut client = ClusterClient::new(self.channel(id));
        client
            .status(pb::StatusRequest {
                options: Some(pb::ReadOptions { stale: true }),
            })
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// The status of a running replica that says it leads, if one answers within a second
    /// (a paused replica does not answer at all).
    pub async fn leader_status(&self) -> Option<pb::StatusResponse> {
        for replica in self.replicas.iter().filter(|r| r.is_running()) {
            let status = tokio::time::timeout(Duration::from_secs(1), self.status(replica.id));
            if let Ok(Some(status)) = status.await
                && status.state == "leader"
            {
                return Some(status);
            }
        }
        None
    }

    /// A replica other than `leader` (the first in id order), for tests that act on a
    /// follower.
    pub fn follower_of(&self, leader: u64) -> u64 {
        self.replicas
            .iter()
            .map(|r| r.id)
            .find(|id| *id != leader)
            .expect("the cluster has a replica besides the leader")
    }

    /// The leader id agreed by a running replica, waiting up to 20 s for one.
    pub async fn leader(&self) -> u64 {
        wait_for("a leader", Duration::from_secs(20), || async {
            Some(self.leader_status().await?.header?.member_id)
        })
        .await
    }

    pub(super) async fn voter_count(&self) -> usize {
        let leader = self.leader().await;
        self.status(leader)
            .await
            .map(|s| s.members.iter().filter(|m| m.role == "voter").count())
            .unwrap_or(0)
    }

    /// Waits until the leader reports `count` voters and no membership change in flight:
    /// until the change is committed, killing a voter of the old configuration can stall it.
    pub async fn wait_for_voters(&self, count: usize) {
        wait_for(
            &format!("{count} voters"),
            Duration::from_secs(30),
            || async {
                let leader = self.leader().await;
                let status = self.status(leader).await?;
                let voters = status.members.iter().filter(|m| m.role == "voter").count();
                (voters == count && !status.membership_changing).then_some(())
            },
        )
        .await
    }

    /// Waits until replica `id` has applied at least fleet revision `revision`.
    pub async fn wait_for_revision(&self, id: u64, revision: u64) {
        wait_for(
            &format!("replica {id} at revision {revision}"),
            Duration::from_secs(30),
            || async {
                let status = self.status(id).await?;
                (status.header?.revision >= revision).then_some(())
            },
        )
        .await
    }

    /// Waits until every running replica has applied at least `revision`.
    pub async fn wait_until_converged(&self, revision: u64) {
        let running: Vec<u64> = self
            .replicas
            .iter()
            .filter(|r| r.is_running())
            .map(|r| r.id)
            .collect();
        for id in running {
            self.wait_for_revision(id, revision).await;
        }
    }

    /// Waits until `count` shards are registered.
    pub async fn wait_for_shards(&self, count: usize) {
        self.wait_for_shards_within(count, Duration::from_secs(30))
            .await
    }

    /// Waits up to `limit` until `count` shards are registered.
    pub async fn wait_for_shards_within(&self, count: usize, limit: Duration) {
        let client = self.client();
        wait_for(&format!("{count} registered shards"), limit, || async {
            let listed = client
                .fleet(|mut c, req| async move {
                    c.list_shards(req.wrap(pb::ListShardsRequest { options: None }))
                        .await
                })
                .await
                .ok()?;
            (listed.shards.len() == count).then_some(())
        })
        .await
    }
}
