//! What both sides of the provider contract ([`crate::providerpb`]) need: how grants order,
//! and refusals that carry a machine-readable reason in the status details (gRPC's standard
//! `google.rpc.Status` with a `google.rpc.ErrorInfo`).

use std::cmp::Ordering;
use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::providerpb::Grant;

/// The contract version a provider of this package serves; also the `domain` of the
/// `google.rpc.ErrorInfo` in its refusals.
pub const CONTRACT: &str = "ballast.provider.v1";

/// Why a provider refused a call, as callers match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A newer grant for the domain, cluster or quota was accepted.
    StaleGrant,
    /// The shard restarted since this incarnation.
    StaleEpoch,
    /// The create would take the shard past its slice.
    OverSlice,
    /// The machine belongs to another shard.
    NotOwner,
    /// The machine's state does not allow the call.
    InvalidState,
    /// The idempotency key was used for another request.
    IdempotencyConflict,
    /// The machine id is taken.
    AlreadyExists,
    /// No room at the provider (retry later).
    InsufficientCapacity,
    /// No such machine.
    NotFound,
    /// A malformed request.
    InvalidArgument,
    /// Transient: retry with the same idempotency key.
    Unavailable,
}

impl Reason {
    /// Every reason, for tables and checks.
    pub const ALL: [Reason; 11] = [
        Reason::StaleGrant,
        Reason::StaleEpoch,
        Reason::OverSlice,
        Reason::NotOwner,
        Reason::InvalidState,
        Reason::IdempotencyConflict,
        Reason::AlreadyExists,
        Reason::InsufficientCapacity,
        Reason::NotFound,
        Reason::InvalidArgument,
        Reason::Unavailable,
    ];

    /// The reason as the wire names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::StaleGrant => "stale-grant",
            Reason::StaleEpoch => "stale-epoch",
            Reason::OverSlice => "over-slice",
            Reason::NotOwner => "not-owner",
            Reason::InvalidState => "invalid-state",
            Reason::IdempotencyConflict => "idempotency-conflict",
            Reason::AlreadyExists => "already-exists",
            Reason::InsufficientCapacity => "insufficient-capacity",
            Reason::NotFound => "not-found",
            Reason::InvalidArgument => "invalid-argument",
            Reason::Unavailable => "unavailable",
        }
    }

    /// The gRPC code the contract gives this reason.
    pub fn code(self) -> Code {
        match self {
            Reason::StaleGrant
            | Reason::StaleEpoch
            | Reason::OverSlice
            | Reason::NotOwner
            | Reason::InvalidState => Code::FailedPrecondition,
            Reason::IdempotencyConflict | Reason::AlreadyExists => Code::AlreadyExists,
            Reason::InsufficientCapacity => Code::ResourceExhausted,
            Reason::NotFound => Code::NotFound,
            Reason::InvalidArgument => Code::InvalidArgument,
            Reason::Unavailable => Code::Unavailable,
        }
    }

    /// The reason named `text`, if the contract has it.
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether a call refused for this reason may succeed if retried as it is.
    pub fn retryable(self) -> bool {
        matches!(self, Reason::Unavailable | Reason::InsufficientCapacity)
    }
}

/// A refusal: the reason's code, `message`, and a `google.rpc.ErrorInfo` (domain
/// [`CONTRACT`]) with the reason and `metadata` in the standard status details.
pub fn refusal(reason: Reason, message: impl Into<String>, metadata: &[(&str, String)]) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Status::with_error_details(
        reason.code(),
        message,
        ErrorDetails::with_error_info(reason.as_str(), CONTRACT, metadata),
    )
}

/// The reason and metadata a provider put in a refusal, if it did: an `ErrorInfo` of this
/// contract's domain, with a known reason under that reason's code.
pub fn reason_of(status: &Status) -> Option<(Reason, HashMap<String, String>)> {
    let info = status.get_details_error_info()?;
    if info.domain != CONTRACT {
        return None;
    }
    let reason = Reason::parse(&info.reason)?;
    (reason.code() == status.code()).then_some((reason, info.metadata))
}

/// Orders grants: by restore epoch, then revision; a missing grant is older than any.
pub fn compare(a: Option<&Grant>, b: Option<&Grant>) -> Ordering {
    let key = |g: Option<&Grant>| g.map(|g| (g.restore_epoch, g.revision));
    key(a).cmp(&key(b))
}

/// A grant as text: `epoch/revision`.
pub fn describe(grant: Option<&Grant>) -> String {
    match grant {
        Some(g) => format!("{}/{}", g.restore_epoch, g.revision),
        None => "none".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_their_reason_and_code() {
        for reason in Reason::ALL {
            let status = refusal(reason, "no", &[("domain", "d1".into())]);
            assert_eq!(status.code(), reason.code());
            let (read, metadata) = reason_of(&status).expect("a reason");
            assert_eq!(read, reason);
            assert_eq!(metadata["domain"], "d1");
        }
        assert!(reason_of(&Status::failed_precondition("bare")).is_none());
        // A reason under the wrong code, or of another domain, is not believed.
        let info =
            |domain: &str| ErrorDetails::with_error_info("stale-grant", domain, HashMap::new());
        let mislabelled = Status::with_error_details(Code::Internal, "x", info(CONTRACT));
        assert!(reason_of(&mislabelled).is_none());
        let foreign =
            Status::with_error_details(Code::FailedPrecondition, "x", info("example.com"));
        assert!(reason_of(&foreign).is_none());
        let ours = Status::with_error_details(Code::FailedPrecondition, "x", info(CONTRACT));
        assert_eq!(reason_of(&ours).map(|r| r.0), Some(Reason::StaleGrant));
    }

    #[test]
    fn grants_order_by_epoch_then_revision() {
        let g = |e, r| Grant {
            restore_epoch: e,
            revision: r,
        };
        assert_eq!(compare(Some(&g(0, 9)), Some(&g(1, 1))), Ordering::Less);
        assert_eq!(compare(Some(&g(1, 2)), Some(&g(1, 1))), Ordering::Greater);
        assert_eq!(compare(None, Some(&g(0, 0))), Ordering::Less);
        assert_eq!(compare(Some(&g(3, 3)), Some(&g(3, 3))), Ordering::Equal);
    }
}
