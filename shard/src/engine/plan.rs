//! What one decision produces: the [`Plan`] with its [`Provision`]s (machines to create) and
//! [`Shortfall`]s (demand it could not serve). A provision started but not yet answered is also
//! an input of later decisions ([`Inputs::in_flight`](super::Inputs::in_flight)).

use serde::{Deserialize, Serialize};

use super::{QuotaKey, Resources};

/// A machine to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provision {
    /// Need it is for.
    pub need: String,
    /// Domain to create it in.
    pub domain: String,
    /// Quota it counts against.
    pub quota: QuotaKey,
    /// Resources to ask for.
    pub resources: Resources,
}

/// A shortfall: a need the shard could not fully serve this cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// Need.
    pub need: String,
    /// Machines missing.
    pub missing: u32,
}

/// The decision of one cycle, already applied to the [`Engine`](super::Engine) that made it: the caller makes
/// it durable (machine records named here, provisions as in flight) and starts the provisions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `(machine, need)`: idle (or released) machines put to work.
    pub assign: Vec<(String, String)>,
    /// Machines to create.
    pub provision: Vec<Provision>,
    /// `(machine, from need, to need)`: lower-priority work displaced.
    pub preempt: Vec<(String, String, String)>,
    /// Machines no need wants any more (they become idle).
    pub release: Vec<String>,
    /// Idle machines to return to the provider now: their quota holds more than this shard's
    /// slice of it. Listed every decision until they are gone.
    pub surplus: Vec<String>,
    /// What could not be served.
    pub shortfalls: Vec<Shortfall>,
    /// Machines of `shortfalls` that found every slice full: what a larger slice would let
    /// the shard provision (the coordinator places slice capacity by it).
    pub quota_short: u64,
}
