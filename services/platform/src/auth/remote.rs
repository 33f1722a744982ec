//! Verifies identity's access tokens in every other service, without a call to identity on the
//! request path.
//!
//! * Signing keys come from `IdentityInternal.ListSigningKeys` and are cached; a token whose key
//!   id is unknown triggers one refetch (at most one every [`KEY_REFETCH_MIN_INTERVAL`], so a
//!   flood of made-up key ids cannot turn into a flood of calls to identity).
//! * Revoked sessions and accounts come from `IdentityInternal.ListRevocations`, polled every
//!   `server.auth.revocation_poll_secs`. If the feed could not be read for longer than
//!   `server.auth.revocation_max_staleness_secs`, user tokens are refused with UNAVAILABLE:
//!   a suspended account must not keep working just because identity is unreachable
//!   (the platform promises that suspension reaches every service within 60 seconds).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use carehub_proto::common::v1::ErrorReason;
use carehub_proto::identity::v1::identity_internal_client::IdentityInternalClient;
use carehub_proto::identity::v1::{
    revocation, ListRevocationsRequest, ListRevocationsResponse, ListSigningKeysRequest,
};
use ed25519_dalek::VerifyingKey;
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinHandle;
use tonic::{Code, Status};
use uuid::Uuid;

use super::{token_key_id, unauthenticated, TokenVerifier, UserCaller, VerifiedTokens};
use crate::client::ServiceChannel;
use crate::config::{AuthConfig, PlatformConfig};
use crate::errors;
use crate::jwt::{self, LEEWAY_SECS};
use crate::tls::TlsStore;

/// Refetching keys more often than this on unknown key ids is pointless: identity publishes a
/// key well before it signs with it.
pub const KEY_REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Longest lifetime of an access token identity issues (10 minutes) plus clock leeway: after
/// that a revocation entry can no longer match a valid token and is dropped.
const REVOCATION_RETENTION_SECS: i64 = 600 + 2 * LEEWAY_SECS;

/// Identity's largest ListRevocations answer: a page this full may have more behind it.
const FEED_PAGE_MAX: usize = 10_000;
/// Pages read in one poll before giving up until the next tick (the feed then stays stale).
const MAX_PAGES_PER_POLL: usize = 20;

/// A [`TokenVerifier`] backed by identity's internal API. Cheap to clone.
#[derive(Clone)]
pub struct RemoteVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    client: IdentityInternalClient<ServiceChannel>,
    issuer: String,
    audience: String,
    poll_interval: Duration,
    max_staleness: Duration,
    keys: RwLock<HashMap<String, VerifyingKey>>,
    verified: VerifiedTokens,
    /// Serializes refetches; holds when the last one happened.
    key_fetch: AsyncMutex<Option<Instant>>,
    feed: RwLock<RevocationState>,
    /// Serializes polls (the background task and [`RemoteVerifier::refresh_revocations`]).
    poll_lock: AsyncMutex<()>,
}

#[derive(Default)]
struct RevocationState {
    /// Revoked session id → when it was revoked (unix seconds).
    sessions: HashMap<Uuid, i64>,
    /// User id → the latest instant (unix seconds) at or before which all tokens are invalid.
    users: HashMap<Uuid, i64>,
    /// `as_of` of the last successful poll, passed back as `since`.
    since: Option<prost_types::Timestamp>,
    last_success: Option<Instant>,
}

impl RemoteVerifier {
    /// A verifier talking to identity over `channel` (mTLS, our own workload certificate).
    /// Nothing is fetched yet: call [`Self::refresh_keys`] / [`Self::refresh_revocations`] or
    /// [`Self::spawn_refresher`]; until the first successful poll, user tokens get UNAVAILABLE.
    pub fn new(channel: ServiceChannel, cfg: &AuthConfig) -> Self {
        Self::with_intervals(
            channel,
            cfg,
            Duration::from_secs(cfg.revocation_poll_secs),
            Duration::from_secs(cfg.revocation_max_staleness_secs),
        )
    }

    /// The verifier of a service configured with `server.auth.identity_endpoint`: connects to
    /// identity (lazily, so services may start in any order) with this service's own mTLS
    /// certificate; identity's certificate must name `identity`.
    pub fn from_config(cfg: &PlatformConfig, tls: &Arc<TlsStore>) -> anyhow::Result<Self> {
        let endpoint = cfg.auth.identity_endpoint.as_deref().ok_or_else(|| {
            anyhow::anyhow!("server.auth.identity_endpoint must be set to verify access tokens")
        })?;
        let channel = crate::client::connect_lazy(endpoint, tls, "identity")?;
        Ok(Self::new(channel, &cfg.auth))
    }

    /// Like [`Self::new`] with explicit intervals (tests use sub-second ones).
    pub fn with_intervals(
        channel: ServiceChannel,
        cfg: &AuthConfig,
        poll_interval: Duration,
        max_staleness: Duration,
    ) -> Self {
        RemoteVerifier {
            inner: Arc::new(Inner {
                client: IdentityInternalClient::new(channel),
                issuer: cfg.issuer.clone(),
                audience: cfg.audience.clone(),
                poll_interval,
                max_staleness,
                keys: RwLock::new(HashMap::new()),
                verified: VerifiedTokens::default(),
                key_fetch: AsyncMutex::new(None),
                feed: RwLock::new(RevocationState::default()),
                poll_lock: AsyncMutex::new(()),
            }),
        }
    }

    /// True once keys and a fresh revocation feed are held: the service may take user traffic.
    pub fn is_ready(&self) -> bool {
        let has_keys = read(&self.inner.keys)
            .map(|k| !k.is_empty())
            .unwrap_or(false);
        has_keys && self.feed_is_fresh()
    }

    /// True once keys and the revocation feed were each loaded at least once.
    fn has_loaded_once(&self) -> bool {
        let has_keys = read(&self.inner.keys)
            .map(|k| !k.is_empty())
            .unwrap_or(false);
        has_keys
            && read(&self.inner.feed)
                .ok()
                .is_some_and(|f| f.last_success.is_some())
    }

    fn feed_is_fresh(&self) -> bool {
        read(&self.inner.feed)
            .ok()
            .and_then(|f| f.last_success)
            .is_some_and(|t| t.elapsed() <= self.inner.max_staleness)
    }

    /// Replaces the cached keys with identity's published ones.
    pub async fn refresh_keys(&self) -> Result<usize, Status> {
        let mut last = self.inner.key_fetch.lock().await;
        let count = self.fetch_keys().await?;
        *last = Some(Instant::now());
        Ok(count)
    }

    async fn fetch_keys(&self) -> Result<usize, Status> {
        let mut client = self.inner.client.clone();
        let published = client
            .list_signing_keys(ListSigningKeysRequest {})
            .await?
            .into_inner()
            .keys;
        let mut keys = HashMap::with_capacity(published.len());
        for key in published {
            if key.kty != "OKP" || key.crv != "Ed25519" || key.alg != "EdDSA" {
                tracing::warn!(kid = %key.kid, "identity published a key that is not Ed25519; ignored");
                continue;
            }
            match jwt::key_from_jwk_x(&key.x) {
                Some(vk) => {
                    keys.insert(key.kid, vk);
                }
                None => {
                    tracing::warn!(kid = %key.kid, "identity published a malformed key; ignored")
                }
            }
        }
        let count = keys.len();
        if let Ok(mut cached) = self.inner.keys.write() {
            *cached = keys;
        }
        Ok(count)
    }

    /// The key for `kid`, refetching once when it is unknown (rate-limited).
    async fn key_for(&self, kid: &str) -> Result<VerifyingKey, Status> {
        if let Some(key) = read(&self.inner.keys)?.get(kid) {
            return Ok(*key);
        }
        {
            let mut last = self.inner.key_fetch.lock().await;
            // Another request may have refetched while we waited for the lock.
            if let Some(key) = read(&self.inner.keys)?.get(kid) {
                return Ok(*key);
            }
            if last.is_none_or(|t| t.elapsed() >= KEY_REFETCH_MIN_INTERVAL) {
                *last = Some(Instant::now());
                if let Err(status) = self.fetch_keys().await {
                    tracing::warn!(code = ?status.code(), "could not refetch identity's signing keys");
                }
            }
        }
        read(&self.inner.keys)?
            .get(kid)
            .copied()
            .ok_or_else(|| unauthenticated("access token is signed by an unknown key"))
    }

    /// Reads revocations published since the last poll.
    pub async fn refresh_revocations(&self) -> Result<usize, Status> {
        let _one_at_a_time = self.inner.poll_lock.lock().await;
        let mut total = 0;
        // A full page means identity stopped early; keep reading until caught up, and only
        // then call the feed fresh.
        for _ in 0..MAX_PAGES_PER_POLL {
            let since = read(&self.inner.feed)?.since;
            let mut client = self.inner.client.clone();
            let page = client
                .list_revocations(ListRevocationsRequest { since })
                .await?
                .into_inner();
            let count = page.revocations.len();
            total += count;
            self.apply(page)?;
            if count < FEED_PAGE_MAX {
                let mut feed = self
                    .inner
                    .feed
                    .write()
                    .map_err(|_| errors::internal("revocation cache poisoned"))?;
                feed.last_success = Some(Instant::now());
                return Ok(total);
            }
        }
        Ok(total)
    }

    fn apply(&self, page: ListRevocationsResponse) -> Result<(), Status> {
        let now = chrono::Utc::now().timestamp();
        let mut feed = self
            .inner
            .feed
            .write()
            .map_err(|_| errors::internal("revocation cache poisoned"))?;
        for r in page.revocations {
            let at = r.revoke_time.map(|t| t.seconds).unwrap_or(now);
            match r.target {
                Some(revocation::Target::SessionId(id)) => {
                    if let Ok(id) = Uuid::parse_str(&id) {
                        feed.sessions.insert(id, at);
                    }
                }
                Some(revocation::Target::UserId(id)) => {
                    if let Ok(id) = Uuid::parse_str(&id) {
                        let entry = feed.users.entry(id).or_insert(at);
                        *entry = (*entry).max(at);
                    }
                }
                None => {}
            }
        }
        let horizon = now - REVOCATION_RETENTION_SECS;
        feed.sessions.retain(|_, at| *at >= horizon);
        feed.users.retain(|_, at| *at >= horizon);
        if page.as_of.is_some() {
            feed.since = page.as_of;
        }
        Ok(())
    }

    /// Polls revocations every poll interval and refreshes keys every ten polls, until the
    /// returned task is aborted. Failures are logged and retried on the next tick.
    pub fn spawn_refresher(&self) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.inner.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut polls: u64 = 0;
            loop {
                tick.tick().await;
                if polls.is_multiple_of(10) {
                    if let Err(status) = this.refresh_keys().await {
                        tracing::warn!(code = ?status.code(), "could not fetch identity's signing keys");
                    }
                }
                polls = polls.wrapping_add(1);
                if let Err(status) = this.refresh_revocations().await {
                    tracing::warn!(code = ?status.code(), "could not poll identity's revocation feed");
                }
            }
        })
    }

    fn check_revocation(&self, user: &UserCaller) -> Result<(), Status> {
        let feed = read(&self.inner.feed)?;
        let fresh = feed
            .last_success
            .is_some_and(|t| t.elapsed() <= self.inner.max_staleness);
        if !fresh {
            return Err(errors::status(
                Code::Unavailable,
                ErrorReason::Unavailable,
                "cannot confirm that the session is still valid: identity's revocation feed is unavailable",
            ));
        }
        if feed.sessions.contains_key(&user.session_id) {
            return Err(unauthenticated(
                "the access token's session has been revoked",
            ));
        }
        // `iat` has whole seconds: a token from the same second as the revocation may predate it,
        // so it is refused too (the client refreshes and gets a token from a later second).
        if feed
            .users
            .get(&user.user_id)
            .is_some_and(|revoked_at| user.issued_at <= *revoked_at)
        {
            return Err(unauthenticated(
                "the access token's session has been revoked",
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl TokenVerifier for RemoteVerifier {
    fn has_loaded(&self) -> bool {
        self.has_loaded_once()
    }

    async fn verify(&self, token: &str) -> Result<UserCaller, Status> {
        let key = self.key_for(&token_key_id(token)?).await?;
        let user =
            self.inner
                .verified
                .verify(token, &key, &self.inner.issuer, &self.inner.audience)?;
        self.check_revocation(&user)?;
        Ok(user)
    }
}

fn read<T>(lock: &RwLock<T>) -> Result<std::sync::RwLockReadGuard<'_, T>, Status> {
    lock.read()
        .map_err(|_| errors::internal("token verifier cache poisoned"))
}

/// The verifier against a scripted identity (plain HTTP/2 on loopback): what it publishes and
/// how often it is asked are under the test's control, which a real identity does not allow
/// (foreign key types, revocations older than any token).
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use carehub_proto::identity::v1::identity_internal_server::{
        IdentityInternal, IdentityInternalServer,
    };
    use carehub_proto::identity::v1::{
        ListSigningKeysResponse, LookupUserRequest, Revocation, SigningKey as PublishedKey,
        UserSummary,
    };
    use ed25519_dalek::SigningKey;
    use tonic::{Request, Response};

    use crate::jwt::AccessClaims;

    #[derive(Default)]
    struct ScriptedIdentity {
        keys: Mutex<Vec<PublishedKey>>,
        revocations: Mutex<Vec<Revocation>>,
        key_calls: AtomicUsize,
    }

    /// The server's handle on the script the test keeps changing.
    struct Scripted(Arc<ScriptedIdentity>);

    #[tonic::async_trait]
    impl IdentityInternal for Scripted {
        async fn list_signing_keys(
            &self,
            _: Request<ListSigningKeysRequest>,
        ) -> Result<Response<ListSigningKeysResponse>, Status> {
            self.0.key_calls.fetch_add(1, Ordering::SeqCst);
            let keys = self.0.keys.lock().unwrap().clone();
            Ok(Response::new(ListSigningKeysResponse { keys }))
        }

        async fn list_revocations(
            &self,
            _: Request<ListRevocationsRequest>,
        ) -> Result<Response<ListRevocationsResponse>, Status> {
            let revocations = self.0.revocations.lock().unwrap().clone();
            Ok(Response::new(ListRevocationsResponse {
                revocations,
                as_of: Some(prost_types::Timestamp {
                    seconds: chrono::Utc::now().timestamp(),
                    nanos: 0,
                }),
            }))
        }

        async fn lookup_user(
            &self,
            _: Request<LookupUserRequest>,
        ) -> Result<Response<UserSummary>, Status> {
            Err(Status::unimplemented("not scripted"))
        }

        async fn request_account_action(
            &self,
            _: Request<carehub_proto::identity::v1::RequestAccountActionRequest>,
        ) -> Result<Response<UserSummary>, Status> {
            Err(Status::unimplemented("not scripted"))
        }

        async fn get_contact(
            &self,
            _: Request<carehub_proto::identity::v1::GetContactRequest>,
        ) -> Result<Response<carehub_proto::identity::v1::Contact>, Status> {
            Err(Status::unimplemented("not scripted"))
        }

        async fn apply_sms_consent(
            &self,
            _: Request<carehub_proto::identity::v1::ApplySmsConsentRequest>,
        ) -> Result<Response<carehub_proto::identity::v1::ApplySmsConsentResponse>, Status>
        {
            Err(Status::unimplemented("not scripted"))
        }
    }

    async fn start(identity: Arc<ScriptedIdentity>) -> RemoteVerifier {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IdentityInternalServer::new(Scripted(identity)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        RemoteVerifier::with_intervals(
            ServiceChannel::new(channel),
            &AuthConfig::default(),
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
    }

    fn published(kid: &str, key: &SigningKey) -> PublishedKey {
        PublishedKey {
            kid: kid.to_owned(),
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x: jwt::jwk_x(&key.verifying_key()),
            alg: "EdDSA".to_owned(),
            not_before_time: None,
        }
    }

    fn token(kid: &str, key: &SigningKey) -> String {
        let cfg = AuthConfig::default();
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            iss: cfg.issuer,
            aud: cfg.audience,
            sub: Uuid::now_v7().to_string(),
            sid: Uuid::now_v7().to_string(),
            roles: vec!["patient".into()],
            amr: vec!["pwd".into()],
            iat: now,
            exp: now + 600,
            jti: Uuid::new_v4().to_string(),
            pcr: false,
        };
        jwt::sign(&claims, kid, key).unwrap()
    }

    fn revoked_session(age_secs: i64) -> Revocation {
        Revocation {
            target: Some(revocation::Target::SessionId(Uuid::now_v7().to_string())),
            revoke_time: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp() - age_secs,
                nanos: 0,
            }),
        }
    }

    fn revoked_user(age_secs: i64) -> Revocation {
        Revocation {
            target: Some(revocation::Target::UserId(Uuid::now_v7().to_string())),
            ..revoked_session(age_secs)
        }
    }

    #[tokio::test]
    async fn only_ed25519_keys_for_eddsa_are_taken_from_what_identity_publishes() {
        let identity = Arc::new(ScriptedIdentity::default());
        let key = SigningKey::from_bytes(&[7; 32]);
        // Each impostor differs from a good key in one field only, so that every part of the
        // test matters on its own.
        *identity.keys.lock().unwrap() = vec![
            published("good", &key),
            PublishedKey {
                kty: "RSA".to_owned(),
                ..published("wrong-kty", &key)
            },
            PublishedKey {
                crv: "X25519".to_owned(),
                ..published("wrong-crv", &key)
            },
            PublishedKey {
                alg: "ES256".to_owned(),
                ..published("wrong-alg", &key)
            },
            PublishedKey {
                x: "not base64url!".to_owned(),
                ..published("malformed", &key)
            },
        ];
        let verifier = start(identity).await;
        assert_eq!(verifier.refresh_keys().await.unwrap(), 1);
        verifier.refresh_revocations().await.unwrap();
        verifier.verify(&token("good", &key)).await.unwrap();
        for kid in ["wrong-kty", "wrong-crv", "wrong-alg", "malformed"] {
            let e = verifier.verify(&token(kid, &key)).await.unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated, "{kid}");
            assert!(
                e.message().contains("unknown key"),
                "{kid}: {}",
                e.message()
            );
        }
    }

    #[tokio::test]
    async fn a_flood_of_unknown_key_ids_makes_one_call_to_identity() {
        let identity = Arc::new(ScriptedIdentity::default());
        let key = SigningKey::from_bytes(&[9; 32]);
        *identity.keys.lock().unwrap() = vec![published("current", &key)];
        let verifier = start(identity.clone()).await;
        verifier.refresh_revocations().await.unwrap();
        for i in 0..50 {
            let e = verifier
                .verify(&token(&format!("made-up-{i}"), &key))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated);
        }
        assert_eq!(identity.key_calls.load(Ordering::SeqCst), 1);
        // The one refetch did bring identity's real key, which now verifies without a call.
        verifier.verify(&token("current", &key)).await.unwrap();
        assert_eq!(identity.key_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn revocations_are_kept_while_a_token_could_be_valid_and_dropped_after() {
        let identity = Arc::new(ScriptedIdentity::default());
        // A token lives at most 600 s and clocks may disagree by 30 s either way: a revocation
        // 655 s old may still match a token that verifies; one 665 s old cannot.
        let (inside, outside) = (655, 665);
        *identity.revocations.lock().unwrap() = vec![
            revoked_session(inside),
            revoked_session(outside),
            revoked_user(inside),
            revoked_user(outside),
            revoked_session(0),
        ];
        let verifier = start(identity).await;
        verifier.refresh_revocations().await.unwrap();
        let feed = read(&verifier.inner.feed).unwrap();
        assert_eq!(feed.sessions.len(), 2, "sessions kept: {:?}", feed.sessions);
        assert_eq!(feed.users.len(), 1, "users kept: {:?}", feed.users);
        let now = chrono::Utc::now().timestamp();
        assert!(feed
            .sessions
            .values()
            .chain(feed.users.values())
            .all(|at| now - at <= inside + 2));
    }
}
