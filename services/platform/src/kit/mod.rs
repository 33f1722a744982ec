//! The service kit: a service describes itself once ([`Service`]) and the platform does the rest.
//!
//! A service crate exports one value implementing [`Service`]: its name, its configuration type
//! (defaults and validation, `[server]` plus its own table), its embedded migrator and how to
//! build its API from a prepared [`Context`]. [`start`] prepares everything every service needs
//! the same way — keys (from `server.keys`, or a key source given by the caller), the database
//! pool and migrations on start, envelope encryption, the idempotency store and its purger —
//! lets the service build its state, handlers and policy, and mounts them behind the platform's
//! auth layer, audit host (`AuditLog`, checkpoints, sink), readiness (keys fail closed),
//! metrics (with the key-cache gauges), message limits and admin routes.
//!
//! The binary keeps one list of services as `&[&dyn ServiceDef]`: [`ServiceDef`] is the
//! object-safe face of every [`Service`] (a blanket impl), so `carehub serve|migrate|up|health`
//! and the chart check iterate over one list.

use std::any::Any;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, LocalBoxFuture};
use futures::FutureExt as _;
use http::{Request, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;

use crate::admin::{Metrics, ReadinessCheck};
use crate::auth::{AuthLayer, Authorizer, Policy, TokenVerifier, UserCaller};
use crate::config::{ConfigError, PlatformConfig, Validate};
use crate::crypto::{CryptoConfig, Envelope};
use crate::idempotency::{self, IdempotencyStore};
use crate::keys::KeySource;
use crate::server::{RunningServer, ServiceHost};
use crate::tls::TlsStore;

/// How often expired idempotency answers are purged.
const IDEMPOTENCY_PURGE_EVERY: Duration = Duration::from_secs(3600);
/// How often the key-cache gauges are published.
const KEY_METRICS_EVERY: Duration = Duration::from_secs(15);

/// A service's whole configuration: the platform's `[server]` table plus its own settings.
pub trait ServiceConfig:
    Serialize + DeserializeOwned + Default + Validate + Clone + Send + Sync + 'static
{
    fn server(&self) -> &PlatformConfig;
    fn server_mut(&mut self) -> &mut PlatformConfig;
}

/// A carehub service, described once by its crate.
pub trait Service: Send + Sync + 'static {
    /// `[server]` plus the service's own table, with defaults and validation.
    type Config: ServiceConfig;
    /// What a started service hands back to its caller beside the server (identity: its state
    /// and the notification sandbox), for tests and for [`Service::on_up`].
    type Handle: Send + Sync + 'static;

    /// A DNS label: `carehub serve <name>`, the workload certificate
    /// `spiffe://<domain>/service/<name>`, Vault's `carehub/<name>/...`, database
    /// `carehub_<name>` under `carehub up`, the chart's `services.<name>`.
    const NAME: &'static str;
    /// One line for `--help` and `carehub services`.
    const ABOUT: &'static str;

    /// The service's embedded migrations (`sqlx::migrate!`); the platform's run first.
    fn migrator(&self) -> &'static Migrator;

    /// Envelope encryption settings of the service's PHI (default: the platform's defaults).
    fn crypto(&self, _config: &Self::Config) -> CryptoConfig {
        CryptoConfig::default()
    }

    /// What `carehub up` changes in the defaults for a developer's machine (sandboxes).
    fn dev_config(&self, _config: &mut Self::Config) {}

    /// Builds the service's state, handlers and policy from what the platform prepared.
    fn build(
        &self,
        ctx: Context,
        config: &Self::Config,
    ) -> impl Future<Output = anyhow::Result<Api<Self::Handle>>>;

    /// Runs once `carehub up` started every service; returns lines to print under the
    /// service's addresses (identity: its JWKS URL and a first admin's one-time password).
    fn on_up(
        &self,
        _server: &RunningServer,
        _handle: &Self::Handle,
    ) -> impl Future<Output = anyhow::Result<Vec<String>>> {
        async { Ok(Vec::new()) }
    }
}

/// Everything the platform prepared for a service before it builds its API.
pub struct Context {
    pub name: &'static str,
    /// The `[server]` table.
    pub server: PlatformConfig,
    /// The service's database, migrated when `server.database.migrate_on_start` is set.
    pub pool: PgPool,
    /// Every key of the service (KEK, blind index, audit checkpoint, its own), in memory.
    pub keys: Arc<dyn KeySource>,
    /// Envelope encryption of PHI under the service's KEK.
    pub crypto: Envelope,
    /// Answers of mutating RPCs kept for retries (sealed under the KEK); purged in the
    /// background.
    pub idempotency: IdempotencyStore,
    /// Queues cross-service effects in the caller's transaction (one instance per service, so
    /// that its sealer's derived keys are cached); the kit runs the relay.
    pub outbox: crate::outbox::Outbox,
    /// The service's metrics, for gauges and counters of its own.
    pub metrics: Arc<Metrics>,
    /// The service's mTLS material (also what its clients to other services present).
    pub tls: Arc<TlsStore>,
}

type MountFn = Box<dyn FnOnce(ServiceHost) -> ServiceHost + Send>;

/// What a service's [`Service::build`] returns: its gRPC services, policy, token verifier, admin
/// routes and readiness, and its handle.
pub struct Api<H> {
    mounts: Vec<MountFn>,
    policy: Policy,
    verifier: Option<Arc<dyn TokenVerifier>>,
    admin_routes: Option<axum::Router>,
    readiness: Option<ReadinessCheck>,
    on_drain: Option<Box<dyn FnOnce() + Send>>,
    handle: H,
}

impl<H> Api<H> {
    /// An API answering under `policy` (every RPC needs a rule; the auth layer refuses the
    /// rest).
    pub fn new(policy: Policy, handle: H) -> Self {
        Self {
            mounts: Vec::new(),
            policy,
            verifier: None,
            admin_routes: None,
            readiness: None,
            on_drain: None,
            handle,
        }
    }

    /// Mounts a generated tonic server; wrap it with [`crate::with_message_limits!`]
    /// (`with_message_limits!(FooServer::new(api), ctx.server.limits)`), since tonic keeps its
    /// size limits on each generated server.
    pub fn grpc<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<
                Request<Body>,
                Response = Response<Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.mounts
            .push(Box::new(move |host| host.add_service(svc)));
        self
    }

    /// How user tokens are verified. Default: identity's published keys and revocation feed
    /// at `server.auth.identity_endpoint` ([`crate::auth::remote::RemoteVerifier`]); without
    /// an endpoint, user tokens are refused and only workload-only rules can be met.
    pub fn verifier(mut self, verifier: Arc<dyn TokenVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Extra routes on the admin port (identity: `/.well-known/jwks.json`).
    pub fn admin_routes(mut self, router: axum::Router) -> Self {
        self.admin_routes = Some(match self.admin_routes.take() {
            Some(existing) => existing.merge(router),
            None => router,
        });
        self
    }

    /// Called once when the server starts draining (shutdown began): long-lived streams end
    /// here with a resumable status instead of holding the drain until its timeout.
    pub fn on_drain(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_drain = Some(Box::new(f));
        self
    }

    /// A readiness condition of the service's own, on top of the keys' (both must hold).
    pub fn readiness(mut self, check: ReadinessCheck) -> Self {
        self.readiness = Some(check);
        self
    }
}

/// A started service: its server and its handle.
pub struct Started<H> {
    pub server: RunningServer,
    pub handle: H,
}

/// Starts `service`: prepares the common parts, builds its API and serves it until `shutdown`
/// resolves. Keys come from `keys` when given (tests rotate keys through their own source),
/// else from `server.keys` (Vault, or the development key file).
pub async fn start<S: Service>(
    service: &S,
    config: S::Config,
    keys: Option<Arc<dyn KeySource>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Started<S::Handle>> {
    let (ctx, host) = prepare(
        S::NAME,
        ServiceConfig::server(&config).clone(),
        keys,
        service.migrator(),
        service.crypto(&config),
    )
    .await?;
    let server_cfg = ctx.server.clone();
    let (pool, keys, tls) = (ctx.pool.clone(), ctx.keys.clone(), ctx.tls.clone());
    let api = service.build(ctx, &config).await?;
    let Api {
        mounts,
        policy,
        verifier,
        admin_routes,
        readiness,
        on_drain,
        handle,
    } = api;
    let host = mounts.into_iter().fold(host, |host, mount| mount(host));
    let server = serve(Serve {
        host,
        server: server_cfg,
        pool,
        keys,
        tls,
        policy,
        verifier,
        admin_routes,
        readiness,
        shutdown: shutdown.boxed(),
    })
    .await?;
    if let Some(f) = on_drain {
        let mut health = server.health_watch();
        tokio::spawn(async move {
            // Ends with the server too (the sender dropped): nothing left to drain then.
            let _ = health
                .wait_for(|h| h.phase == crate::lifecycle::Phase::Draining)
                .await;
            f();
        });
    }
    Ok(Started { server, handle })
}

/// Keys, pool and migrations, envelope, idempotency store and purger, TLS, the host.
async fn prepare(
    name: &'static str,
    server: PlatformConfig,
    keys: Option<Arc<dyn KeySource>>,
    migrator: &'static Migrator,
    crypto: CryptoConfig,
) -> anyhow::Result<(Context, ServiceHost)> {
    let keys = match keys {
        Some(keys) => keys,
        None => crate::keys::from_config(name, &server).await?,
    };
    let pool = crate::db::connect(&server.database).await?;
    if server.database.migrate_on_start {
        crate::db::migrate(&pool, migrator).await?;
    }
    let crypto = Envelope::new(name, pool.clone(), keys.clone(), crypto)?;
    let idempotency = IdempotencyStore::new(pool.clone(), keys.clone());
    idempotency::spawn_purger(
        pool.clone(),
        idempotency::DEFAULT_RETENTION,
        IDEMPOTENCY_PURGE_EVERY,
    );
    // PEM files, or a certificate from Vault PKI kept renewed while the server runs.
    let tls = crate::keys::pki::tls_store(name, &server).await?;
    let host = ServiceHost::new(name, &server).with_tls(tls.clone());
    let keys_for_outbox = keys.clone();
    let ctx = Context {
        name,
        metrics: host.metrics(),
        server,
        pool,
        keys,
        crypto,
        idempotency,
        outbox: crate::outbox::Outbox::new(keys_for_outbox),
        tls,
    };
    Ok((ctx, host))
}

/// How long a starting server waits for its token verifier's first load before it starts
/// anyway, not ready.
const FIRST_TOKEN_KEYS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What [`serve`] puts around a service's API.
struct Serve {
    host: ServiceHost,
    server: PlatformConfig,
    pool: PgPool,
    keys: Arc<dyn KeySource>,
    tls: Arc<TlsStore>,
    policy: Policy,
    verifier: Option<Arc<dyn TokenVerifier>>,
    admin_routes: Option<axum::Router>,
    readiness: Option<ReadinessCheck>,
    shutdown: BoxFuture<'static, ()>,
}

/// Auth layer, audit host, readiness, admin routes; starts the host and the key metrics.
async fn serve(s: Serve) -> anyhow::Result<RunningServer> {
    let verifier = match s.verifier {
        Some(verifier) => verifier,
        None => default_verifier(&s.server, &s.tls)?,
    };
    let authorizer = Arc::new(Authorizer {
        policy: s.policy,
        verifier,
        gateway_workloads: s.server.auth.gateway_workloads.clone(),
    });
    let relay_pool = s.pool.clone();
    let mut host = s.host;
    if let Some(routes) = s.admin_routes {
        host = host.admin_routes(routes);
    }
    // Past server.keys.max_staleness_secs without Vault, keys fail closed: not ready. Nor
    // before the token verifier first loaded identity's keys and revocations: until then every
    // user call would be refused with UNAVAILABLE.
    let keys_ready = crate::keys::readiness(s.keys.clone());
    let tokens = authorizer.verifier.clone();
    // The verifier's first poll starts with it and takes milliseconds when identity answers;
    // without it the server starts not ready, and readiness follows once it loaded.
    tokens.wait_loaded(FIRST_TOKEN_KEYS_WAIT).await;
    let base: ReadinessCheck = Arc::new(move || keys_ready() && tokens.has_loaded());
    let readiness: ReadinessCheck = match s.readiness {
        Some(own) => Arc::new(move || base() && own()),
        None => base,
    };
    let server = host
        .with_auth(AuthLayer::new(authorizer))
        .with_audit(s.pool, s.keys.clone())
        .readiness(readiness)
        .start(s.shutdown)
        .await?;
    crate::keys::spawn_metrics(&s.keys, server.metrics.clone(), KEY_METRICS_EVERY);
    crate::db::export_pool_metrics(&server.metrics, &relay_pool);
    s.tls.export_metrics(&server.metrics);
    // Every service has an outbox (a platform table): its relay runs in every replica.
    crate::outbox::Relay::new(
        relay_pool,
        s.keys.clone(),
        &s.tls,
        &s.server.outbox,
        server.metrics.clone(),
    )?
    .spawn_while_serving(server.health_watch());
    Ok(server)
}

fn default_verifier(
    cfg: &PlatformConfig,
    tls: &Arc<TlsStore>,
) -> anyhow::Result<Arc<dyn TokenVerifier>> {
    if cfg.auth.identity_endpoint.is_none() {
        return Ok(Arc::new(NoIdentity));
    }
    let remote = crate::auth::remote::RemoteVerifier::from_config(cfg, tls)?;
    // Stops with the process; the verifier holds no database state.
    remote.spawn_refresher();
    Ok(Arc::new(remote))
}

/// The verifier of a service configured without `server.auth.identity_endpoint`.
struct NoIdentity;

#[async_trait::async_trait]
impl TokenVerifier for NoIdentity {
    async fn verify(&self, _token: &str) -> Result<UserCaller, Status> {
        Err(crate::auth::unauthenticated(
            "this service verifies no user tokens: server.auth.identity_endpoint is not set",
        ))
    }
}

/// A configuration of some service, behind [`ServiceDef`].
pub trait AnyConfig: Send + Sync {
    fn server(&self) -> &PlatformConfig;
    fn server_mut(&mut self) -> &mut PlatformConfig;
    /// For [`ServiceDef::start`] to take its own type back.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

impl<T: ServiceConfig> AnyConfig for T {
    fn server(&self) -> &PlatformConfig {
        ServiceConfig::server(self)
    }
    fn server_mut(&mut self) -> &mut PlatformConfig {
        ServiceConfig::server_mut(self)
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// A started service behind [`ServiceDef`]; `handle` is its [`Service::Handle`].
pub struct RunningService {
    pub name: &'static str,
    pub server: RunningServer,
    pub handle: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for RunningService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningService")
            .field("name", &self.name)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// The object-safe face of a [`Service`], for the binary's list of services.
pub trait ServiceDef: Send + Sync {
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    fn migrator(&self) -> &'static Migrator;
    /// Defaults < TOML `file` < `CAREHUB_*` environment < `overrides`, validated.
    fn load_config(
        &self,
        file: Option<&Path>,
        overrides: &[(String, String)],
    ) -> Result<Box<dyn AnyConfig>, ConfigError>;
    /// The defaults with [`Service::dev_config`] applied (`carehub up`).
    fn dev_config(&self) -> Box<dyn AnyConfig>;
    /// [`start`] with a configuration from [`Self::load_config`] or [`Self::dev_config`].
    ///
    /// The future is not `Send`: sqlx's migrator future cannot be proven `Send` inside generic
    /// code (higher-ranked lifetimes), so callers await it (`block_on`, a test's own task)
    /// rather than spawn it; the server it starts runs on its own tasks either way.
    fn start(
        &self,
        config: Box<dyn AnyConfig>,
        keys: Option<Arc<dyn KeySource>>,
        shutdown: BoxFuture<'static, ()>,
    ) -> LocalBoxFuture<'_, anyhow::Result<RunningService>>;
    /// [`Service::on_up`].
    fn on_up<'a>(
        &'a self,
        running: &'a RunningService,
    ) -> LocalBoxFuture<'a, anyhow::Result<Vec<String>>>;
}

impl<S: Service> ServiceDef for S {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn about(&self) -> &'static str {
        S::ABOUT
    }

    fn migrator(&self) -> &'static Migrator {
        Service::migrator(self)
    }

    fn load_config(
        &self,
        file: Option<&Path>,
        overrides: &[(String, String)],
    ) -> Result<Box<dyn AnyConfig>, ConfigError> {
        let config: S::Config = crate::config::load(file, overrides)?;
        Ok(Box::new(config))
    }

    fn dev_config(&self) -> Box<dyn AnyConfig> {
        let mut config = S::Config::default();
        Service::dev_config(self, &mut config);
        Box::new(config)
    }

    fn start(
        &self,
        config: Box<dyn AnyConfig>,
        keys: Option<Arc<dyn KeySource>>,
        shutdown: BoxFuture<'static, ()>,
    ) -> LocalBoxFuture<'_, anyhow::Result<RunningService>> {
        async move {
            let config = config.into_any().downcast::<S::Config>().map_err(|_| {
                anyhow::anyhow!("{}: started with another service's configuration", S::NAME)
            })?;
            let started = start(self, *config, keys, shutdown).await?;
            Ok(RunningService {
                name: S::NAME,
                server: started.server,
                handle: Box::new(started.handle),
            })
        }
        .boxed_local()
    }

    fn on_up<'a>(
        &'a self,
        running: &'a RunningService,
    ) -> LocalBoxFuture<'a, anyhow::Result<Vec<String>>> {
        async move {
            let handle = running
                .handle
                .downcast_ref::<S::Handle>()
                .ok_or_else(|| anyhow::anyhow!("{}: not this service's handle", S::NAME))?;
            Service::on_up(self, &running.server, handle).await
        }
        .boxed_local()
    }
}

/// The service named `name` in `services`.
pub fn find<'a>(services: &[&'a dyn ServiceDef], name: &str) -> Option<&'a dyn ServiceDef> {
    services.iter().copied().find(|s| s.name() == name)
}
