//! Leader SIGKILL, measured the same way for Ballast and etcd: after the kill, a put goes out
//! every probe interval without waiting for the ones before it (each bounded by a short
//! timeout), and every surviving member is asked who leads at the same interval. Neither
//! figure is then quantised by the length of one attempt.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ballast_protocol::coordination::Coordinator;
use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_testkit::TestCluster;
use ballast_testkit::etcd::EtcdCluster;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::ready;

/// How often probes go out and how long each may take.
#[derive(Clone, Copy, Debug)]
pub struct Probing {
    /// Time between two probes (puts, and leader questions to each survivor).
    pub every: Duration,
    /// How long one probe may take before it counts as failed.
    pub timeout: Duration,
}

/// What one leader kill measured, both from the moment the SIGKILL was sent.
#[derive(Clone, Copy, Debug)]
pub struct Failover {
    /// Until a surviving member first names a leader other than the killed one.
    pub to_leader: Duration,
    /// Until the first put sent after the kill is acknowledged.
    pub to_ack: Duration,
}

/// The two kinds of cluster the benchmark kills leaders in.
pub enum Victim<'a> {
    /// A Ballast cluster of replica processes.
    Ballast(&'a mut TestCluster),
    /// An etcd cluster.
    Etcd(&'a mut EtcdCluster),
}

impl Victim<'_> {
    fn endpoints(&self) -> Vec<String> {
        match self {
            Victim::Ballast(cluster) => cluster.endpoints(),
            Victim::Etcd(etcd) => etcd.endpoints.clone(),
        }
    }

    /// SIGKILLs the member at `index` and reaps it.
    fn kill(&mut self, index: usize) {
        match self {
            Victim::Ballast(cluster) => {
                let id = cluster.replicas[index].id;
                cluster.kill(id);
            }
            Victim::Etcd(etcd) => etcd.kill(index),
        }
    }

    /// Starts the member at `index` again and waits until it has caught up (Ballast) or
    /// the cluster names a leader with every member running (etcd).
    async fn restart(&mut self, index: usize, client: &Coordinator) -> anyhow::Result<()> {
        match self {
            Victim::Ballast(cluster) => {
                let id = cluster.replicas[index].id;
                cluster.restart(id);
                let revision = cluster.client().revision().await?;
                cluster.wait_for_revision(id, revision).await;
            }
            Victim::Etcd(etcd) => {
                etcd.restart(index)?;
                let deadline = Instant::now() + Duration::from_secs(30);
                while etcd.pids().len() < etcd.endpoints.len() || etcd.leader().await.is_none() {
                    if Instant::now() > deadline {
                        bail!("etcd member {index} did not rejoin within 30 s");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        ready(client).await
    }
}

/// One lazily connected Maintenance client per endpoint, for the leader questions.
fn maintenance_clients(endpoints: &[String]) -> anyhow::Result<Vec<MaintenanceClient<Channel>>> {
    endpoints
        .iter()
        .map(|endpoint| {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
                .with_context(|| format!("endpoint {endpoint}"))?
                .connect_timeout(Duration::from_millis(500))
                .connect_lazy();
            Ok(MaintenanceClient::new(channel))
        })
        .collect()
}

/// Maintenance.Status of one member: its own id and the leader it names (0 for none), or
/// `None` if it did not answer within `limit`.
async fn leader_seen_by(
    mut client: MaintenanceClient<Channel>,
    limit: Duration,
) -> Option<(u64, u64)> {
    let status = tokio::time::timeout(limit, client.status(epb::StatusRequest {}))
        .await
        .ok()?
        .ok()?
        .into_inner();
    Some((status.header?.member_id, status.leader))
}

/// The leader's position in `endpoints` and its member id, as the members report it; waits up
/// to 30 s for one to be named.
pub async fn find_leader(endpoints: &[String]) -> anyhow::Result<(usize, u64)> {
    let clients = maintenance_clients(endpoints)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ids = Vec::new();
        let mut named = 0;
        for client in &clients {
            let seen = leader_seen_by(client.clone(), Duration::from_millis(500)).await;
            ids.push(seen.map(|(id, _)| id));
            if let Some((_, leader)) = seen
                && leader != 0
            {
                named = leader;
            }
        }
        if let Some(index) = ids.iter().position(|id| named != 0 && *id == Some(named)) {
            return Ok((index, named));
        }
        if Instant::now() > deadline {
            bail!("no member of {endpoints:?} named a leader within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a probe task found.
enum Heard {
    Acknowledged(Instant),
    NewLeader(Instant),
}

/// Kills the leader of `victim`, measures until the survivors name a new one and a put is
/// acknowledged, then restarts the killed member and waits until it is back.
pub async fn kill_leader(
    mut victim: Victim<'_>,
    client: &Coordinator,
    probing: Probing,
    round: usize,
) -> anyhow::Result<Failover> {
    let endpoints = victim.endpoints();
    let (leader_index, leader_id) = find_leader(&endpoints).await?;
    let survivors: Vec<MaintenanceClient<Channel>> = maintenance_clients(&endpoints)?
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != leader_index)
        .map(|(_, c)| c)
        .collect();
    // Stamped before the signal: a reap of one process costs well under a millisecond, and
    // this way the figures can only err long.
    let killed = Instant::now();
    victim.kill(leader_index);
    let measured = probe(client, &survivors, leader_id, killed, probing, round).await;
    victim.restart(leader_index, client).await?;
    measured
}

/// Sends a put and asks every survivor for the leader once per probe interval, each in a task
/// of its own, until both answers are in (at most 60 s).
async fn probe(
    client: &Coordinator,
    survivors: &[MaintenanceClient<Channel>],
    old_leader: u64,
    killed: Instant,
    probing: Probing,
    round: usize,
) -> anyhow::Result<Failover> {
    let (heard, mut hearing) = mpsc::unbounded_channel();
    // Dropping the set aborts the probes still out.
    let mut tasks = JoinSet::new();
    let mut ticker = tokio::time::interval(probing.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut to_leader, mut to_ack) = (None, None);
    let mut sent = 0usize;
    while to_leader.is_none() || to_ack.is_none() {
        tokio::select! {
            _ = ticker.tick() => {
                if killed.elapsed() > Duration::from_secs(60) {
                    bail!(
                        "60 s after the leader kill: new leader {}, put acknowledged {}",
                        to_leader.is_some(),
                        to_ack.is_some()
                    );
                }
                if to_ack.is_none() {
                    let mut kv = client.kv();
                    let heard = heard.clone();
                    let key = format!("failover/{round}/{sent}").into_bytes();
                    sent += 1;
                    tasks.spawn(async move {
                        let put = kv.put(epb::PutRequest {
                            key,
                            value: b"x".to_vec(),
                            ..Default::default()
                        });
                        if let Ok(Ok(_)) = tokio::time::timeout(probing.timeout, put).await {
                            let _ = heard.send(Heard::Acknowledged(Instant::now()));
                        }
                    });
                }
                if to_leader.is_none() {
                    for survivor in survivors {
                        let (survivor, heard) = (survivor.clone(), heard.clone());
                        tasks.spawn(async move {
                            if let Some((_, leader)) = leader_seen_by(survivor, probing.timeout).await
                                && leader != 0
                                && leader != old_leader
                            {
                                let _ = heard.send(Heard::NewLeader(Instant::now()));
                            }
                        });
                    }
                }
            }
            Some(event) = hearing.recv() => match event {
                Heard::Acknowledged(at) => {
                    to_ack.get_or_insert(at - killed);
                }
                Heard::NewLeader(at) => {
                    to_leader.get_or_insert(at - killed);
                }
            },
            // Reap finished probes so the set does not grow for the whole wait.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    Ok(Failover {
        to_leader: to_leader.unwrap_or_default(),
        to_ack: to_ack.unwrap_or_default(),
    })
}
