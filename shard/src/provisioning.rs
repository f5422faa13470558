//! The engine's run loop: every cycle, build the inputs from the cache and ledger, decide,
//! make the decision durable, and carry out provisions through the provider. It needs no
//! coordinator: a shard keeps serving demand from its cached allocation during an outage.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::engine::{self, Inputs, Machine, Plan, Provision};
use crate::provider::{FencingToken, Provider, ProviderError, ProvisionAction};
use crate::worker::Worker;

/// The inputs of one decision, from what the shard holds now.
pub fn inputs(worker: &Worker) -> Inputs {
    let held = worker.assignments();
    let ledger = worker.ledger();
    let mut in_flight: BTreeMap<_, u64> = BTreeMap::new();
    for provision in ledger.in_flight.values() {
        *in_flight.entry(provision.quota.clone()).or_insert(0) += 1;
    }
    Inputs {
        domains: held.domains,
        slices: held.slices,
        machines: ledger.machines.values().cloned().collect(),
        needs: ledger.demand.values().flatten().cloned().collect(),
        in_flight,
    }
}

/// Runs decisions until stopped. Provisions left in flight by an earlier run of this shard
/// are re-issued first (the provider is idempotent by machine id, so none is made twice).
pub async fn engine_loop(worker: Arc<Worker>, mut stopped: watch::Receiver<bool>) {
    let pending: Vec<(String, Provision)> = worker
        .ledger()
        .in_flight
        .iter()
        .map(|(id, p)| (id.clone(), p.clone()))
        .collect();
    for (id, provision) in pending {
        tokio::spawn(provision_one(worker.clone(), id, provision));
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(worker.cycle()) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let plan = engine::decide(&inputs(&worker));
        if let Err(e) = carry_out(&worker, plan) {
            tracing::error!(error = %e, "cannot persist a decision; the engine stops");
            return;
        }
    }
}

/// Makes the plan durable, then starts its provisions.
fn carry_out(worker: &Arc<Worker>, plan: Plan) -> Result<(), crate::cache::CacheError> {
    let mut started = Vec::new();
    {
        let mut ledger = worker.ledger();
        let mut touched: Vec<String> = Vec::new();
        let mut set = |ledger: &mut crate::cache::Ledger, machine: &str, need: Option<String>| {
            if let Some(m) = ledger.machines.get_mut(machine) {
                m.assigned_to = need;
                touched.push(machine.to_string());
            }
        };
        for machine in &plan.release {
            set(&mut ledger, machine, None);
        }
        for (machine, need) in &plan.assign {
            set(&mut ledger, machine, Some(need.clone()));
        }
        for (machine, _, need) in &plan.preempt {
            set(&mut ledger, machine, Some(need.clone()));
        }
        if !touched.is_empty() {
            let records: Vec<&Machine> = touched
                .iter()
                .filter_map(|id| ledger.machines.get(id))
                .collect();
            worker.cache().store_machines(&records, &[])?;
        }
        for provision in plan.provision {
            let id = format!(
                "{}-e{}-m{}",
                worker.id(),
                worker.epoch(),
                worker.next_sequence()
            );
            started.push((id, provision));
        }
        if !started.is_empty() {
            let records: Vec<(&str, &Provision)> =
                started.iter().map(|(id, p)| (id.as_str(), p)).collect();
            worker.cache().store_in_flight(&records)?;
            for (id, provision) in &started {
                ledger.in_flight.insert(id.clone(), provision.clone());
            }
        }
    }
    worker.finish_cycle(plan.shortfalls);
    for (id, provision) in started {
        tokio::spawn(provision_one(worker.clone(), id, provision));
    }
    Ok(())
}

/// Asks the provider for one machine and records the answer.
async fn provision_one(worker: Arc<Worker>, id: String, provision: Provision) {
    let token = FencingToken {
        shard: worker.id().to_string(),
        epoch: worker.epoch(),
        sequence: worker.next_sequence(),
    };
    let result = worker
        .provider()
        .provision(ProvisionAction {
            token,
            machine_id: id.clone(),
            domain: provision.domain.clone(),
            resources: provision.resources,
        })
        .await;
    let mut ledger = worker.ledger();
    let machine = match result {
        Ok(made) => Some(Machine {
            id: made.id,
            domain: made.domain,
            resources: made.resources,
            quota: Some(provision.quota.clone()),
            assigned_to: Some(provision.need.clone()),
        }),
        Err(ProviderError::Fenced { .. }) => {
            // A newer incarnation of this shard acted on the machine: this process is stale.
            tracing::error!(machine = %id, "provider fenced this shard; dropping the action");
            None
        }
        Err(ProviderError::Failed(reason)) => {
            tracing::warn!(machine = %id, %reason, "provisioning failed; the next cycle retries");
            None
        }
    };
    let stored = match &machine {
        Some(m) => worker.cache().store_machines(&[m], &[id.as_str()]),
        None => worker.cache().store_machines(&[], &[id.as_str()]),
    };
    if let Err(e) = stored {
        tracing::error!(error = %e, machine = %id, "cannot record a provisioning outcome");
        return;
    }
    ledger.in_flight.remove(&id);
    if let Some(m) = machine {
        ledger.machines.insert(m.id.clone(), m);
    }
}
