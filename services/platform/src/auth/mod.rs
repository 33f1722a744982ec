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

    /// False until the verifier could answer at all (a remote one: until it first loaded
    /// identity's keys and revocation feed). Gates readiness only at start: a service whose
    /// feed later goes stale refuses tokens itself but stays ready, so that an outage of
    /// identity does not also pull every replica out of its Service (and stop outbox deliveries
    /// to it).
    fn has_loaded(&self) -> bool {
        true
    }

    /// Waits (at most `within`) until [`TokenVerifier::has_loaded`]: a server waits for it
    /// before it reports its first health, so that a healthy suite starts ready at once.
    async fn wait_loaded(&self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.has_loaded() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
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
    /// The code and the ErrorInfo reason of a refusal.
    fn refusal(e: &Status) -> (Code, String) {
        (
            e.code(),
            errors::details_of(e).reason.unwrap_or_default().to_owned(),
        )
    }

    fn user(roles: Vec<Role>, password_change_required: bool) -> UserCaller {
        UserCaller {
            user_id: Uuid::from_u128(7),
            session_id: Uuid::from_u128(8),
            roles,
            amr: vec!["pwd".into()],
            issued_at: 1,
            expires_at: 2,
            password_change_required,
        }
    }

    /// "gateway" is the trusted gateway; "scheduling" may call the same RPCs but is not one.
    fn forwarding_authorizer() -> Authorizer {
        Authorizer {
            policy: Policy::new()
                .rule("s.S", "Open", &["gateway", "scheduling"], UserRule::Public)
                .rule(
                    "s.S",
                    "Internal",
                    &["gateway", "scheduling"],
                    UserRule::WorkloadOnly,
                ),
            verifier: Arc::new(Fixed(user(vec![Role::Patient], false))),
            gateway_workloads: vec!["gateway".into()],
        }
    }

    fn forwarded(ip: &str, ua: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", ip.parse().unwrap());
        h.insert("x-forwarded-user-agent", ua.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn forwarded_address_and_user_agent_are_trusted_from_the_gateway_only() {
        let a = forwarding_authorizer();
        let h = forwarded("203.0.113.9, 10.0.0.1", "CareApp/2.1");
        for path in ["/s.S/Open", "/s.S/Internal", "/grpc.health.v1.Health/Check"] {
            let from_gateway = a.authorize(path, Some(&peer("gateway")), &h).await.unwrap();
            assert_eq!(
                from_gateway.client_ip.as_deref(),
                Some("203.0.113.9"),
                "{path}"
            );
            assert_eq!(
                from_gateway.user_agent.as_deref(),
                Some("CareApp/2.1"),
                "{path}"
            );
            // Another workload allowed to call the same RPC: the call succeeds, but what it
            // claims about an end user is ignored.
            let other = a
                .authorize(path, Some(&peer("scheduling")), &h)
                .await
                .unwrap();
            assert_eq!(other.workload, "scheduling");
            assert_eq!(other.client_ip, None, "{path}: x-forwarded-for honoured");
            assert_eq!(
                other.user_agent, None,
                "{path}: x-forwarded-user-agent honoured"
            );
        }
        // The gateway's values are bounded: an address longer than 64 bytes or an empty first
        // hop is dropped, a user agent is cut at 256 characters.
        let long_ip = "1".repeat(65);
        let c = a
            .authorize(
                "/s.S/Open",
                Some(&peer("gateway")),
                &forwarded(&long_ip, "x"),
            )
            .await
            .unwrap();
        assert_eq!(c.client_ip, None);
        let ip64 = "2".repeat(64);
        let c = a
            .authorize("/s.S/Open", Some(&peer("gateway")), &forwarded(&ip64, "x"))
            .await
            .unwrap();
        assert_eq!(c.client_ip.as_deref(), Some(ip64.as_str()));
        let c = a
            .authorize(
                "/s.S/Open",
                Some(&peer("gateway")),
                &forwarded(" , 10.0.0.1", "x"),
            )
            .await
            .unwrap();
        assert_eq!(c.client_ip, None);
        let long_ua = "u".repeat(300);
        let c = a
            .authorize(
                "/s.S/Open",
                Some(&peer("gateway")),
                &forwarded("198.51.100.1", &long_ua),
            )
            .await
            .unwrap();
        assert_eq!(c.user_agent.map(|u| u.len()), Some(256));
        assert_eq!(c.client_ip.as_deref(), Some("198.51.100.1"));
    }

    #[tokio::test]
    async fn every_refusal_names_its_code_and_reason() {
        let a = authorizer(vec![Role::Patient]);
        let none = http::HeaderMap::new();
        let mut bearer = http::HeaderMap::new();
        bearer.insert("authorization", "Bearer good".parse().unwrap());
        let workload_not_allowed = (Code::PermissionDenied, "WORKLOAD_NOT_ALLOWED".to_owned());
        // No certificate identity, or a certificate naming no workload.
        let e = a.authorize("/s.S/Open", None, &none).await.unwrap_err();
        assert_eq!(
            refusal(&e),
            (Code::Unauthenticated, "WORKLOAD_NOT_ALLOWED".to_owned())
        );
        let anonymous = PeerInfo {
            remote_addr: None,
            workload: None,
        };
        let e = a
            .authorize("/s.S/Open", Some(&anonymous), &none)
            .await
            .unwrap_err();
        assert_eq!(
            refusal(&e),
            (Code::Unauthenticated, "WORKLOAD_NOT_ALLOWED".to_owned())
        );
        // No rule for the path; a workload not listed (even with a token).
        let e = a
            .authorize("/s.S/Nope", Some(&peer("gateway")), &bearer)
            .await
            .unwrap_err();
        assert_eq!(refusal(&e), workload_not_allowed);
        let e = a
            .authorize("/s.S/Open", Some(&peer("billing")), &bearer)
            .await
            .unwrap_err();
        assert_eq!(refusal(&e), workload_not_allowed);
        let e = a
            .authorize("/s.S/Admin", Some(&peer("billing")), &bearer)
            .await
            .unwrap_err();
        assert_eq!(refusal(&e), workload_not_allowed);
        // Infrastructure prefixes are prefixes of whole service names only.
        let e = a
            .authorize(
                "/grpc.health.v1.HealthX/Check",
                Some(&peer("gateway")),
                &none,
            )
            .await
            .unwrap_err();
        assert_eq!(refusal(&e), workload_not_allowed);
        for path in [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            let c = a
                .authorize(path, Some(&peer("records")), &none)
                .await
                .unwrap();
            assert!(c.user.is_none());
        }
        // Missing, non-Bearer and bad tokens.
        let unauthenticated = (Code::Unauthenticated, "UNAUTHENTICATED_TOKEN".to_owned());
        let e = a
            .authorize("/s.S/Admin", Some(&peer("gateway")), &none)
            .await
            .unwrap_err();
        assert_eq!(refusal(&e), unauthenticated);
        let mut basic = http::HeaderMap::new();
        basic.insert("authorization", "Basic good".parse().unwrap());
        let e = a
            .authorize("/s.S/Admin", Some(&peer("gateway")), &basic)
            .await
            .unwrap_err();
        assert_eq!(refusal(&e), unauthenticated);
        // The verifier's own refusal is passed on unchanged.
        let mut bad = http::HeaderMap::new();
        bad.insert("authorization", "Bearer forged".parse().unwrap());
        let e = a
            .authorize("/s.S/Admin", Some(&peer("gateway")), &bad)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert_eq!(e.message(), "bad token");
        // A valid token of the wrong role.
        let e = a
            .authorize("/s.S/Admin", Some(&peer("gateway")), &bearer)
            .await
            .unwrap_err();
        assert_eq!(
            refusal(&e),
            (Code::PermissionDenied, "ROLE_NOT_ALLOWED".to_owned())
        );
    }

    #[tokio::test]
    async fn roles_pending_password_changes_and_workload_only_rules() {
        let rules = |verifier: UserCaller| Authorizer {
            policy: Policy::new()
                .rule(
                    "s.S",
                    "AnyUser",
                    &["gateway"],
                    UserRule::Authenticated {
                        roles: vec![],
                        allow_pending_password_change: false,
                    },
                )
                .rule(
                    "s.S",
                    "ChangePassword",
                    &["gateway"],
                    UserRule::Authenticated {
                        roles: vec![],
                        allow_pending_password_change: true,
                    },
                )
                .rule(
                    "s.S",
                    "StaffOrBilling",
                    &["gateway"],
                    UserRule::Authenticated {
                        roles: vec![Role::Staff, Role::Billing],
                        allow_pending_password_change: false,
                    },
                )
                .rule("s.S", "Internal", &["records"], UserRule::WorkloadOnly),
            verifier: Arc::new(Fixed(verifier)),
            gateway_workloads: vec!["gateway".into()],
        };
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer  good ".parse().unwrap());
        h.insert("x-request-id", "req-1".parse().unwrap());
        let gw = peer("gateway");

        let a = rules(user(vec![Role::Billing], false));
        let c = a.authorize("/s.S/AnyUser", Some(&gw), &h).await.unwrap();
        let u = c.user.as_ref().unwrap();
        assert_eq!(u.user_id, Uuid::from_u128(7));
        assert_eq!(c.request_id.as_deref(), Some("req-1"));
        assert_eq!(c.actor_key(), format!("user:{}", Uuid::from_u128(7)));
        assert_eq!(c.user().unwrap().session_id, Uuid::from_u128(8));
        // Any one of the listed roles is enough.
        assert!(a
            .authorize("/s.S/StaffOrBilling", Some(&gw), &h)
            .await
            .is_ok());
        for role in [Role::Patient, Role::Provider, Role::Admin] {
            let e = rules(user(vec![role], false))
                .authorize("/s.S/StaffOrBilling", Some(&gw), &h)
                .await
                .unwrap_err();
            assert_eq!(
                refusal(&e),
                (Code::PermissionDenied, "ROLE_NOT_ALLOWED".to_owned()),
                "{role}"
            );
        }
        assert!(rules(user(vec![Role::Patient, Role::Staff], false))
            .authorize("/s.S/StaffOrBilling", Some(&gw), &h)
            .await
            .is_ok());

        // A session that must change its password first reaches only the RPCs that allow it.
        let a = rules(user(vec![Role::Staff], true));
        let e = a
            .authorize("/s.S/AnyUser", Some(&gw), &h)
            .await
            .unwrap_err();
        assert_eq!(
            refusal(&e),
            (Code::FailedPrecondition, "PASSWORD_EXPIRED".to_owned())
        );
        let e = a
            .authorize("/s.S/StaffOrBilling", Some(&gw), &h)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        let c = a
            .authorize("/s.S/ChangePassword", Some(&gw), &h)
            .await
            .unwrap();
        assert!(c.user.unwrap().password_change_required);

        // Workload-only: no token needed, none read; the caller acts as the workload.
        let c = a
            .authorize(
                "/s.S/Internal",
                Some(&peer("records")),
                &http::HeaderMap::new(),
            )
            .await
            .unwrap();
        assert!(c.user.is_none());
        assert_eq!(c.actor_key(), "workload:records");
        let e = c.user().unwrap_err();
        assert_eq!(
            refusal(&e),
            (Code::Unauthenticated, "UNAUTHENTICATED_TOKEN".to_owned())
        );
    }

    #[test]
    fn roles_policy_paths_and_the_caller_extension() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, ["patient", "provider", "staff", "billing", "admin"]);
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::parse("Admin"), None);
        let u = user(vec![Role::Staff], false);
        assert!(u.has_role(Role::Staff) && !u.has_role(Role::Admin));

        let p = Policy::new()
            .rule("a.A", "X", &["w"], UserRule::Public)
            .rule("a.A", "Y", &[], UserRule::WorkloadOnly);
        let mut paths: Vec<&str> = p.paths().collect();
        paths.sort_unstable();
        assert_eq!(paths, ["/a.A/X", "/a.A/Y"]);
        assert_eq!(p.get("/a.A/X").unwrap().workloads, ["w"]);
        assert!(p.get("/a.A/Y").unwrap().workloads.is_empty());
        assert!(p.get("/a.A/Z").is_none());

        let mut req = tonic::Request::new(());
        let e = caller(&req).unwrap_err();
        assert_eq!(refusal(&e), (Code::Internal, "INTERNAL".to_owned()));
        req.extensions_mut().insert(Caller {
            workload: "gateway".into(),
            user: None,
            client_ip: None,
            user_agent: None,
            request_id: None,
        });
        assert_eq!(caller(&req).unwrap().workload, "gateway");
    }

    fn claims(sub: &str, sid: &str, exp: i64) -> crate::jwt::AccessClaims {
        crate::jwt::AccessClaims {
            iss: "carehub-identity".into(),
            aud: "carehub".into(),
            sub: sub.into(),
            sid: sid.into(),
            roles: vec!["staff".into(), "superuser".into(), "billing".into()],
            amr: vec!["pwd".into(), "otp".into()],
            iat: chrono::Utc::now().timestamp() - 10,
            exp,
            jti: "j".into(),
            pcr: true,
        }
    }

    #[test]
    fn access_tokens_are_verified_and_read_into_a_user() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[4u8; 32]);
        let (sub, sid) = (Uuid::from_u128(11), Uuid::from_u128(12));
        let future = chrono::Utc::now().timestamp() + 300;
        let c = claims(&sub.to_string(), &sid.to_string(), future);
        let token = crate::jwt::sign(&c, "kid-1", &key).unwrap();
        assert_eq!(token_key_id(&token).unwrap(), "kid-1");
        let e = token_key_id("not a token").unwrap_err();
        assert_eq!(
            refusal(&e),
            (Code::Unauthenticated, "UNAUTHENTICATED_TOKEN".to_owned())
        );

        let u = verify_access_token(&token, &key.verifying_key(), "carehub-identity", "carehub")
            .unwrap();
        assert_eq!((u.user_id, u.session_id), (sub, sid));
        assert_eq!(
            u.roles,
            [Role::Staff, Role::Billing],
            "unknown roles are dropped"
        );
        assert_eq!(u.amr, ["pwd", "otp"]);
        assert_eq!((u.issued_at, u.expires_at), (c.iat, c.exp));
        assert!(u.password_change_required);

        for (key, iss, aud) in [
            (other.verifying_key(), "carehub-identity", "carehub"),
            (key.verifying_key(), "someone-else", "carehub"),
            (key.verifying_key(), "carehub-identity", "other"),
        ] {
            let e = verify_access_token(&token, &key, iss, aud).unwrap_err();
            assert_eq!(
                refusal(&e),
                (Code::Unauthenticated, "UNAUTHENTICATED_TOKEN".to_owned())
            );
        }
        let expired = crate::jwt::sign(
            &claims(&sub.to_string(), &sid.to_string(), 1_000),
            "kid-1",
            &key,
        )
        .unwrap();
        let e = verify_access_token(
            &expired,
            &key.verifying_key(),
            "carehub-identity",
            "carehub",
        )
        .unwrap_err();
        assert_eq!(
            refusal(&e),
            (Code::Unauthenticated, "UNAUTHENTICATED_TOKEN".to_owned())
        );
        assert_eq!(e.message(), "access token has expired");

        // Signed, but not ids where ids belong.
        for (s, i) in [
            ("nobody", sid.to_string()),
            (sub.to_string().as_str(), "x".to_owned()),
        ] {
            let e = user_from_claims(&claims(s, &i, future)).unwrap_err();
            assert_eq!(
                refusal(&e),
                (Code::Unauthenticated, "UNAUTHENTICATED_TOKEN".to_owned())
            );
            assert_eq!(e.message(), "access token is malformed");
        }
    }

    /// The layer: refused requests never reach the service and come back as a gRPC status;
    /// allowed ones reach it with their [`Caller`].
    #[tokio::test]
    async fn the_layer_refuses_before_the_service_and_hands_it_the_caller() {
        use tower::{Layer as _, ServiceExt as _};
        let reached = Arc::new(std::sync::Mutex::new(Vec::<Caller>::new()));
        let seen = reached.clone();
        let inner = tower::service_fn(move |req: http::Request<()>| {
            let seen = seen.clone();
            async move {
                if let Some(c) = req.extensions().get::<Caller>() {
                    seen.lock().unwrap().push(c.clone());
                }
                Ok::<_, Infallible>(http::Response::new(String::from("handled")))
            }
        });
        let svc = AuthLayer::new(Arc::new(forwarding_authorizer())).layer(inner);
        let request = |path: &str, workload: &str| {
            let mut r = http::Request::builder()
                .uri(format!("http://x{path}"))
                .header("x-forwarded-for", "203.0.113.5")
                .body(())
                .unwrap();
            r.extensions_mut().insert(peer(workload));
            r
        };
        let ok = svc
            .clone()
            .oneshot(request("/s.S/Open", "gateway"))
            .await
            .unwrap();
        assert_eq!(ok.body(), "handled");
        assert!(ok.headers().get("grpc-status").is_none());
        let refused = svc
            .clone()
            .oneshot(request("/s.S/Open", "billing"))
            .await
            .unwrap();
        assert_eq!(refused.headers().get("grpc-status").unwrap(), "7");
        assert_eq!(refused.body(), "", "the refusal has no body");
        let reached = reached.lock().unwrap();
        assert_eq!(reached.len(), 1, "the refused request reached the service");
        assert_eq!(reached[0].workload, "gateway");
        assert_eq!(reached[0].client_ip.as_deref(), Some("203.0.113.5"));
    }

    /// An inner service that is ready only after being polled once, and insists on it.
    #[derive(Default)]
    struct Picky {
        polled: bool,
        ready: bool,
    }

    impl Clone for Picky {
        fn clone(&self) -> Self {
            // A clone has not been polled ready: readiness belongs to one instance.
            Picky::default()
        }
    }

    impl tower::Service<http::Request<()>> for Picky {
        type Response = http::Response<String>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<String>, Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.polled {
                self.ready = true;
                Poll::Ready(Ok(()))
            } else {
                self.polled = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }

        fn call(&mut self, _req: http::Request<()>) -> Self::Future {
            assert!(self.ready, "called without having been polled ready");
            self.ready = false;
            std::future::ready(Ok(http::Response::new("handled".to_owned())))
        }
    }

    #[tokio::test]
    async fn the_layer_passes_readiness_through_to_the_instance_it_calls() {
        use tower::{Layer as _, Service as _};
        let mut svc = AuthLayer::new(Arc::new(forwarding_authorizer())).layer(Picky::default());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(svc.poll_ready(&mut cx).is_pending(), "not ready yet");
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut req = http::Request::builder()
            .uri("http://x/s.S/Open")
            .body(())
            .unwrap();
        req.extensions_mut().insert(peer("gateway"));
        let response = svc.call(req).await.unwrap();
        assert_eq!(response.body(), "handled");
    }
}
