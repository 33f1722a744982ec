//! Credentials, login and sessions: password login with throttling, MFA challenges, device PINs,
//! token refresh, logout, session listing and revocation, password reset and change, TOTP
//! enrollment, and the signing-key and revocation feeds.
//!
//! RPCs whose answer carries a secret (tokens, TOTP secrets, recovery codes, device secrets) run
//! in a plain transaction: an idempotency record would keep that secret in clear. The others go
//! through `idempotency::run`.

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use carehub_platform::auth::{self, Caller, Role};
use carehub_platform::errors::FieldViolations;
use carehub_platform::idempotency;
use carehub_proto::common::v1::{ErrorReason, PageRequest, PageResponse};
use carehub_proto::identity::v1 as pb;
use carehub_proto::identity::v1::*;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::PgConnection;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::scope;
use crate::api::convert::timestamp;
use crate::config::IdentitySettings;
use crate::domain::password::{self, PasswordHasher};
use crate::domain::throttle::{self, Counters, ThrottlePolicy};
use crate::domain::{tokens, totp, validation};
use crate::error::{IdentityError, Result};
use crate::notify::{Channel, Notification, NotificationKind};
use crate::store::revocation;
use crate::store::sessions::{self as store, Credentials, NewSession, SessionRow, Spend};
use crate::token::{self, TokenSubject};
use crate::AppState;

type Reply<T> = std::result::Result<Response<T>, Status>;

/// Wrong codes an MFA challenge survives.
const MFA_MAX_ATTEMPTS: i32 = 5;
/// Wrong PINs in a row that revoke a device credential.
const PIN_MAX_FAILURES: i32 = 5;
const PASSWORD_MAX: usize = password::MAX_LEN;
const PIN_MIN: usize = 6;
const PIN_MAX: usize = 12;
const DEVICE_NAME_MAX: usize = 64;
const PAGE_DEFAULT: i64 = 50;
const PAGE_MAX: i64 = 500;
/// Most revocations one ListRevocations answer carries.
const REVOCATIONS_MAX: i64 = 10_000;
/// `as_of` lags the database clock by this much, so that a revocation whose transaction was
/// still committing when the feed was read is not skipped by a client resuming from `as_of`.
const REVOCATION_FEED_LAG_SECS: i64 = 5;

fn role_of(cred: &Credentials) -> Result<Role> {
    Role::parse(&cred.role)
        .ok_or_else(|| IdentityError::Internal(format!("user {} has an unknown role", cred.id)))
}

fn is_active(cred: &Credentials) -> bool {
    cred.status == "active"
}

fn secs(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX / 1000)
}

/// Whether a session opened now must change its password first: pending one-time password, or
/// the role's maximum password age has passed.
pub fn password_change_due(
    settings: &IdentitySettings,
    cred: &Credentials,
    role: Role,
    now: DateTime<Utc>,
) -> bool {
    cred.password_change_required
        || settings
            .password_max_age_days
            .get(role.as_str())
            .is_some_and(|days| {
                cred.password_changed_at + chrono::Duration::days(i64::from(*days)) < now
            })
}

fn throttle_policy(s: &IdentitySettings) -> ThrottlePolicy {
    ThrottlePolicy {
        free_attempts: s.lockout_free_attempts,
        max_delay_secs: s.lockout_max_delay_secs,
        max_failures_per_hour: s.max_failures_per_hour,
        max_failures_per_source_per_minute: s.max_failures_per_source_per_minute,
    }
}

// ---------------------------------------------------------------------------------------------
// Validation helpers

fn check_secret(v: &mut FieldViolations, field: &str, value: &str, max: usize) {
    v.require_len(value, field, 1, max);
}

fn check_token(v: &mut FieldViolations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() > tokens::MAX_TOKEN_LEN {
        v.add(
            field,
            format!("must be at most {} characters", tokens::MAX_TOKEN_LEN),
        );
    } else if !tokens::is_token_format(value) {
        v.add(field, "is malformed");
    }
}

fn check_new_password(v: &mut FieldViolations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if let Some(why) = password::policy_violation(value) {
        v.add_with_reason(field, why, ErrorReason::PasswordPolicy);
    }
}

fn check_totp_code(v: &mut FieldViolations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if !totp::is_code_format(value) {
        v.add(field, "must be exactly 6 digits");
    }
}

fn check_recovery_code(v: &mut FieldViolations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() > 64 || tokens::normalize_recovery_code(value).is_none() {
        v.add(field, "is not a recovery code (xxxxx-xxxxx)");
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

fn check_uuid(v: &mut FieldViolations, field: &str, value: &str) -> Option<Uuid> {
    if value.is_empty() {
        v.add(field, "is required");
        return None;
    }
    match Uuid::parse_str(value) {
        Ok(id) if value.len() <= 36 => Some(id),
        _ => {
            v.add(field, "must be a UUID");
            None
        }
    }
}

fn user_of(caller: &Caller) -> Result<auth::UserCaller> {
    Ok(caller.user()?.clone())
}

// ---------------------------------------------------------------------------------------------
// Sessions and tokens

/// Opens a session for `cred` and issues its first tokens (inside the caller's transaction).
async fn open_session(
    state: &AppState,
    conn: &mut PgConnection,
    cred: &Credentials,
    amr: &[&str],
    caller: &Caller,
    device_id: Option<Uuid>,
) -> Result<AuthTokens> {
    let role = role_of(cred)?;
    let pcr = password_change_due(&state.settings, cred, role, Utc::now());
    let session = store::insert_session(
        conn,
        &NewSession {
            id: Uuid::now_v7(),
            user_id: cred.id,
            ip_address: caller.client_ip.as_deref(),
            user_agent: caller.user_agent.as_deref(),
            auth_methods: amr,
            device_id,
            password_change_required: pcr,
            lifetime_secs: secs(state.settings.session_lifetime_secs),
        },
    )
    .await?;
    tracing::info!(user_id = %cred.id, session_id = %session.id, "session opened");
    issue_tokens(state, conn, &session, role).await
}

/// A fresh refresh token and access token for `session`.
async fn issue_tokens(
    state: &AppState,
    conn: &mut PgConnection,
    session: &SessionRow,
    role: Role,
) -> Result<AuthTokens> {
    let refresh = tokens::new_token();
    store::insert_refresh_token(conn, &tokens::hash(&refresh), session.id).await?;
    let access = token::issue_access_token(
        state,
        &TokenSubject {
            user_id: session.user_id,
            session_id: session.id,
            role,
            amr: &session.auth_methods,
            password_change_required: session.password_change_required,
            session_expires_at: session.expires_at,
        },
    )?;
    Ok(AuthTokens {
        access_token: access.token,
        access_token_expire_time: Some(timestamp(access.expires_at)),
        refresh_token: refresh,
        session_id: session.id.to_string(),
        user_id: session.user_id.to_string(),
        password_change_required: session.password_change_required,
    })
}

fn auth_method(m: &str) -> AuthMethod {
    match m {
        "pwd" => AuthMethod::Password,
        "otp" => AuthMethod::Totp,
        "rc" => AuthMethod::RecoveryCode,
        "pin" => AuthMethod::Pin,
        _ => AuthMethod::Unspecified,
    }
}

fn session_to_pb(s: &SessionRow, active: bool, current: Uuid) -> pb::Session {
    pb::Session {
        session_id: s.id.to_string(),
        create_time: Some(timestamp(s.created_at)),
        last_seen_time: Some(timestamp(s.last_seen_at)),
        revoke_time: s.revoked_at.map(timestamp),
        ip_address: s.ip_address.clone().unwrap_or_default(),
        user_agent: s.user_agent.clone().unwrap_or_default(),
        auth_methods: s
            .auth_methods
            .iter()
            .map(|m| auth_method(m) as i32)
            .collect(),
        current: s.id == current,
        active,
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

    let account_key = tokens::account_throttle_key(&email);
    let source_key = caller.client_ip.as_deref().map(tokens::source_throttle_key);

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
            store::credentials_by_email(&mut conn, &email).await?
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
        return Err(IdentityError::Locked {
            retry_after: throttle::retry_after(until, after.now),
        });
    }

    // One argon2 verification whether or not the account exists (no enumeration by timing).
    let ok = state
        .hasher
        .verify_async(r.password, cred.as_ref().map(|c| c.password_hash.clone()))
        .await;
    let cred = match cred {
        Some(c) if ok => c,
        _ => {
            let after = count_failure(state, &account_key, source_key.as_deref()).await?;
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
            caller.client_ip.as_deref(),
            caller.user_agent.as_deref(),
            secs(state.settings.mfa_challenge_ttl_secs),
        )
        .await?;
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

pub async fn complete_mfa_challenge(
    state: &AppState,
    req: Request<CompleteMfaChallengeRequest>,
) -> Reply<AuthTokens> {
    Ok(Response::new(complete_mfa_inner(state, req).await?))
}

async fn complete_mfa_inner(
    state: &AppState,
    req: Request<CompleteMfaChallengeRequest>,
) -> Result<AuthTokens> {
    use complete_mfa_challenge_request::Code;
    let caller = auth::caller(&req)?;
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    check_token(&mut v, "challenge_token", &r.challenge_token);
    match &r.code {
        None => v.add("totp_code", "a totp_code or a recovery_code is required"),
        Some(Code::TotpCode(c)) => check_totp_code(&mut v, "totp_code", c),
        Some(Code::RecoveryCode(c)) => check_recovery_code(&mut v, "recovery_code", c),
    }
    v.finish()?;
    let Some(code) = r.code else {
        return Err(IdentityError::Internal("validated code missing".into()));
    };
    let challenge_hash = tokens::hash(&r.challenge_token);
    let invalid = IdentityError::CodeInvalid {
        field: "challenge_token",
    };

    // The attempt counts (committed on its own) before the code is checked.
    let (challenge, cred) = {
        let mut conn = state.pool.acquire().await?;
        let Some(ch) =
            store::attempt_mfa_challenge(&mut conn, &challenge_hash, MFA_MAX_ATTEMPTS).await?
        else {
            return Err(invalid);
        };
        let cred = store::credentials_by_id(&mut conn, ch.user_id, false).await?;
        (ch, cred)
    };
    let Some(cred) = cred else {
        return Err(invalid);
    };
    if !is_active(&cred) {
        return Err(IdentityError::AccountDisabled);
    }
    let Some(secret) = cred.totp_secret.clone() else {
        return Err(invalid);
    };

    let mut tx = state.pool.begin().await?;
    let amr: [&str; 2] = match &code {
        Code::TotpCode(c) => {
            let step = totp::verify(&secret, c, Utc::now().timestamp(), cred.totp_last_step)
                .ok_or(IdentityError::MfaCodeWrong)?;
            if !store::advance_totp_step(&mut tx, cred.id, step).await? {
                return Err(IdentityError::MfaCodeWrong);
            }
            ["pwd", "otp"]
        }
        Code::RecoveryCode(c) => {
            let hash = tokens::hash_recovery_code(c).ok_or(IdentityError::MfaCodeWrong)?;
            if !store::use_recovery_code(&mut tx, cred.id, &hash).await? {
                return Err(IdentityError::MfaCodeWrong);
            }
            ["pwd", "rc"]
        }
    };
    if !store::consume_mfa_challenge(&mut tx, &challenge_hash).await? {
        return Err(invalid);
    }
    let tokens = open_session(state, &mut tx, &cred, &amr, &caller, None).await?;
    tx.commit().await?;
    tracing::info!(user_id = %challenge.user_id, attempts = challenge.attempts, "mfa challenge completed");
    Ok(tokens)
}

pub async fn refresh_session(
    state: &AppState,
    req: Request<RefreshSessionRequest>,
) -> Reply<AuthTokens> {
    Ok(Response::new(refresh_inner(state, req).await?))
}

async fn refresh_inner(
    state: &AppState,
    req: Request<RefreshSessionRequest>,
) -> Result<AuthTokens> {
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    check_token(&mut v, "refresh_token", &r.refresh_token);
    v.finish()?;

    let mut tx = state.pool.begin().await?;
    let session_id =
        match store::spend_refresh_token(&mut tx, &tokens::hash(&r.refresh_token)).await? {
            Spend::Unknown => return Err(IdentityError::InvalidToken),
            Spend::AlreadySpent(session_id) => {
                // A spent token seen again: someone holds a copy. End the whole session.
                revocation::revoke_session(&mut tx, session_id, "refresh_token_reused").await?;
                tx.commit().await?;
                tracing::warn!(session_id = %session_id, "refresh token reused; session revoked");
                return Err(IdentityError::RefreshTokenReused);
            }
            Spend::Spent(session_id) => session_id,
        };
    let Some(session) = store::session_for_update(&mut tx, session_id).await? else {
        return Err(IdentityError::InvalidToken);
    };
    let Some(cred) = store::credentials_by_id(&mut tx, session.user_id, false).await? else {
        return Err(IdentityError::InvalidToken);
    };
    if !is_active(&cred) {
        revocation::revoke_session(&mut tx, session.id, "account_disabled").await?;
        tx.commit().await?;
        return Err(IdentityError::AccountDisabled);
    }
    if session.revoked_at.is_some() {
        return Err(IdentityError::SessionExpired);
    }
    let role = role_of(&cred)?;
    let now = store::db_now(&mut tx).await?;
    let idle = chrono::Duration::seconds(secs(state.settings.idle_timeout_for(role)));
    let ended = if session.expires_at <= now {
        Some("expired")
    } else if session.last_seen_at + idle <= now {
        Some("idle_timeout")
    } else if cred
        .sessions_revoked_before
        .is_some_and(|b| session.created_at <= b)
    {
        Some("revoked")
    } else {
        None
    };
    if let Some(reason) = ended {
        revocation::revoke_session(&mut tx, session.id, reason).await?;
        tx.commit().await?;
        return Err(IdentityError::SessionExpired);
    }
    store::touch_session(&mut tx, session.id).await?;
    let tokens = issue_tokens(state, &mut tx, &session, role).await?;
    tx.commit().await?;
    Ok(tokens)
}

pub async fn logout(state: &AppState, req: Request<LogoutRequest>) -> Reply<()> {
    let run = async {
        let caller = auth::caller(&req)?;
        let user = user_of(&caller)?;
        let key = idempotency::key_of(&req)?;
        let session_id = user.session_id;
        idempotency::run(
            &state.pool,
            &scope("Logout"),
            &caller.actor_key(),
            key.as_deref(),
            req.get_ref(),
            move |conn: &mut PgConnection| -> BoxFuture<'_, Result<()>> {
                Box::pin(async move {
                    revocation::revoke_session(conn, session_id, "logout").await?;
                    Ok(())
                })
            },
        )
        .await
    };
    run.await?;
    Ok(Response::new(()))
}

// ---------------------------------------------------------------------------------------------
// Listing and revoking sessions

fn encode_cursor(c: &store::SessionCursor) -> String {
    let (active, at, id) = c;
    URL_SAFE_NO_PAD.encode(format!(
        "v1|{}|{}|{id}",
        u8::from(*active),
        at.timestamp_micros()
    ))
}

fn decode_cursor(token: &str) -> Option<store::SessionCursor> {
    if token.len() > tokens::MAX_TOKEN_LEN {
        return None;
    }
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    let mut parts = raw.split('|');
    let (Some("v1"), Some(a), Some(t), Some(id), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let active = match a {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    let at = DateTime::<Utc>::from_timestamp_micros(t.parse().ok()?)?;
    Some((active, at, Uuid::parse_str(id).ok()?))
}

/// Page size and cursor of a PageRequest, or violations under `page.*`.
fn check_page(
    v: &mut FieldViolations,
    page: Option<&PageRequest>,
) -> (i64, Option<store::SessionCursor>) {
    let Some(p) = page else {
        return (PAGE_DEFAULT, None);
    };
    let size = match i64::from(p.page_size) {
        n if n < 0 => {
            v.add("page.page_size", "must not be negative");
            PAGE_DEFAULT
        }
        0 => PAGE_DEFAULT,
        n => n.min(PAGE_MAX),
    };
    let cursor = if p.page_token.is_empty() {
        None
    } else {
        let c = decode_cursor(&p.page_token);
        if c.is_none() {
            v.add("page.page_token", "is not a token from a previous response");
        }
        c
    };
    (size, cursor)
}

pub async fn list_sessions(
    state: &AppState,
    req: Request<ListSessionsRequest>,
) -> Reply<ListSessionsResponse> {
    Ok(Response::new(list_sessions_inner(state, req).await?))
}

async fn list_sessions_inner(
    state: &AppState,
    req: Request<ListSessionsRequest>,
) -> Result<ListSessionsResponse> {
    let caller = auth::caller(&req)?;
    let user = user_of(&caller)?;
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let (size, cursor) = check_page(&mut v, r.page.as_ref());
    v.finish()?;
    let role = user.roles.first().copied().unwrap_or(Role::Patient);
    let idle = secs(state.settings.idle_timeout_for(role));
    let mut conn = state.pool.acquire().await?;
    let mut rows = store::list_sessions(&mut conn, user.user_id, idle, cursor, size + 1).await?;
    let more = rows.len() > usize::try_from(size).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(size).unwrap_or(usize::MAX));
    let next_page_token = match rows.last() {
        Some(last) if more => {
            encode_cursor(&(last.active, last.session.created_at, last.session.id))
        }
        _ => String::new(),
    };
    Ok(ListSessionsResponse {
        sessions: rows
            .iter()
            .map(|r| session_to_pb(&r.session, r.active, user.session_id))
            .collect(),
        page: Some(PageResponse { next_page_token }),
    })
}

pub async fn revoke_session(
    state: &AppState,
    req: Request<RevokeSessionRequest>,
) -> Reply<pb::Session> {
    Ok(Response::new(revoke_session_inner(state, req).await?))
}

async fn revoke_session_inner(
    state: &AppState,
    req: Request<RevokeSessionRequest>,
) -> Result<pb::Session> {
    let caller = auth::caller(&req)?;
    let user = user_of(&caller)?;
    let key = idempotency::key_of(&req)?;
    let mut v = FieldViolations::new();
    let id = check_uuid(&mut v, "session_id", &req.get_ref().session_id);
    v.finish()?;
    let Some(id) = id else {
        return Err(IdentityError::Internal("validated id missing".into()));
    };
    let (user_id, current) = (user.user_id, user.session_id);
    idempotency::run(
        &state.pool,
        &scope("RevokeSession"),
        &caller.actor_key(),
        key.as_deref(),
        req.get_ref(),
        move |conn: &mut PgConnection| -> BoxFuture<'_, Result<pb::Session>> {
            Box::pin(async move {
                let not_found = || IdentityError::NotFound {
                    what: "session",
                    id: id.to_string(),
                };
                if store::session_of_user(conn, id, user_id).await?.is_none() {
                    return Err(not_found());
                }
                revocation::revoke_session(conn, id, "revoked_by_user").await?;
                let s = store::session_of_user(conn, id, user_id)
                    .await?
                    .ok_or_else(not_found)?;
                Ok(session_to_pb(&s, false, current))
            })
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Passwords

pub async fn request_password_reset(
    state: &AppState,
    req: Request<RequestPasswordResetRequest>,
) -> Reply<()> {
    request_reset_inner(state, req).await?;
    Ok(Response::new(()))
}

async fn request_reset_inner(
    state: &AppState,
    req: Request<RequestPasswordResetRequest>,
) -> Result<()> {
    let key = idempotency::key_of(&req)?;
    let mut v = FieldViolations::new();
    let email = validation::check_email(&mut v, "email", &req.get_ref().email);
    v.finish()?;
    let email = email.unwrap_or_default();
    let ttl = secs(state.settings.password_reset_ttl_secs);
    // The token leaves the transaction only to be sent after the commit; a replayed request
    // sends nothing again.
    let outbox: Arc<Mutex<Option<Notification>>> = Arc::default();
    let slot = outbox.clone();
    idempotency::run(
        &state.pool,
        &scope("RequestPasswordReset"),
        "anon",
        key.as_deref(),
        req.get_ref(),
        move |conn: &mut PgConnection| -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                let Some(cred) = store::credentials_by_email(conn, &email).await? else {
                    return Ok(());
                };
                if !is_active(&cred) {
                    return Ok(());
                }
                let token = tokens::new_token();
                store::insert_password_reset(conn, &tokens::hash(&token), cred.id, ttl).await?;
                if let Ok(mut s) = slot.lock() {
                    *s = Some(Notification {
                        user_id: cred.id,
                        channel: Channel::Email,
                        destination: cred.email.clone(),
                        kind: NotificationKind::PasswordReset { token },
                    });
                }
                Ok(())
            })
        },
    )
    .await?;
    let pending = outbox.lock().ok().and_then(|mut s| s.take());
    if let Some(n) = pending {
        let user_id = n.user_id;
        if let Err(e) = state.notifier.send(n).await {
            tracing::warn!(user_id = %user_id, error = %e, "password-reset notification not sent");
        }
    }
    Ok(())
}

async fn notify_password_changed(state: &AppState, user_id: Uuid) {
    let email = match state.pool.acquire().await {
        Ok(mut conn) => store::credentials_by_id(&mut conn, user_id, false)
            .await
            .ok()
            .flatten()
            .map(|c| c.email),
        Err(_) => None,
    };
    if let Some(destination) = email {
        let n = Notification {
            user_id,
            channel: Channel::Email,
            destination,
            kind: NotificationKind::PasswordChanged,
        };
        if let Err(e) = state.notifier.send(n).await {
            tracing::warn!(user_id = %user_id, error = %e, "password-changed notification not sent");
        }
    }
}

pub async fn reset_password(state: &AppState, req: Request<ResetPasswordRequest>) -> Reply<()> {
    reset_password_inner(state, req).await?;
    Ok(Response::new(()))
}

async fn reset_password_inner(state: &AppState, req: Request<ResetPasswordRequest>) -> Result<()> {
    let key = idempotency::key_of(&req)?;
    let r = req.get_ref();
    let mut v = FieldViolations::new();
    check_token(&mut v, "reset_token", &r.reset_token);
    check_new_password(&mut v, "new_password", &r.new_password);
    v.finish()?;
    let token_hash = tokens::hash(&r.reset_token);
    let new_password = r.new_password.clone();
    let hasher = state.hasher.clone();
    let changed: Arc<Mutex<Option<Uuid>>> = Arc::default();
    let slot = changed.clone();
    idempotency::run(
        &state.pool,
        &scope("ResetPassword"),
        "anon",
        key.as_deref(),
        req.get_ref(),
        move |conn: &mut PgConnection| -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                let user_id = store::consume_password_reset(conn, &token_hash)
                    .await?
                    .ok_or(IdentityError::CodeInvalid {
                        field: "reset_token",
                    })?;
                let phc = hash_password(&hasher, new_password).await?;
                store::set_password(conn, user_id, &phc).await?;
                revocation::revoke_user_sessions(conn, user_id, "password_reset", None).await?;
                if let Ok(mut s) = slot.lock() {
                    *s = Some(user_id);
                }
                Ok(())
            })
        },
    )
    .await?;
    let user = changed.lock().ok().and_then(|mut s| s.take());
    if let Some(user_id) = user {
        tracing::info!(user_id = %user_id, "password reset; every session revoked");
        notify_password_changed(state, user_id).await;
    }
    Ok(())
}

async fn hash_password(hasher: &PasswordHasher, secret: String) -> Result<String> {
    hasher
        .hash_async(secret)
        .await
        .map_err(|e| IdentityError::Internal(e.to_string()))
}

pub async fn change_password(state: &AppState, req: Request<ChangePasswordRequest>) -> Reply<()> {
    change_password_inner(state, req).await?;
    Ok(Response::new(()))
}

async fn change_password_inner(
    state: &AppState,
    req: Request<ChangePasswordRequest>,
) -> Result<()> {
    let caller = auth::caller(&req)?;
    let user = user_of(&caller)?;
    let key = idempotency::key_of(&req)?;
    let r = req.get_ref();
    let mut v = FieldViolations::new();
    check_secret(
        &mut v,
        "current_password",
        &r.current_password,
        PASSWORD_MAX,
    );
    check_new_password(&mut v, "new_password", &r.new_password);
    if !r.new_password.is_empty() && r.new_password == r.current_password {
        v.add("new_password", "must differ from current_password");
    }
    v.finish()?;
    let (current, new) = (r.current_password.clone(), r.new_password.clone());
    let hasher = state.hasher.clone();
    let (user_id, session_id) = (user.user_id, user.session_id);
    idempotency::run(
        &state.pool,
        &scope("ChangePassword"),
        &caller.actor_key(),
        key.as_deref(),
        req.get_ref(),
        move |conn: &mut PgConnection| -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                let cred = store::credentials_by_id(conn, user_id, true)
                    .await?
                    .ok_or(IdentityError::SessionExpired)?;
                if !hasher
                    .verify_async(current, Some(cred.password_hash.clone()))
                    .await
                {
                    return Err(IdentityError::InvalidCredentials);
                }
                let phc = hash_password(&hasher, new).await?;
                store::set_password(conn, user_id, &phc).await?;
                store::clear_session_password_change(conn, session_id).await?;
                revocation::revoke_user_sessions(
                    conn,
                    user_id,
                    "password_changed",
                    Some(session_id),
                )
                .await?;
                Ok(())
            })
        },
    )
    .await?;
    tracing::info!(user_id = %user_id, "password changed; other sessions revoked");
    notify_password_changed(state, user_id).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TOTP

pub async fn enroll_totp(
    state: &AppState,
    req: Request<EnrollTotpRequest>,
) -> Reply<EnrollTotpResponse> {
    Ok(Response::new(enroll_totp_inner(state, req).await?))
}

fn conflict(kind: &'static str, user_id: Uuid, description: &str) -> IdentityError {
    IdentityError::Conflict {
        kind,
        subject: user_id.to_string(),
        description: description.to_owned(),
    }
}

async fn enroll_totp_inner(
    state: &AppState,
    req: Request<EnrollTotpRequest>,
) -> Result<EnrollTotpResponse> {
    let caller = auth::caller(&req)?;
    let user = user_of(&caller)?;
    let mut tx = state.pool.begin().await?;
    let cred = store::credentials_by_id(&mut tx, user.user_id, true)
        .await?
        .ok_or(IdentityError::SessionExpired)?;
    if cred.totp_secret.is_some() {
        return Err(conflict(
            "MFA_ENABLED",
            user.user_id,
            "TOTP is already enabled; disable it first",
        ));
    }
    let secret = totp::generate_secret();
    store::set_pending_totp(&mut tx, user.user_id, &secret).await?;
    tx.commit().await?;
    Ok(EnrollTotpResponse {
        secret: totp::encode_secret(&secret),
        otpauth_uri: totp::otpauth_uri(&secret, &user.user_id.to_string()),
    })
}

pub async fn confirm_totp(
    state: &AppState,
    req: Request<ConfirmTotpRequest>,
) -> Reply<ConfirmTotpResponse> {
    Ok(Response::new(confirm_totp_inner(state, req).await?))
}

async fn confirm_totp_inner(
    state: &AppState,
    req: Request<ConfirmTotpRequest>,
) -> Result<ConfirmTotpResponse> {
    let caller = auth::caller(&req)?;
    let user = user_of(&caller)?;
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    check_totp_code(&mut v, "totp_code", &r.totp_code);
    v.finish()?;
    let mut tx = state.pool.begin().await?;
    let cred = store::credentials_by_id(&mut tx, user.user_id, true)
        .await?
        .ok_or(IdentityError::SessionExpired)?;
    let Some(pending) = cred.totp_pending_secret else {
        return Err(conflict(
            "TOTP_NOT_ENROLLED",
            user.user_id,
            "call EnrollTotp first",
        ));
    };
    let step = totp::verify(&pending, &r.totp_code, Utc::now().timestamp(), None)
        .ok_or(IdentityError::CodeInvalid { field: "totp_code" })?;
    if !store::activate_totp(&mut tx, user.user_id, step).await? {
        return Err(conflict(
            "TOTP_NOT_ENROLLED",
            user.user_id,
            "call EnrollTotp first",
        ));
    }
    let codes: Vec<String> = (0..tokens::RECOVERY_CODE_COUNT)
        .map(|_| tokens::new_recovery_code())
        .collect();
    let hashes: Vec<Vec<u8>> = codes
        .iter()
        .filter_map(|c| tokens::hash_recovery_code(c))
        .collect();
    store::replace_recovery_codes(&mut tx, user.user_id, &hashes).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.user_id, "totp enabled");
    Ok(ConfirmTotpResponse {
        recovery_codes: codes,
    })
}

pub async fn disable_totp(state: &AppState, req: Request<DisableTotpRequest>) -> Reply<()> {
    disable_totp_inner(state, req).await?;
    Ok(Response::new(()))
}

async fn disable_totp_inner(state: &AppState, req: Request<DisableTotpRequest>) -> Result<()> {
    use disable_totp_request::Code;
    let caller = auth::caller(&req)?;
    let user = user_of(&caller)?;
    let key = idempotency::key_of(&req)?;
    let r = req.get_ref();
    let mut v = FieldViolations::new();
    check_secret(
        &mut v,
        "current_password",
        &r.current_password,
        PASSWORD_MAX,
    );
    match &r.code {
        None => v.add("totp_code", "a totp_code or a recovery_code is required"),
        Some(Code::TotpCode(c)) => check_totp_code(&mut v, "totp_code", c),
        Some(Code::RecoveryCode(c)) => check_recovery_code(&mut v, "recovery_code", c),
    }
    v.finish()?;
    let Some(code) = r.code.clone() else {
        return Err(IdentityError::Internal("validated code missing".into()));
    };
    let password = r.current_password.clone();
    let hasher = state.hasher.clone();
    let user_id = user.user_id;
    idempotency::run(
        &state.pool,
        &scope("DisableTotp"),
        &caller.actor_key(),
        key.as_deref(),
        req.get_ref(),
        move |conn: &mut PgConnection| -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                let cred = store::credentials_by_id(conn, user_id, true)
                    .await?
                    .ok_or(IdentityError::SessionExpired)?;
                let Some(secret) = cred.totp_secret.clone() else {
                    return Err(conflict("MFA_NOT_ENABLED", user_id, "TOTP is not enabled"));
                };
                if !hasher
                    .verify_async(password, Some(cred.password_hash.clone()))
                    .await
                {
                    return Err(IdentityError::InvalidCredentials);
                }
                match code {
                    Code::TotpCode(c) => {
                        let step =
                            totp::verify(&secret, &c, Utc::now().timestamp(), cred.totp_last_step)
                                .ok_or(IdentityError::CodeInvalid { field: "totp_code" })?;
                        if !store::advance_totp_step(conn, user_id, step).await? {
                            return Err(IdentityError::CodeInvalid { field: "totp_code" });
                        }
                    }
                    Code::RecoveryCode(c) => {
                        let invalid = IdentityError::CodeInvalid {
                            field: "recovery_code",
                        };
                        let hash =
                            tokens::hash_recovery_code(&c).ok_or(IdentityError::CodeInvalid {
                                field: "recovery_code",
                            })?;
                        if !store::use_recovery_code(conn, user_id, &hash).await? {
                            return Err(invalid);
                        }
                    }
                }
                store::disable_totp(conn, user_id).await?;
                Ok(())
            })
        },
    )
    .await?;
    tracing::info!(user_id = %user_id, "totp disabled");
    Ok(())
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
    let user = user_of(&caller)?;
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
    let mut tx = state.pool.begin().await?;
    store::insert_device_pin(
        &mut tx,
        device_id,
        user.user_id,
        r.device_name.trim(),
        &tokens::hash(&secret),
        &pin_hash,
    )
    .await?;
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
        if failures.is_some_and(|n| n >= PIN_MAX_FAILURES) {
            tracing::warn!(device_id = %device.id, user_id = %device.user_id, "device pin revoked after repeated failures");
        }
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

// ---------------------------------------------------------------------------------------------
// Keys and revocations

pub async fn list_signing_keys(
    state: &AppState,
    _req: Request<ListSigningKeysRequest>,
) -> Reply<ListSigningKeysResponse> {
    let keys = state
        .keys
        .published()
        .iter()
        .map(|k| pb::SigningKey {
            kid: k.kid.clone(),
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x: carehub_platform::jwt::jwk_x(&k.key),
            alg: "EdDSA".to_owned(),
            not_before_time: Some(timestamp(k.not_before)),
        })
        .collect();
    Ok(Response::new(ListSigningKeysResponse { keys }))
}

pub async fn list_revocations(
    state: &AppState,
    req: Request<ListRevocationsRequest>,
) -> Reply<ListRevocationsResponse> {
    Ok(Response::new(list_revocations_inner(state, req).await?))
}

async fn list_revocations_inner(
    state: &AppState,
    req: Request<ListRevocationsRequest>,
) -> Result<ListRevocationsResponse> {
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let since = match r.since {
        None => None,
        Some(ts) => {
            let t = u32::try_from(ts.nanos)
                .ok()
                .filter(|n| *n < 1_000_000_000)
                .and_then(|n| DateTime::<Utc>::from_timestamp(ts.seconds, n));
            if t.is_none() {
                v.add("since", "is not a valid timestamp");
            }
            t
        }
    };
    v.finish()?;
    let mut conn = state.pool.acquire().await?;
    let now = store::db_now(&mut conn).await?;
    let lookback = secs(state.settings.access_token_ttl_secs) + carehub_platform::jwt::LEEWAY_SECS;
    let since = since.unwrap_or(now - chrono::Duration::seconds(lookback));
    let rows = store::revocations_since(&mut conn, since, REVOCATIONS_MAX).await?;
    let revocations = rows
        .into_iter()
        .filter_map(|row| {
            let target = match (row.session_id, row.user_id) {
                (Some(s), _) => pb::revocation::Target::SessionId(s.to_string()),
                (None, Some(u)) => pb::revocation::Target::UserId(u.to_string()),
                (None, None) => return None,
            };
            Some(pb::Revocation {
                target: Some(target),
                revoke_time: Some(timestamp(row.revoked_at)),
            })
        })
        .collect();
    let as_of = (now - chrono::Duration::seconds(REVOCATION_FEED_LAG_SECS)).max(since);
    Ok(ListRevocationsResponse {
        revocations,
        as_of: Some(timestamp(as_of)),
    })
}
