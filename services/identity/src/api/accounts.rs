//! Accounts: registration, admin-created users, contact verification, profile, admin status
//! actions, consents, communication preferences and the internal user lookup.
//!
//! Every handler: decode → validate every field → authorize (ownership; the auth layer already
//! checked roles and workloads) → one transaction (mutating RPCs through
//! `idempotency::run`) → encode. Codes are delivered through the notifier after the commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use carehub_platform::auth::{caller, Caller, Role};
use carehub_platform::errors::{self, FieldViolations};
use carehub_platform::idempotency;
use carehub_proto::identity::v1 as pb;
use carehub_proto::identity::v1::*;
use chrono::{DateTime, Utc};
use prost::Message;
use sqlx::PgConnection;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::scope;
use crate::api::convert::{opt_timestamp, role_from_pb, role_to_pb, timestamp};
use crate::domain::account::{
    self, Account, AccountStatus as DomainStatus, CommPrefs, ConsentChange, ConsentState, Contact,
    NewAccount, StatusAction, MAX_CODE_ATTEMPTS, PREFS_MASK_PATHS, PROFILE_MASK_PATHS,
};
use crate::domain::validation as val;
use crate::error::IdentityError;
use crate::notify::{Channel, Notification, NotificationKind};
use crate::store::accounts::{self as store, PrefsUpdate, ProfileUpdate};
use crate::AppState;

/// Verification codes one user may request per channel per hour.
const MAX_CODES_PER_HOUR: i64 = 10;

/// A value that validation has vouched for (never `None` once `FieldViolations::finish` passed).
fn checked<T>(value: Option<T>) -> Result<T, Status> {
    value.ok_or_else(|| errors::internal("validation"))
}

/// Notifications to deliver once the transaction committed (nothing when an idempotent retry
/// replayed the first answer).
#[derive(Clone, Default)]
struct Outbox(Arc<Mutex<Vec<Notification>>>);

impl Outbox {
    fn push(&self, n: Notification) {
        if let Ok(mut v) = self.0.lock() {
            v.push(n);
        }
    }

    async fn deliver(self, state: &AppState) {
        let pending = self
            .0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        for n in pending {
            let user_id = n.user_id;
            if let Err(e) = state.notifier.send(n).await {
                tracing::warn!(%user_id, error = %e, "notification not delivered");
            }
        }
    }
}

/// Creates a verification code for `channel` of `account` (its current address) and queues it.
async fn issue_code(
    conn: &mut PgConnection,
    outbox: &Outbox,
    user_id: Uuid,
    channel: Contact,
    destination: &str,
    ttl_secs: u64,
) -> Result<DateTime<Utc>, IdentityError> {
    let code = account::new_verification_code();
    let expires = store::insert_verification_code(
        conn,
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

// ---- encoding ----

fn status_to_pb(s: DomainStatus) -> pb::AccountStatus {
    match s {
        DomainStatus::Active => pb::AccountStatus::Active,
        DomainStatus::Suspended => pb::AccountStatus::Suspended,
        DomainStatus::Terminated => pb::AccountStatus::Terminated,
    }
}

/// The proto form of an account.
pub fn user_to_pb(a: &Account) -> User {
    User {
        user_id: a.id.to_string(),
        roles: vec![role_to_pb(a.role) as i32],
        status: status_to_pb(a.status) as i32,
        email: a.email.clone(),
        email_verified: a.email_verified_at.is_some(),
        phone: a.phone.clone().unwrap_or_default(),
        phone_verified: a.phone_verified_at.is_some(),
        given_name: a.given_name.clone(),
        family_name: a.family_name.clone(),
        date_of_birth: a.date_of_birth.map(val::date_to_pb),
        time_zone: a.time_zone.clone(),
        mfa_enabled: a.mfa_enabled,
        password_change_required: a.password_change_required,
        create_time: Some(timestamp(a.created_at)),
        update_time: Some(timestamp(a.updated_at)),
    }
}

fn consents_to_pb(c: &ConsentState) -> Consents {
    Consents {
        user_id: c.user_id.to_string(),
        accepted_terms_version: c.terms_version.clone().unwrap_or_default(),
        terms_accept_time: opt_timestamp(c.terms_accepted_at),
        accepted_privacy_version: c.privacy_version.clone().unwrap_or_default(),
        privacy_accept_time: opt_timestamp(c.privacy_accepted_at),
        marketing_opt_in: c.marketing_opt_in,
        marketing_update_time: opt_timestamp(c.marketing_updated_at),
        sms_opt_in: c.sms_opt_in,
        sms_update_time: opt_timestamp(c.sms_updated_at),
    }
}

fn prefs_to_pb(p: &CommPrefs) -> CommunicationPreferences {
    CommunicationPreferences {
        user_id: p.user_id.to_string(),
        email_notifications: p.email_notifications,
        sms_notifications: p.sms_notifications,
        push_notifications: p.push_notifications,
        language: p.language.clone(),
        quiet_hours_start: i32::from(p.quiet_hours_start),
        quiet_hours_end: i32::from(p.quiet_hours_end),
    }
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

/// The update_mask paths, checked against `allowed` (each unknown or missing path is a
/// violation of "update_mask").
fn mask_paths(
    v: &mut FieldViolations,
    mask: Option<&prost_types::FieldMask>,
    allowed: &[&str],
) -> Vec<String> {
    let paths: Vec<String> = mask.map(|m| m.paths.clone()).unwrap_or_default();
    if paths.is_empty() {
        v.add("update_mask", "is required (name the fields to update)");
        return Vec::new();
    }
    if paths.len() > 32 {
        v.add("update_mask", "has too many paths");
        return Vec::new();
    }
    for p in &paths {
        if !allowed.contains(&p.as_str()) {
            let shown: String = p.chars().take(64).collect();
            v.add(
                "update_mask",
                format!("unknown path {shown:?}; allowed: {}", allowed.join(", ")),
            );
        }
    }
    paths
}

fn user_of(caller: &Caller) -> Result<Uuid, Status> {
    Ok(caller.user()?.user_id)
}

fn not_found(id: Uuid) -> IdentityError {
    IdentityError::NotFound {
        what: "user",
        id: id.to_string(),
    }
}

// ---- registration and creation ----

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
        .map_err(|e| Status::from(IdentityError::Internal(e.to_string())))?;
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
    let user = idempotency::run(
        &state.pool,
        &scope("RegisterPatient"),
        &actor,
        key.as_deref(),
        &r,
        move |tx| {
            Box::pin(async move {
                let a = store::insert_user(tx, &new).await?;
                store::insert_consents(tx, a.id, &change).await?;
                store::insert_prefs(tx, a.id, sms).await?;
                issue_code(tx, &out, a.id, Contact::Email, &a.email, ttl).await?;
                if let Some(p) = &a.phone {
                    issue_code(tx, &out, a.id, Contact::Phone, p, ttl).await?;
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

pub async fn create_user(
    state: &AppState,
    req: Request<CreateUserRequest>,
) -> Result<Response<CreateUserResponse>, Status> {
    let caller = caller(&req)?;
    user_of(&caller)?;
    let key = idempotency::key_of(&req)?;
    let r = req.into_inner();
    let today = Utc::now().date_naive();

    let mut v = FieldViolations::new();
    let email = val::check_email(&mut v, "email", &r.email);
    let role = pb::Role::try_from(r.role).ok().and_then(role_from_pb);
    if role.is_none() {
        v.add(
            "role",
            "must be one of ROLE_PATIENT, ROLE_PROVIDER, ROLE_STAFF, ROLE_BILLING, ROLE_ADMIN",
        );
    }
    let given = val::check_name(&mut v, "given_name", &r.given_name);
    let family = val::check_name(&mut v, "family_name", &r.family_name);
    let phone = val::check_optional_phone(&mut v, "phone", &r.phone);
    let tz = val::check_time_zone(&mut v, "time_zone", &r.time_zone);
    let dob = if r.date_of_birth.is_some() || role == Some(Role::Patient) {
        val::check_date_of_birth(
            &mut v,
            "date_of_birth",
            r.date_of_birth.as_ref(),
            today,
            false,
        )
        .map(Some)
    } else {
        Some(None)
    };
    v.finish()?;

    let one_time = account::new_one_time_password();
    let password_hash = state
        .hasher
        .hash_async(one_time.clone())
        .await
        .map_err(|e| Status::from(IdentityError::Internal(e.to_string())))?;
    let new = NewAccount {
        id: Uuid::now_v7(),
        role: checked(role)?,
        email: checked(email)?,
        phone: checked(phone)?,
        given_name: checked(given)?,
        family_name: checked(family)?,
        date_of_birth: checked(dob)?,
        time_zone: checked(tz)?,
        password_hash,
        password_change_required: true,
    };
    let ran = Arc::new(AtomicBool::new(false));
    let ran_in = ran.clone();
    // The stored (replayable) answer never holds the one-time password: it is a credential.
    let mut resp = idempotency::run(
        &state.pool,
        &scope("CreateUser"),
        &caller.actor_key(),
        key.as_deref(),
        &r,
        move |tx| {
            Box::pin(async move {
                let a = store::insert_user(tx, &new).await?;
                store::insert_consents(tx, a.id, &ConsentChange::default()).await?;
                store::insert_prefs(tx, a.id, false).await?;
                ran_in.store(true, Ordering::SeqCst);
                Ok::<_, IdentityError>(CreateUserResponse {
                    user: Some(user_to_pb(&a)),
                    one_time_password: String::new(),
                })
            })
        },
    )
    .await?;
    if ran.load(Ordering::SeqCst) {
        resp.one_time_password = one_time;
        if let Some(u) = &resp.user {
            tracing::info!(user_id = %u.user_id, by = %caller.actor_key(), "user created by an admin");
            if let Ok(id) = Uuid::parse_str(&u.user_id) {
                let outbox = Outbox::default();
                outbox.push(Notification {
                    user_id: id,
                    channel: Channel::Email,
                    destination: u.email.clone(),
                    kind: NotificationKind::AccountCreated,
                });
                outbox.deliver(state).await;
            }
        }
    }
    Ok(Response::new(resp))
}

// ---- contact verification ----

pub async fn send_verification_code(
    state: &AppState,
    req: Request<SendVerificationCodeRequest>,
) -> Result<Response<SendVerificationCodeResponse>, Status> {
    let caller = caller(&req)?;
    let user_id = user_of(&caller)?;
    let key = idempotency::key_of(&req)?;
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let channel = contact_of(&mut v, "channel", r.channel);
    v.finish()?;
    let channel = checked(channel)?;
    let ttl = state.settings.verification_code_ttl_secs;
    let outbox = Outbox::default();
    let out = outbox.clone();
    let resp = idempotency::run(
        &state.pool,
        &scope("SendVerificationCode"),
        &caller.actor_key(),
        key.as_deref(),
        &r,
        move |tx| {
            Box::pin(async move {
                let a = store::lock_user(tx, user_id)
                    .await?
                    .ok_or_else(|| not_found(user_id))?;
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
                let expires = issue_code(tx, &out, user_id, channel, &destination, ttl).await?;
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
    let user_id = user_of(&caller)?;
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
    let result = idempotency::run(
        &state.pool,
        &scope("VerifyContact"),
        &caller.actor_key(),
        key.as_deref(),
        &r,
        move |tx| {
            Box::pin(async move {
                let invalid = || IdentityError::CodeInvalid { field: "code" };
                let code = store::lock_live_code(tx, user_id, channel)
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
                let a = store::mark_verified(tx, user_id, channel, &code.destination)
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

// ---- profile ----

pub async fn get_profile(
    state: &AppState,
    req: Request<GetProfileRequest>,
) -> Result<Response<User>, Status> {
    let caller = caller(&req)?;
    let user_id = user_of(&caller)?;
    let mut conn = state.pool.acquire().await.map_err(IdentityError::from)?;
    let a = store::get_user(&mut conn, user_id)
        .await?
        .ok_or_else(|| not_found(user_id))?;
    Ok(Response::new(user_to_pb(&a)))
}

pub async fn update_profile(
    state: &AppState,
    req: Request<UpdateProfileRequest>,
) -> Result<Response<User>, Status> {
    let caller = caller(&req)?;
    let user_id = user_of(&caller)?;
    let key = idempotency::key_of(&req)?;
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let paths = mask_paths(&mut v, r.update_mask.as_ref(), &PROFILE_MASK_PATHS);
    let mut update = ProfileUpdate::default();
    match &r.user {
        None if !paths.is_empty() => v.add("user", "is required"),
        None => {}
        Some(u) => {
            for p in &paths {
                match p.as_str() {
                    "given_name" => {
                        update.given_name =
                            val::check_name(&mut v, "user.given_name", &u.given_name)
                    }
                    "family_name" => {
                        update.family_name =
                            val::check_name(&mut v, "user.family_name", &u.family_name);
                    }
                    "phone" => {
                        update.phone = val::check_optional_phone(&mut v, "user.phone", &u.phone)
                    }
                    "time_zone" => {
                        update.time_zone =
                            val::check_time_zone(&mut v, "user.time_zone", &u.time_zone)
                    }
                    "email" => update.email = val::check_email(&mut v, "user.email", &u.email),
                    _ => {}
                }
            }
        }
    }
    v.finish()?;
    let ttl = state.settings.verification_code_ttl_secs;
    let outbox = Outbox::default();
    let out = outbox.clone();
    let user = idempotency::run(
        &state.pool,
        &scope("UpdateProfile"),
        &caller.actor_key(),
        key.as_deref(),
        &r,
        move |tx| {
            Box::pin(async move {
                let before = store::lock_user(tx, user_id)
                    .await?
                    .ok_or_else(|| not_found(user_id))?;
                let after = store::update_profile(tx, user_id, &update).await?;
                if after.email != before.email {
                    store::expire_codes(tx, user_id, Contact::Email).await?;
                    issue_code(tx, &out, user_id, Contact::Email, &after.email, ttl).await?;
                }
                if after.phone != before.phone {
                    store::expire_codes(tx, user_id, Contact::Phone).await?;
                    match &after.phone {
                        Some(p) => {
                            issue_code(tx, &out, user_id, Contact::Phone, p, ttl).await?;
                        }
                        None => {
                            // No phone, no SMS consent.
                            if store::get_consents(tx, user_id).await?.sms_opt_in {
                                let change = ConsentChange {
                                    sms_opt_in: Some(false),
                                    ..ConsentChange::default()
                                };
                                store::update_consents(tx, user_id, &change).await?;
                            }
                        }
                    }
                }
                Ok::<_, IdentityError>(user_to_pb(&after))
            })
        },
    )
    .await?;
    outbox.deliver(state).await;
    Ok(Response::new(user))
}

pub async fn get_user(
    state: &AppState,
    req: Request<GetUserRequest>,
) -> Result<Response<User>, Status> {
    let caller = caller(&req)?;
    let me = caller.user()?.clone();
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let target = val::check_uuid(&mut v, "user_id", &r.user_id);
    v.finish()?;
    let target = checked(target)?;
    if target != me.user_id && !me.has_role(Role::Admin) && !me.has_role(Role::Staff) {
        return Err(IdentityError::PermissionDenied(format!(
            "user {} may only read their own account",
            me.user_id
        ))
        .into());
    }
    let mut conn = state.pool.acquire().await.map_err(IdentityError::from)?;
    let a = store::get_user(&mut conn, target)
        .await?
        .ok_or_else(|| not_found(target))?;
    Ok(Response::new(user_to_pb(&a)))
}

// ---- admin status actions ----

/// One admin status action: the RPC's method name and its two fields.
struct StatusChange<'a> {
    method: &'a str,
    user_id: &'a str,
    reason: &'a str,
    action: StatusAction,
}

async fn change_status<Req: Message>(
    state: &AppState,
    caller: &Caller,
    key: Option<String>,
    request: &Req,
    change: StatusChange<'_>,
) -> Result<Response<User>, Status> {
    let StatusChange {
        method,
        user_id,
        reason,
        action,
    } = change;
    let admin = user_of(caller)?;
    let mut v = FieldViolations::new();
    let target = val::check_uuid(&mut v, "user_id", user_id);
    let reason = val::check_reason(&mut v, "reason", reason);
    v.finish()?;
    let (target, reason) = (checked(target)?, checked(reason)?);
    if target == admin && action != StatusAction::Reactivate {
        return Err(IdentityError::Conflict {
            kind: "SELF",
            subject: target.to_string(),
            description: "an admin cannot suspend or terminate their own account".to_owned(),
        }
        .into());
    }
    let user = idempotency::run(
        &state.pool,
        &scope(method),
        &caller.actor_key(),
        key.as_deref(),
        request,
        move |tx| {
            Box::pin(async move {
                let a = store::lock_user(tx, target)
                    .await?
                    .ok_or_else(|| not_found(target))?;
                let next = action
                    .apply(a.status)
                    .map_err(|why| IdentityError::Conflict {
                        kind: "ACCOUNT_STATUS",
                        subject: target.to_string(),
                        description: why.to_owned(),
                    })?;
                let a = store::set_status(tx, target, next, &reason, admin).await?;
                if action.revokes_sessions() {
                    crate::store::revocation::revoke_user_sessions(
                        tx,
                        target,
                        action.revoke_reason(),
                        None,
                    )
                    .await?;
                }
                Ok::<_, IdentityError>(user_to_pb(&a))
            })
        },
    )
    .await?;
    tracing::info!(user_id = %target, by = %admin, action = ?action, "account status changed");
    Ok(Response::new(user))
}

pub async fn suspend_user(
    state: &AppState,
    req: Request<SuspendUserRequest>,
) -> Result<Response<User>, Status> {
    let caller = caller(&req)?;
    let key = idempotency::key_of(&req)?;
    let r = req.into_inner();
    change_status(
        state,
        &caller,
        key,
        &r,
        StatusChange {
            method: "SuspendUser",
            user_id: &r.user_id,
            reason: &r.reason,
            action: StatusAction::Suspend,
        },
    )
    .await
}

pub async fn reactivate_user(
    state: &AppState,
    req: Request<ReactivateUserRequest>,
) -> Result<Response<User>, Status> {
    let caller = caller(&req)?;
    let key = idempotency::key_of(&req)?;
    let r = req.into_inner();
    change_status(
        state,
        &caller,
        key,
        &r,
        StatusChange {
            method: "ReactivateUser",
            user_id: &r.user_id,
            reason: &r.reason,
            action: StatusAction::Reactivate,
        },
    )
    .await
}

pub async fn terminate_user(
    state: &AppState,
    req: Request<TerminateUserRequest>,
) -> Result<Response<User>, Status> {
    let caller = caller(&req)?;
    let key = idempotency::key_of(&req)?;
    let r = req.into_inner();
    change_status(
        state,
        &caller,
        key,
        &r,
        StatusChange {
            method: "TerminateUser",
            user_id: &r.user_id,
            reason: &r.reason,
            action: StatusAction::Terminate,
        },
    )
    .await
}

// ---- consents ----

pub async fn get_consents(
    state: &AppState,
    req: Request<GetConsentsRequest>,
) -> Result<Response<Consents>, Status> {
    let caller = caller(&req)?;
    let user_id = user_of(&caller)?;
    let mut conn = state.pool.acquire().await.map_err(IdentityError::from)?;
    let c = store::get_consents(&mut conn, user_id).await?;
    Ok(Response::new(consents_to_pb(&c)))
}

pub async fn update_consents(
    state: &AppState,
    req: Request<UpdateConsentsRequest>,
) -> Result<Response<Consents>, Status> {
    let caller = caller(&req)?;
    let user_id = user_of(&caller)?;
    let key = idempotency::key_of(&req)?;
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let terms = val::check_version(
        &mut v,
        "accept_terms_version",
        &r.accept_terms_version,
        false,
    );
    let privacy = val::check_version(
        &mut v,
        "accept_privacy_version",
        &r.accept_privacy_version,
        false,
    );
    v.finish()?;
    let change = ConsentChange {
        terms_version: checked(terms)?,
        privacy_version: checked(privacy)?,
        marketing_opt_in: r.marketing_opt_in,
        sms_opt_in: r.sms_opt_in,
    };
    let consents = idempotency::run(
        &state.pool,
        &scope("UpdateConsents"),
        &caller.actor_key(),
        key.as_deref(),
        &r,
        move |tx| {
            Box::pin(async move {
                let a = store::lock_user(tx, user_id)
                    .await?
                    .ok_or_else(|| not_found(user_id))?;
                if change.sms_opt_in == Some(true) && a.phone.is_none() {
                    return Err(IdentityError::Conflict {
                        kind: "PHONE",
                        subject: user_id.to_string(),
                        description: "SMS consent needs a phone number on the account".to_owned(),
                    });
                }
                let c = store::update_consents(tx, user_id, &change).await?;
                Ok(consents_to_pb(&c))
            })
        },
    )
    .await?;
    Ok(Response::new(consents))
}

// ---- communication preferences ----

pub async fn get_communication_preferences(
    state: &AppState,
    req: Request<GetCommunicationPreferencesRequest>,
) -> Result<Response<CommunicationPreferences>, Status> {
    let caller = caller(&req)?;
    let user_id = user_of(&caller)?;
    let mut conn = state.pool.acquire().await.map_err(IdentityError::from)?;
    let p = store::get_prefs(&mut conn, user_id).await?;
    Ok(Response::new(prefs_to_pb(&p)))
}

pub async fn update_communication_preferences(
    state: &AppState,
    req: Request<UpdateCommunicationPreferencesRequest>,
) -> Result<Response<CommunicationPreferences>, Status> {
    let caller = caller(&req)?;
    let user_id = user_of(&caller)?;
    let key = idempotency::key_of(&req)?;
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let paths = mask_paths(&mut v, r.update_mask.as_ref(), &PREFS_MASK_PATHS);
    let mut update = PrefsUpdate::default();
    match &r.preferences {
        None if !paths.is_empty() => v.add("preferences", "is required"),
        None => {}
        Some(p) => {
            for path in &paths {
                match path.as_str() {
                    "email_notifications" => {
                        update.email_notifications = Some(p.email_notifications)
                    }
                    "sms_notifications" => update.sms_notifications = Some(p.sms_notifications),
                    "push_notifications" => update.push_notifications = Some(p.push_notifications),
                    "language" => {
                        update.language =
                            val::check_language(&mut v, "preferences.language", &p.language)
                    }
                    "quiet_hours_start" => {
                        update.quiet_hours_start = val::check_hour(
                            &mut v,
                            "preferences.quiet_hours_start",
                            p.quiet_hours_start,
                        );
                    }
                    "quiet_hours_end" => {
                        update.quiet_hours_end = val::check_hour(
                            &mut v,
                            "preferences.quiet_hours_end",
                            p.quiet_hours_end,
                        );
                    }
                    _ => {}
                }
            }
        }
    }
    v.finish()?;
    let prefs = idempotency::run(
        &state.pool,
        &scope("UpdateCommunicationPreferences"),
        &caller.actor_key(),
        key.as_deref(),
        &r,
        move |tx| {
            Box::pin(async move {
                store::lock_user(tx, user_id)
                    .await?
                    .ok_or_else(|| not_found(user_id))?;
                let p = store::update_prefs(tx, user_id, &update).await?;
                Ok::<_, IdentityError>(prefs_to_pb(&p))
            })
        },
    )
    .await?;
    Ok(Response::new(prefs))
}

// ---- internal ----

pub async fn lookup_user(
    state: &AppState,
    req: Request<LookupUserRequest>,
) -> Result<Response<UserSummary>, Status> {
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let id = val::check_uuid(&mut v, "user_id", &r.user_id);
    v.finish()?;
    let id = checked(id)?;
    let mut conn = state.pool.acquire().await.map_err(IdentityError::from)?;
    let a = store::get_user(&mut conn, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Response::new(UserSummary {
        user_id: a.id.to_string(),
        roles: vec![role_to_pb(a.role) as i32],
        status: status_to_pb(a.status) as i32,
        display_name: a.display_name(),
        time_zone: a.time_zone,
    }))
}
