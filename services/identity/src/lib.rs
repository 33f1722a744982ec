//! carehub identity: users, roles, credentials, sessions, consents, token-signing keys.
//!
//! [`SERVICE`] describes identity to the platform's service kit (`carehub serve identity`,
//! `carehub migrate identity`, `carehub up`, and the test kit's `TestService::start`): its only
//! entry point.

pub mod api;
pub mod bootstrap;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod keys;
pub mod notify;
pub mod session_cache;
pub mod store;
pub mod token;

use std::sync::Arc;

use carehub_platform::config::{AuthConfig, PlatformConfig};
use carehub_platform::crypto::{CryptoConfig, Envelope};
use carehub_platform::idempotency::IdempotencyStore;
use carehub_platform::keys::KeySource;
use carehub_platform::kit::{Api, Context, Service, ServiceConfig};
use carehub_platform::outbox::Outbox;
use carehub_platform::server::RunningServer;
use carehub_platform::with_message_limits;
use carehub_proto::identity::v1::identity_internal_server::IdentityInternalServer;
use carehub_proto::identity::v1::identity_service_server::IdentityServiceServer;
use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::config::{IdentityConfig, IdentitySettings, NotifierKind};
use crate::domain::password::PasswordHasher;
use crate::keys::SigningKeys;
use crate::notify::{LogSandboxNotifier, MemorySandboxNotifier, MessagingNotifier, Notifier};

/// Identity's embedded migrations.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Everything a handler needs.
pub struct AppState {
    pub pool: PgPool,
    pub settings: IdentitySettings,
    pub auth: AuthConfig,
    /// Token-signing keys (versions from `key_source`, publication schedule in the database).
    pub keys: Arc<SigningKeys>,
    /// Every key of the service (KEK, blind index, audit checkpoint, signing), in memory.
    pub key_source: Arc<dyn KeySource>,
    /// Envelope encryption of PHI (names, date of birth, email, phone).
    pub crypto: Envelope,
    /// Answers of mutating RPCs kept for retries, sealed under the KEK (they can carry PHI).
    pub idempotency: IdempotencyStore,
    /// Effects for other services, written in the changing transaction: account events, SMS
    /// preference changes for messaging, and (notifier `messaging`) codes and reset links.
    pub outbox: Outbox,
    pub notifier: Arc<dyn Notifier>,
    pub hasher: PasswordHasher,
    /// Positive session checks, so that most authenticated calls read the database once
    /// ([`session_cache`]). Whatever revokes a session or changes an account's status evicts
    /// here once its transaction has ended, before the RPC answers.
    pub session_cache: Arc<session_cache::SessionCache>,
}

/// Identity's envelope encryption over `pool` with the service's keys.
pub fn envelope(
    pool: &PgPool,
    keys: Arc<dyn KeySource>,
    settings: &IdentitySettings,
) -> anyhow::Result<Envelope> {
    Ok(Envelope::new(
        "identity",
        pool.clone(),
        keys,
        settings.crypto.clone(),
    )?)
}

/// Identity's description for the platform's service kit: the binary's list of services holds
/// `&carehub_identity::SERVICE`.
pub struct IdentityDef;

/// The one value the binary needs.
pub static SERVICE: IdentityDef = IdentityDef;

/// What a started identity hands back beside its server.
pub struct IdentityHandle {
    pub state: Arc<AppState>,
    /// Set when the configuration chose the in-memory notification sandbox (tests).
    pub sandbox: Option<MemorySandboxNotifier>,
}

impl ServiceConfig for IdentityConfig {
    fn server(&self) -> &PlatformConfig {
        &self.server
    }
    fn server_mut(&mut self) -> &mut PlatformConfig {
        &mut self.server
    }
}

/// The email of the admin `carehub up` creates in a fresh install.
const FIRST_ADMIN_EMAIL: &str = "admin@carehub.local";

impl Service for IdentityDef {
    type Config = IdentityConfig;
    type Handle = IdentityHandle;
    const NAME: &'static str = "identity";
    const ABOUT: &'static str = "users, roles, credentials, sessions, consents, token-signing keys";

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn crypto(&self, config: &IdentityConfig) -> CryptoConfig {
        config.identity.crypto.clone()
    }

    fn dev_config(&self, config: &mut IdentityConfig) {
        config.identity.notifier = NotifierKind::LogSandbox;
    }

    async fn build(
        &self,
        ctx: Context,
        config: &IdentityConfig,
    ) -> anyhow::Result<Api<IdentityHandle>> {
        let Context {
            pool,
            keys: key_source,
            crypto,
            idempotency,
            outbox,
            server,
            metrics,
            ..
        } = ctx;
        if config.identity.signing_key_file.is_some() {
            tracing::warn!(
                "identity.signing_key_file is no longer read: signing keys come from server.keys \
                 (Vault carehub/identity/signing or the development key file)"
            );
        }
        let s = &config.identity;
        let token_lifetime = i64::try_from(s.access_token_ttl_secs).unwrap_or(600)
            + carehub_platform::jwt::LEEWAY_SECS;
        let keys = Arc::new(SigningKeys::new(
            key_source.clone(),
            chrono::Duration::seconds(i64::try_from(s.signing_key_lead_secs).unwrap_or(600)),
            chrono::Duration::seconds(token_lifetime),
        ));
        keys.sync(&pool).await?;
        spawn_signing_key_sync(&keys, pool.clone(), s.signing_key_sync_secs);
        let hasher = PasswordHasher::new(
            s.argon2_memory_kib,
            s.argon2_iterations,
            s.argon2_parallelism,
            usize::try_from(s.password_hash_threads).unwrap_or(1),
            usize::try_from(s.password_hash_queue).unwrap_or(0),
        )?;
        let (notifier, sandbox): (Arc<dyn Notifier>, _) = match s.notifier {
            NotifierKind::Messaging => {
                if s.password_reset_link == config::DEFAULT_RESET_LINK {
                    tracing::warn!(
                        "identity.password_reset_link is the placeholder {}: reset links will \
                         not reach the app until it is set",
                        config::DEFAULT_RESET_LINK
                    );
                }
                let m = MessagingNotifier::new(
                    outbox.clone(),
                    pool.clone(),
                    s.password_reset_link.clone(),
                );
                (Arc::new(m), None)
            }
            NotifierKind::LogSandbox => {
                tracing::warn!(
                    "identity uses the LOG SANDBOX notifier: codes are logged, nothing is delivered"
                );
                (Arc::new(LogSandboxNotifier), None)
            }
            NotifierKind::MemorySandbox => {
                let m = MemorySandboxNotifier::default();
                (Arc::new(m.clone()), Some(m))
            }
        };
        let indexed = store::accounts::backfill_phone_index(&pool, &crypto).await?;
        if indexed > 0 {
            tracing::info!(rows = indexed, "phone blind indexes filled in");
        }
        let session_cache = Arc::new(session_cache::SessionCache::new(
            std::time::Duration::from_millis(s.session_cache_ttl_ms),
            usize::try_from(s.session_cache_max_entries).unwrap_or(usize::MAX),
            Some(metrics),
        ));
        if session_cache.enabled() && s.session_cache_listen {
            session_cache::start_listener(&session_cache, &pool).await;
        }
        let state = Arc::new(AppState {
            pool,
            settings: config.identity.clone(),
            auth: server.auth.clone(),
            keys,
            key_source,
            crypto,
            idempotency,
            outbox,
            notifier,
            hasher,
            session_cache,
        });
        spawn_login_throttle_purge(&state);
        let api = api::IdentityApi {
            state: state.clone(),
        };
        let limits = &server.limits;
        Ok(Api::new(
            api::policy::policy(),
            IdentityHandle {
                state: state.clone(),
                sandbox,
            },
        )
        // Identity verifies its own tokens against its keys and sessions.
        .verifier(Arc::new(token::LocalVerifier::new(state.clone())))
        .grpc(with_message_limits!(
            IdentityServiceServer::new(api.clone()),
            limits
        ))
        .grpc(with_message_limits!(
            IdentityInternalServer::new(api),
            limits
        ))
        .admin_routes(token::jwks_router(state)))
    }

    async fn on_up(
        &self,
        server: &RunningServer,
        handle: &IdentityHandle,
    ) -> anyhow::Result<Vec<String>> {
        let state = &handle.state;
        let mut lines = vec![format!(
            "JWKS        http://{}/.well-known/jwks.json",
            server.admin_addr
        )];
        let created =
            bootstrap::first_admin(&state.pool, &state.crypto, &state.hasher, FIRST_ADMIN_EMAIL)
                .await?;
        if let Some(otp) = created {
            lines.push(format!("first admin: {FIRST_ADMIN_EMAIL}"));
            lines.push(format!(
                "one-time password (shown once, change it at first login): {otp}"
            ));
        }
        Ok(lines)
    }
}

/// Picks up rotated signing keys (recording when this replica first saw them) until the keys
/// are dropped with the server's state.
fn spawn_signing_key_sync(keys: &Arc<SigningKeys>, pool: PgPool, every_secs: u64) {
    let weak = Arc::downgrade(keys);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(every_secs.max(1)));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(keys) = weak.upgrade() else { break };
            if let Err(e) = keys.sync(&pool).await {
                tracing::warn!(error = %e, "signing keys not synchronized; retrying");
            }
        }
    });
}

/// Purges stale `login_throttle` rows (unknown emails and source addresses an attacker tried
/// pile up there otherwise) every `identity.login_throttle_purge_secs`, a bounded number of
/// batches per run, until the state is dropped with the server. Replicas may purge at once:
/// each skips the rows another (or a login) holds.
fn spawn_login_throttle_purge(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    let every = std::time::Duration::from_secs(state.settings.login_throttle_purge_secs.max(1));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            // The state is not held through a run: a stopping server drops it at once.
            let Some((pool, retention)) = weak.upgrade().map(|state| {
                let retention = state.settings.login_throttle_retention_secs;
                (
                    state.pool.clone(),
                    i64::try_from(retention).unwrap_or(i64::MAX),
                )
            }) else {
                break;
            };
            match store::sessions::purge_login_throttle(
                &pool,
                retention,
                store::sessions::THROTTLE_PURGE_BATCH,
                store::sessions::THROTTLE_PURGE_MAX_BATCHES,
            )
            .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(purged = n, "stale login-throttle rows purged"),
                Err(e) => {
                    tracing::warn!(error = %e, "purging login-throttle rows failed; retrying")
                }
            }
        }
    });
}
