//! carehub identity: users, roles, credentials, sessions, consents, token-signing keys.
//!
//! [`serve`] is the only entry point; `carehub serve identity`, `carehub up` and the tests
//! call it.

pub mod api;
pub mod bootstrap;
pub mod config;
pub mod domain;
pub mod error;
pub mod keys;
pub mod notify;
pub mod store;
pub mod token;

use std::future::Future;
use std::sync::Arc;

use carehub_platform::auth::{AuthLayer, Authorizer};
use carehub_platform::config::AuthConfig;
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
    pub keys: Arc<SigningKeys>,
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

/// Connects to the database (migrating it when configured), loads keys and starts serving until
/// `shutdown` resolves.
pub async fn serve(
    config: IdentityConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Identity> {
    let pool = carehub_platform::db::connect(&config.server.database).await?;
    if config.server.database.migrate_on_start {
        carehub_platform::db::migrate(&pool, &MIGRATOR).await?;
    }
    let keys = Arc::new(SigningKeys::load(&config.identity.signing_key_file)?);
    let s = &config.identity;
    let hasher = PasswordHasher::new(
        s.argon2_memory_kib,
        s.argon2_iterations,
        s.argon2_parallelism,
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
    let state = Arc::new(AppState {
        pool,
        settings: config.identity.clone(),
        auth: config.server.auth.clone(),
        keys,
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
        .admin_routes(token::jwks_router(state.clone()))
        .start(shutdown)
        .await?;
    Ok(Identity {
        server,
        state,
        sandbox,
    })
}
