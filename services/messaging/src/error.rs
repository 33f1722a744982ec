//! Messaging's errors, mapped to `tonic::Status` in one place. Messages carry ids only, never
//! what was written.

use carehub_platform::errors;
use carehub_proto::common::v1::ErrorReason;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// Already a status (validation failures, policy decisions, other services' answers).
    #[error("{0}")]
    Status(#[from] Status),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The audit trail refused or could not store an event: the read or change is refused.
    #[error("audit: {0}")]
    Audit(#[from] carehub_platform::audit::AuditError),
    /// Encrypting or decrypting failed (keys unavailable, shredded, tampered).
    #[error("encrypted field: {0}")]
    Crypto(#[from] carehub_platform::crypto::CryptoError),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The caller is not in the conversation (not the patient, not on the care team, not a
    /// member of the staff conversation).
    #[error("not a participant of conversation {conversation}")]
    NotAParticipant { conversation: String },
    /// The sender is blocked in the conversation or their account is not active.
    #[error("user {user} may not send in conversation {conversation}")]
    SenderBlocked { conversation: String, user: String },
    #[error("permission denied: {0}")]
    PermissionDenied(String),
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

pub type Result<T> = std::result::Result<T, MessagingError>;

/// A field the request's validation already found present (INTERNAL if not: a handler bug).
pub fn checked<T>(value: Option<T>) -> Result<T> {
    value.ok_or_else(|| MessagingError::Internal("a validated field is missing".into()))
}

impl From<MessagingError> for Status {
    fn from(e: MessagingError) -> Status {
        match e {
            MessagingError::Status(s) => s,
            MessagingError::Db(err) => errors::database(&err),
            MessagingError::Audit(err) => err.into(),
            MessagingError::Crypto(err) => {
                tracing::error!(error = %err, "encrypted field");
                err.to_status()
            }
            MessagingError::NotFound { what, id } => errors::not_found(what, &id),
            MessagingError::NotAParticipant { conversation } => errors::status(
                Code::PermissionDenied,
                ErrorReason::NotAParticipant,
                format!("the caller is not a participant of conversation {conversation}"),
            ),
            MessagingError::SenderBlocked { conversation, user } => errors::status(
                Code::PermissionDenied,
                ErrorReason::SenderBlocked,
                format!("user {user} may not send in conversation {conversation}"),
            ),
            MessagingError::PermissionDenied(m) => errors::permission_denied(m),
            MessagingError::Conflict {
                kind,
                subject,
                description,
            } => errors::precondition(ErrorReason::StateConflict, kind, &subject, &description),
            MessagingError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                errors::internal("messaging")
            }
        }
    }
}
