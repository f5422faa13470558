//! Keeping the provider's record of which cluster each machine serves in step with the ledger:
//! `ConfigureMachine` when the engine puts a machine to work for a cluster, `ReleaseMachine`
//! when it goes idle. The engine decides in memory and moves on; this controller carries the
//! decisions out afterwards, newest wish first, one call at a time per machine (a machine moved
//! from one cluster to another is released, then configured), many machines at once.
//!
//! The provider's record matters because a cluster bound to another shard is adopted there
//! with the machines configured for it (ADR 0016), and because it is what an operator sees at
//! the provider. A configure presents the grant of the cluster it is for; a release, the grant
//! of the cluster the machine serves.
//!
//! A call that got no answer may still be carried out later: an overloaded provider runs a
//! queued call whose caller gave up long ago. So the next step for that machine asks the
//! provider first: if the machine is as the call asked, it landed; if not, the call is sent
//! again under its idempotency key before anything else is done, so it lands now (or is
//! replayed) instead of after the shard has moved on and changed the machine again. Sending a
//! new call under a new key instead, the shard acted on a state the late call then changed.
//! Asking first keeps the calls what they were before (a read, then a change only where the
//! call has not landed); resending at once would queue copies of calls behind their originals
//! on an overloaded provider. A call still unanswered after [`MAX_RESENDS`] resends is given
//! up (a provider that loses its answers).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::provider::Reason;
use ballast_protocol::providerpb::{ConfigureMachineRequest, MachineState, ReleaseMachineRequest};
use futures::StreamExt;
use tokio::sync::watch;

use crate::provider::{ProviderError, token};
use crate::worker::Worker;

/// Calls in flight at once.
const CONCURRENCY: usize = 64;

/// Per machine: the cluster the ledger wants it to serve, and what the provider last confirmed.
#[derive(Debug, Default)]
pub struct Placements {
    /// Machine → cluster wanted (`None`: idle).
    wanted: HashMap<String, Option<String>>,
    /// Machine → cluster the provider last confirmed (absent: not known).
    confirmed: HashMap<String, Option<String>>,
    /// Machines whose wish is not carried out yet.
    dirty: BTreeSet<String>,
    /// Machines with a call in flight.
    busy: BTreeSet<String>,
    /// Machines whose last call got no answer: sent again before anything else.
    unanswered: HashMap<String, Call>,
}

/// Times an unanswered call is sent again before the provider is asked instead.
const MAX_RESENDS: u32 = 3;

/// One call about a machine, as sent: sent again with the same key until it is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Idempotency key.
    pub key: String,
    /// What the call asks for.
    pub action: Action,
    /// Times it was sent again without an answer.
    pub resends: u32,
}

/// What a [`Call`] asks the provider for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `ReleaseMachine`, under the grant of the cluster believed served (`None`: idle).
    Release {
        /// The cluster whose grant the release presents.
        serving: Option<String>,
    },
    /// `ConfigureMachine` for the cluster, under its grant.
    Configure {
        /// The cluster to serve.
        cluster: String,
    },
}

/// One machine to bring in step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Machine.
    pub machine: String,
    /// Cluster wanted (`None`: idle).
    pub wanted: Option<String>,
    /// What the provider last confirmed, if known.
    pub confirmed: Option<Option<String>>,
    /// A call that got no answer, to send again first.
    pub unanswered: Option<Call>,
}

impl Placements {
    /// Records that the ledger wants `machine` to serve `cluster` (or to be idle).
    pub fn want(&mut self, machine: &str, cluster: Option<String>) {
        // While a call is in flight the provider may already have what it asked for: a wish
        // back to what was confirmed before it is still a wish, judged when the call ends.
        if !self.busy.contains(machine) && self.confirmed.get(machine) == Some(&cluster) {
            self.wanted.remove(machine);
            self.dirty.remove(machine);
            return;
        }
        self.wanted.insert(machine.to_string(), cluster);
        self.dirty.insert(machine.to_string());
    }

    /// Records what the provider says a machine serves (a machine just made, say).
    pub fn known(&mut self, machine: &str, cluster: Option<String>) {
        self.confirmed.insert(machine.to_string(), cluster);
    }

    /// Records what a listing of the provider's machines says a machine serves, unless the
    /// controller already knows it or has a call in flight for it: a listing can be older than
    /// the answers the controller has had since (taken as true, a stale page made a later wish
    /// for the old cluster look carried out, and the machine stayed serving the other one at
    /// the provider). Nor while a call of the controller's is unanswered (it may land after the
    /// listing). Where the controller's own record is wrong, the provider refuses the next
    /// call and the controller asks it then.
    pub fn listed(&mut self, machine: &str, cluster: Option<String>) {
        if !self.busy.contains(machine)
            && !self.confirmed.contains_key(machine)
            && !self.unanswered.contains_key(machine)
        {
            self.confirmed.insert(machine.to_string(), cluster);
        }
    }

    /// Forgets a machine the shard no longer has.
    pub fn forget(&mut self, machine: &str) {
        self.wanted.remove(machine);
        self.confirmed.remove(machine);
        self.dirty.remove(machine);
        self.unanswered.remove(machine);
    }

    /// Up to `limit` machines to bring in step (not already in flight); marks them busy.
    pub fn take(&mut self, limit: usize) -> Vec<Step> {
        let ready: Vec<String> = self
            .dirty
            .iter()
            .filter(|m| !self.busy.contains(*m))
            .take(limit)
            .cloned()
            .collect();
        ready
            .into_iter()
            .filter_map(|machine| {
                self.dirty.remove(&machine);
                let wanted = self.wanted.get(&machine).cloned()?;
                self.busy.insert(machine.clone());
                let confirmed = self.confirmed.get(&machine).cloned();
                let unanswered = self.unanswered.get(&machine).cloned();
                Some(Step {
                    machine,
                    wanted,
                    confirmed,
                    unanswered,
                })
            })
            .collect()
    }

    /// A call for `machine` ended: the provider now has `ended.confirmed` (`None`: it failed);
    /// `ended.retry` puts it back in line; `ended.unsure` forgets what the provider was last
    /// known to have, so the next attempt asks it first; `ended.unanswered` is sent again first.
    pub fn finished(&mut self, machine: &str, ended: Ended) {
        let Ended {
            confirmed,
            retry,
            unsure,
            unanswered,
            gone: _,
        } = ended;
        self.busy.remove(machine);
        match unanswered {
            Some(call) => self.unanswered.insert(machine.to_string(), call),
            None => self.unanswered.remove(machine),
        };
        if let Some(cluster) = confirmed {
            self.confirmed.insert(machine.to_string(), cluster);
        } else if unsure {
            self.confirmed.remove(machine);
        }
        match (self.wanted.get(machine), self.confirmed.get(machine)) {
            (Some(wanted), Some(confirmed)) if wanted == confirmed => {
                self.wanted.remove(machine);
                self.dirty.remove(machine);
            }
            // A newer wish arrived during the call (it is dirty again), or the provider said
            // the call may succeed later: it goes back in line.
            (Some(_), _) if retry || self.dirty.contains(machine) => {
                self.dirty.insert(machine.to_string());
            }
            (Some(_), _) => {
                // Not retried (the provider refused for good): the wish waits for the next one.
                self.wanted.remove(machine);
            }
            _ => {}
        }
    }

    /// The cluster the provider last confirmed `machine` serves (`None`: idle or not known).
    pub fn confirmed_cluster(&self, machine: &str) -> Option<String> {
        self.confirmed.get(machine).cloned().flatten()
    }

    /// Machines the provider confirmed, or the ledger wants, serving `cluster`.
    pub fn serving(&self, cluster: &str) -> BTreeSet<String> {
        let of = |map: &HashMap<String, Option<String>>| {
            map.iter()
                .filter(|(_, c)| c.as_deref() == Some(cluster))
                .map(|(m, _)| m.clone())
                .collect::<Vec<_>>()
        };
        of(&self.confirmed)
            .into_iter()
            .chain(of(&self.wanted))
            .collect()
    }

    /// Machines with a wish not yet carried out.
    pub fn pending(&self) -> usize {
        self.wanted.len()
    }
}

/// How one machine's call ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ended {
    /// What the provider now has the machine serve (`None`: the call failed).
    pub confirmed: Option<Option<String>>,
    /// Whether to try again.
    pub retry: bool,
    /// The call failed in a way that leaves the machine's state at the provider unknown (no
    /// answer came, or the provider did not have it in the state the shard believed).
    pub unsure: bool,
    /// The call that got no answer, to send again under its key before anything else.
    pub unanswered: Option<Call>,
    /// The provider has no such machine, or has it deleted or failed: the ledger forgets it
    /// ([`Worker::forget_gone`]) rather than count it as capacity until the next
    /// reconciliation.
    pub gone: bool,
}

impl Ended {
    fn done(confirmed: Option<String>) -> Ended {
        Ended {
            confirmed: Some(confirmed),
            ..Ended::default()
        }
    }

    fn dropped() -> Ended {
        Ended::default()
    }

    fn gone() -> Ended {
        Ended {
            gone: true,
            ..Ended::default()
        }
    }
}

/// The cluster a need id (`cluster/row`) belongs to.
pub fn cluster_of(need: &str) -> String {
    need.split('/').next().unwrap_or(need).to_string()
}

/// Carries out placements until stopped.
pub async fn placement_loop(worker: Arc<Worker>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = worker.placements_changed() => {}
            // Retries after failures wait for this tick.
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        loop {
            let steps = worker.placements().take(CONCURRENCY * 4);
            if steps.is_empty() {
                break;
            }
            if steps.iter().any(|step| step.wanted.is_none()) {
                ballast_failpoints::hold("shard-placement-hold").await;
            }
            futures::stream::iter(steps)
                .for_each_concurrent(CONCURRENCY, |step| {
                    let worker = worker.clone();
                    async move {
                        let ended = carry_out(&worker, &step).await;
                        let gone = ended.gone;
                        worker.placements().finished(&step.machine, ended);
                        if gone {
                            worker.forget_gone(&step.machine);
                        }
                    }
                })
                .await;
            if worker.provider_backoff().is_paused() {
                break;
            }
        }
    }
}

/// One machine's placement at the provider: what it confirmed (if anything), whether to try
/// again, and whether the machine's state there is now unknown.
async fn carry_out(worker: &Worker, step: &Step) -> Ended {
    let Some(machine) = worker.state().engine.machine(&step.machine) else {
        return Ended::dropped();
    };
    let provider = match worker
        .providers()
        .of(machine.quota.as_ref().map_or("", |q| q.0.as_str()))
    {
        Ok(provider) => provider,
        Err(e) => {
            tracing::warn!(machine = %step.machine, error = %e, "no provider to place the machine at");
            return Ended::dropped();
        }
    };
    let provider = provider.as_ref();
    // A call that got no answer may land yet. The provider is asked first: if the machine is
    // as the call asked, it landed; if not, the call is sent again under its key, so it lands
    // now (or is replayed) rather than after the shard has moved on.
    let (confirmed, asked) = match &step.unanswered {
        None => match &step.confirmed {
            Some(known) => (known.clone(), false),
            // Not known (found otherwise than believed, say): asked, rather than acted on a
            // guess. A release presents the grant of the cluster the machine serves, and a
            // configure of a machine serving another cluster releases it under that grant.
            None => match ask(provider, &step.machine).await {
                Ok(now) => (now, true),
                Err(ended) => return ended,
            },
        },
        Some(call) => {
            let now = match ask(provider, &step.machine).await {
                Ok(now) => now,
                Err(ended) if ended.unsure => {
                    return Ended {
                        unanswered: Some(call.clone()),
                        ..ended
                    };
                }
                Err(ended) => return ended,
            };
            if now == call.action.target() {
                (now, true)
            } else {
                match send(worker, provider, &step.machine, call).await {
                    Ok(after) => (after, true),
                    Err(Some(e)) if e.outcome_unknown() => {
                        worker.provider_failed(call.action.name(), &e);
                        let resends = call.resends + 1;
                        if resends >= MAX_RESENDS {
                            tracing::warn!(machine = %step.machine, key = %call.key, resends, error = %e, "a call about a machine is still unanswered; asking the provider instead");
                        }
                        return Ended {
                            confirmed: None,
                            retry: true,
                            unsure: true,
                            unanswered: (resends < MAX_RESENDS).then(|| Call {
                                resends,
                                ..call.clone()
                            }),
                            gone: false,
                        };
                    }
                    Err(Some(e)) if e.reason() == Some(Reason::NotFound) => {
                        return Ended::gone();
                    }
                    // Refused (it changed nothing), or its grant is no longer held: the
                    // machine is as the provider just said.
                    Err(_) => (now, true),
                }
            }
        }
    };
    if step.wanted == confirmed {
        return Ended::done(confirmed);
    }
    let sequence = worker.next_sequence();
    let epoch = worker.epoch();
    let release = |key: String| Call {
        key,
        action: Action::Release {
            serving: confirmed.clone(),
        },
        resends: 0,
    };
    let calls = match &step.wanted {
        None => vec![release(format!(
            "release/{}/{epoch}/{sequence}",
            step.machine
        ))],
        Some(cluster) => {
            // Not (or no longer) serving the cluster, or fenced: not this shard's to configure.
            if worker.cluster_grants(cluster).is_none() {
                return Ended {
                    confirmed: asked.then(|| confirmed.clone()),
                    ..Ended::dropped()
                };
            }
            let key = |call: &str| format!("{call}/{}/{cluster}/{epoch}/{sequence}", step.machine);
            let configure = Call {
                key: key("configure"),
                action: Action::Configure {
                    cluster: cluster.clone(),
                },
                resends: 0,
            };
            match &confirmed {
                Some(other) if other != cluster => vec![release(key("release")), configure],
                _ => vec![configure],
            }
        }
    };
    let mut now = confirmed.clone();
    let mut progressed = false;
    for call in calls {
        let e = match send(worker, provider, &step.machine, &call).await {
            Ok(state) => {
                now = state;
                progressed = true;
                continue;
            }
            // No grant to present: the release's (the machine serves a cluster this shard no
            // longer holds, or one fenced), or the configure's, gone between the calls.
            Err(None) => {
                return Ended {
                    confirmed: (asked || progressed).then_some(now),
                    ..Ended::dropped()
                };
            }
            Err(Some(e)) => e,
        };
        // The provider does not know the machine (a provider that forgets, or one reconciled
        // away): nothing to place, and nothing to count as capacity.
        if e.reason() == Some(Reason::NotFound) {
            return Ended::gone();
        }
        // No answer: the call may be carried out yet, so it is sent again first. Or the
        // machine was not in the state believed (a refusal for its state, or for the grant
        // of a cluster it no longer serves): the belief was wrong, and the next attempt asks
        // (once, for a belief that was not just asked for).
        let unknown = e.outcome_unknown();
        let unsure = unknown
            || (!asked
                && !progressed
                && matches!(e.reason(), Some(Reason::InvalidState | Reason::StaleGrant)));
        // A grant refused because the shard has since been given a newer one (the cluster
        // moved away and back) is no verdict on the wish: the next call presents the new one.
        let retry = e.retryable() || worker.holds_newer_than_refused(&e) || unsure;
        worker.provider_failed(call.action.name(), &e);
        tracing::debug!(machine = %step.machine, error = %e, retry, unsure, "placing a machine at the provider failed");
        return Ended {
            // A refusal changed nothing: what the calls before it did is what the provider has.
            confirmed: (!unsure && progressed).then_some(now),
            retry,
            unsure,
            unanswered: unknown.then_some(call),
            gone: false,
        };
    }
    Ended::done(now)
}

/// What the provider says `machine` serves now (`None`: idle); or how the step ends when it
/// cannot say.
async fn ask(
    provider: &dyn crate::provider::Provider,
    machine: &str,
) -> Result<Option<String>, Ended> {
    match provider.get(machine).await {
        // Deleted or failed there: it serves nothing and never will again.
        Ok(now)
            if matches!(
                MachineState::try_from(now.state),
                Ok(MachineState::Deleted) | Ok(MachineState::Failed)
            ) =>
        {
            Err(Ended::gone())
        }
        Ok(now) => Ok((!now.cluster.is_empty()).then_some(now.cluster)),
        Err(e) if e.reason() == Some(Reason::NotFound) => Err(Ended::gone()),
        Err(e) => {
            tracing::debug!(machine = %machine, error = %e, "asking the provider about a machine failed");
            Err(Ended {
                confirmed: None,
                retry: e.retryable(),
                unsure: true,
                unanswered: None,
                gone: false,
            })
        }
    }
}

impl Action {
    /// What the machine serves once the call is carried out (`None`: idle).
    fn target(&self) -> Option<String> {
        match self {
            Action::Release { .. } => None,
            Action::Configure { cluster } => Some(cluster.clone()),
        }
    }

    /// The call's name in metrics.
    fn name(&self) -> &'static str {
        match self {
            Action::Release { .. } => "release",
            Action::Configure { .. } => "configure",
        }
    }
}

/// Sends `call` about `machine` under the grants it needs now: the provider's word on what the
/// machine serves after it, a provider error, or `Err(None)` when the shard no longer holds
/// the grant to present.
async fn send(
    worker: &Worker,
    provider: &dyn crate::provider::Provider,
    machine: &str,
    call: &Call,
) -> Result<Option<String>, Option<ProviderError>> {
    match &call.action {
        Action::Release { serving } => {
            let grants = worker.grants_for_serving(serving.as_deref()).ok_or(None)?;
            provider
                .release(ReleaseMachineRequest {
                    idempotency_key: call.key.clone(),
                    token: Some(token(&worker.actor(), &grants)),
                    machine_id: machine.to_string(),
                })
                .await
                .map(|_| None)
                .map_err(Some)
        }
        Action::Configure { cluster } => {
            let grants = worker.cluster_grants(cluster).ok_or(None)?;
            provider
                .configure(ConfigureMachineRequest {
                    idempotency_key: call.key.clone(),
                    token: Some(token(&worker.actor(), &grants)),
                    machine_id: machine.to_string(),
                    cluster: cluster.clone(),
                })
                .await
                .map(|_| Some(cluster.clone()))
                .map_err(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_wish_is_carried_out_once_and_confirmed_wishes_cost_nothing() {
        let mut p = Placements::default();
        p.want("m1", Some("c1".into()));
        p.want("m1", Some("c2".into()));
        let steps = p.take(10);
        assert_eq!(
            steps,
            vec![Step {
                machine: "m1".into(),
                wanted: Some("c2".into()),
                confirmed: None,
                unanswered: None,
            }]
        );
        // In flight: not handed out twice, even when wished again.
        p.want("m1", Some("c3".into()));
        assert!(p.take(10).is_empty());
        p.finished("m1", Ended::done(Some("c2".into())));
        // The newer wish (c3) is still pending.
        let steps = p.take(10);
        assert_eq!(steps[0].wanted, Some("c3".into()));
        assert_eq!(steps[0].confirmed, Some(Some("c2".into())));
        p.finished("m1", Ended::done(Some("c3".into())));
        assert_eq!(p.pending(), 0);
        // Wishing what is confirmed costs no call.
        p.want("m1", Some("c3".into()));
        assert!(p.take(10).is_empty());
    }

    #[test]
    fn failures_retry_only_when_the_provider_says_so() {
        let mut p = Placements::default();
        p.want("m1", None);
        p.want("m2", Some("c1".into()));
        assert_eq!(p.take(10).len(), 2);
        p.finished(
            "m1",
            Ended {
                retry: true,
                ..Ended::default()
            },
        );
        p.finished("m2", Ended::dropped());
        let again = p.take(10);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].machine, "m1");
        p.finished("m1", Ended::done(None));
        assert_eq!(p.pending(), 0);
        p.forget("m1");
        assert!(p.take(10).is_empty());
    }

    #[test]
    fn a_wish_back_to_the_old_state_during_a_call_is_carried_out_after_it() {
        let mut p = Placements::default();
        p.known("m1", None);
        p.want("m1", Some("c1".into()));
        assert_eq!(p.take(10).len(), 1);
        // The cluster's demand falls while the configure is in flight: idle is wished again.
        p.want("m1", None);
        p.finished("m1", Ended::done(Some("c1".into())));
        let steps = p.take(10);
        assert_eq!(
            steps,
            vec![Step {
                machine: "m1".into(),
                wanted: None,
                confirmed: Some(Some("c1".into())),
                unanswered: None,
            }],
            "the configure went through: the machine must be released"
        );
    }

    #[test]
    fn a_listing_older_than_the_last_answer_changes_nothing() {
        let mut p = Placements::default();
        p.known("m1", Some("a".into()));
        p.want("m1", Some("b".into()));
        assert_eq!(p.take(10).len(), 1);
        // A reconcile's page, read before the move, arrives while the call is in flight…
        p.listed("m1", Some("a".into()));
        p.finished("m1", Ended::done(Some("b".into())));
        // …or after it.
        p.listed("m1", Some("a".into()));
        // The machine goes back to a: that is a call to make, not one already made.
        p.want("m1", Some("a".into()));
        let steps = p.take(10);
        assert_eq!(steps.len(), 1, "the move back to a is carried out");
        assert_eq!(steps[0].confirmed, Some(Some("b".into())));
        // A machine the controller knows nothing of takes the listing's word.
        p.listed("m2", None);
        p.want("m2", None);
        assert!(p.take(10).iter().all(|s| s.machine != "m2"));
    }

    #[test]
    fn a_call_without_an_answer_leaves_the_machine_unknown_until_asked() {
        let mut p = Placements::default();
        p.known("m1", None);
        p.want("m1", Some("c1".into()));
        assert_eq!(p.take(10)[0].confirmed, Some(None));
        // The configure timed out: it may have been carried out, or not.
        p.finished(
            "m1",
            Ended {
                retry: true,
                unsure: true,
                ..Ended::default()
            },
        );
        // The cluster's demand fell meanwhile: the machine is wished idle. Believing it idle
        // (as before the call) would cost no call, and leave it serving c1 at the provider if
        // the configure went through; unknown, it is looked at.
        p.want("m1", None);
        let step = p.take(10);
        assert_eq!(step.len(), 1);
        assert_eq!(step[0].wanted, None);
        assert_eq!(step[0].confirmed, None, "asked first");
        p.finished("m1", Ended::done(None));
        assert_eq!(p.pending(), 0);
        // Known again: wishing what is confirmed costs nothing.
        p.want("m1", None);
        assert!(p.take(10).is_empty());
    }

    /// How a step ends when `call` got no answer.
    fn no_answer(call: &Call) -> Ended {
        Ended {
            retry: true,
            unsure: true,
            unanswered: Some(call.clone()),
            ..Ended::default()
        }
    }

    #[test]
    fn an_unanswered_call_is_sent_again_first_and_listings_wait_for_its_answer() {
        let mut p = Placements::default();
        p.known("m1", None);
        p.want("m1", Some("c1".into()));
        assert_eq!(p.take(10)[0].unanswered, None);
        let configure = Call {
            key: "configure/m1/c1/1/7".into(),
            action: Action::Configure {
                cluster: "c1".into(),
            },
            resends: 0,
        };
        p.finished("m1", no_answer(&configure));
        // A listing read before the configure landed says idle: not taken as true, the
        // configure may land after it.
        p.listed("m1", None);
        // The wish moves on to c2; the configure for c1 still goes first, under its key.
        p.want("m1", Some("c2".into()));
        let step = p.take(10);
        assert_eq!(step.len(), 1);
        assert_eq!(step[0].wanted, Some("c2".into()));
        assert_eq!(step[0].confirmed, None, "the listing was not believed");
        assert_eq!(step[0].unanswered, Some(configure.clone()));
        // Still no answer: kept.
        p.finished("m1", no_answer(&configure));
        assert_eq!(p.take(10)[0].unanswered, Some(configure));
        // Answered, and the machine moved to c2: nothing is sent again.
        p.finished("m1", Ended::done(Some("c2".into())));
        assert_eq!(p.pending(), 0);
        p.want("m1", None);
        assert_eq!(p.take(10)[0].unanswered, None);
        // A forgotten machine keeps nothing.
        let release = Call {
            key: "release/m1/1/8".into(),
            action: Action::Release {
                serving: Some("c2".into()),
            },
            resends: 0,
        };
        p.finished("m1", no_answer(&release));
        p.forget("m1");
        p.want("m1", None);
        assert_eq!(p.take(10)[0].unanswered, None);
    }

    #[test]
    fn need_ids_name_their_cluster() {
        assert_eq!(cluster_of("c1/web"), "c1");
        assert_eq!(cluster_of("c1"), "c1");
    }
}
