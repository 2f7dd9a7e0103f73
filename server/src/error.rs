//! The registry's closed set of failures and their one mapping to gRPC and
//! HTTP.
//!
//! Every layer below the edges returns [`Error`]; [`From<Error> for Status`]
//! is the only place that decides codes, messages and error details, and
//! [`Error::into_http`] gives the HTTP status of that code with the same
//! message. Internal errors are logged in full here and leave the server as a
//! vague `INTERNAL` (HTTP 500).

use hyper::StatusCode;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One bad field of a request, reported as a `google.rpc.BadRequest` violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The request field's path, for example `tags` or `source.commit`.
    pub field: String,
    /// What is wrong with it, in a sentence a caller can act on.
    pub description: String,
}

/// One unmet condition, reported as a `google.rpc.PreconditionFailure` violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreconditionViolation {
    /// A machine-readable kind, for example `STAGE_TRANSITION` or `ETAG`.
    pub kind: &'static str,
    /// The resource concerned, for example `fraud/3`.
    pub subject: String,
    /// What is wrong and what would be allowed.
    pub description: String,
}

/// Why a call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; nothing was changed.
    #[error("invalid argument: {}", fields(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// A named resource does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// The resource type, for example `modelreg.v1.Model`.
        kind: &'static str,
        /// The resource's name as the caller gave it.
        name: String,
    },
    /// A resource the call would create exists already.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// The resource type.
        kind: &'static str,
        /// The resource's name.
        name: String,
    },
    /// The system is not in the state the call needs (illegal move, stale
    /// etag, missing evaluation…); every unmet condition is listed.
    #[error("{}", conditions(.0))]
    FailedPrecondition(Vec<PreconditionViolation>),
    /// The caller is known but may not do this (beyond the role checks of
    /// the auth layer: cancelling someone else's request, setting a policy).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The caller's credential is no longer in force (a stream whose token
    /// was revoked).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The database cannot be reached; the call may be retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The server is stopping; a stream resumes elsewhere or after restart.
    #[error("the server is shutting down; resume from your last sequence")]
    ShuttingDown,
    /// A bug or an unexpected database failure. Logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A single-field `InvalidArgument`.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// A `FailedPrecondition` of the given kind.
    pub fn precondition(
        kind: &'static str,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Error::FailedPrecondition(vec![PreconditionViolation {
            kind,
            subject: subject.into(),
            description: description.into(),
        }])
    }
}

/// `field: description; …` of every violation, as error messages show them.
fn fields(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The descriptions of every unmet condition, joined.
fn conditions(violations: &[PreconditionViolation]) -> String {
    violations
        .iter()
        .map(|v| v.description.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Shorthand used throughout the server.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// NOT_FOUND or ALREADY_EXISTS about one resource, with its ResourceInfo.
fn resource_status(code: Code, kind: &'static str, name: String) -> Status {
    let what = match code {
        Code::NotFound => "not found",
        _ => "already exists",
    };
    let message = format!("{} {name:?} {what}", short_kind(kind));
    let details = ErrorDetails::with_resource_info(kind, name, "", "");
    Status::with_error_details(code, message, details)
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        match err {
            Error::InvalidArgument(violations) => {
                let message = fields(&violations);
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound { kind, name } => resource_status(Code::NotFound, kind, name),
            Error::AlreadyExists { kind, name } => resource_status(Code::AlreadyExists, kind, name),
            Error::FailedPrecondition(violations) => {
                let message = conditions(&violations);
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_precondition_failure_violation(v.kind, v.subject, v.description);
                }
                Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            Error::PermissionDenied(msg) => Status::permission_denied(msg),
            Error::Unauthenticated(msg) => Status::unauthenticated(msg),
            e @ Error::ShuttingDown => Status::unavailable(e.to_string()),
            Error::Unavailable(msg) => {
                tracing::warn!(error = %msg, "database unavailable");
                Status::unavailable("the registry database is unavailable; retry later")
            }
            Error::Internal(msg) => {
                tracing::error!(error = %msg, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

impl Error {
    /// The HTTP status and the message a page shows: the gRPC mapping's
    /// message (so both edges say the same, and hide the same), under the
    /// HTTP status of its code.
    pub fn into_http(self) -> (StatusCode, String) {
        let status = Status::from(self);
        (http_status(status.code()), status.message().to_owned())
    }
}

/// The HTTP status of a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `modelreg.v1.Model` → `model`, for messages people read.
fn short_kind(kind: &str) -> String {
    let last = kind.rsplit('.').next().unwrap_or(kind);
    let mut out = String::new();
    for (i, c) in last.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_as_words() {
        assert_eq!(short_kind("modelreg.v1.ModelVersion"), "model version");
        assert_eq!(short_kind("modelreg.v1.Model"), "model");
    }

    #[test]
    fn internal_errors_hide_their_text() {
        let status = Status::from(Error::Internal("near \"SELECT\": syntax error".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("SELECT"));
    }

    #[test]
    fn http_statuses_follow_the_grpc_codes() {
        let (status, message) = Error::NotFound {
            kind: "modelreg.v1.Model",
            name: "fraud".into(),
        }
        .into_http();
        assert_eq!(
            (status, message.as_str()),
            (StatusCode::NOT_FOUND, "model \"fraud\" not found")
        );
        let (status, message) = Error::Internal("near \"SELECT\"".into()).into_http();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!message.contains("SELECT"));
        let stale = Error::precondition("ETAG", "fraud", "stale");
        assert_eq!(stale.into_http().0, StatusCode::CONFLICT);
    }
}
