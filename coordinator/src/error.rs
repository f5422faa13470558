//! The one place where coordinator errors become gRPC statuses. The layers below the services
//! say *why* something failed — [`ReplicaError`] for the replica, the log and the leader's
//! duties, [`FleetError`] for the state machine, [`crate::kv::KvError`] for the KV — and the
//! table here decides the code, as etcd's `v3rpc` does for its errors.

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use tonic::{Code, Status};

use crate::fleet::{ErrorKind, FleetError};

/// Why a replica could not do what a call asked, by what the caller can do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicaError {
    /// Try again, here or on another replica: no leader yet, not the leader, leadership
    /// changed or unconfirmed, the replica is shutting down, or the outcome is unknown (a retry
    /// with the same request id applies once). `UNAVAILABLE`.
    #[error("{0}")]
    Retry(String),
    /// The group's state or this replica's role forbids it. `FAILED_PRECONDITION`.
    #[error("{0}")]
    Precondition(String),
    /// The request is malformed. `INVALID_ARGUMENT`.
    #[error("{0}")]
    Invalid(String),
    /// It names something that does not exist. `NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// Given up part way with nothing changed; try again. `ABORTED`.
    #[error("{0}")]
    Aborted(String),
    /// A broken invariant inside the replica. `INTERNAL`.
    #[error("{0}")]
    Internal(String),
    /// The state machine refused the command (its own table: [`fleet_status`]).
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// Another replica answered a forwarded call or a read-index request with this status;
    /// passed on as it is.
    #[error("{}", .0.message())]
    Peer(Status),
}

impl ReplicaError {
    /// [`ReplicaError::Retry`].
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry(message.into())
    }
    /// [`ReplicaError::Precondition`].
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::Precondition(message.into())
    }
    /// [`ReplicaError::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
    /// [`ReplicaError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
    /// [`ReplicaError::Aborted`].
    pub fn aborted(message: impl Into<String>) -> Self {
        Self::Aborted(message.into())
    }
    /// [`ReplicaError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
}

impl From<Status> for ReplicaError {
    fn from(status: Status) -> Self {
        Self::Peer(status)
    }
}

/// The table.
impl From<ReplicaError> for Status {
    fn from(error: ReplicaError) -> Self {
        match error {
            ReplicaError::Retry(m) => Status::unavailable(m),
            ReplicaError::Precondition(m) => Status::failed_precondition(m),
            ReplicaError::Invalid(m) => Status::invalid_argument(m),
            ReplicaError::NotFound(m) => Status::not_found(m),
            ReplicaError::Aborted(m) => Status::aborted(m),
            ReplicaError::Internal(m) => Status::internal(m),
            ReplicaError::Fleet(e) => fleet_status(&e),
            ReplicaError::Peer(status) => status,
        }
    }
}

/// Maps a fleet state-machine refusal to its gRPC status; the message is the error's own text.
pub fn fleet_status(error: &FleetError) -> Status {
    match error {
        FleetError::Kv(e) => return kv_status(e),
        FleetError::Auth(e) => return auth_status(e),
        _ => {}
    }
    let code = match error.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unavailable => Code::Unavailable,
    };
    Status::new(code, error.to_string())
}

/// An invalid-argument status naming the field.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {reason}"))
}

/// The gRPC status etcd answers a KV refusal with (same code, same message).
pub fn kv_status(error: &crate::kv::KvError) -> Status {
    use crate::kv::KvError;
    let code = match error {
        KvError::EmptyKey
        | KvError::TooLarge
        | KvError::DuplicateKey
        | KvError::TooManyOps
        | KvError::BadLeaseId
        | KvError::LeaseTtlNegative => Code::InvalidArgument,
        KvError::LeaseNotFound | KvError::KeyNotFound => Code::NotFound,
        KvError::LeaseExists => Code::FailedPrecondition,
        KvError::LeaseTtlTooLarge | KvError::Compacted { .. } | KvError::FutureRevision => {
            Code::OutOfRange
        }
    };
    Status::new(code, error.to_string())
}

/// The gRPC status etcd answers an auth refusal with (same code, same message).
pub fn auth_status(error: &crate::auth::AuthError) -> Status {
    use crate::auth::AuthError;
    let code = match error {
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::InvalidManagement
        | AuthError::OldRevision => Code::InvalidArgument,
        AuthError::UserAlreadyExists
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExists
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::NotEnabled
        | AuthError::RootUserMissing
        | AuthError::RootRoleMissing => Code::FailedPrecondition,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidToken => Code::Unauthenticated,
    };
    Status::new(code, error.to_string())
}

/// Why openraft refused a write (a client write or a membership change).
pub fn raft_write_error<NID: openraft::NodeId, N: openraft::Node>(
    error: RaftError<NID, ClientWriteError<NID, N>>,
) -> ReplicaError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ReplicaError::retry(format!(
            "leadership changed before the write was proposed (leader now {:?}); retry",
            f.leader_id
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(e),
        )) => ReplicaError::aborted(format!(
            "another membership change is in progress; retry: {e}"
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ReplicaError::precondition(format!("membership change refused: {e}"))
        }
        RaftError::Fatal(e) => ReplicaError::retry(format!("raft stopped: {e}")),
    }
}
