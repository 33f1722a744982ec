//! Records' errors, mapped to `tonic::Status` in one place. Messages carry ids only, never
//! clinical content.

use carehub_platform::errors;
use carehub_proto::common::v1::ErrorReason;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// Already a status (validation failures, policy decisions, identity's answers).
    #[error("{0}")]
    Status(#[from] Status),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The audit trail refused or could not store an event: the read or change is refused.
    #[error("audit: {0}")]
    Audit(#[from] carehub_platform::audit::AuditError),
    /// Encrypting or decrypting the chart failed (keys unavailable, shredded, tampered).
    #[error("encrypted field: {0}")]
    Crypto(#[from] carehub_platform::crypto::CryptoError),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The caller may not open this patient's chart (not on the care team, no break-glass).
    #[error("not on the care team of patient {patient}")]
    NotOnCareTeam { patient: String },
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The entry changed since the caller read it.
    #[error("entry {entry} is at version {current}, not the one the etag names")]
    EtagMismatch { entry: String, current: i64 },
    /// A state conflict (`kind` names the condition, `subject` an id).
    #[error("{description}")]
    Conflict {
        kind: &'static str,
        subject: String,
        description: String,
    },
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, RecordsError>;

/// A field the request's validation already found present (INTERNAL if not: a handler bug).
pub fn checked<T>(value: Option<T>) -> Result<T> {
    value.ok_or_else(|| RecordsError::Internal("a validated field is missing".into()))
}

impl From<RecordsError> for Status {
    fn from(e: RecordsError) -> Status {
        match e {
            RecordsError::Status(s) => s,
            RecordsError::Db(err) => errors::database(&err),
            RecordsError::Audit(err) => err.into(),
            RecordsError::Crypto(err) => {
                tracing::error!(error = %err, "encrypted field");
                err.to_status()
            }
            RecordsError::NotFound { what, id } => errors::not_found(what, &id),
            RecordsError::NotOnCareTeam { patient } => errors::status(
                Code::PermissionDenied,
                ErrorReason::NotOnCareTeam,
                format!("the caller is not on the care team of patient {patient}"),
            ),
            RecordsError::PermissionDenied(m) => errors::permission_denied(m),
            RecordsError::EtagMismatch { entry, current } => errors::status(
                Code::Aborted,
                ErrorReason::EtagMismatch,
                format!("entry {entry} changed (now version {current}); read it again and retry"),
            ),
            RecordsError::Conflict {
                kind,
                subject,
                description,
            } => errors::precondition(ErrorReason::StateConflict, kind, &subject, &description),
            RecordsError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                errors::internal("records")
            }
        }
    }
}
