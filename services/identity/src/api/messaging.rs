//! IdentityInternal RPCs that only messaging calls (policy: workload `messaging`, no user):
//! acting on an abuse report a staff member resolved, the contact data a notification needs,
//! and SMS keywords (STOP, START) seen by messaging's consent ledger.
//!
//! Messaging calls the two changes from its outbox, with the outbox row's id as the
//! idempotency-key, and retries until it gets an answer: both answer a repeat (or a change
//! already made) without an error.

use carehub_platform::audit::{AuditEvent, Purpose};
use carehub_platform::auth::Role;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::identity::v1::*;
use chrono::Utc;

use super::accounts::checked;
use super::admin::{change_status, StatusChange};
use super::kinds;
use super::profile::prefs_to_pb;
use crate::api::convert::{status_to_pb, summary_to_pb};
use crate::domain::account::StatusAction;
use crate::domain::validation as val;
use crate::error::{IdentityError, Result};
use crate::store::accounts as store;
use crate::AppState;

/// Messaging acts on an abuse report that a staff member resolved: the account is suspended or
/// terminated exactly as SuspendUser / TerminateUser would (one shared path,
/// [`change_status`]), recorded with the staff member as the acting user, the messaging
/// workload as the caller, and "abuse report <id>" as the reason (ids only). An account already
/// in the requested state answers its summary with no new change or event (a read of the
/// summary is recorded); a terminated account cannot be suspended (FAILED_PRECONDITION).
pub async fn request_account_action(
    state: &AppState,
    call: &Call,
    r: RequestAccountActionRequest,
) -> Result<UserSummary> {
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let target = val::check_uuid(&mut v, "user_id", &r.user_id);
    let action = match AccountAction::try_from(r.action) {
        Ok(AccountAction::Suspend) => Some(StatusAction::Suspend),
        Ok(AccountAction::Terminate) => Some(StatusAction::Terminate),
        _ => {
            v.add(
                "action",
                "must be ACCOUNT_ACTION_SUSPEND or ACCOUNT_ACTION_TERMINATE",
            );
            None
        }
    };
    let by = val::check_uuid(&mut v, "requested_by", &r.requested_by);
    let report = val::check_uuid(&mut v, "report_id", &r.report_id);
    v.finish()?;
    let (target, action, by, report) = (
        checked(target)?,
        checked(action)?,
        checked(by)?,
        checked(report)?,
    );
    // The audit trail names this user as the one who decided: it must be someone who may.
    let role = {
        let mut conn = state.pool.acquire().await?;
        store::role_of(&mut conn, by).await?
    };
    let role = role.ok_or_else(|| IdentityError::NotFound {
        what: "requested_by user",
        id: by.to_string(),
    })?;
    if !matches!(role, Role::Staff | Role::Admin) {
        return Err(IdentityError::Conflict {
            kind: "REQUESTED_BY_ROLE",
            subject: by.to_string(),
            description: "requested_by must be a staff member or an admin".to_owned(),
        });
    }
    let kind = match action {
        StatusAction::Suspend => kinds::ACCOUNT_SUSPEND,
        _ => kinds::ACCOUNT_TERMINATE,
    };
    let event = AuditEvent::of(kind, Purpose::Security, "user", target)
        .caller(&call.caller)
        .actor_user(by)
        .actor_role(role.as_str())
        .subject(target);
    let change = StatusChange {
        target,
        action,
        reason: format!("abuse report {report}"),
        by,
        event,
        already: Some(call.event(
            kinds::USER_LOOKUP,
            Purpose::Operations,
            "user",
            target,
            target,
        )),
    };
    change_status(state, call, &r, change, summary_to_pb).await
}

/// What messaging needs to notify a user: their verified email and phone (an unverified one is
/// not theirs to be messaged at, so it comes back empty), time zone, status and communication
/// preferences. PHI: the read is recorded (purpose OPERATIONS, subject the user) before the
/// answer leaves.
pub async fn get_contact(state: &AppState, call: &Call, r: GetContactRequest) -> Result<Contact> {
    let mut v = FieldViolations::new();
    let id = val::check_uuid(&mut v, "user_id", &r.user_id);
    v.finish()?;
    let id = checked(id)?;
    let (a, prefs) = {
        let mut conn = state.pool.acquire().await?;
        let a = store::require_user(&mut conn, &state.crypto, id).await?;
        let prefs = store::get_prefs(&mut conn, id).await?;
        (a, prefs)
    };
    let contact = Contact {
        user_id: a.id.to_string(),
        status: status_to_pb(a.status) as i32,
        email: match a.email_verified_at {
            Some(_) => a.email,
            None => String::new(),
        },
        phone_number: match (a.phone, a.phone_verified_at) {
            (Some(phone), Some(_)) => phone,
            _ => String::new(),
        },
        time_zone: a.time_zone,
        preferences: Some(prefs_to_pb(&prefs)),
    };
    let read = call.event(kinds::USER_LOOKUP, Purpose::Operations, "user", id, id);
    call.read(&state.pool, read, contact).await
}

/// Messaging's SMS consent ledger saw a keyword from `phone_number`: every account whose
/// verified phone it is gets `sms_notifications = sms_allowed`, unless its holder decided more
/// recently than `change_time` (deliveries are not ordered). Each account changed is audited
/// (purpose OPERATIONS, subject the holder); the answer lists them. The change is not sent back
/// to messaging (no ApplySmsPreference row): it came from there.
pub async fn apply_sms_consent(
    state: &AppState,
    call: &Call,
    r: ApplySmsConsentRequest,
) -> Result<ApplySmsConsentResponse> {
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    if r.phone_number.is_empty() {
        v.add("phone_number", "is required");
    } else if !val::is_e164(&r.phone_number) {
        v.add(
            "phone_number",
            "must be an E.164 phone number (+ and 8 to 15 digits)",
        );
    }
    let change_time =
        carehub_platform::timestamps::field(r.change_time.as_ref(), "change_time", &mut v);
    if r.change_time.is_none() {
        v.add("change_time", "is required");
    }
    v.finish()?;
    // A ledger clock ahead of ours must not outrank the user's next choice for long.
    let change_time = checked(change_time)?.min(Utc::now());
    let (phone, allowed) = (r.phone_number.as_str(), r.sms_allowed);
    let ran = call
        .mutate(&state.idempotency, &r, async |tx| {
            let holders = store::lock_users_with_verified_phone(tx, &state.crypto, phone).await?;
            let mut answer = ApplySmsConsentResponse::default();
            let mut events = Vec::new();
            if holders.is_empty() {
                return Ok::<_, IdentityError>(Change { answer, events });
            }
            for prefs in store::lock_prefs(tx, &holders).await? {
                if !prefs.sms_change_is_newer(change_time) {
                    continue;
                }
                // Recorded even when the value stays: a still older keyword arriving later must
                // not undo this one.
                store::set_sms_decision(tx, prefs.user_id, allowed, change_time).await?;
                if prefs.sms_notifications != allowed {
                    let id = prefs.user_id;
                    answer.user_ids.push(id.to_string());
                    events.push(call.event(
                        kinds::PREFERENCES_UPDATE,
                        Purpose::Operations,
                        "user",
                        id,
                        id,
                    ));
                }
            }
            Ok(Change { answer, events })
        })
        .await?;
    if !ran.answer.user_ids.is_empty() {
        tracing::info!(
            users = ran.answer.user_ids.len(),
            sms_allowed = allowed,
            "SMS preference set from messaging's ledger"
        );
    }
    Ok(ran.answer)
}
