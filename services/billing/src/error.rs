//! Billing's errors, mapped to `tonic::Status` in one place. Messages carry ids and amounts
//! only, never card data or a processor's secret.

use std::time::Duration;

use carehub_platform::errors;
use carehub_proto::common::v1::ErrorReason;
use tonic::{Code, Status};

use crate::processor::ProcessorError;

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
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
    /// The caller's role passed the policy, but the data is not theirs.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// An action the invoice's (or payment's) state does not allow.
    #[error("{what} {id} is {state}: cannot {action}")]
    State {
        what: &'static str,
        id: String,
        state: &'static str,
        action: &'static str,
    },
    /// More than the invoice's amount due, or than the payment's refundable amount.
    #[error("amount {asked} exceeds {what} {left}")]
    ExceedsBalance {
        asked: i64,
        what: &'static str,
        left: i64,
    },
    /// The patient already has as many payment methods as allowed.
    #[error("the patient already has {0} payment methods")]
    TooManyMethods(u32),
    /// Every slot for calls to the processor is taken: retry shortly.
    #[error("the processor's call slots are all taken")]
    Busy,
    /// The first call with this idempotency key is still at the processor.
    #[error("idempotency-key in use")]
    KeyInUse,
    /// The same idempotency key with other parameters.
    #[error("idempotency-key reused")]
    KeyReused,
    /// The processor did not say what happened: the intent stays pending.
    #[error("processor outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The processor refused a request that is not a charge (attaching a token).
    #[error("processor refused: {0}")]
    ProcessorRejected(String),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, BillingError>;

/// A field the request's validation already found present (INTERNAL if not: a handler bug).
pub fn checked<T>(value: Option<T>) -> Result<T> {
    value.ok_or_else(|| BillingError::Internal("a validated field is missing".into()))
}

impl From<ProcessorError> for BillingError {
    fn from(e: ProcessorError) -> Self {
        match e {
            ProcessorError::Unavailable(m) => BillingError::OutcomeUnknown(m),
            ProcessorError::Rejected { code } => BillingError::ProcessorRejected(code),
        }
    }
}

impl From<BillingError> for Status {
    fn from(e: BillingError) -> Status {
        match e {
            BillingError::Status(s) => s,
            BillingError::Db(err) => errors::database(&err),
            BillingError::Audit(err) => err.into(),
            BillingError::Crypto(err) => {
                tracing::error!(error = %err, "encrypted field");
                err.to_status()
            }
            BillingError::NotFound { what, id } => errors::not_found(what, &id),
            BillingError::PermissionDenied(m) => {
                errors::status(Code::PermissionDenied, ErrorReason::RoleNotAllowed, m)
            }
            BillingError::State {
                what,
                id,
                state,
                action,
            } => errors::precondition(
                ErrorReason::StateConflict,
                "STATE",
                &id,
                &format!("{what} {id} is {state}: cannot {action}"),
            ),
            BillingError::ExceedsBalance { asked, what, left } => errors::precondition(
                ErrorReason::AmountExceedsBalance,
                "AMOUNT_EXCEEDS_BALANCE",
                "amount_minor",
                &format!("amount {asked} exceeds the {what} of {left}"),
            ),
            BillingError::TooManyMethods(limit) => errors::status(
                Code::ResourceExhausted,
                ErrorReason::RateLimited,
                format!("the patient already has {limit} payment methods: remove one first"),
            ),
            BillingError::Busy => errors::retry_after(
                Code::ResourceExhausted,
                ErrorReason::RateLimited,
                "too many cards are being added right now; retry shortly",
                Duration::from_secs(1),
            ),
            BillingError::KeyInUse => errors::retry_after(
                Code::Aborted,
                ErrorReason::IdempotencyKeyInUse,
                "idempotency-key in use: the first call with it is still at the processor; \
                 retry later with the same key",
                Duration::from_secs(1),
            ),
            BillingError::KeyReused => errors::status(
                Code::InvalidArgument,
                ErrorReason::IdempotencyKeyReused,
                "idempotency-key was already used with a different request",
            ),
            BillingError::OutcomeUnknown(m) => {
                tracing::warn!(error = %m, "processor outcome unknown; the intent stays pending");
                errors::retry_after(
                    Code::Unavailable,
                    ErrorReason::Unavailable,
                    "the payment processor did not answer; retry with the same \
                     idempotency-key (nothing is charged twice)",
                    Duration::from_secs(2),
                )
            }
            BillingError::ProcessorRejected(code) => errors::status(
                Code::FailedPrecondition,
                ErrorReason::StateConflict,
                format!("the payment processor refused the request: {code}"),
            ),
            BillingError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                errors::internal("billing")
            }
        }
    }
}
