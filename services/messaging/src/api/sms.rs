//! The SMS consent ledger's RPCs: GetSmsConsent and RecordSmsOptIn (staff and admins for any
//! number; a patient or provider only for their own verified number, asked of identity), and
//! ApplySmsPreference (identity's outbox, when a user turns SMS notifications on or off).
//! Numbers appear in answers only to those allowed to ask about them, and never in logs,
//! events or errors.

use carehub_platform::audit::{AuditEvent, Outcome, Purpose};
use carehub_platform::auth::Role;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::messaging::v1::*;
use chrono::Utc;
use uuid::Uuid;

use super::kinds;
use crate::error::{checked, MessagingError, Result};
use crate::notify::ledger::{self, Consent, Decision};
use crate::notify::phone;
use crate::AppState;

fn check_phone(v: &mut FieldViolations, value: &str) {
    if value.is_empty() {
        v.add("phone_number", "is required");
    } else if !phone::is_e164(value) {
        v.add(
            "phone_number",
            "must be an E.164 phone number (+ and 8 to 15 digits)",
        );
    }
}

/// Whose the number is, as far as the call goes: staff and admins act on any number (the
/// holder unknown here); anyone else only on the verified number identity holds for them.
async fn holder(state: &AppState, call: &Call, number: &str) -> Result<Option<Uuid>> {
    let user = call.user()?;
    if user.has_role(Role::Staff) || user.has_role(Role::Admin) {
        return Ok(None);
    }
    let contact = state.notifications.contact(user.user_id).await?;
    if contact.phone_number.is_empty() || contact.phone_number != number {
        return Err(MessagingError::PermissionDenied(
            "a user may only act on the SMS consent of their own verified number".to_owned(),
        ));
    }
    Ok(Some(user.user_id))
}

fn ledger_event(
    call: &Call,
    kind: carehub_platform::audit::Kind,
    number: Option<Uuid>,
    subject: Option<Uuid>,
) -> AuditEvent {
    let entity = number.map_or_else(|| "unrecorded".to_owned(), |n| n.to_string());
    let e = AuditEvent::of(kind, Purpose::Operations, "sms_number", entity).caller(&call.caller);
    match subject {
        Some(s) => e.subject(s),
        None => e,
    }
}

pub async fn get_consent(
    state: &AppState,
    call: &Call,
    r: GetSmsConsentRequest,
) -> Result<SmsConsent> {
    let mut v = FieldViolations::new();
    check_phone(&mut v, &r.phone_number);
    v.finish()?;
    let holder = holder(state, call, &r.phone_number).await?;
    let (number, answer) = {
        let mut conn = state.pool.acquire().await?;
        let number = ledger::find(&mut conn, state, &r.phone_number).await?;
        let answer = ledger::consent_pb(&mut conn, number.as_ref(), &r.phone_number).await?;
        (number, answer)
    };
    let subject = holder.or_else(|| number.as_ref().and_then(|n| n.user_id));
    let e = ledger_event(
        call,
        kinds::SMS_CONSENT_READ,
        number.as_ref().map(|n| n.id),
        subject,
    );
    call.read(&state.pool, e, answer).await
}

pub async fn record_opt_in(
    state: &AppState,
    call: &Call,
    r: RecordSmsOptInRequest,
) -> Result<SmsConsent> {
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    check_phone(&mut v, &r.phone_number);
    v.require_len(&r.source, "source", 1, 64);
    // A code, not free text: it is kept for good, and free text invites what must not be kept.
    v.check(
        r.source
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)),
        "source",
        "must be letters, digits and . _ : - only",
    );
    v.finish()?;
    let holder = holder(state, call, &r.phone_number).await?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let applied = ledger::decide(
                conn,
                state,
                &r.phone_number,
                &Decision {
                    consent: Consent::OptedIn,
                    source: &r.source,
                    at: Utc::now(),
                    user: holder,
                    record_repeat: true,
                    only_if_newer: false,
                    tell_identity: true,
                },
            )
            .await?;
            let answer = ledger::consent_pb(conn, Some(&applied.number), &r.phone_number).await?;
            let subject = holder.or(applied.number.user_id);
            Ok::<_, MessagingError>(Change::new(
                answer,
                ledger_event(
                    call,
                    kinds::SMS_CONSENT_CHANGE,
                    Some(applied.number.id),
                    subject,
                ),
            ))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn apply_preference(
    state: &AppState,
    call: &Call,
    r: ApplySmsPreferenceRequest,
) -> Result<SmsConsent> {
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let user = v.require_uuid("user_id", &r.user_id);
    let at = carehub_platform::timestamps::field(r.change_time.as_ref(), "change_time", &mut v);
    v.check(r.change_time.is_some(), "change_time", "is required");
    v.finish()?;
    let user = checked(user)?;
    // A clock ahead of ours must not outrank the next keyword for long.
    let at = checked(at)?.min(Utc::now());
    let contact = state.notifications.contact(user).await?;
    let number = contact.phone_number;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            if number.is_empty() {
                // Nothing to follow: the preference is about a number identity has not
                // verified. Answered (the outbox must not retry it forever) and audited.
                let e = ledger_event(call, kinds::SMS_CONSENT_CHANGE, None, Some(user))
                    .outcome(Outcome::Success, Some("NO_VERIFIED_PHONE"));
                return Ok::<_, MessagingError>(Change::new(
                    SmsConsent {
                        phone_number: String::new(),
                        state: SmsConsentState::None as i32,
                        history: Vec::new(),
                    },
                    e,
                ));
            }
            let applied = ledger::decide(
                conn,
                state,
                &number,
                &Decision {
                    consent: if r.sms_allowed {
                        Consent::OptedIn
                    } else {
                        Consent::OptedOut
                    },
                    source: ledger::FROM_IDENTITY,
                    at,
                    user: Some(user),
                    record_repeat: false,
                    only_if_newer: true,
                    // It came from identity: telling identity again would echo it back.
                    tell_identity: false,
                },
            )
            .await?;
            let answer = ledger::consent_pb(conn, Some(&applied.number), &number).await?;
            let mut e = ledger_event(
                call,
                kinds::SMS_CONSENT_CHANGE,
                Some(applied.number.id),
                Some(user),
            );
            if !applied.recorded {
                e = e.outcome(Outcome::Success, Some("UNCHANGED"));
            }
            Ok(Change::new(answer, e))
        })
        .await?;
    Ok(ran.answer)
}
