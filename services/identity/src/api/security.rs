//! Identity's security events in the audit trail (`platform::audit`, purpose `security`):
//! logins (success, failure, lockout), MFA changes, password changes and resets, session
//! revocations, account status changes, consent changes.
//!
//! Every event is recorded in the transaction of the change it describes ([`record`]); a failed
//! attempt (a wrong password, PIN or second factor) in the transaction that counts it.
//! The subject is the account holder; the actor is the signed-in user or, before sign-in, the
//! account that tried. Ids and codes only.

use carehub_platform::audit::{self, AuditEvent, Kind, Outcome, Purpose};
use carehub_platform::auth::Caller;
use carehub_proto::common::v1::ErrorReason;
use sqlx::PgConnection;
use uuid::Uuid;

use super::kinds;
use crate::error::Result;

/// An event about `account`.
pub(crate) fn account(caller: &Caller, kind: Kind, account: Uuid) -> AuditEvent {
    about(caller, kind, account, "user", account)
}

/// An event about `session` of `account`.
pub(crate) fn session(caller: &Caller, kind: Kind, account: Uuid, session: Uuid) -> AuditEvent {
    about(caller, kind, account, "session", session)
}

/// An event about one of `account`'s things (`entity_type`, `id`).
pub(crate) fn about(
    caller: &Caller,
    kind: Kind,
    account: Uuid,
    entity_type: &str,
    id: Uuid,
) -> AuditEvent {
    actor_or_self(
        AuditEvent::of(kind, Purpose::Security, entity_type, id).caller(caller),
        account,
    )
}

/// A login attempt that found no account to name (unknown email, or refused before lookup).
pub(crate) fn unknown_account_login(caller: &Caller, reason: ErrorReason) -> AuditEvent {
    AuditEvent::of(kinds::LOGIN, Purpose::Security, "user", "unknown")
        .caller(caller)
        .outcome(Outcome::MinorFailure, Some(reason.as_str_name()))
}

fn actor_or_self(event: AuditEvent, account: Uuid) -> AuditEvent {
    let event = event.subject(account);
    if event.actor_user_id.is_none() {
        event.actor_user(account)
    } else {
        event
    }
}

/// Marks an event failed with the reason the caller was given.
pub(crate) fn failed(event: AuditEvent, outcome: Outcome, reason: ErrorReason) -> AuditEvent {
    event.outcome(outcome, Some(reason.as_str_name()))
}

/// Records `event` in the transaction of the change it describes.
pub(crate) async fn record(conn: &mut PgConnection, event: AuditEvent) -> Result<()> {
    audit::record(conn, &event).await?;
    Ok(())
}
