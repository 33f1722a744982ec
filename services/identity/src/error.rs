//! Identity's errors, mapped to `tonic::Status` in one place.

use std::time::Duration;

use carehub_platform::errors;
use carehub_proto::common::v1::ErrorReason;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Already a status (validation failures, policy decisions).
    #[error("{0}")]
    Status(#[from] Status),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The audit trail refused or could not store an event: the change or read it describes
    /// is refused with it.
    #[error("audit: {0}")]
    Audit(#[from] carehub_platform::audit::AuditError),
    /// Encrypting or decrypting PHI failed (keys unavailable, a shredded or tampered value).
    #[error("encrypted field: {0}")]
    Crypto(#[from] carehub_platform::crypto::CryptoError),
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("account locked")]
    Locked { retry_after: Duration },
    #[error("too many attempts")]
    RateLimited { retry_after: Duration },
    /// Every password-hashing slot is taken (a login storm): refused before any other work.
    #[error("password checks at capacity")]
    HashingBusy,
    #[error("account disabled")]
    AccountDisabled,
    #[error("session expired")]
    SessionExpired,
    #[error("refresh token reused")]
    RefreshTokenReused,
    /// A wrong, expired or used one-time code or token, for `field`.
    #[error("code invalid")]
    CodeInvalid { field: &'static str },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("email already registered")]
    EmailTaken,
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
    /// An unknown, expired or malformed bearer credential (access or refresh token).
    #[error("invalid token")]
    InvalidToken,
    /// The second-factor code (TOTP or recovery code) of an MFA challenge was wrong.
    #[error("second factor wrong")]
    MfaCodeWrong,
}

impl From<crate::domain::password::HashBusy> for IdentityError {
    fn from(_: crate::domain::password::HashBusy) -> Self {
        IdentityError::HashingBusy
    }
}

impl From<crate::domain::password::HashFailure> for IdentityError {
    fn from(e: crate::domain::password::HashFailure) -> Self {
        match e {
            crate::domain::password::HashFailure::Busy(_) => IdentityError::HashingBusy,
            crate::domain::password::HashFailure::Failed(e) => {
                IdentityError::Internal(e.to_string())
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, IdentityError>;

impl From<IdentityError> for Status {
    fn from(e: IdentityError) -> Status {
        match e {
            IdentityError::Status(s) => s,
            IdentityError::Db(err) => {
                if let sqlx::Error::Database(db) = &err {
                    if db.constraint() == Some("users_email_key") {
                        return IdentityError::EmailTaken.into();
                    }
                }
                errors::database(&err)
            }
            IdentityError::Audit(err) => err.into(),
            IdentityError::Crypto(err) => {
                // Ids, tables and key versions only: CryptoError never carries plaintext.
                tracing::error!(error = %err, "encrypted field");
                err.to_status()
            }
            IdentityError::InvalidCredentials => errors::status(
                Code::Unauthenticated,
                ErrorReason::InvalidCredentials,
                "invalid credentials",
            ),
            IdentityError::Locked { retry_after } => errors::retry_after(
                Code::Unauthenticated,
                ErrorReason::AccountLocked,
                "too many failed attempts; try again later",
                retry_after,
            ),
            IdentityError::RateLimited { retry_after } => errors::retry_after(
                Code::ResourceExhausted,
                ErrorReason::RateLimited,
                "too many attempts; slow down",
                retry_after,
            ),
            IdentityError::HashingBusy => errors::retry_after(
                Code::Unavailable,
                ErrorReason::Unavailable,
                "too many password checks at once; retry shortly",
                Duration::from_secs(1),
            ),
            IdentityError::AccountDisabled => errors::status(
                Code::PermissionDenied,
                ErrorReason::AccountDisabled,
                "the account is suspended or terminated",
            ),
            IdentityError::SessionExpired => errors::status(
                Code::Unauthenticated,
                ErrorReason::SessionExpired,
                "the session has ended; log in again",
            ),
            IdentityError::RefreshTokenReused => errors::status(
                Code::Unauthenticated,
                ErrorReason::RefreshTokenReused,
                "refresh token was already used; the session has been revoked",
            ),
            IdentityError::CodeInvalid { field } => {
                let mut v = errors::FieldViolations::new();
                v.add_with_reason(
                    field,
                    "is wrong, expired or already used",
                    ErrorReason::CodeInvalid,
                );
                v.into_status()
            }
            IdentityError::NotFound { what, id } => errors::not_found(what, &id),
            IdentityError::EmailTaken => errors::status(
                Code::AlreadyExists,
                ErrorReason::AlreadyExists,
                "an account with this email already exists",
            ),
            IdentityError::PermissionDenied(m) => errors::permission_denied(m),
            IdentityError::Conflict {
                kind,
                subject,
                description,
            } => errors::precondition(ErrorReason::StateConflict, kind, &subject, &description),
            IdentityError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                errors::internal("identity")
            }
            IdentityError::InvalidToken => errors::status(
                Code::Unauthenticated,
                ErrorReason::UnauthenticatedToken,
                "the token is unknown, expired or malformed",
            ),
            IdentityError::MfaCodeWrong => errors::status(
                Code::Unauthenticated,
                ErrorReason::MfaRequired,
                "the second-factor code is wrong",
            ),
        }
    }
}
