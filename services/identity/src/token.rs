//! Access tokens: issuing them, verifying them for identity's own RPCs, and publishing the
//! verification keys as JWKS on the admin port.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use carehub_platform::auth::{
    self, unauthenticated, Role, TokenVerifier, UserCaller, VerifiedTokens,
};
use carehub_platform::errors;
use carehub_platform::jwt::{self, AccessClaims};
use chrono::{DateTime, Utc};
use tonic::Status;
use uuid::Uuid;

use crate::config::IdentitySettings;
use crate::error::IdentityError;
use crate::session_cache::SessionFacts;
use crate::store;
use crate::AppState;

/// A signed access token.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Access-token lifetime for `role`: the configured lifetime, never longer than the role's idle
/// timeout.
pub fn access_ttl_secs(settings: &IdentitySettings, role: Role) -> i64 {
    let secs = settings
        .access_token_ttl_secs
        .min(settings.idle_timeout_for(role))
        .max(1);
    i64::try_from(secs).unwrap_or(600)
}

/// What goes into an access token.
pub struct TokenSubject<'a> {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub role: Role,
    pub amr: &'a [String],
    pub password_change_required: bool,
    /// The session's absolute end; the token never outlives it.
    pub session_expires_at: DateTime<Utc>,
}

/// Signs an access token with the current key.
pub fn issue_access_token(
    state: &AppState,
    s: &TokenSubject<'_>,
) -> Result<IssuedToken, IdentityError> {
    let now = Utc::now();
    let ttl = chrono::Duration::seconds(access_ttl_secs(&state.settings, s.role));
    let expires_at = (now + ttl).min(s.session_expires_at);
    let claims = AccessClaims {
        iss: state.auth.issuer.clone(),
        aud: state.auth.audience.clone(),
        sub: s.user_id.to_string(),
        sid: s.session_id.to_string(),
        roles: vec![s.role.as_str().to_owned()],
        amr: s.amr.to_vec(),
        iat: now.timestamp(),
        exp: expires_at.timestamp(),
        jti: Uuid::new_v4().to_string(),
        pcr: s.password_change_required,
    };
    let signer = state
        .keys
        .current()
        // A key source past its staleness limit answers UNAVAILABLE, like every key lookup.
        .map_err(|e| IdentityError::Crypto(carehub_platform::crypto::CryptoError::Keys(e)))?;
    let token = jwt::sign(&claims, &signer.kid, &signer.key)
        .map_err(|e| IdentityError::Internal(format!("signing access token: {e}")))?;
    Ok(IssuedToken { token, expires_at })
}

/// Verifies identity's own access tokens: signature, lifetime, issuer and audience, then the
/// session and the account, so that a revocation takes effect at once.
///
/// The session check is answered from [`crate::session_cache::SessionCache`] when a recent read of the session
/// passed and still passes by the same rules; otherwise (no entry, or anything that would
/// reject) it reads the database. So an authenticated call costs one round trip in the common
/// case: the handler's. Other replicas' revocations are seen within
/// `identity.session_cache_ttl_ms` at worst (milliseconds while the revocation listener runs);
/// see [`crate::session_cache`].
pub struct LocalVerifier {
    state: Arc<AppState>,
    verified: VerifiedTokens,
}

/// Why a session check fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionRefusal {
    /// The token names a session of another user.
    Inconsistent,
    /// The account is not active.
    AccountDisabled,
    /// Revoked, expired, idle too long, or issued before the user's sessions were revoked.
    Expired,
}

impl From<SessionRefusal> for Status {
    fn from(r: SessionRefusal) -> Status {
        match r {
            SessionRefusal::Inconsistent => unauthenticated("access token is inconsistent"),
            SessionRefusal::AccountDisabled => IdentityError::AccountDisabled.into(),
            SessionRefusal::Expired => IdentityError::SessionExpired.into(),
        }
    }
}

/// The session rules, applied alike to a fresh read and to a cached one: `now` is the
/// database's clock (for a cached read, an estimate never behind it), `idle` the role's idle
/// timeout.
pub fn session_verdict(
    facts: &SessionFacts,
    user: &UserCaller,
    now: DateTime<Utc>,
    idle: chrono::Duration,
) -> Result<(), SessionRefusal> {
    if facts.user_id != user.user_id {
        return Err(SessionRefusal::Inconsistent);
    }
    if !facts.active {
        return Err(SessionRefusal::AccountDisabled);
    }
    let revoked_for_user = facts
        .sessions_revoked_before
        .is_some_and(|before| facts.created_at <= before || user.issued_at < before.timestamp());
    if facts.revoked_at.is_some()
        || facts.expires_at <= now
        || facts.last_seen_at + idle <= now
        || revoked_for_user
    {
        return Err(SessionRefusal::Expired);
    }
    Ok(())
}

impl LocalVerifier {
    pub fn new(state: Arc<AppState>) -> Self {
        Self {
            state,
            verified: VerifiedTokens::default(),
        }
    }

    fn verify_signature(&self, token: &str) -> Result<UserCaller, Status> {
        let key = self
            .state
            .keys
            .verifying_key(&auth::token_key_id(token)?)
            .ok_or_else(|| unauthenticated("access token is signed by an unknown key"))?;
        let auth = &self.state.auth;
        self.verified
            .verify(token, &key, &auth.issuer, &auth.audience)
    }

    fn idle_timeout(&self, role: Role) -> chrono::Duration {
        chrono::Duration::seconds(
            i64::try_from(self.state.settings.idle_timeout_for(role)).unwrap_or(i64::MAX / 1000),
        )
    }
}

#[async_trait::async_trait]
impl TokenVerifier for LocalVerifier {
    async fn verify(&self, token: &str) -> Result<UserCaller, Status> {
        let user = self.verify_signature(token)?;
        let cache = &self.state.session_cache;
        // Memory may only accept; whatever it would refuse is decided by a fresh read below.
        if let Some(cached) = cache.get(user.session_id) {
            let idle = self.idle_timeout(cached.facts.role);
            if session_verdict(&cached.facts, &user, cached.db_now, idle).is_ok() {
                cache.count_check("memory");
                return Ok(user);
            }
        }
        let ticket = cache.ticket();
        let mut conn = self
            .state
            .pool
            .acquire()
            .await
            .map_err(|e| Status::from(IdentityError::Db(e)))?;
        let check = store::sessions::session_check(&mut conn, user.session_id)
            .await
            .map_err(|e| Status::from(IdentityError::Db(e)))?;
        drop(conn);
        cache.count_check("db");
        let check =
            check.ok_or_else(|| unauthenticated("access token names an unknown session"))?;
        if check.user_id != user.user_id {
            return Err(SessionRefusal::Inconsistent.into());
        }
        if check.status != "active" {
            return Err(SessionRefusal::AccountDisabled.into());
        }
        let facts =
            SessionFacts::from_check(&check).ok_or_else(|| errors::internal("user role"))?;
        let idle = self.idle_timeout(facts.role);
        session_verdict(&facts, &user, check.now, idle)?;
        cache.fill(ticket, user.session_id, facts, check.now, idle);
        Ok(user)
    }
}

/// One published key in JWK form (RFC 8037).
#[derive(serde::Serialize)]
struct Jwk {
    kty: &'static str,
    crv: &'static str,
    x: String,
    kid: String,
    alg: &'static str,
    #[serde(rename = "use")]
    use_: &'static str,
}

#[derive(serde::Serialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

async fn jwks(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let keys = state
        .keys
        .published()
        .iter()
        .map(|k| Jwk {
            kty: "OKP",
            crv: "Ed25519",
            x: jwt::jwk_x(&k.key),
            kid: k.kid.clone(),
            alg: "EdDSA",
            use_: "sig",
        })
        .collect();
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(JwkSet { keys }),
    )
}

/// `GET /.well-known/jwks.json` for gateways, served on the plain-HTTP admin port.
pub fn jwks_router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(state)
}
