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
//! ```
//!
//! The file is looked at again at most every 20 ms; a missing file means no faults.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;

/// How often the rules file is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(20);

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
        }
    }

    /// Decides the fate of one message to `address`.
    pub fn verdict(&self, address: &str) -> Verdict {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
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

    #[test]
    fn rules_parse_and_apply_by_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let rules = FaultRules::new(path.clone());
        assert_eq!(rules.verdict("a:1"), Verdict::Pass, "no file, no faults");
        std::fs::write(
            &path,
            "block a:1 # partition\nloss b:2 1.0\ndelay * 5 5\nnonsense\nloss c:3 7\n",
        )
        .unwrap();
        std::thread::sleep(CHECK_EVERY);
        assert_eq!(rules.verdict("a:1"), Verdict::Drop);
        assert_eq!(rules.verdict("b:2"), Verdict::Drop);
        assert_eq!(
            rules.verdict("c:3"),
            Verdict::Delay(Duration::from_millis(5))
        );
        std::fs::write(&path, "").unwrap();
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(10));
        assert_eq!(rules.verdict("a:1"), Verdict::Pass, "healed");
    }
}
