//! The one place where coordinator errors become gRPC statuses.

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use tonic::{Code, Status};

use crate::fleet::{ErrorKind, FleetError};

/// Maps a fleet state-machine refusal to its gRPC status; the message is the error's own text.
pub fn fleet_status(error: &FleetError) -> Status {
    if let FleetError::Kv(e) = error {
        return kv_status(e);
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

/// Maps an openraft write failure to a status the client can act on.
pub fn raft_write_status<NID: openraft::NodeId, N: openraft::Node>(
    error: RaftError<NID, ClientWriteError<NID, N>>,
) -> Status {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Status::unavailable(format!(
            "leadership changed before the write was proposed (leader now {:?}); retry",
            f.leader_id
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(e),
        )) => Status::aborted(format!(
            "another membership change is in progress; retry: {e}"
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(format!("membership change refused: {e}"))
        }
        RaftError::Fatal(e) => Status::unavailable(format!("raft stopped: {e}")),
    }
}
