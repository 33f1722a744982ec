//! Login: password login with throttling and lockout, and device PINs (enrollment and unlock).

use carehub_platform::audit::{Action, Outcome};
use carehub_platform::auth;
use carehub_platform::errors::FieldViolations;
use carehub_proto::common::v1::ErrorReason;
use carehub_proto::identity::v1::*;
use chrono::{DateTime, Utc};
use tonic::{Request, Response};
use uuid::Uuid;

use super::credentials::{
    check_secret, check_token, check_uuid, hash_password, is_active, secs, signed_in, Reply,
    PASSWORD_MAX,
};
use super::security;
use super::sessions::open_session;
use crate::api::convert::timestamp;
use crate::config::IdentitySettings;
use crate::domain::throttle::{self, Counters, ThrottlePolicy};
use crate::domain::{tokens, validation};
use crate::error::{IdentityError, Result};
use crate::store::sessions as store;
use crate::AppState;

/// Wrong PINs in a row that revoke a device credential.
const PIN_MAX_FAILURES: i32 = 5;
const PIN_MIN: usize = 6;
const PIN_MAX: usize = 12;
const DEVICE_NAME_MAX: usize = 64;

fn throttle_policy(s: &IdentitySettings) -> ThrottlePolicy {
    ThrottlePolicy {
        free_attempts: s.lockout_free_attempts,
        max_delay_secs: s.lockout_max_delay_secs,
        max_failures_per_hour: s.max_failures_per_hour,
        max_failures_per_source_per_minute: s.max_failures_per_source_per_minute,
    }
}

fn check_pin(v: &mut FieldViolations, field: &str, value: &str) {
    let ok =
        (PIN_MIN..=PIN_MAX).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit());
    if value.is_empty() {
        v.add(field, "is required");
    } else if !ok {
        v.add(field, format!("must be {PIN_MIN} to {PIN_MAX} digits"));
    }
}

// ---------------------------------------------------------------------------------------------
// Login and throttling

/// What counting a failed attempt left behind: locks in force afterwards.
struct FailureOutcome {
    account_locked_until: Option<DateTime<Utc>>,
    source_locked_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

/// Counts a failed attempt on the account key and the source key. Each counter moves in one
/// atomic statement on its own (auto-committed), so that the count survives the failed login
/// and parallel attempts are all counted.
async fn count_failure(
    state: &AppState,
    account_key: &str,
    source_key: Option<&str>,
) -> Result<FailureOutcome> {
    let policy = throttle_policy(&state.settings);
    let mut conn = state.pool.acquire().await?;
    let row = store::record_failure(&mut conn, account_key, throttle::ACCOUNT_WINDOW_SECS).await?;
    let now = row.now;
    let counters = Counters {
        consecutive_failures: row.consecutive_failures,
        window_start: row.window_start,
        window_failures: row.window_failures,
    };
    let mut account_locked_until = row.locked_until.filter(|u| *u > now);
    if let Some(until) = policy.account_lock(&counters, now) {
        account_locked_until = Some(store::extend_lock(&mut conn, account_key, until).await?);
    }
    let mut source_locked_until = None;
    if let Some(key) = source_key {
        let row = store::record_failure(&mut conn, key, throttle::SOURCE_WINDOW_SECS).await?;
        source_locked_until = row.locked_until.filter(|u| *u > now);
        let counters = Counters {
            consecutive_failures: row.consecutive_failures,
            window_start: row.window_start,
            window_failures: row.window_failures,
        };
        if let Some(until) = policy.source_lock(&counters) {
            source_locked_until = Some(store::extend_lock(&mut conn, key, until).await?);
        }
    }
    Ok(FailureOutcome {
        account_locked_until,
        source_locked_until,
        now,
    })
}

pub async fn login(state: &AppState, req: Request<LoginRequest>) -> Reply<LoginResponse> {
    Ok(Response::new(login_inner(state, req).await?))
}

async fn login_inner(state: &AppState, req: Request<LoginRequest>) -> Result<LoginResponse> {
    let caller = auth::caller(&req)?;
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let email = validation::check_email(&mut v, "email", &r.email);
    check_secret(&mut v, "password", &r.password, PASSWORD_MAX);
    v.finish()?;
    let email = email.unwrap_or_default();

    let account_key = crate::store::sealed::account_throttle_key(&state.crypto, &email)?;
    let email_index = crate::store::sealed::email_candidates(&state.crypto, &email)?;
    let source_key = match caller.client_ip.as_deref() {
        Some(ip) => Some(crate::store::sealed::source_throttle_key(
            &state.crypto,
            ip,
        )?),
        None => None,
    };

    // Locks first: a locked account or a throttled source is refused without a password check,
    // and the refused attempt still counts.
    let (source_lock, account_lock, cred) = {
        let mut conn = state.pool.acquire().await?;
        let source_lock = match &source_key {
            Some(k) => store::active_lock(&mut conn, k).await?,
            None => None,
        };
        let account_lock = store::active_lock(&mut conn, &account_key).await?;
        let cred = if source_lock.is_none() && account_lock.is_none() {
            store::credentials_by_email(&mut conn, &email_index).await?
        } else {
            None
        };
        (source_lock, account_lock, cred)
    };
    if source_lock.is_some() || account_lock.is_some() {
        let after = count_failure(state, &account_key, source_key.as_deref()).await?;
        if let Some(until) = after.source_locked_until.filter(|_| source_lock.is_some()) {
            return Err(IdentityError::RateLimited {
                retry_after: throttle::retry_after(until, after.now),
            });
        }
        let until = after
            .account_locked_until
            .or(account_lock)
            .unwrap_or(after.now);
        let reason = if source_lock.is_some() {
            ErrorReason::RateLimited
        } else {
            ErrorReason::AccountLocked
        };
        security::record_alone(
            &state.pool,
            security::unknown_account_login(&caller, reason),
        )
        .await?;
        return Err(IdentityError::Locked {
            retry_after: throttle::retry_after(until, after.now),
        });
    }

    // One argon2 verification whether or not the account exists (no enumeration by timing).
    let ok = state
        .hasher
        .verify_async(r.password, cred.as_ref().map(|c| c.password_hash.clone()))
        .await;
    let attempted = cred.as_ref().map(|c| c.id);
    let cred = match cred {
        Some(c) if ok => c,
        _ => {
            let after = count_failure(state, &account_key, source_key.as_deref()).await?;
            let event = match attempted {
                Some(id) => security::failed(
                    security::account(&caller, "identity.login", Action::Execute, id),
                    Outcome::MinorFailure,
                    ErrorReason::InvalidCredentials,
                ),
                None => security::unknown_account_login(&caller, ErrorReason::InvalidCredentials),
            };
            security::record_alone(&state.pool, event).await?;
            // This failure locked an account that was open when the attempt began.
            if let (Some(id), Some(_)) = (attempted, after.account_locked_until) {
                let lockout =
                    security::account(&caller, "identity.login.lockout", Action::Execute, id);
                let lockout =
                    security::failed(lockout, Outcome::MajorFailure, ErrorReason::AccountLocked);
                security::record_alone(&state.pool, lockout).await?;
            }
            if after.source_locked_until.is_some() {
                return Err(IdentityError::RateLimited {
                    retry_after: throttle::retry_after(
                        after.source_locked_until.unwrap_or(after.now),
                        after.now,
                    ),
                });
            }
            return Err(IdentityError::InvalidCredentials);
        }
    };
    if !is_active(&cred) {
        let event = security::account(&caller, "identity.login", Action::Execute, cred.id);
        let event = security::failed(event, Outcome::MinorFailure, ErrorReason::AccountDisabled);
        security::record_alone(&state.pool, event).await?;
        return Err(IdentityError::AccountDisabled);
    }

    let mut tx = state.pool.begin().await?;
    store::reset_consecutive(&mut tx, &account_key).await?;
    let result = if cred.totp_secret.is_some() {
        let challenge = tokens::new_token();
        let expires_at = store::insert_mfa_challenge(
            &mut tx,
            &tokens::hash(&challenge),
            cred.id,
            secs(state.settings.mfa_challenge_ttl_secs),
        )
        .await?;
        let event = security::account(
            &caller,
            "identity.login.mfa_challenge",
            Action::Execute,
            cred.id,
        );
        security::record(&mut tx, event).await?;
        login_response::Result::MfaChallenge(MfaChallenge {
            challenge_token: challenge,
            expire_time: Some(timestamp(expires_at)),
        })
    } else {
        login_response::Result::Tokens(
            open_session(state, &mut tx, &cred, &["pwd"], &caller, None).await?,
        )
    };
    tx.commit().await?;
    Ok(LoginResponse {
        result: Some(result),
    })
}

// ---------------------------------------------------------------------------------------------
// Device PINs

pub async fn enroll_device_pin(
    state: &AppState,
    req: Request<EnrollDevicePinRequest>,
) -> Reply<EnrollDevicePinResponse> {
    Ok(Response::new(enroll_pin_inner(state, req).await?))
}

async fn enroll_pin_inner(
    state: &AppState,
    req: Request<EnrollDevicePinRequest>,
) -> Result<EnrollDevicePinResponse> {
    let caller = auth::caller(&req)?;
    let user = signed_in(&caller)?;
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    check_pin(&mut v, "pin", &r.pin);
    v.require_len(&r.device_name, "device_name", 1, DEVICE_NAME_MAX);
    if r.device_name.chars().any(char::is_control) {
        v.add("device_name", "must not contain control characters");
    }
    v.finish()?;
    let pin_hash = hash_password(&state.hasher, r.pin).await?;
    let device_id = Uuid::now_v7();
    let secret = tokens::new_token();
    // The user's name for the device ("Jane's iPhone") is personal: sealed under their data key.
    let device_name = crate::store::sealed::seal(
        &state.crypto,
        "device_pins",
        "device_name",
        device_id,
        user.user_id,
        r.device_name.trim(),
    )
    .await?;
    let mut tx = state.pool.begin().await?;
    store::insert_device_pin(
        &mut tx,
        device_id,
        user.user_id,
        &device_name,
        &tokens::hash(&secret),
        &pin_hash,
    )
    .await?;
    let event = security::about(
        &caller,
        "identity.device_pin.enroll",
        Action::Create,
        user.user_id,
        "device",
        device_id,
    );
    security::record(&mut tx, event).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.user_id, device_id = %device_id, "device pin enrolled");
    Ok(EnrollDevicePinResponse {
        device_id: device_id.to_string(),
        device_secret: secret,
    })
}

pub async fn unlock_with_pin(
    state: &AppState,
    req: Request<UnlockWithPinRequest>,
) -> Reply<AuthTokens> {
    Ok(Response::new(unlock_inner(state, req).await?))
}

async fn unlock_inner(state: &AppState, req: Request<UnlockWithPinRequest>) -> Result<AuthTokens> {
    let caller = auth::caller(&req)?;
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let device_id = check_uuid(&mut v, "device_id", &r.device_id);
    check_token(&mut v, "device_secret", &r.device_secret);
    check_pin(&mut v, "pin", &r.pin);
    v.finish()?;
    let Some(device_id) = device_id else {
        return Err(IdentityError::Internal("validated id missing".into()));
    };
    let device = {
        let mut conn = state.pool.acquire().await?;
        store::live_device_pin(&mut conn, device_id).await?
    };
    let device = device.filter(|d| tokens::ct_eq(&d.secret_hash, &tokens::hash(&r.device_secret)));
    // The PIN is checked (or a dummy hash, for equal timing) whatever the device lookup found.
    let ok = state
        .hasher
        .verify_async(r.pin, device.as_ref().map(|d| d.pin_hash.clone()))
        .await;
    let Some(device) = device else {
        return Err(IdentityError::InvalidCredentials);
    };
    if !ok {
        let mut conn = state.pool.acquire().await?;
        let failures = store::fail_device_pin(&mut conn, device.id, PIN_MAX_FAILURES).await?;
        let kind = if failures.is_some_and(|n| n >= PIN_MAX_FAILURES) {
            tracing::warn!(device_id = %device.id, user_id = %device.user_id, "device pin revoked after repeated failures");
            "identity.device_pin.revoke"
        } else {
            "identity.login"
        };
        let event = security::about(
            &caller,
            kind,
            Action::Execute,
            device.user_id,
            "device",
            device.id,
        );
        let event = security::failed(
            event,
            Outcome::MinorFailure,
            ErrorReason::InvalidCredentials,
        );
        security::record_alone(&state.pool, event).await?;
        return Err(IdentityError::InvalidCredentials);
    }
    let mut tx = state.pool.begin().await?;
    let Some(cred) = store::credentials_by_id(&mut tx, device.user_id, false).await? else {
        return Err(IdentityError::InvalidCredentials);
    };
    if !is_active(&cred) {
        return Err(IdentityError::AccountDisabled);
    }
    if !store::succeed_device_pin(&mut tx, device.id).await? {
        return Err(IdentityError::InvalidCredentials);
    }
    let tokens = open_session(state, &mut tx, &cred, &["pin"], &caller, Some(device.id)).await?;
    tx.commit().await?;
    Ok(tokens)
}
