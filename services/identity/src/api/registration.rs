//! Registration and contact verification: patient self-registration and the verification codes
//! that prove an email address or phone number.

use std::sync::{Arc, Mutex};

use carehub_platform::auth::{caller, Role};
use carehub_platform::errors::FieldViolations;
use carehub_platform::idempotency;
use carehub_proto::identity::v1::*;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::accounts::{caller_user_id, checked, on_locked_account, Outbox};
use super::scope;
use crate::api::convert::{timestamp, user_to_pb};
use crate::domain::account::{self, ConsentChange, Contact, NewAccount, MAX_CODE_ATTEMPTS};
use crate::domain::validation as val;
use crate::error::IdentityError;
use crate::notify::{Channel, Notification, NotificationKind};
use crate::store::accounts as store;
use crate::AppState;

/// Verification codes one user may request per channel per hour.
const MAX_CODES_PER_HOUR: i64 = 10;

/// Creates a verification code for `channel` of `account` (its current address) and queues it.
pub(super) async fn issue_code(
    conn: &mut PgConnection,
    crypto: &carehub_platform::crypto::Envelope,
    outbox: &Outbox,
    user_id: Uuid,
    channel: Contact,
    destination: &str,
    ttl_secs: u64,
) -> Result<DateTime<Utc>, IdentityError> {
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
    outbox.push(Notification {
        user_id,
        channel: match channel {
            Contact::Email => Channel::Email,
            Contact::Phone => Channel::Sms,
        },
        destination: destination.to_owned(),
        kind: NotificationKind::VerificationCode { code },
    });
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
    req: Request<RegisterPatientRequest>,
) -> Result<Response<User>, Status> {
    let caller = caller(&req)?;
    let key = idempotency::key_of(&req)?;
    let r = req.into_inner();
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

    let password_hash = state
        .hasher
        .hash_async(r.password.clone())
        .await
        .map_err(|e| Status::from(IdentityError::from(e)))?;
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
    let outbox = Outbox::default();
    let out = outbox.clone();
    let actor = format!("anon:{}", caller.workload);
    let crypto = state.crypto.clone();
    let event = super::security::account(
        &caller,
        "identity.account.register",
        carehub_platform::audit::Action::Create,
        new.id,
    );
    let user = idempotency::run(
        &state.idempotency,
        &scope("RegisterPatient"),
        &actor,
        key.as_deref(),
        &r,
        move |tx| {
            Box::pin(async move {
                let a = store::insert_user(tx, &crypto, &new).await?;
                store::insert_consents(tx, a.id, &change).await?;
                store::insert_prefs(tx, a.id, sms).await?;
                super::security::record(tx, event).await?;
                issue_code(tx, &crypto, &out, a.id, Contact::Email, &a.email, ttl).await?;
                if let Some(p) = &a.phone {
                    issue_code(tx, &crypto, &out, a.id, Contact::Phone, p, ttl).await?;
                }
                Ok::<_, IdentityError>(user_to_pb(&a))
            })
        },
    )
    .await?;
    tracing::info!(user_id = %user.user_id, "patient registered");
    outbox.deliver(state).await;
    Ok(Response::new(user))
}

// ---- contact verification ----

pub async fn send_verification_code(
    state: &AppState,
    req: Request<SendVerificationCodeRequest>,
) -> Result<Response<SendVerificationCodeResponse>, Status> {
    let caller = caller(&req)?;
    let user_id = caller_user_id(&caller)?;
    let key = idempotency::key_of(&req)?;
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let channel = contact_of(&mut v, "channel", r.channel);
    v.finish()?;
    let channel = checked(channel)?;
    let ttl = state.settings.verification_code_ttl_secs;
    let outbox = Outbox::default();
    let out = outbox.clone();
    let crypto = state.crypto.clone();
    let resp = on_locked_account(
        state,
        "SendVerificationCode",
        &caller,
        key.as_deref(),
        &r,
        user_id,
        move |tx, a| {
            Box::pin(async move {
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
                    issue_code(tx, &crypto, &out, user_id, channel, &destination, ttl).await?;
                Ok(SendVerificationCodeResponse {
                    expire_time: Some(timestamp(expires)),
                })
            })
        },
    )
    .await?;
    outbox.deliver(state).await;
    Ok(Response::new(resp))
}

pub async fn verify_contact(
    state: &AppState,
    req: Request<VerifyContactRequest>,
) -> Result<Response<User>, Status> {
    let caller = caller(&req)?;
    let user_id = caller_user_id(&caller)?;
    let key = idempotency::key_of(&req)?;
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let channel = contact_of(&mut v, "channel", r.channel);
    val::check_code(&mut v, "code", &r.code);
    v.finish()?;
    let channel = checked(channel)?;
    let given = account::hash_secret(&r.code);
    // A wrong code rolls the transaction back; its attempt is counted afterwards.
    let wrong: Arc<Mutex<Option<Uuid>>> = Arc::default();
    let wrong_in = wrong.clone();
    let crypto = state.crypto.clone();
    let result = idempotency::run(
        &state.idempotency,
        &scope("VerifyContact"),
        &caller.actor_key(),
        key.as_deref(),
        &r,
        move |tx| {
            Box::pin(async move {
                let invalid = || IdentityError::CodeInvalid { field: "code" };
                let code = store::lock_live_code(tx, &crypto, user_id, channel)
                    .await?
                    .ok_or_else(invalid)?;
                if code.attempts >= MAX_CODE_ATTEMPTS {
                    return Err(invalid());
                }
                if !account::hashes_match(&code.code_hash, &given) {
                    if let Ok(mut w) = wrong_in.lock() {
                        *w = Some(code.id);
                    }
                    return Err(invalid());
                }
                if !store::use_code(tx, code.id).await? {
                    return Err(invalid());
                }
                // The address must still be the one the code was sent to.
                let a = store::mark_verified(tx, &crypto, user_id, channel, &code.destination)
                    .await?
                    .ok_or_else(invalid)?;
                Ok(user_to_pb(&a))
            })
        },
    )
    .await;
    match result {
        Ok(user) => Ok(Response::new(user)),
        Err(e) => {
            let failed = wrong.lock().ok().and_then(|w| *w);
            if let Some(code_id) = failed {
                store::record_failed_code_attempt(&state.pool, code_id).await?;
            }
            Err(e.into())
        }
    }
}
