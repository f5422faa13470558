//! The one place where coordinator errors become gRPC statuses.

use tonic::{Code, Status};

use crate::fleet::{ErrorKind, FleetError};

/// Maps a fleet state-machine refusal to its gRPC status; the message is the error's own text.
pub fn fleet_status(error: &FleetError) -> Status {
    let code = match error.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
    };
    Status::new(code, error.to_string())
}

/// An invalid-argument status naming the field.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {reason}"))
}
