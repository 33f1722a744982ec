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
/// session and the account in the database, so that a revocation takes effect at once.
pub struct LocalVerifier {
    state: Arc<AppState>,
    verified: VerifiedTokens,
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
}

#[async_trait::async_trait]
impl TokenVerifier for LocalVerifier {
    async fn verify(&self, token: &str) -> Result<UserCaller, Status> {
        let user = self.verify_signature(token)?;
        let mut conn = self
            .state
            .pool
            .acquire()
            .await
            .map_err(|e| Status::from(IdentityError::Db(e)))?;
        let check = store::sessions::session_check(&mut conn, user.session_id)
            .await
            .map_err(|e| Status::from(IdentityError::Db(e)))?
            .ok_or_else(|| unauthenticated("access token names an unknown session"))?;
        if check.user_id != user.user_id {
            return Err(unauthenticated("access token is inconsistent"));
        }
        if check.status != "active" {
            return Err(IdentityError::AccountDisabled.into());
        }
        let role = Role::parse(&check.role).ok_or_else(|| errors::internal("user role"))?;
        let idle = chrono::Duration::seconds(
            i64::try_from(self.state.settings.idle_timeout_for(role)).unwrap_or(i64::MAX / 1000),
        );
        let revoked_for_user = check.sessions_revoked_before.is_some_and(|before| {
            check.created_at <= before || user.issued_at < before.timestamp()
        });
        if check.revoked_at.is_some()
            || check.expires_at <= check.now
            || check.last_seen_at + idle <= check.now
            || revoked_for_user
        {
            return Err(IdentityError::SessionExpired.into());
        }
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
