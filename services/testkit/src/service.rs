//! A service under test: any service described to the platform's service kit
//! ([`carehub_platform::kit::Service`]) started through [`kit::start`] on 127.0.0.1:0 with its
//! own database, a fresh dev PKI, the development key file (or keys the test holds) and the
//! sandboxes its configuration offers.
//!
//! ```ignore
//! let svc = TestService::start(&carehub_identity::SERVICE, |c| {
//!     c.identity.notifier = NotifierKind::MemorySandbox;
//! })
//! .await;
//! let state = &svc.handle().state; // the service's `Service::Handle`
//! let channel = svc.channel("gateway").await;
//! svc.shutdown().await;
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use carehub_platform::client::ServiceChannel;
use carehub_platform::config::{DatabaseConfig, KeysConfig, PlatformConfig};
use carehub_platform::keys::KeySource;
use carehub_platform::kit::{self, Service, ServiceConfig, Started};
use carehub_platform::server::RunningServer;
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::{TestDb, TestPki};

/// The trust domain of the services the kit starts (the platform's default).
pub const TRUST_DOMAIN: &str = "carehub.local";

/// What a service under test stands on: a database, a PKI and a directory holding the CA, the
/// service's certificate and the development key file.
pub struct TestEnv {
    pub db: TestDb,
    pub pki: TestPki,
    dir: tempfile::TempDir,
    service: &'static str,
    key_file: PathBuf,
}

impl TestEnv {
    /// A fresh database migrated with the platform's and `migrator`'s migrations, a fresh CA of
    /// `trust_domain`, a certificate for `service` and a development key file holding its keys.
    pub async fn new(service: &'static str, migrator: &Migrator, trust_domain: &str) -> TestEnv {
        Self::with_pki(service, migrator, TestPki::new(trust_domain)).await
    }

    /// Like [`TestEnv::new`] on an existing CA (another service's `pki().clone()`): the two
    /// services trust each other's certificates, as the services of one deployment do.
    pub async fn with_pki(service: &'static str, migrator: &Migrator, pki: TestPki) -> TestEnv {
        let db = TestDb::new(migrator).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = crate::keys::dev_key_file_for(dir.path(), service);
        TestEnv {
            db,
            pki,
            dir,
            service,
            key_file,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The platform configuration of the service: port 0 for gRPC and admin, mTLS with its
    /// certificate, the test database (migrated already), the development key file.
    pub fn platform_config(&self) -> PlatformConfig {
        self.platform_config_with_cert(self.service)
    }

    /// Like [`TestEnv::platform_config`], with a certificate of its own written to
    /// `<dir>/<cert_file>.pem` (another replica of the service).
    pub fn platform_config_with_cert(&self, cert_file: &str) -> PlatformConfig {
        let mut tls = self
            .pki
            .write_server(self.dir.path(), self.service, cert_file);
        tls.reload_interval_secs = 30;
        PlatformConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls,
            database: DatabaseConfig {
                url: Some(SecretString::from(self.db.url().expose_secret().to_owned())),
                max_connections: 10,
                acquire_timeout_secs: 5,
                migrate_on_start: false,
                // On demand: a test opens only the connections it uses.
                min_connections: 0,
            },
            keys: KeysConfig {
                file: self.key_file.clone(),
                ..KeysConfig::default()
            },
            ..PlatformConfig::default()
        }
    }

    /// The configuration `service` starts with under test: its defaults, its
    /// [`Service::dev_config`] (the sandboxes `carehub up` selects: nothing is delivered), and
    /// [`TestEnv::platform_config`] as its `[server]` table. A test picks an in-memory sandbox
    /// where it reads one (identity: `identity.notifier = "memory-sandbox"`).
    pub fn config<S: Service>(&self, service: &S) -> S::Config {
        self.config_with_cert(service, self.service)
    }

    /// Like [`TestEnv::config`], with the certificate of [`TestEnv::platform_config_with_cert`].
    pub fn config_with_cert<S: Service>(&self, service: &S, cert_file: &str) -> S::Config {
        let mut config = S::Config::default();
        Service::dev_config(service, &mut config);
        *ServiceConfig::server_mut(&mut config) = self.platform_config_with_cert(cert_file);
        config
    }
}

/// A running service with its environment.
pub struct TestService<S: Service> {
    started: Option<Started<S::Handle>>,
    pub env: TestEnv,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl<S: Service> TestService<S> {
    /// Starts `service` through [`kit::start`] with the test configuration
    /// ([`TestEnv::config`]), adjusted by `tweak`, and its keys from the development key file.
    pub async fn start(service: &S, tweak: impl FnOnce(&mut S::Config)) -> Self {
        Self::start_keyed(service, None, tweak).await
    }

    /// Like [`TestService::start`], with keys the test holds (to rotate them) instead of the
    /// key file when `keys` is given.
    pub async fn start_keyed(
        service: &S,
        keys: Option<Arc<dyn KeySource>>,
        tweak: impl FnOnce(&mut S::Config),
    ) -> Self {
        let env = TestEnv::new(S::NAME, Service::migrator(service), TRUST_DOMAIN).await;
        Self::start_in(service, env, keys, tweak).await
    }

    /// Starts `service` beside others, on their CA (`pki`, another service's
    /// `pki().clone()`): what a suite under test does (records verifying identity's tokens).
    pub async fn start_with_pki(
        service: &S,
        pki: TestPki,
        tweak: impl FnOnce(&mut S::Config),
    ) -> Self {
        let env = TestEnv::with_pki(S::NAME, Service::migrator(service), pki).await;
        Self::start_in(service, env, None, tweak).await
    }

    async fn start_in(
        service: &S,
        env: TestEnv,
        keys: Option<Arc<dyn KeySource>>,
        tweak: impl FnOnce(&mut S::Config),
    ) -> Self {
        let mut config = env.config(service);
        tweak(&mut config);
        // Not spawned: rustc cannot prove a service's start future `Send` through sqlx's
        // higher-ranked `Acquire`; the server it starts runs on its own tasks.
        let started = kit::start(service, config, keys, std::future::pending())
            .await
            .unwrap_or_else(|e| panic!("{} starts: {e:#}", S::NAME));
        TestService {
            grpc_addr: started.server.grpc_addr,
            admin_addr: started.server.admin_addr,
            started: Some(started),
            env,
        }
    }

    /// Starts another replica of the service on the same database, CA and development key
    /// file (or `keys`), with its own ports, certificate and state: what two pods of one
    /// deployment share. `tweak` adjusts its configuration (start from the same adjustments
    /// as the first replica where they matter). Stop it with `started.server.shutdown()`
    /// before [`TestService::shutdown`] drops the database.
    pub async fn start_replica(
        &self,
        service: &S,
        keys: Option<Arc<dyn KeySource>>,
        tweak: impl FnOnce(&mut S::Config),
    ) -> Started<S::Handle> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static REPLICAS: AtomicUsize = AtomicUsize::new(0);
        let n = REPLICAS.fetch_add(1, Ordering::Relaxed);
        let mut config = self
            .env
            .config_with_cert(service, &format!("{}-replica-{n}", S::NAME));
        tweak(&mut config);
        kit::start(service, config, keys, std::future::pending())
            .await
            .unwrap_or_else(|e| panic!("{} replica starts: {e:#}", S::NAME))
    }

    /// What the service handed back when it started (its [`Service::Handle`]).
    pub fn handle(&self) -> &S::Handle {
        &self.started.as_ref().expect("running").handle
    }

    /// The running server (metrics, health watch, TLS).
    pub fn server(&self) -> &RunningServer {
        &self.started.as_ref().expect("running").server
    }

    /// Takes the started service out (to stop it mid-test); [`TestService::shutdown`] still
    /// drops the database.
    pub fn take_started(&mut self) -> Option<Started<S::Handle>> {
        self.started.take()
    }

    /// The test's own pool on the service's database (not the service's pool).
    pub fn pool(&self) -> &PgPool {
        self.env.db.pool()
    }

    pub fn pki(&self) -> &TestPki {
        &self.env.pki
    }

    pub fn dir(&self) -> &Path {
        self.env.dir()
    }

    /// An mTLS channel to the service presenting a certificate of `workload` ("gateway", a
    /// service name, or any name for an unknown workload).
    pub async fn channel(&self, workload: &str) -> ServiceChannel {
        self.env
            .pki
            .channel(self.grpc_addr, workload, S::NAME)
            .await
    }

    /// `SELECT count(*) FROM <table>`.
    pub async fn count(&self, table: &str) -> i64 {
        self.env.db.count(table).await
    }

    /// Stops the service (if still running), drops its handle and drops its database; the
    /// drop is forced, so connections the service's pool still holds are closed by Postgres.
    pub async fn shutdown(mut self) {
        if let Some(started) = self.started.take() {
            let _ = started.server.shutdown().await;
            drop(started.handle);
        }
        self.env.db.drop().await;
    }
}
