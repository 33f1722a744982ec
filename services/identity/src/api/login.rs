//! Login: password login with throttling and lockout, and device PINs (enrollment and unlock).

use carehub_platform::audit::Outcome;
use carehub_platform::auth;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::common::v1::ErrorReason;
use carehub_proto::identity::v1::*;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::credentials::{
    check_secret, check_token, check_uuid, hash_password, is_active, secs, PASSWORD_MAX,
};
use super::sessions::open_session;
use super::{kinds, security};
use crate::api::convert::timestamp;
use crate::config::IdentitySettings;
use crate::domain::throttle::{self, Counters, ThrottlePolicy};
use crate::domain::{tokens, validation};
use crate::error::{IdentityError, Result};
use crate::store::sessions::{self as store, Credentials};
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

/// What an attempt's reservation found: whether it may be checked, and what it set.
struct Reservation {
    /// The source key, the window its place was reserved in and the place in its streak.
    source: Option<(String, DateTime<Utc>, i32)>,
    /// The window the account's place was reserved in, and the place in its streak.
    account_window: DateTime<Utc>,
    account_place: i32,
    /// The lock this attempt set on an open account (its failure locks the account).
    locks: Option<DateTime<Utc>>,
}

enum Admission {
    /// A lock was in force: refused unchecked (counted and audited already).
    Refused(IdentityError),
    /// The password may be checked; its place in the counters is held.
    Check(Reservation, Option<Credentials>),
}

/// Reserves the attempt's place in the source's and the account's counters, in one short
/// transaction that also records what it decided: a refusal (a lock was in force; the attempt
/// counts as a failure) or the account's lockout (this attempt set the lock: one event per
/// lockout, whatever the concurrency). No connection is held after it returns.
async fn reserve(
    state: &AppState,
    caller: &auth::Caller,
    account_key: &str,
    source_key: Option<&str>,
    email_index: &[Vec<u8>],
) -> Result<Admission> {
    let policy = throttle_policy(&state.settings);
    let mut tx = state.pool.begin().await?;
    // Source before account, always: concurrent reservations lock rows in one order.
    let mut source = None;
    let mut source_locked = None;
    if let Some(key) = source_key {
        let row = store::reserve_attempt(&mut tx, key, throttle::SOURCE_WINDOW_SECS).await?;
        source_locked = row.locked_until.filter(|u| *u > row.now);
        if let Some(until) = policy.source_lock(&counters(&row)) {
            store::extend_lock(&mut tx, key, until).await?;
        }
        source = Some((key.to_owned(), row.window_start, row.consecutive_failures));
    }
    let row = store::reserve_attempt(&mut tx, account_key, throttle::ACCOUNT_WINDOW_SECS).await?;
    let now = row.now;
    let account_locked = row.locked_until.filter(|u| *u > now);
    let account_lock = policy.account_lock(&counters(&row), now);
    let mut locks = None;
    if let Some(until) = account_lock {
        let set = store::extend_lock(&mut tx, account_key, until).await?;
        // The account was open: this attempt's lock guards it while the password is checked.
        locks = account_locked.is_none().then_some(set);
    }
    let cred = store::credentials_by_email(&mut tx, email_index).await?;
    let attempted = cred.as_ref().map(|c| c.id);

    let refusal = if let Some(until) = source_locked {
        Some((
            ErrorReason::RateLimited,
            IdentityError::RateLimited {
                retry_after: throttle::retry_after(until, now),
            },
        ))
    } else if let Some(until) = account_locked {
        let until = account_lock.map_or(until, |l| l.max(until));
        Some((
            ErrorReason::AccountLocked,
            IdentityError::Locked {
                retry_after: throttle::retry_after(until, now),
            },
        ))
    } else {
        None
    };
    if let Some((reason, error)) = refusal {
        count_failure(&mut tx, account_key, source_key).await?;
        security::record(&mut tx, login_failure(caller, attempted, reason)).await?;
        tx.commit().await?;
        return Ok(Admission::Refused(error));
    }
    tx.commit().await?;
    Ok(Admission::Check(
        Reservation {
            source,
            account_window: row.window_start,
            account_place: row.consecutive_failures,
            locks,
        },
        cred,
    ))
}

fn counters(row: &store::ThrottleRow) -> Counters {
    Counters {
        consecutive_failures: row.consecutive_failures,
        window_start: row.window_start,
        window_failures: row.window_failures,
    }
}

/// Counts a failure in the totals of the source key and the account key (in the order
/// [`reserve`] locks them, so that the two cannot deadlock).
async fn count_failure(
    conn: &mut sqlx::PgConnection,
    account_key: &str,
    source_key: Option<&str>,
) -> Result<()> {
    if let Some(key) = source_key {
        store::count_failure(conn, key).await?;
    }
    store::count_failure(conn, account_key).await?;
    Ok(())
}

/// A failed login about `attempted` (or an unknown account).
fn login_failure(
    caller: &auth::Caller,
    attempted: Option<Uuid>,
    reason: ErrorReason,
) -> carehub_platform::audit::AuditEvent {
    match attempted {
        Some(id) => security::failed(
            security::account(caller, kinds::LOGIN, id),
            Outcome::MinorFailure,
            reason,
        ),
        None => security::unknown_account_login(caller, reason),
    }
}

/// Password login. Its own transactions: attempts are counted, and failures and lockouts
/// recorded, even when the login is refused.
pub async fn login(state: &AppState, call: &Call, r: LoginRequest) -> Result<LoginResponse> {
    let caller = &call.caller;
    let mut v = FieldViolations::new();
    let email = validation::check_email(&mut v, "email", &r.email);
    check_secret(&mut v, "password", &r.password, PASSWORD_MAX);
    v.finish()?;
    let email = email.unwrap_or_default();

    // A hashing slot first: in a storm the excess is refused here, before it costs a
    // database connection, a counter update or memory.
    let permit = state.hasher.admit()?;

    let account_key = crate::store::sealed::account_throttle_key(&state.crypto, &email)?;
    let email_index = crate::store::sealed::email_candidates(&state.crypto, &email)?;
    let source_key = match caller.client_ip.as_deref() {
        Some(ip) => Some(crate::store::sealed::source_throttle_key(
            &state.crypto,
            ip,
        )?),
        None => None,
    };

    let (reservation, cred) = match reserve(
        state,
        caller,
        &account_key,
        source_key.as_deref(),
        &email_index,
    )
    .await?
    {
        Admission::Refused(error) => return Err(error),
        Admission::Check(reservation, cred) => (reservation, cred),
    };

    // One argon2 verification whether or not the account exists (no enumeration by timing),
    // on a hashing thread, with no database connection held.
    let ok = permit
        .verify(r.password, cred.as_ref().map(|c| c.password_hash.clone()))
        .await;
    drop(permit);
    let attempted = cred.as_ref().map(|c| c.id);
    let cred = match cred {
        Some(c) if ok => c,
        _ => {
            let mut tx = state.pool.begin().await?;
            count_failure(&mut tx, &account_key, source_key.as_deref()).await?;
            let event = login_failure(caller, attempted, ErrorReason::InvalidCredentials);
            security::record(&mut tx, event).await?;
            if let (Some(id), Some(_)) = (attempted, reservation.locks) {
                record_lockout(&mut tx, caller, id).await?;
            }
            tx.commit().await?;
            // Even when its reservation set a lock: this guess was checked, the next is refused.
            return Err(IdentityError::InvalidCredentials);
        }
    };
    if !is_active(&cred) {
        // The right password: not a guess, so its place is given back.
        let mut tx = state.pool.begin().await?;
        release(&mut tx, caller, cred.id, &account_key, &reservation).await?;
        let event = security::account(caller, kinds::LOGIN, cred.id);
        let event = security::failed(event, Outcome::MinorFailure, ErrorReason::AccountDisabled);
        security::record(&mut tx, event).await?;
        tx.commit().await?;
        return Err(IdentityError::AccountDisabled);
    }

    let mut tx = state.pool.begin().await?;
    release(&mut tx, caller, cred.id, &account_key, &reservation).await?;
    let result = if cred.totp_secret.is_some() {
        let challenge = tokens::new_token();
        let expires_at = store::insert_mfa_challenge(
            &mut tx,
            &tokens::hash(&challenge),
            cred.id,
            secs(state.settings.mfa_challenge_ttl_secs),
        )
        .await?;
        let event = security::account(caller, kinds::LOGIN_MFA_CHALLENGE, cred.id);
        security::record(&mut tx, event).await?;
        login_response::Result::MfaChallenge(MfaChallenge {
            challenge_token: challenge,
            expire_time: Some(timestamp(expires_at)),
        })
    } else {
        login_response::Result::Tokens(
            open_session(state, &mut tx, &cred, &["pwd"], caller, None).await?,
        )
    };
    tx.commit().await?;
    // The session's opening or the MFA challenge was recorded in that transaction.
    call.mark_audited();
    Ok(LoginResponse {
        result: Some(result),
    })
}

/// The account locked: one event per lock.
async fn record_lockout(
    conn: &mut sqlx::PgConnection,
    caller: &auth::Caller,
    id: Uuid,
) -> Result<()> {
    let lockout = security::account(caller, kinds::LOGIN_LOCKOUT, id);
    let lockout = security::failed(lockout, Outcome::MajorFailure, ErrorReason::AccountLocked);
    security::record(conn, lockout).await
}

/// Gives a correct password's reserved places back (source first, like [`reserve`]). A lock
/// this attempt set is lifted, unless guesses refused meanwhile extended it: then the lock
/// stands and is recorded as the account's lockout. Rows are locked in the order every login
/// transaction uses — source, account, then the audit chain — so that none can deadlock.
async fn release(
    conn: &mut sqlx::PgConnection,
    caller: &auth::Caller,
    account: Uuid,
    account_key: &str,
    reservation: &Reservation,
) -> Result<()> {
    if let Some((key, window, place)) = &reservation.source {
        store::release_attempt(conn, key, *window, *place).await?;
    }
    store::release_attempt(
        conn,
        account_key,
        reservation.account_window,
        reservation.account_place,
    )
    .await?;
    if let Some(until) = reservation.locks {
        if !store::lift_lock(conn, account_key, until).await? {
            record_lockout(conn, caller, account).await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Device PINs

/// A failed PIN attempt, recorded; at or past the limit (`revoke`) the credential is revoked
/// too, and the one attempt that revoked it is recorded as the revocation.
async fn pin_failure(
    conn: &mut sqlx::PgConnection,
    caller: &auth::Caller,
    device: &store::DevicePinRow,
    revoke: bool,
) -> Result<()> {
    let kind = if revoke && store::revoke_device_pin(conn, device.id).await? {
        tracing::warn!(device_id = %device.id, user_id = %device.user_id, "device pin revoked after repeated failures");
        kinds::DEVICE_PIN_REVOKE
    } else {
        kinds::LOGIN
    };
    let event = security::about(caller, kind, device.user_id, "device", device.id);
    let event = security::failed(
        event,
        Outcome::MinorFailure,
        ErrorReason::InvalidCredentials,
    );
    security::record(conn, event).await
}

/// The answer carries the device secret: never stored for replay.
pub async fn enroll_device_pin(
    state: &AppState,
    call: &Call,
    r: EnrollDevicePinRequest,
) -> Result<EnrollDevicePinResponse> {
    let user = call.user()?;
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
    let event = security::about(
        &call.caller,
        kinds::DEVICE_PIN_ENROLL,
        user.user_id,
        "device",
        device_id,
    );
    let answer = call
        .mutate_secret(&state.pool, async |tx| {
            store::insert_device_pin(
                tx,
                device_id,
                user.user_id,
                &device_name,
                &tokens::hash(&secret),
                &pin_hash,
            )
            .await?;
            let answer = EnrollDevicePinResponse {
                device_id: device_id.to_string(),
                device_secret: secret.clone(),
            };
            Ok::<_, IdentityError>(Change::new(answer, event))
        })
        .await?;
    tracing::info!(user_id = %user.user_id, device_id = %device_id, "device pin enrolled");
    Ok(answer)
}

/// Device-PIN unlock. Its own transactions: the attempt's place is reserved, and a failure
/// recorded, even when the unlock is refused.
pub async fn unlock_with_pin(
    state: &AppState,
    call: &Call,
    r: UnlockWithPinRequest,
) -> Result<AuthTokens> {
    let caller = &call.caller;
    let mut v = FieldViolations::new();
    let device_id = check_uuid(&mut v, "device_id", &r.device_id);
    check_token(&mut v, "device_secret", &r.device_secret);
    check_pin(&mut v, "pin", &r.pin);
    v.finish()?;
    let Some(device_id) = device_id else {
        return Err(IdentityError::Internal("validated id missing".into()));
    };
    // A hashing slot first, like a password login.
    let permit = state.hasher.admit()?;
    let device = {
        let mut conn = state.pool.acquire().await?;
        store::live_device_pin(&mut conn, device_id).await?
    };
    let device = device.filter(|d| tokens::ct_eq(&d.secret_hash, &tokens::hash(&r.device_secret)));
    let Some(device) = device else {
        // A dummy check, so that an unknown device or a wrong secret takes the same time.
        permit.verify(r.pin, None).await;
        return Err(IdentityError::InvalidCredentials);
    };
    // The attempt reserves its place in the device's failure count before the PIN is checked:
    // a burst of guesses gets at most PIN_MAX_FAILURES checks, the rest revoke the credential.
    let place = {
        let mut tx = state.pool.begin().await?;
        let Some(place) = store::reserve_device_pin(&mut tx, device.id).await? else {
            // Revoked meanwhile.
            return Err(IdentityError::InvalidCredentials);
        };
        if place > PIN_MAX_FAILURES {
            pin_failure(&mut tx, caller, &device, true).await?;
            tx.commit().await?;
            return Err(IdentityError::InvalidCredentials);
        }
        tx.commit().await?;
        place
    };
    let ok = permit.verify(r.pin, Some(device.pin_hash.clone())).await;
    drop(permit);
    if !ok {
        let mut tx = state.pool.begin().await?;
        pin_failure(&mut tx, caller, &device, place >= PIN_MAX_FAILURES).await?;
        tx.commit().await?;
        return Err(IdentityError::InvalidCredentials);
    }
    let mut tx = state.pool.begin().await?;
    let Some(cred) = store::credentials_by_id(&mut tx, device.user_id, false).await? else {
        return Err(IdentityError::InvalidCredentials);
    };
    if !is_active(&cred) {
        return Err(IdentityError::AccountDisabled);
    }
    if !store::succeed_device_pin(&mut tx, device.id, place).await? {
        return Err(IdentityError::InvalidCredentials);
    }
    let tokens = open_session(state, &mut tx, &cred, &["pin"], caller, Some(device.id)).await?;
    tx.commit().await?;
    // The session's opening was recorded in that transaction.
    call.mark_audited();
    Ok(tokens)
}
