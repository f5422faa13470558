//! [`ShardProcess`]: a shard worker as a real process attached to a [`TestCluster`]
//! ([`TestCluster::spawn_shard`]): kill, pause, restart, its gRPC client, demand and waits.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::pb;
use ballast_protocol::pb::shard_worker_client::ShardWorkerClient;
use ballast_tls::{ClientTls, Role};

use crate::ports::free_port;
use crate::{TestCluster, pki, process, wait_for};

/// A shard worker process (possibly stopped), killed when dropped.
pub struct ShardProcess {
    /// Shard id.
    pub id: String,
    /// AZ label.
    pub az: String,
    /// `127.0.0.1:port` of its status API.
    pub address: String,
    /// Its cache directory.
    pub data_dir: PathBuf,
    /// `127.0.0.1:port` of its HTTP port (metrics, probes).
    pub http_address: String,
    program: PathBuf,
    leading_args: Vec<String>,
    coordinators: Vec<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// TLS of calls to this worker (an admin certificate), when the cluster runs TLS.
    pub client_tls: Option<Arc<ClientTls>>,
}

impl ShardProcess {
    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the shard log");
        let child = Command::new(&self.program)
            .args(&self.leading_args)
            .arg("--id")
            .arg(&self.id)
            .arg("--az")
            .arg(&self.az)
            .arg("--coordinators")
            .arg(self.coordinators.join(","))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&self.address)
            .arg("--http-listen")
            .arg(&self.http_address)
            .args(&self.extra)
            // BALLAST_TEST_SHARD_LOG overrides the shards' log filter when a test is debugged.
            .env(
                "RUST_LOG",
                std::env::var("BALLAST_TEST_SHARD_LOG")
                    .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.data_dir.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("starting the shard worker");
        self.child = Some(child);
    }

    /// SIGKILLs the shard.
    pub fn kill(&mut self) {
        process::kill(&mut self.child);
    }

    /// Sends the shard a SIGKILL and returns without waiting for it to die; [`Self::kill`] then
    /// reaps it. Several processes that must die at one moment get their signals first.
    pub fn send_kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Stops the shard with SIGSTOP (a frozen process or VM) until [`ShardProcess::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Continues a paused shard (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            process::signal(child.id(), signal);
        }
    }

    /// The shard's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the shard again with the same flags (it resumes from its cache).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "shard {} is still running", self.id);
        self.spawn();
    }

    /// A lazily connected client of the worker's gRPC port.
    pub fn client(&self) -> ShardWorkerClient<tonic::transport::Channel> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.address))
            .expect("shard addresses are valid URIs")
            .connect_timeout(Duration::from_secs(2));
        ShardWorkerClient::new(ballast_tls::client::lazy_channel(
            endpoint,
            self.client_tls.as_ref(),
        ))
    }

    /// The shard's own view of its assignments, if it answers within 10 s (bounded, so a
    /// shard that hangs fails [`ShardProcess::wait_until`] at its deadline instead of hanging
    /// the test).
    pub async fn status(&self) -> Option<pb::ShardStatusResponse> {
        let mut client = self.client();
        tokio::time::timeout(
            Duration::from_secs(10),
            client.status(pb::ShardStatusRequest {}),
        )
        .await
        .ok()?
        .ok()
        .map(|r| r.into_inner())
    }

    /// Replaces `cluster`'s demand with `count` small machines (1 core, 1 GiB): the demand of
    /// tests where a machine's size does not matter.
    pub async fn submit_small(&self, cluster: &str, count: u32) -> Result<(), tonic::Status> {
        submit_small_through(self.client(), cluster, count).await
    }

    /// Replaces `cluster`'s demand with one row ("web") of `count` machines of `resources`.
    pub async fn submit_demand(
        &self,
        cluster: &str,
        count: u32,
        resources: pb::ResourceSpec,
    ) -> Result<(), tonic::Status> {
        submit_demand_through(self.client(), cluster, count, resources).await
    }

    /// Waits until the shard holds a domain, a cluster and a quota slice (what
    /// [`crate::allocate`] gave it).
    pub async fn wait_for_grants(&self) -> pb::ShardStatusResponse {
        self.wait_until("its domain, cluster and slice", |st| {
            !st.domains.is_empty() && !st.clusters.is_empty() && !st.slices.is_empty()
        })
        .await
    }

    /// Waits until the shard's status satisfies `check`.
    pub async fn wait_until(
        &self,
        what: &str,
        check: impl Fn(&pb::ShardStatusResponse) -> bool,
    ) -> pb::ShardStatusResponse {
        wait_for(
            &format!("shard {}: {what}", self.id),
            Duration::from_secs(30),
            || async {
                let status = self.status().await?;
                check(&status).then_some(status)
            },
        )
        .await
    }
}

impl Drop for ShardProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestCluster {
    /// Starts a shard worker that talks to every replica of this cluster. `program` and
    /// `leading_args` run the worker (e.g. `ballast-sim` with `["shard"]`).
    pub fn spawn_shard(
        &self,
        program: &Path,
        leading_args: &[&str],
        id: &str,
        az: &str,
        extra: &[&str],
    ) -> ShardProcess {
        self.spawn_shard_via(program, leading_args, id, az, self.endpoints(), extra)
    }

    /// [`TestCluster::spawn_shard`] reaching the coordinators at `coordinators` (proxies, say).
    pub fn spawn_shard_via(
        &self,
        program: &Path,
        leading_args: &[&str],
        id: &str,
        az: &str,
        coordinators: Vec<String>,
        extra: &[&str],
    ) -> ShardProcess {
        self.start_shard(program, leading_args, (id, az), coordinators, extra, &[])
    }

    fn start_shard(
        &self,
        program: &Path,
        leading_args: &[&str],
        (id, az): (&str, &str),
        coordinators: Vec<String>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ShardProcess {
        let mut shard = ShardProcess {
            id: id.to_string(),
            az: az.to_string(),
            address: format!("127.0.0.1:{}", free_port()),
            data_dir: self.dir().join(format!("shard-{id}")),
            http_address: format!("127.0.0.1:{}", free_port()),
            program: program.to_path_buf(),
            leading_args: leading_args.iter().map(|s| s.to_string()).collect(),
            coordinators,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: self.dir().join(format!("shard-{id}.log")),
            child: None,
            client_tls: self.client_tls.clone(),
        };
        if let Some(pki) = &self.options.tls {
            let files = pki.issue(&format!("shard-{id}"), &[Role::Shard(id.to_string())]);
            shard.extra.splice(0..0, pki::tls_flags(&files));
        }
        shard.spawn();
        shard
    }

    /// [`TestCluster::spawn_sim_shard`] with extra environment variables (failpoints, say:
    /// `BALLAST_FAILPOINTS`, `BALLAST_FAILPOINT_DIR`).
    pub fn spawn_sim_shard_with_env(
        &self,
        program: impl AsRef<Path>,
        id: &str,
        az: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ShardProcess {
        self.start_shard(
            program.as_ref(),
            &["shard"],
            (id, az),
            self.endpoints(),
            extra,
            env,
        )
    }

    /// [`TestCluster::spawn_shard`] for `ballast-sim`'s shard subcommand (`<program> shard`),
    /// the worker that goes with [`ClusterOptions::sim`].
    ///
    /// [`ClusterOptions::sim`]: crate::ClusterOptions::sim
    pub fn spawn_sim_shard(
        &self,
        program: impl AsRef<Path>,
        id: &str,
        az: &str,
        extra: &[&str],
    ) -> ShardProcess {
        self.spawn_shard(program.as_ref(), &["shard"], id, az, extra)
    }
}

/// [`ShardProcess::submit_small`] through `client`, for submissions sent from tasks of their own.
pub async fn submit_small_through(
    client: ShardWorkerClient<tonic::transport::Channel>,
    cluster: &str,
    count: u32,
) -> Result<(), tonic::Status> {
    let small = pb::ResourceSpec {
        cpu_millis: 1000,
        memory_mib: 1024,
        gpus: 0,
    };
    submit_demand_through(client, cluster, count, small).await
}

/// [`ShardProcess::submit_demand`] through `client`.
async fn submit_demand_through(
    mut client: ShardWorkerClient<tonic::transport::Channel>,
    cluster: &str,
    count: u32,
    resources: pb::ResourceSpec,
) -> Result<(), tonic::Status> {
    client
        .submit_demand(pb::SubmitDemandRequest {
            cluster: cluster.to_string(),
            rows: vec![pb::DemandRow {
                id: "web".into(),
                count,
                resources: Some(resources),
                priority: 0,
                az: String::new(),
                domain: String::new(),
            }],
        })
        .await
        .map(|_| ())
}
