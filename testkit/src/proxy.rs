//! [`Proxy`]: a TCP forwarder on loopback that a test can cut and heal, to partition one
//! process from another while both keep running (a one-sided network partition: the process
//! behind the proxy reaches nothing through it, everyone else is unaffected).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A forwarder from a loopback port to `target`.
pub struct Proxy {
    /// `127.0.0.1:port` to connect to instead of the target.
    pub address: String,
    cut: Arc<AtomicBool>,
    /// Bumped by every cut: open connections end when it moves.
    generation: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards a fresh loopback port to `target` (`host:port`).
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let address = listener.local_addr().expect("proxy address").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(
            listener,
            target.to_string(),
            cut.clone(),
            generation.clone(),
            accepted.clone(),
        ));
        Proxy {
            address,
            cut,
            generation,
            accepted,
            task,
        }
    }

    /// Ends every open connection and refuses new ones (they are accepted and closed at once,
    /// as a dropped route looks to a client that retries).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Connections forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn serve(
    listener: TcpListener,
    target: String,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        if cut.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        accepted.fetch_add(1, Ordering::SeqCst);
        let target = target.clone();
        let mut ended = generation.subscribe();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(&target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            tokio::select! {
                _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = ended.changed() => {}
            }
        });
    }
}
