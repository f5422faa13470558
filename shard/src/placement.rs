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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::provider::Reason;
use ballast_protocol::providerpb::{ConfigureMachineRequest, ReleaseMachineRequest};
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
    /// the provider). Where the controller's own record is wrong, the provider refuses the next
    /// call and the controller asks it then.
    pub fn listed(&mut self, machine: &str, cluster: Option<String>) {
        if !self.busy.contains(machine) && !self.confirmed.contains_key(machine) {
            self.confirmed.insert(machine.to_string(), cluster);
        }
    }

    /// Forgets a machine the shard no longer has.
    pub fn forget(&mut self, machine: &str) {
        self.wanted.remove(machine);
        self.confirmed.remove(machine);
        self.dirty.remove(machine);
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
                Some(Step {
                    machine,
                    wanted,
                    confirmed,
                })
            })
            .collect()
    }

    /// A call for `machine` ended: the provider now has `ended.confirmed` (`None`: it failed);
    /// `ended.retry` puts it back in line; `ended.unsure` forgets what the provider was last
    /// known to have, so the next attempt asks it first.
    pub fn finished(&mut self, machine: &str, ended: Ended) {
        let Ended {
            confirmed,
            retry,
            unsure,
        } = ended;
        self.busy.remove(machine);
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
                        worker.placements().finished(&step.machine, ended);
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
    // Not known (an earlier call got no answer, or found the machine otherwise than
    // believed): ask, rather than act on a guess. A release presents the grant of the
    // cluster the machine serves, and a configure of a machine serving another cluster must
    // release it first under that cluster's grant: both need the truth.
    let asked = step.confirmed.is_none();
    let confirmed = match &step.confirmed {
        Some(known) => known.clone(),
        None => match provider.get(&step.machine).await {
            Ok(now) => (!now.cluster.is_empty()).then_some(now.cluster),
            Err(e) if e.reason() == Some(Reason::NotFound) => return Ended::dropped(),
            Err(e) => {
                tracing::debug!(machine = %step.machine, error = %e, "asking the provider about a machine failed");
                return Ended {
                    confirmed: None,
                    retry: e.retryable(),
                    unsure: true,
                };
            }
        },
    };
    if step.wanted == confirmed {
        return Ended::done(confirmed);
    }
    let serving = confirmed.clone();
    let Some(release_grants) = worker.grants_for_serving(serving.as_deref()) else {
        return Ended {
            confirmed: asked.then_some(confirmed),
            ..Ended::dropped()
        };
    };
    let release = |key: String| ReleaseMachineRequest {
        idempotency_key: key,
        token: Some(token(&worker.actor(), &release_grants)),
        machine_id: step.machine.clone(),
    };
    let sequence = worker.next_sequence();
    let outcome = match &step.wanted {
        None => provider
            .release(release(format!(
                "release/{}/{}/{sequence}",
                step.machine,
                worker.epoch()
            )))
            .await
            .map(|_| None),
        Some(cluster) => {
            // Not (or no longer) serving the cluster, or fenced: not this shard's to configure.
            let Some(grants) = worker.cluster_grants(cluster) else {
                return Ended {
                    confirmed: asked.then_some(confirmed),
                    ..Ended::dropped()
                };
            };
            let configure = |key: String| ConfigureMachineRequest {
                idempotency_key: key,
                token: Some(token(&worker.actor(), &grants)),
                machine_id: step.machine.clone(),
                cluster: cluster.clone(),
            };
            let key = |call: &str| {
                format!(
                    "{call}/{}/{cluster}/{}/{sequence}",
                    step.machine,
                    worker.epoch()
                )
            };
            let serving_another = matches!(&confirmed, Some(other) if other != cluster);
            let first = if serving_another {
                provider.release(release(key("release"))).await.map(|_| ())
            } else {
                Ok(())
            };
            match first {
                Err(e) => Err(e),
                Ok(()) => match provider.configure(configure(key("configure"))).await {
                    // Serving another cluster than the shard knew: release, then configure.
                    Err(ProviderError::Refused {
                        reason: Reason::InvalidState,
                        ..
                    }) => match provider.release(release(key("release-again"))).await {
                        Ok(_) => provider
                            .configure(configure(key("configure-again")))
                            .await
                            .map(|_| Some(cluster.clone())),
                        Err(e) => Err(e),
                    },
                    other => other.map(|_| Some(cluster.clone())),
                },
            }
        }
    };
    match outcome {
        Ok(confirmed) => Ended::done(confirmed),
        // The provider does not know the machine (a provider that forgets, or one reconciled
        // away): nothing to place.
        Err(e) if e.reason() == Some(Reason::NotFound) => Ended::dropped(),
        Err(e) => {
            // No answer: the call may have been carried out. Or the machine was not in the
            // state believed (a refusal for its state, or for the grant of a cluster it no
            // longer serves): the belief was wrong. Either way the next attempt asks first
            // (once, for a belief that was not just asked for).
            let unsure = e.outcome_unknown()
                || (!asked
                    && matches!(e.reason(), Some(Reason::InvalidState | Reason::StaleGrant)));
            // A grant refused because the shard has since been given a newer one (the cluster
            // moved away and back) is no verdict on the wish: the next call presents the new one.
            let retry = e.retryable()
                || worker.holds_newer_than_refused(&e)
                || (unsure && !e.outcome_unknown());
            worker.provider_failed(
                if step.wanted.is_some() {
                    "configure"
                } else {
                    "release"
                },
                &e,
            );
            tracing::debug!(machine = %step.machine, error = %e, retry, unsure, "placing a machine at the provider failed");
            Ended {
                confirmed: None,
                retry,
                unsure,
            }
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
                confirmed: None
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
                confirmed: Some(Some("c1".into()))
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

    #[test]
    fn need_ids_name_their_cluster() {
        assert_eq!(cluster_of("c1/web"), "c1");
        assert_eq!(cluster_of("c1"), "c1");
    }
}
