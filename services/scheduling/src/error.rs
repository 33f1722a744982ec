//! Scheduling's errors, mapped to `tonic::Status` in one place. Messages carry ids and times
//! only, never a reason or an answer.

use carehub_platform::errors;
use carehub_proto::common::v1::ErrorReason;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum SchedulingError {
    /// Already a status (validation failures, policy decisions, other services' answers).
    #[error("{0}")]
    Status(#[from] Status),
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// The audit trail refused or could not store an event: the read or change is refused.
    #[error("audit: {0}")]
    Audit(#[from] carehub_platform::audit::AuditError),
    /// Encrypting or decrypting failed (keys unavailable, shredded, tampered).
    #[error("encrypted field: {0}")]
    Crypto(#[from] carehub_platform::crypto::CryptoError),
    #[error("outbox: {0}")]
    Outbox(#[from] carehub_platform::outbox::OutboxError),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The caller's role passed the policy, but the data is not theirs (NOT_A_PARTY).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The provider's time overlaps an active appointment or live hold (exclusion constraint).
    #[error("the slot is taken")]
    SlotTaken,
    /// The patient has an overlapping appointment or hold.
    #[error("the patient has an overlapping appointment")]
    PatientBusy,
    /// The slot is not one the provider's availability offers (or is in the past).
    #[error("slot unavailable: {0}")]
    SlotUnavailable(String),
    /// `who` (the patient, the account) already has as many live holds, upcoming
    /// appointments, open consultation requests or live calendar feeds as allowed; `remedy`
    /// says what frees one.
    #[error("the {who} already has {limit} {what}")]
    Quota {
        who: &'static str,
        what: &'static str,
        limit: u32,
        remedy: &'static str,
    },
    #[error("hold {0} expired or was released")]
    HoldExpired(String),
    /// An action the appointment's (or request's) state does not allow.
    #[error("{what} {id} is {state}: cannot {action}")]
    State {
        what: &'static str,
        id: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, SchedulingError>;

/// Refuses with [`SchedulingError::Quota`] when the `held` items of `who` already reach
/// `limit`. Call it with the count taken under the owner's lock, in the transaction that adds
/// one: a storm of requests then sees the count one at a time.
pub fn below_quota(
    held: i64,
    limit: u32,
    (who, what, remedy): (&'static str, &'static str, &'static str),
) -> Result<()> {
    if held >= i64::from(limit) {
        return Err(SchedulingError::Quota {
            who,
            what,
            limit,
            remedy,
        });
    }
    Ok(())
}

/// A field the request's validation already found present (INTERNAL if not: a handler bug).
pub fn checked<T>(value: Option<T>) -> Result<T> {
    value.ok_or_else(|| SchedulingError::Internal("a validated field is missing".into()))
}

/// The exclusion constraints of `slot_claims` name what overlapped; a deadlock or serialization
/// failure stays a database error, which `errors::database` answers ABORTED with RetryInfo.
impl From<sqlx::Error> for SchedulingError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(d) = &e {
            if d.code().as_deref() == Some("23P01") {
                return match d.constraint() {
                    Some(c) if c.contains("patient") => SchedulingError::PatientBusy,
                    _ => SchedulingError::SlotTaken,
                };
            }
        }
        SchedulingError::Db(e)
    }
}

impl From<SchedulingError> for Status {
    fn from(e: SchedulingError) -> Status {
        match e {
            SchedulingError::Status(s) => s,
            SchedulingError::Db(err) => errors::database(&err),
            SchedulingError::Audit(err) => err.into(),
            SchedulingError::Crypto(err) => {
                tracing::error!(error = %err, "encrypted field");
                err.to_status()
            }
            SchedulingError::Outbox(err) => err.into(),
            SchedulingError::NotFound { what, id } => errors::not_found(what, &id),
            SchedulingError::PermissionDenied(m) => {
                errors::status(Code::PermissionDenied, ErrorReason::NotAParty, m)
            }
            SchedulingError::SlotTaken => errors::precondition(
                ErrorReason::SlotTaken,
                "SLOT_TAKEN",
                "slot",
                "the provider already has an appointment or a live hold overlapping this slot",
            ),
            SchedulingError::PatientBusy => errors::precondition(
                ErrorReason::PatientBusy,
                "PATIENT_BUSY",
                "patient",
                "the patient already has an appointment or a live hold overlapping this slot",
            ),
            SchedulingError::SlotUnavailable(why) => errors::precondition(
                ErrorReason::SlotUnavailable,
                "SLOT_UNAVAILABLE",
                "slot",
                &format!("the slot is not available: {why}"),
            ),
            SchedulingError::Quota {
                who,
                what,
                limit,
                remedy,
            } => errors::status(
                Code::ResourceExhausted,
                ErrorReason::RateLimited,
                format!("the {who} already has {limit} {what}: {remedy}"),
            ),
            SchedulingError::HoldExpired(id) => errors::precondition(
                ErrorReason::HoldExpired,
                "HOLD_EXPIRED",
                &id,
                &format!("hold {id} expired or was released; search again"),
            ),
            SchedulingError::State {
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
            SchedulingError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                errors::internal("scheduling")
            }
        }
    }
}
