//! Who is calling, and may they call this RPC?
//!
//! Every request has two identities: the **workload** (from the mTLS client certificate, put in
//! the request extensions by the server as [`PeerInfo`]) and, for user-facing RPCs, the **user**
//! (from the `authorization: Bearer` access token). [`AuthLayer`] checks both against the
//! service's [`Policy`] before the handler runs and leaves a [`Caller`] in the extensions.
//! Anything without a rule is denied.

pub mod remote;
pub mod verified;
pub use remote::RemoteVerifier;
pub use verified::VerifiedTokens;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use carehub_proto::common::v1::ErrorReason;
use futures::future::BoxFuture;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::errors;
use crate::tls::PeerInfo;

/// The five roles. Roles alone never grant access to a patient's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Patient,
    Provider,
    Staff,
    Billing,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Patient,
        Role::Provider,
        Role::Staff,
        Role::Billing,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Provider => "provider",
            Role::Staff => "staff",
            Role::Billing => "billing",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The end user behind a request, from a verified access token.
#[derive(Clone, Debug)]
pub struct UserCaller {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub roles: Vec<Role>,
    /// RFC 8176 methods the session was authenticated with.
    pub amr: Vec<String>,
    pub issued_at: i64,
    pub expires_at: i64,
    pub password_change_required: bool,
}

impl UserCaller {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Put into every authorized request's extensions; handlers read it with [`caller`].
#[derive(Clone, Debug)]
pub struct Caller {
    /// The calling workload (certificate identity), for example "gateway" or "scheduling".
    pub workload: String,
    pub user: Option<UserCaller>,
    /// The end user's address, only when forwarded by a trusted gateway.
    pub client_ip: Option<String>,
    /// The end user's user agent, only when forwarded by a trusted gateway.
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl Caller {
    /// The authenticated user, or UNAUTHENTICATED.
    pub fn user(&self) -> Result<&UserCaller, Status> {
        self.user
            .as_ref()
            .ok_or_else(|| unauthenticated("this RPC needs an access token"))
    }

    /// An id naming who acted, for idempotency scopes and audit: the user, else the workload.
    pub fn actor_key(&self) -> String {
        match &self.user {
            Some(u) => format!("user:{}", u.user_id),
            None => format!("workload:{}", self.workload),
        }
    }
}

/// The [`Caller`] of a request; INTERNAL if the auth layer did not run (a wiring bug).
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| errors::internal("caller missing"))
}

/// Which users may call an RPC.
#[derive(Clone, Debug)]
pub enum UserRule {
    /// No token needed (login, registration); a token, if sent, is ignored.
    Public,
    /// A valid token of a user with one of `roles` (any role when empty).
    Authenticated {
        roles: Vec<Role>,
        /// Whether a session that must change its password first may call it.
        allow_pending_password_change: bool,
    },
    /// Service-to-service: no user token needed; the workload list is the whole check.
    WorkloadOnly,
}

#[derive(Clone, Debug)]
pub struct RpcRule {
    /// Workloads allowed to call; empty means none.
    pub workloads: Vec<String>,
    pub user: UserRule,
}

/// Per-RPC rules keyed by gRPC path (`/carehub.identity.v1.IdentityService/Login`).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: HashMap<String, RpcRule>,
}

/// Paths every authenticated workload may call without a user token.
const INFRASTRUCTURE_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

impl Policy {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule for `service` (full proto name) / `method`.
    pub fn rule(mut self, service: &str, method: &str, workloads: &[&str], user: UserRule) -> Self {
        self.rules.insert(
            format!("/{service}/{method}"),
            RpcRule {
                workloads: workloads.iter().map(|w| (*w).to_owned()).collect(),
                user,
            },
        );
        self
    }

    pub fn get(&self, path: &str) -> Option<&RpcRule> {
        self.rules.get(path)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.rules.keys().map(String::as_str)
    }
}

/// Verifies access tokens. Identity verifies against its own keys and sessions; other services
/// against identity's published keys and revocation feed.
#[async_trait::async_trait]
pub trait TokenVerifier: Send + Sync + 'static {
    /// A verified, unrevoked token's user, or UNAUTHENTICATED with a reason.
    async fn verify(&self, token: &str) -> Result<UserCaller, Status>;
}

/// UNAUTHENTICATED for a missing, invalid, expired or revoked access token (reason
/// `UNAUTHENTICATED_TOKEN`); `message` says which, never what the token contained.
pub fn unauthenticated(message: &str) -> Status {
    errors::status(
        Code::Unauthenticated,
        ErrorReason::UnauthenticatedToken,
        message,
    )
}

/// The key id an access token names, read before anything is verified (to pick its key).
pub fn token_key_id(token: &str) -> Result<String, Status> {
    crate::jwt::key_id(token).map_err(|e| unauthenticated(&e.to_string()))
}

/// Checks an access token's signature against `key`, its issuer, audience and lifetime (now),
/// and returns its user. Revocation is the verifier's own business.
pub fn verify_access_token(
    token: &str,
    key: &ed25519_dalek::VerifyingKey,
    issuer: &str,
    audience: &str,
) -> Result<UserCaller, Status> {
    let claims = crate::jwt::verify(token, key, issuer, audience, chrono::Utc::now().timestamp())
        .map_err(|e| match e {
        crate::jwt::JwtError::Expired => unauthenticated("access token has expired"),
        other => unauthenticated(&other.to_string()),
    })?;
    user_from_claims(&claims)
}

/// Builds a [`UserCaller`] out of verified claims.
pub fn user_from_claims(claims: &crate::jwt::AccessClaims) -> Result<UserCaller, Status> {
    let bad = || unauthenticated("access token is malformed");
    Ok(UserCaller {
        user_id: Uuid::parse_str(&claims.sub).map_err(|_| bad())?,
        session_id: Uuid::parse_str(&claims.sid).map_err(|_| bad())?,
        roles: claims.roles.iter().filter_map(|r| Role::parse(r)).collect(),
        amr: claims.amr.clone(),
        issued_at: claims.iat,
        expires_at: claims.exp,
        password_change_required: claims.pcr,
    })
}

/// Shared state of the auth layer.
pub struct Authorizer {
    pub policy: Policy,
    pub verifier: Arc<dyn TokenVerifier>,
    pub gateway_workloads: Vec<String>,
}

impl Authorizer {
    /// Decides a request from its path, peer and headers.
    pub async fn authorize(
        &self,
        path: &str,
        peer: Option<&PeerInfo>,
        headers: &http::HeaderMap,
    ) -> Result<Caller, Status> {
        let workload = peer.and_then(|p| p.workload.clone()).ok_or_else(|| {
            errors::status(
                Code::Unauthenticated,
                ErrorReason::WorkloadNotAllowed,
                "the client certificate names no workload",
            )
        })?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let trusted_gateway = self.gateway_workloads.contains(&workload);
        let mut caller = Caller {
            workload,
            user: None,
            client_ip: None,
            user_agent: None,
            request_id: header("x-request-id"),
        };
        if trusted_gateway {
            caller.client_ip = header("x-forwarded-for")
                .and_then(|v| v.split(',').next().map(|s| s.trim().to_owned()))
                .filter(|s| !s.is_empty() && s.len() <= 64);
            caller.user_agent =
                header("x-forwarded-user-agent").map(|ua| ua.chars().take(256).collect());
        }

        if INFRASTRUCTURE_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Ok(caller);
        }
        let rule = self.policy.get(path).ok_or_else(|| {
            errors::status(
                Code::PermissionDenied,
                ErrorReason::WorkloadNotAllowed,
                format!("no policy allows {path}"),
            )
        })?;
        if !rule.workloads.contains(&caller.workload) {
            return Err(errors::status(
                Code::PermissionDenied,
                ErrorReason::WorkloadNotAllowed,
                format!("workload {} may not call {path}", caller.workload),
            ));
        }
        match &rule.user {
            UserRule::Public | UserRule::WorkloadOnly => Ok(caller),
            UserRule::Authenticated {
                roles,
                allow_pending_password_change,
            } => {
                let token = header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
                    .ok_or_else(|| unauthenticated("missing bearer token"))?;
                let user = self.verifier.verify(token.trim()).await?;
                if !roles.is_empty() && !roles.iter().any(|r| user.has_role(*r)) {
                    return Err(errors::permission_denied(format!(
                        "user {} lacks a role allowed to call {path}",
                        user.user_id
                    )));
                }
                if user.password_change_required && !allow_pending_password_change {
                    return Err(errors::precondition(
                        ErrorReason::PasswordExpired,
                        "PASSWORD",
                        &user.user_id.to_string(),
                        "the password must be changed first (ChangePassword)",
                    ));
                }
                caller.user = Some(user);
                Ok(caller)
            }
        }
    }
}

/// Tower layer enforcing the policy on every gRPC request.
#[derive(Clone)]
pub struct AuthLayer {
    authorizer: Arc<Authorizer>,
}

impl AuthLayer {
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        Self { authorizer }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authorizer: self.authorizer.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authorizer: Arc<Authorizer>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone that was polled ready handles this request (tower's usual pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authorizer = self.authorizer.clone();
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let decision = authorizer
                .authorize(&path, req.extensions().get::<PeerInfo>(), req.headers())
                .await;
            match decision {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                    inner.call(req).await
                }
                Err(status) => {
                    tracing::debug!(rpc = %path, code = ?status.code(), "request refused by auth policy");
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    struct Fixed(UserCaller);

    #[async_trait::async_trait]
    impl TokenVerifier for Fixed {
        async fn verify(&self, token: &str) -> Result<UserCaller, Status> {
            if token == "good" {
                Ok(self.0.clone())
            } else {
                Err(Status::unauthenticated("bad token"))
            }
        }
    }

    fn authorizer(roles: Vec<Role>) -> Authorizer {
        let user = UserCaller {
            user_id: Uuid::nil(),
            session_id: Uuid::nil(),
            roles,
            amr: vec![],
            issued_at: 0,
            expires_at: 0,
            password_change_required: false,
        };
        Authorizer {
            policy: Policy::new()
                .rule("s.S", "Open", &["gateway"], UserRule::Public)
                .rule(
                    "s.S",
                    "Admin",
                    &["gateway"],
                    UserRule::Authenticated {
                        roles: vec![Role::Admin],
                        allow_pending_password_change: false,
                    },
                ),
            verifier: Arc::new(Fixed(user)),
            gateway_workloads: vec!["gateway".into()],
        }
    }

    fn peer(w: &str) -> PeerInfo {
        PeerInfo {
            remote_addr: None,
            workload: Some(w.into()),
        }
    }

    #[tokio::test]
    async fn policy_checks_workload_then_user() {
        let a = authorizer(vec![Role::Patient]);
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.1".parse().unwrap());
        let c = a
            .authorize("/s.S/Open", Some(&peer("gateway")), &h)
            .await
            .unwrap();
        assert_eq!(c.client_ip.as_deref(), Some("203.0.113.9"));
        // Forwarded headers from a non-gateway workload are ignored; workload not listed: denied.
        let e = a
            .authorize("/s.S/Open", Some(&peer("billing")), &h)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        // Unknown RPC: denied by default.
        let e = a
            .authorize("/s.S/Nope", Some(&peer("gateway")), &h)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        // No token / wrong role.
        let e = a
            .authorize("/s.S/Admin", Some(&peer("gateway")), &h)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        h.insert("authorization", "Bearer good".parse().unwrap());
        let e = a
            .authorize("/s.S/Admin", Some(&peer("gateway")), &h)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let a = authorizer(vec![Role::Admin]);
        assert!(a
            .authorize("/s.S/Admin", Some(&peer("gateway")), &h)
            .await
            .is_ok());
        // No certificate identity at all.
        let e = a.authorize("/s.S/Admin", None, &h).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        // Health is open to any authenticated workload.
        assert!(a
            .authorize(
                "/grpc.health.v1.Health/Check",
                Some(&peer("records")),
                &http::HeaderMap::new()
            )
            .await
            .is_ok());
    }
}
