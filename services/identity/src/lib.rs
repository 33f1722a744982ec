//! carehub identity: users, roles, credentials, sessions, consents, token-signing keys.
//!
//! [`serve`] is the only entry point; `carehub serve identity`, `carehub up` and the tests
//! call it.

pub mod api;
pub mod bootstrap;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod keys;
pub mod notify;
pub mod store;
pub mod token;

use std::future::Future;
use std::sync::Arc;

use carehub_platform::auth::{AuthLayer, Authorizer};
use carehub_platform::config::AuthConfig;
use carehub_platform::crypto::Envelope;
use carehub_platform::idempotency::{self, IdempotencyStore};
use carehub_platform::keys::KeySource;
use carehub_platform::server::{RunningServer, ServiceHost};
use carehub_proto::identity::v1::identity_internal_server::IdentityInternalServer;
use carehub_proto::identity::v1::identity_service_server::IdentityServiceServer;
use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::config::{IdentityConfig, IdentitySettings, NotifierKind};
use crate::domain::password::PasswordHasher;
use crate::keys::SigningKeys;
use crate::notify::{LogSandboxNotifier, MemorySandboxNotifier, Notifier};

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
    pub notifier: Arc<dyn Notifier>,
    pub hasher: PasswordHasher,
}

/// A started identity server.
pub struct Identity {
    pub server: RunningServer,
    pub state: Arc<AppState>,
    /// Set when the configuration chose the in-memory notification sandbox (tests).
    pub sandbox: Option<MemorySandboxNotifier>,
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

/// Connects to the database (migrating it when configured), loads keys from `server.keys`
/// (Vault, or the development key file) and starts serving until `shutdown` resolves.
pub async fn serve(
    config: IdentityConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Identity> {
    let keys = carehub_platform::keys::from_config("identity", &config.server).await?;
    serve_with_keys(config, keys, shutdown).await
}

/// [`serve`] with a key source given by the caller (tests rotate keys through it).
pub async fn serve_with_keys(
    config: IdentityConfig,
    key_source: Arc<dyn KeySource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Identity> {
    let pool = carehub_platform::db::connect(&config.server.database).await?;
    if config.server.database.migrate_on_start {
        carehub_platform::db::migrate(&pool, &MIGRATOR).await?;
    }
    if config.identity.signing_key_file.is_some() {
        tracing::warn!(
            "identity.signing_key_file is no longer read: signing keys come from server.keys \
             (Vault carehub/identity/signing or the development key file)"
        );
    }
    let s = &config.identity;
    let token_lifetime =
        i64::try_from(s.access_token_ttl_secs).unwrap_or(600) + carehub_platform::jwt::LEEWAY_SECS;
    let keys = Arc::new(SigningKeys::new(
        key_source.clone(),
        chrono::Duration::seconds(i64::try_from(s.signing_key_lead_secs).unwrap_or(600)),
        chrono::Duration::seconds(token_lifetime),
    ));
    keys.sync(&pool).await?;
    spawn_signing_key_sync(&keys, pool.clone(), s.signing_key_sync_secs);
    let crypto = envelope(&pool, key_source.clone(), s)?;
    let hasher = PasswordHasher::new(
        s.argon2_memory_kib,
        s.argon2_iterations,
        s.argon2_parallelism,
        usize::try_from(s.password_hash_threads).unwrap_or(1),
        usize::try_from(s.password_hash_queue).unwrap_or(0),
    )?;
    let (notifier, sandbox): (Arc<dyn Notifier>, _) = match s.notifier {
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
    let idempotency = IdempotencyStore::new(pool.clone(), key_source.clone());
    idempotency::spawn_purger(
        pool.clone(),
        idempotency::DEFAULT_RETENTION,
        std::time::Duration::from_secs(3600),
    );
    let state = Arc::new(AppState {
        pool,
        settings: config.identity.clone(),
        auth: config.server.auth.clone(),
        keys,
        key_source,
        crypto,
        idempotency,
        notifier,
        hasher,
    });

    let authorizer = Arc::new(Authorizer {
        policy: api::policy::policy(),
        verifier: Arc::new(token::LocalVerifier::new(state.clone())),
        gateway_workloads: config.server.auth.gateway_workloads.clone(),
    });
    let api = api::IdentityApi {
        state: state.clone(),
    };
    let max = config.server.limits.max_message_bytes;
    let server = ServiceHost::new("identity", &config.server)
        .add_service(
            IdentityServiceServer::new(api.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            IdentityInternalServer::new(api)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .with_auth(AuthLayer::new(authorizer))
        .with_audit(state.pool.clone(), state.key_source.clone())
        // Past server.keys.max_staleness_secs without Vault, keys fail closed: not ready.
        .readiness(carehub_platform::keys::readiness(state.key_source.clone()))
        .admin_routes(token::jwks_router(state.clone()))
        .start(shutdown)
        .await?;
    // The outbox relay (account events to subscribers), for as long as the state lives.
    carehub_platform::outbox::Relay::new(
        state.pool.clone(),
        state.key_source.clone(),
        &server.tls,
        &config.server.outbox,
        server.metrics.clone(),
    )?
    .spawn_while(&state);
    carehub_platform::keys::spawn_metrics(
        &state.key_source,
        server.metrics.clone(),
        std::time::Duration::from_secs(15),
    );
    Ok(Identity {
        server,
        state,
        sandbox,
    })
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
