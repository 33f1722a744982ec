//! Sessions: opening one (first tokens), refreshing it with rotating refresh tokens (reuse ends
//! the session), logout, and listing and revoking the user's sessions.

use carehub_platform::audit::Purpose;
use carehub_platform::auth::{Caller, Role};
use carehub_platform::call::{Call, Change};
use carehub_platform::crypto::Envelope;
use carehub_platform::errors::FieldViolations;
use carehub_platform::paging::{self, Page};
use carehub_proto::common::v1::PageResponse;
use carehub_proto::identity::v1 as pb;
use carehub_proto::identity::v1::*;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::credentials::{check_token, check_uuid, is_active, secs};
use super::{kinds, security};
use crate::api::convert::timestamp;
use crate::config::IdentitySettings;
use crate::domain::tokens;
use crate::error::{IdentityError, Result};
use crate::store::sessions::{self as store, Credentials, NewSession, SessionRow, Spend};
use crate::store::{revocation, sealed};
use crate::token::{self, TokenSubject};
use crate::AppState;

fn role_of(cred: &Credentials) -> Result<Role> {
    Role::parse(&cred.role)
        .ok_or_else(|| IdentityError::Internal(format!("user {} has an unknown role", cred.id)))
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

/// Opens a session for `cred` and issues its first tokens (inside the caller's transaction).
pub(super) async fn open_session(
    state: &AppState,
    conn: &mut PgConnection,
    cred: &Credentials,
    amr: &[&str],
    caller: &Caller,
    device_id: Option<Uuid>,
) -> Result<AuthTokens> {
    let role = role_of(cred)?;
    let pcr = password_change_due(&state.settings, cred, role, Utc::now());
    let id = Uuid::now_v7();
    let seal =
        |column, value| sealed::seal_opt(&state.crypto, "sessions", column, id, cred.id, value);
    let ip_address = seal("ip_address", caller.client_ip.as_deref()).await?;
    let user_agent = seal("user_agent", caller.user_agent.as_deref()).await?;
    let session = store::insert_session(
        conn,
        &NewSession {
            id,
            user_id: cred.id,
            ip_address: ip_address.as_deref(),
            user_agent: user_agent.as_deref(),
            auth_methods: amr,
            device_id,
            password_change_required: pcr,
            lifetime_secs: secs(state.settings.session_lifetime_secs),
        },
    )
    .await?;
    tracing::info!(user_id = %cred.id, session_id = %session.id, "session opened");
    let event =
        security::session(caller, kinds::LOGIN, cred.id, session.id).actor_session(session.id);
    security::record(conn, event).await?;
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

/// A session as its user sees it, with the address and user agent decrypted.
async fn session_to_pb(
    crypto: &Envelope,
    s: &SessionRow,
    active: bool,
    current: Uuid,
) -> Result<pb::Session> {
    let open = |column, ciphertext| {
        sealed::open_opt(crypto, "sessions", column, s.id, s.user_id, ciphertext)
    };
    let ip_address = open("ip_address", s.ip_address.as_deref()).await?;
    let user_agent = open("user_agent", s.user_agent.as_deref()).await?;
    Ok(pb::Session {
        session_id: s.id.to_string(),
        create_time: Some(timestamp(s.created_at)),
        last_seen_time: Some(timestamp(s.last_seen_at)),
        revoke_time: s.revoked_at.map(timestamp),
        ip_address: ip_address.unwrap_or_default(),
        user_agent: user_agent.unwrap_or_default(),
        auth_methods: s
            .auth_methods
            .iter()
            .map(|m| auth_method(m) as i32)
            .collect(),
        current: s.id == current,
        active,
    })
}

/// Rotates the refresh token. Its own transaction: a reused token revokes the session and a
/// dead one is marked revoked, committed although the call is refused.
pub async fn refresh_session(
    state: &AppState,
    call: &Call,
    r: RefreshSessionRequest,
) -> Result<AuthTokens> {
    let caller = &call.caller;
    let mut v = FieldViolations::new();
    check_token(&mut v, "refresh_token", &r.refresh_token);
    v.finish()?;

    let mut tx = state.pool.begin().await?;
    let session_id = match store::spend_refresh_token(&mut tx, &tokens::hash(&r.refresh_token))
        .await?
    {
        Spend::Unknown => return Err(IdentityError::InvalidToken),
        Spend::AlreadySpent(session_id) => {
            // A spent token seen again: someone holds a copy. End the whole session.
            revocation::revoke_session(&mut tx, session_id, "refresh_token_reused").await?;
            if let Some(s) = store::session_for_update(&mut tx, session_id).await? {
                let event = security::session(caller, kinds::SESSION_REVOKE, s.user_id, session_id);
                let event = security::failed(
                    event,
                    carehub_platform::audit::Outcome::MajorFailure,
                    carehub_proto::common::v1::ErrorReason::RefreshTokenReused,
                );
                security::record(&mut tx, event).await?;
            }
            tx.commit().await?;
            state.session_cache.evict_session(session_id);
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
        state.session_cache.evict_session(session.id);
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
        state.session_cache.evict_session(session.id);
        return Err(IdentityError::SessionExpired);
    }
    store::touch_session(&mut tx, session.id).await?;
    let tokens = issue_tokens(state, &mut tx, &session, role).await?;
    tx.commit().await?;
    Ok(tokens)
}

pub async fn logout(state: &AppState, call: &Call, r: LogoutRequest) -> Result<()> {
    let user = call.user()?;
    call.idempotency_key()?;
    let (session_id, user_id) = (user.session_id, user.user_id);
    let event = security::session(&call.caller, kinds::SESSION_LOGOUT, user_id, session_id);
    let done = call
        .mutate(&state.idempotency, &r, async |conn| {
            revocation::revoke_session(conn, session_id, "logout").await?;
            Ok::<_, IdentityError>(Change::new((), event))
        })
        .await;
    // Whatever the outcome (a failed call evicts for nothing: one extra read), before answering.
    state.session_cache.evict_session(session_id);
    done?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Listing and revoking sessions

/// Page tokens of ListSessions continue only the listing of the user they were issued to.
fn page_filter(user_id: Uuid) -> paging::Filter {
    paging::Filter::new("/carehub.identity.v1.IdentityService/ListSessions")
        .field("user_id", Some(user_id.as_bytes()))
}

/// The user's own sessions, with their addresses and user agents: an audited read (purpose
/// SECURITY, like the other session events).
pub async fn list_sessions(
    state: &AppState,
    call: &Call,
    r: ListSessionsRequest,
) -> Result<ListSessionsResponse> {
    let user = call.user()?.clone();
    let mut v = FieldViolations::new();
    let filter = page_filter(user.user_id);
    let page = Page::<store::SessionCursor>::read(r.page.as_ref(), &filter, "page", &mut v);
    v.finish()?;
    let role = user.roles.first().copied().unwrap_or(Role::Patient);
    let idle = secs(state.settings.idle_timeout_for(role));
    let mut conn = state.pool.acquire().await?;
    let mut rows =
        store::list_sessions(&mut conn, user.user_id, idle, page.after, page.fetch()).await?;
    let next_page_token = page.finish(&mut rows, &filter, |last| {
        (last.active, last.session.created_at, last.session.id)
    });
    drop(conn);
    let mut sessions = Vec::with_capacity(rows.len());
    for r in &rows {
        sessions.push(session_to_pb(&state.crypto, &r.session, r.active, user.session_id).await?);
    }
    let answer = ListSessionsResponse {
        sessions,
        page: Some(PageResponse { next_page_token }),
    };
    // The entity is the user whose sessions were listed.
    let read = call.event(
        kinds::SESSIONS_LIST,
        Purpose::Security,
        "user",
        user.user_id,
        user.user_id,
    );
    call.read(&state.pool, read, answer).await
}

pub async fn revoke_session(
    state: &AppState,
    call: &Call,
    r: RevokeSessionRequest,
) -> Result<pb::Session> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = check_uuid(&mut v, "session_id", &r.session_id);
    v.finish()?;
    let Some(id) = id else {
        return Err(IdentityError::Internal("validated id missing".into()));
    };
    let (user_id, current) = (user.user_id, user.session_id);
    let event = security::session(&call.caller, kinds::SESSION_REVOKE, user_id, id);
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
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
            let answer = session_to_pb(&state.crypto, &s, false, current).await?;
            Ok(Change::new(answer, event))
        })
        .await;
    // Whatever the outcome (a failed call evicts for nothing: one extra read), before answering.
    state.session_cache.evict_session(id);
    Ok(ran?.answer)
}
