//! Test-only network faults between replicas (`--fault-rules FILE`, hidden): the fault-injection
//! harness (`ballast-sim chaos`) writes rules into a file per replica and the replica applies
//! them to everything it sends to its peers — Raft messages, read-index requests and forwarded
//! calls — so partitions, message loss and delay need no root, no iptables and no namespaces.
//!
//! One rule per line; `#` starts a comment; the target is a peer address or `*`:
//!
//! ```text
//! block 127.0.0.1:7702          # drop everything to this peer (one side of a partition)
//! loss * 0.3                    # drop 30% of messages to every peer
//! delay 127.0.0.1:7703 20 80    # delay each message to this peer by 20-80 ms
//! reset * 4                     # cut every connection to every peer, 4 times a second
//! reset 127.0.0.1:7702 2 300     # twice a second, and new connections fail for 300 ms after
//! ```
//!
//! `reset` aborts the replica's open TCP connections to the peer (both ends see a reset), as a
//! network flap, a conntrack flush or a proxy restart would, and resets the new connections
//! opened during the flap that follows (100 ms unless a fourth word gives milliseconds): the
//! peer is alive, the path to it is briefly broken. It is applied when a message is about to go to
//! that peer and the last cut is older than 1/rate seconds.
//!
//! The file is looked at again at most every 20 ms; a missing file means no faults.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;

/// How often the rules file is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(20);

/// How long new connections are reset after a `reset` cut, unless the rule says.
const DEFAULT_FLAP_MS: u64 = 100;

/// What happens to one message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Send it.
    Pass,
    /// Do not send it (blocked or lost).
    Drop,
    /// Send it after this long.
    Delay(Duration),
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Block,
    Loss(f64),
    Delay(u64, u64),
    /// Cuts per second, and for how long after each cut new connections are reset too.
    Reset(f64, Duration),
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    target: String,
    action: Action,
}

fn parse(text: &str) -> Vec<Rule> {
    let mut rules = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let action = match words.as_slice() {
            ["block", _] => Some(Action::Block),
            ["loss", _, p] => p
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .map(Action::Loss),
            ["reset", _, rate] | ["reset", _, rate, _] => {
                let flap = match words.get(3) {
                    Some(ms) => ms.parse::<u64>().ok().filter(|ms| *ms <= 10_000),
                    None => Some(DEFAULT_FLAP_MS),
                };
                rate.parse::<f64>()
                    .ok()
                    .filter(|r| *r > 0.0 && *r <= 1000.0)
                    .zip(flap)
                    .map(|(rate, flap)| Action::Reset(rate, Duration::from_millis(flap)))
            }
            ["delay", _, lo, hi] => match (lo.parse::<u64>(), hi.parse::<u64>()) {
                (Ok(lo), Ok(hi)) if lo <= hi => Some(Action::Delay(lo, hi)),
                _ => None,
            },
            _ => None,
        };
        match action {
            Some(action) => rules.push(Rule {
                target: words[1].to_string(),
                action,
            }),
            None => tracing::warn!(line, "ignoring a fault rule that does not parse"),
        }
    }
    rules
}

struct State {
    checked: Option<Instant>,
    stamp: Option<SystemTime>,
    rules: Vec<Rule>,
}

/// The rules of one replica, re-read when the file changes.
pub struct FaultRules {
    path: PathBuf,
    state: Mutex<State>,
    connections: Mutex<Connections>,
}

/// Open connections to peers (duplicated descriptors of their sockets), by peer address, and
/// when each peer's connections were last cut.
#[derive(Default)]
struct Connections {
    open: HashMap<String, Vec<OwnedFd>>,
    last_cut: HashMap<String, Instant>,
    flapping_until: HashMap<String, Instant>,
}

impl Connections {
    /// Cuts every connection to `address` if the last cut is older than `1/rate` seconds, and
    /// resets new ones for `flap` after.
    fn cut_if_due(&mut self, address: &str, rate: f64, flap: Duration) {
        let due = self
            .last_cut
            .get(address)
            .is_none_or(|t| t.elapsed().as_secs_f64() >= 1.0 / rate);
        if !due {
            return;
        }
        let now = Instant::now();
        self.last_cut.insert(address.to_string(), now);
        self.flapping_until.insert(address.to_string(), now + flap);
        let open = self.open.remove(address).unwrap_or_default();
        if !open.is_empty() {
            tracing::info!(
                address,
                connections = open.len(),
                "fault injection: cutting connections"
            );
        }
        for socket in open {
            cut(&socket);
        }
    }

    fn flapping(&self, address: &str) -> bool {
        self.flapping_until
            .get(address)
            .is_some_and(|until| Instant::now() < *until)
    }
}

/// Resets a connection as a conntrack flush or a restarted proxy would: `connect(AF_UNSPEC)`
/// on a connected TCP socket makes Linux abort it (`tcp_disconnect`), sending the peer a RST
/// and failing every reader and writer here with `ECONNRESET`.
fn cut(socket: &OwnedFd) {
    // SAFETY: a zeroed sockaddr with only the family set is a valid AF_UNSPEC address of the
    // size passed; connect(2) on a socket descriptor this process owns (a duplicate kept for
    // exactly this) reads nothing else of ours.
    unsafe {
        let mut unspec: libc::sockaddr = std::mem::zeroed();
        unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            socket.as_raw_fd(),
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}

impl FaultRules {
    /// Rules read from `path` (which may not exist yet).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            state: Mutex::new(State {
                checked: None,
                stamp: None,
                rules: Vec::new(),
            }),
            connections: Mutex::new(Connections::default()),
        }
    }

    /// An observer for the channels to `address`: keeps each new connection so a `reset` rule
    /// can cut it, and resets it at once during a flap.
    pub fn observer(self: &Arc<Self>, address: &str) -> ballast_tls::client::ConnectObserver {
        let rules = Arc::downgrade(self);
        let address = address.to_string();
        Arc::new(move |stream: &tokio::net::TcpStream| {
            let (Some(rules), Ok(socket)) = (rules.upgrade(), stream.as_fd().try_clone_to_owned())
            else {
                return Ok(());
            };
            let mut connections = rules.connections.lock();
            if connections.flapping(&address) {
                cut(&socket);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    format!("fault injection: connection to {address} reset as it opened"),
                ));
            }
            let open = connections.open.entry(address.clone()).or_default();
            // Descriptors of connections that ended stay until the next cut; keep that bounded.
            if open.len() >= 64 {
                open.remove(0);
            }
            open.push(socket);
            Ok(())
        })
    }

    /// Decides the fate of one message to `address`.
    pub fn verdict(&self, address: &str) -> Verdict {
        let mut state = self.state.lock();
        if state.checked.is_none_or(|c| c.elapsed() >= CHECK_EVERY) {
            state.checked = Some(Instant::now());
            let stamp = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if stamp != state.stamp {
                state.stamp = stamp;
                state.rules = std::fs::read_to_string(&self.path)
                    .map(|t| parse(&t))
                    .unwrap_or_default();
                tracing::info!(rules = state.rules.len(), "fault rules changed");
            }
        }
        let mut rng = rand::rng();
        let mut delay = Duration::ZERO;
        for rule in state
            .rules
            .iter()
            .filter(|r| r.target == "*" || r.target == address)
        {
            match rule.action {
                Action::Block => return Verdict::Drop,
                Action::Loss(p) if rng.random_bool(p) => return Verdict::Drop,
                Action::Loss(_) => {}
                Action::Delay(lo, hi) => {
                    delay += Duration::from_millis(rng.random_range(lo..=hi));
                }
                Action::Reset(rate, flap) => {
                    self.connections.lock().cut_if_due(address, rate, flap)
                }
            }
        }
        if delay.is_zero() {
            Verdict::Pass
        } else {
            Verdict::Delay(delay)
        }
    }

    /// Applies the verdict for a message to `address`: waits out a delay, or answers with the
    /// error a dead link would give.
    pub async fn before_send(&self, address: &str) -> Result<(), tonic::Status> {
        match self.verdict(address) {
            Verdict::Pass => Ok(()),
            Verdict::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Verdict::Drop => Err(tonic::Status::unavailable(format!(
                "fault injection: message to {address} dropped"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reset_rules_cut_open_connections_to_their_target() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let rules = Arc::new(FaultRules::new(path.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let client = tokio::net::TcpStream::connect(&target).await.unwrap();
        rules.observer(&target)(&client).expect("no flap yet");
        let (mut server, _) = listener.accept().await.unwrap();
        assert_eq!(rules.verdict(&target), Verdict::Pass, "no rules yet");
        std::fs::write(&path, format!("reset {target} 4\n")).unwrap();
        std::thread::sleep(CHECK_EVERY);
        assert_eq!(rules.verdict(&target), Verdict::Pass, "a cut still sends");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("the peer learns of the cut at once");
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "the peer sees a reset: {read:?}"
        );
        let mut client = client;
        let read = client.read(&mut buf).await;
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "so does this end: {read:?}"
        );
        // During the flap that follows, a new connection is reset as it opens.
        let again = tokio::net::TcpStream::connect(&target).await.unwrap();
        let refused = rules.observer(&target)(&again).expect_err("reset during the flap");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn rules_parse_and_apply_by_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let rules = FaultRules::new(path.clone());
        assert_eq!(rules.verdict("a:1"), Verdict::Pass, "no file, no faults");
        std::fs::write(
            &path,
            "block a:1 # partition\nloss b:2 1.0\ndelay * 5 5\nnonsense\nloss c:3 7\nreset d:4 2\nreset e:5 0\nreset f:6 1 50\nreset g:7 1 x\n",
        )
        .unwrap();
        std::thread::sleep(CHECK_EVERY);
        assert_eq!(rules.verdict("a:1"), Verdict::Drop);
        assert_eq!(rules.verdict("b:2"), Verdict::Drop);
        assert_eq!(
            rules.verdict("c:3"),
            Verdict::Delay(Duration::from_millis(5))
        );
        assert_eq!(
            rules.state.lock().rules.len(),
            5,
            "a zero reset rate, a flap that is not a number and a loss above 1 are refused"
        );
        std::fs::write(&path, "").unwrap();
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(10));
        assert_eq!(rules.verdict("a:1"), Verdict::Pass, "healed");
    }
}
