//! The one way carehub turns errors into `tonic::Status`: a canonical code, a human message
//! without PHI, and google.rpc details (ErrorInfo with a stable reason; BadRequest field
//! violations; RetryInfo; PreconditionFailure). Services map their own error enums through
//! these constructors, so every service answers alike.

use std::collections::HashMap;
use std::time::Duration;

use carehub_proto::common::v1::ErrorReason;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every carehub error.
pub const ERROR_DOMAIN: &str = "carehub.io";

fn info(reason: ErrorReason) -> ErrorDetails {
    ErrorDetails::with_error_info(reason.as_str_name(), ERROR_DOMAIN, HashMap::new())
}

/// A status with an ErrorInfo reason.
pub fn status(code: Code, reason: ErrorReason, message: impl Into<String>) -> Status {
    Status::with_error_details(code, message, info(reason))
}

/// A status asking the client to retry after `after` (RESOURCE_EXHAUSTED, UNAVAILABLE, a lockout).
pub fn retry_after(
    code: Code,
    reason: ErrorReason,
    message: impl Into<String>,
    after: Duration,
) -> Status {
    let mut details = info(reason);
    details.set_retry_info(Some(after));
    Status::with_error_details(code, message, details)
}

/// FAILED_PRECONDITION naming the violated condition (`kind` like "ACCOUNT_STATUS", `subject`
/// an id, `description` what is wrong).
pub fn precondition(reason: ErrorReason, kind: &str, subject: &str, description: &str) -> Status {
    let mut details = info(reason);
    details.add_precondition_failure_violation(kind, subject, description);
    Status::with_error_details(Code::FailedPrecondition, description.to_owned(), details)
}

pub fn not_found(what: &str, id: &str) -> Status {
    status(
        Code::NotFound,
        ErrorReason::ResourceNotFound,
        format!("{what} {id} not found"),
    )
}

pub fn permission_denied(message: impl Into<String>) -> Status {
    status(Code::PermissionDenied, ErrorReason::RoleNotAllowed, message)
}

/// A database error as a service answers it: UNAVAILABLE with RetryInfo when the database
/// cannot be reached (pool exhausted, connection lost); ABORTED with RetryInfo when PostgreSQL
/// rolled the transaction back to break a deadlock or a serialization conflict (nothing was
/// written: a retry is the answer); INTERNAL otherwise (logged, never shown: it may name tables
/// or values).
pub fn database(err: &sqlx::Error) -> Status {
    if let sqlx::Error::Database(d) = err {
        if matches!(d.code().as_deref(), Some("40P01" | "40001")) {
            tracing::warn!(error = %err, "transaction rolled back by the database");
            return retry_after(
                Code::Aborted,
                ErrorReason::Unavailable,
                "the change collided with another and was rolled back; retry",
                Duration::from_millis(100),
            );
        }
    }
    if matches!(err, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
        tracing::warn!(error = %err, "database unavailable");
        return retry_after(
            Code::Unavailable,
            ErrorReason::Unavailable,
            "database unavailable; retry",
            Duration::from_secs(1),
        );
    }
    tracing::error!(error = %err, "database error");
    internal("database")
}

pub fn internal(request_context: &str) -> Status {
    status(
        Code::Internal,
        ErrorReason::Internal,
        format!("internal error ({request_context}); see the server log"),
    )
}

/// INVALID_ARGUMENT for a single field.
pub fn invalid_field(field: &str, description: &str) -> Status {
    let mut v = FieldViolations::new();
    v.add(field, description);
    v.into_status()
}

/// Collects every problem of a request, so that the client learns all of them at once.
#[derive(Debug, Default)]
pub struct FieldViolations {
    violations: Vec<(String, String)>,
    reason: Option<ErrorReason>,
}

impl FieldViolations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.violations.push((field.to_owned(), description.into()));
    }

    /// Adds a violation with a more specific reason than INVALID_FIELD (the first one wins).
    pub fn add_with_reason(
        &mut self,
        field: &str,
        description: impl Into<String>,
        reason: ErrorReason,
    ) {
        self.reason.get_or_insert(reason);
        self.add(field, description);
    }

    /// Adds `description` for `field` unless `ok`.
    pub fn check(&mut self, ok: bool, field: &str, description: &str) {
        if !ok {
            self.add(field, description);
        }
    }

    /// Free text people write (reasons, messages, notes): no control characters but line
    /// breaks and tabs.
    pub fn check_free_text(&mut self, field: &str, text: &str) {
        self.check(
            !text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')),
            field,
            "must not contain control characters",
        );
    }

    /// Requires a non-empty string of at most `max` characters.
    pub fn require_len(&mut self, value: &str, field: &str, min: usize, max: usize) {
        let n = value.chars().count();
        if n == 0 && min > 0 {
            self.add(field, "is required");
        } else if n < min {
            self.add(field, format!("must be at least {min} characters"));
        } else if n > max {
            self.add(field, format!("must be at most {max} characters"));
        }
    }

    /// A required UUID id (an empty value is "is required", anything else unparsable "must be
    /// a UUID"); `None` when it was added as a violation.
    pub fn require_uuid(&mut self, field: &str, value: &str) -> Option<uuid::Uuid> {
        if value.is_empty() {
            self.add(field, "is required");
            return None;
        }
        // Only the hyphenated form (36 characters): no braces, URNs or simple form.
        match uuid::Uuid::try_parse(value) {
            Ok(id) if value.len() == 36 => Some(id),
            _ => {
                self.add(field, "must be a UUID");
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// Each violation: its field and why.
    pub fn violations(&self) -> impl Iterator<Item = (&str, &str)> {
        self.violations
            .iter()
            .map(|(f, d)| (f.as_str(), d.as_str()))
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.violations.iter().map(|(f, _)| f.as_str())
    }

    pub fn into_status(self) -> Status {
        let reason = self.reason.unwrap_or(ErrorReason::InvalidField);
        let summary = self
            .violations
            .iter()
            .map(|(f, d)| format!("{f}: {d}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut details = info(reason);
        for (field, description) in self.violations {
            details.add_bad_request_violation(field, description);
        }
        Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid request: {summary}"),
            details,
        )
    }

    /// `Ok(())` when nothing was added, else the INVALID_ARGUMENT status.
    pub fn finish(self) -> Result<(), Status> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.into_status())
        }
    }
}

/// What a test or client reads back out of a carehub status.
#[derive(Debug, Default, Clone)]
pub struct StatusDetails {
    pub reason: Option<String>,
    pub field_violations: Vec<(String, String)>,
    pub retry_after: Option<Duration>,
}

pub fn details_of(status: &Status) -> StatusDetails {
    let mut out = StatusDetails::default();
    {
        for detail in status.get_error_details_vec() {
            match detail {
                tonic_types::ErrorDetail::ErrorInfo(i) => out.reason = Some(i.reason),
                tonic_types::ErrorDetail::BadRequest(b) => {
                    for v in b.field_violations {
                        out.field_violations.push((v.field, v.description));
                    }
                }
                tonic_types::ErrorDetail::RetryInfo(r) => out.retry_after = r.retry_delay,
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_carry_fields_and_reason() {
        let mut v = FieldViolations::new();
        v.require_len("", "email", 3, 254);
        v.add_with_reason(
            "date_of_birth",
            "must be 18 or older",
            ErrorReason::Underage,
        );
        let status = v.into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let d = details_of(&status);
        assert_eq!(d.reason.as_deref(), Some("UNDERAGE"));
        let fields: Vec<_> = d.field_violations.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["email", "date_of_birth"]);
    }

    #[test]
    fn retry_info_round_trips() {
        let s = retry_after(
            Code::Unauthenticated,
            ErrorReason::AccountLocked,
            "locked",
            Duration::from_secs(30),
        );
        let d = details_of(&s);
        assert_eq!(d.reason.as_deref(), Some("ACCOUNT_LOCKED"));
        assert_eq!(d.retry_after, Some(Duration::from_secs(30)));
    }
}
