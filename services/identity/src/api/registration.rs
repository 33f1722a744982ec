//! Registration and contact verification: patient self-registration and the verification codes
//! that prove an email address or phone number.

use carehub_platform::audit::Purpose;
use carehub_platform::auth::Role;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::identity::v1::*;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::accounts::{checked, lock_account, Outbox};
use super::kinds;
use crate::api::convert::{timestamp, user_to_pb};
use crate::domain::account::{self, ConsentChange, Contact, NewAccount, MAX_CODE_ATTEMPTS};
use crate::domain::validation as val;
use crate::error::{IdentityError, Result};
use crate::notify::{Channel, Notification, NotificationKind};
use crate::store::accounts as store;
use crate::AppState;

/// Verification codes one user may request per channel per hour.
const MAX_CODES_PER_HOUR: i64 = 10;

/// Creates a verification code for `channel` of `account` (its current address) and stages its
/// notification in the same transaction `conn`.
pub(super) async fn issue_code(
    conn: &mut PgConnection,
    crypto: &carehub_platform::crypto::Envelope,
    outbox: &Outbox,
    user_id: Uuid,
    channel: Contact,
    destination: &str,
    ttl_secs: u64,
) -> Result<DateTime<Utc>> {
    let code = account::new_verification_code();
    let expires = store::insert_verification_code(
        conn,
        crypto,
        user_id,
        channel,
        destination,
        &account::hash_secret(&code),
        ttl_secs,
    )
    .await?;
    let n = Notification {
        user_id,
        channel: match channel {
            Contact::Email => Channel::Email,
            Contact::Phone => Channel::Sms,
        },
        destination: destination.to_owned(),
        kind: NotificationKind::VerificationCode { code },
    };
    outbox.stage(conn, n).await?;
    Ok(expires)
}

fn contact_of(v: &mut FieldViolations, field: &str, channel: i32) -> Option<Contact> {
    match ContactChannel::try_from(channel) {
        Ok(ContactChannel::Email) => Some(Contact::Email),
        Ok(ContactChannel::Phone) => Some(Contact::Phone),
        _ => {
            v.add(
                field,
                "must be CONTACT_CHANNEL_EMAIL or CONTACT_CHANNEL_PHONE",
            );
            None
        }
    }
}

pub async fn register_patient(
    state: &AppState,
    call: &Call,
    r: RegisterPatientRequest,
) -> Result<User> {
    call.idempotency_key()?;
    let today = Utc::now().date_naive();

    let mut v = FieldViolations::new();
    let email = val::check_email(&mut v, "email", &r.email);
    val::check_password(&mut v, "password", &r.password);
    let phone = val::check_optional_phone(&mut v, "phone", &r.phone);
    let given = val::check_name(&mut v, "given_name", &r.given_name);
    let family = val::check_name(&mut v, "family_name", &r.family_name);
    let dob = val::check_date_of_birth(
        &mut v,
        "date_of_birth",
        r.date_of_birth.as_ref(),
        today,
        true,
    );
    let tz = val::check_time_zone(&mut v, "time_zone", &r.time_zone);
    let terms = val::check_version(
        &mut v,
        "accepted_terms_version",
        &r.accepted_terms_version,
        true,
    );
    let privacy = val::check_version(
        &mut v,
        "accepted_privacy_version",
        &r.accepted_privacy_version,
        true,
    );
    if r.sms_opt_in && r.phone.is_empty() {
        v.add("sms_opt_in", "requires a phone");
    }
    v.finish()?;

    let password_hash = state.hasher.hash_async(r.password.clone()).await?;
    let phone = checked(phone)?;
    let new = NewAccount {
        id: Uuid::now_v7(),
        role: Role::Patient,
        email: checked(email)?,
        phone: phone.clone(),
        given_name: checked(given)?,
        family_name: checked(family)?,
        date_of_birth: Some(checked(dob)?),
        time_zone: checked(tz)?,
        password_hash,
        password_change_required: false,
    };
    let change = ConsentChange {
        terms_version: checked(terms)?,
        privacy_version: checked(privacy)?,
        marketing_opt_in: Some(r.marketing_opt_in),
        sms_opt_in: Some(r.sms_opt_in),
    };
    let sms = r.sms_opt_in;
    let ttl = state.settings.verification_code_ttl_secs;
    let outbox = Outbox::new(state);
    // Nobody is signed in yet: answers are kept per calling workload.
    let actor = format!("anon:{}", call.caller.workload);
    let crypto = &state.crypto;
    let event = super::security::account(&call.caller, kinds::ACCOUNT_REGISTER, new.id);
    let user = call
        .mutate_as(&state.idempotency, &actor, &r, async |tx| {
            let a = store::insert_user(tx, crypto, &new).await?;
            store::insert_consents(tx, a.id, &change).await?;
            store::insert_prefs(tx, a.id, sms).await?;
            issue_code(tx, crypto, &outbox, a.id, Contact::Email, &a.email, ttl).await?;
            if let Some(p) = &a.phone {
                issue_code(tx, crypto, &outbox, a.id, Contact::Phone, p, ttl).await?;
            }
            Ok::<_, IdentityError>(Change::new(user_to_pb(&a), event))
        })
        .await?
        .answer;
    tracing::info!(user_id = %user.user_id, "patient registered");
    outbox.deliver(state).await;
    Ok(user)
}

// ---- contact verification ----

pub async fn send_verification_code(
    state: &AppState,
    call: &Call,
    r: SendVerificationCodeRequest,
) -> Result<SendVerificationCodeResponse> {
    let user_id = call.user()?.user_id;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let channel = contact_of(&mut v, "channel", r.channel);
    v.finish()?;
    let channel = checked(channel)?;
    let ttl = state.settings.verification_code_ttl_secs;
    let outbox = Outbox::new(state);
    let crypto = &state.crypto;
    let event = call.event(
        kinds::CONTACT_CODE_SEND,
        Purpose::PatientRequest,
        "user",
        user_id,
        user_id,
    );
    let resp = call
        .mutate(&state.idempotency, &r, async |tx| {
            let a = lock_account(tx, crypto, user_id).await?;
            let destination = match channel {
                Contact::Email => a.email.clone(),
                Contact::Phone => a.phone.clone().ok_or_else(|| IdentityError::Conflict {
                    kind: "PHONE",
                    subject: user_id.to_string(),
                    description: "the account has no phone number".to_owned(),
                })?,
            };
            if store::codes_sent_last_hour(tx, user_id, channel).await? >= MAX_CODES_PER_HOUR {
                return Err(IdentityError::RateLimited {
                    retry_after: std::time::Duration::from_secs(3600),
                });
            }
            let expires =
                issue_code(tx, crypto, &outbox, user_id, channel, &destination, ttl).await?;
            let answer = SendVerificationCodeResponse {
                expire_time: Some(timestamp(expires)),
            };
            Ok(Change::new(answer, event))
        })
        .await?;
    outbox.deliver(state).await;
    Ok(resp.answer)
}

pub async fn verify_contact(
    state: &AppState,
    call: &Call,
    r: VerifyContactRequest,
) -> Result<User> {
    let user_id = call.user()?.user_id;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let channel = contact_of(&mut v, "channel", r.channel);
    val::check_code(&mut v, "code", &r.code);
    v.finish()?;
    let channel = checked(channel)?;
    let given = account::hash_secret(&r.code);
    // A wrong code rolls the transaction back; its attempt is counted afterwards.
    let mut wrong: Option<Uuid> = None;
    let crypto = &state.crypto;
    let event = call.event(
        kinds::CONTACT_VERIFY,
        Purpose::PatientRequest,
        "user",
        user_id,
        user_id,
    );
    let result = call
        .mutate(&state.idempotency, &r, async |tx| {
            let invalid = || IdentityError::CodeInvalid { field: "code" };
            let code = store::lock_live_code(tx, crypto, user_id, channel)
                .await?
                .ok_or_else(invalid)?;
            if code.attempts >= MAX_CODE_ATTEMPTS {
                return Err(invalid());
            }
            if !account::hashes_match(&code.code_hash, &given) {
                wrong = Some(code.id);
                return Err(invalid());
            }
            if !store::use_code(tx, code.id).await? {
                return Err(invalid());
            }
            // The address must still be the one the code was sent to.
            let a = store::mark_verified(tx, crypto, user_id, channel, &code.destination)
                .await?
                .ok_or_else(invalid)?;
            Ok(Change::new(user_to_pb(&a), event))
        })
        .await;
    match result {
        Ok(user) => Ok(user.answer),
        Err(e) => {
            if let Some(code_id) = wrong {
                store::record_failed_code_attempt(&state.pool, code_id).await?;
            }
            Err(e)
        }
    }
}
