//! The provisioning engine: one pure decision per cycle, no I/O. Given the shard's allocation
//! (domains and quota slices), its machine ledger and the clusters' demand, it decides which
//! idle machines to assign, what to provision within quota, what lower-priority work to
//! preempt, what surplus to release, and what remains short.
//!
//! Invariants (checked by property tests): a quota slice is never exceeded, no machine outside
//! the shard's domains is ever used, and no machine is assigned twice.
//!
//! The engine is a live model. A shard keeps one [`Engine`] for its whole life and tells it what
//! changed (domains, slices, machines, a cluster's demand, provisions finishing); each
//! [`Engine::decide`] then looks only at what can have moved: needs whose demand changed or
//! that lost machines, needs that were short, machines whose claim is unresolved. Nothing in a
//! steady cycle is proportional to the size of the ledger, which is what keeps a 500K-machine
//! shard's cycle in milliseconds.
//!
//! Where things are:
//! - `inputs.rs` and `plan.rs`: the plain data going in (ledger records, demand rows,
//!   [`Inputs`]) and coming out ([`Plan`]);
//! - `model.rs`: the [`Engine`]'s state (machine and need slots, names interned to dense ids)
//!   and what can be read from it;
//! - `index.rs`: the ordered indexes of idle and assigned machines per domain and per AZ, and
//!   the moves of a machine between them;
//! - `changes.rs`: the changes a shard feeds the engine between decisions;
//! - `decide.rs`: one decision cycle, producing the [`Plan`];
//! - `check.rs`: consistency checks of the model and its indexes (tests and debugging).

mod changes;
mod check;
mod decide;
mod index;
mod inputs;
mod model;
mod plan;

pub use inputs::{Inputs, Machine, MachineView, Need, Placement, QuotaKey, Resources, domain_az};
pub use model::{Engine, MachineCounts};
pub use plan::{Plan, Provision, Shortfall};

/// Decides one cycle from scratch: builds an [`Engine`] from `inputs` and runs one decision.
/// The run loop keeps one [`Engine`] alive and feeds it changes instead; this form is for tests
/// and one-off decisions.
pub fn decide(inputs: &Inputs) -> Plan {
    Engine::from_inputs(inputs).decide()
}

#[cfg(test)]
mod tests;
