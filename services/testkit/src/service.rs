//! A service under test: started on 127.0.0.1:0 with its own database, a fresh dev PKI, the
//! development key file (or keys the test holds) and in-memory sandboxes.
//!
//! [`TestService::start`] is generic over [`Launch`], which says what the kit needs of a
//! service: its name, migrator, how its configuration is made from a [`TestEnv`], and how it
//! starts. It mirrors the platform's coming `Service` description (name, config type, migrator,
//! build); once that lands, a blanket `impl<S: Service> Launch for S` here replaces the one
//! hand-written `Launch` impl per test binary (identity's is in its `tests/it/common.rs`), and
//! nothing that calls `TestService` changes.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use carehub_platform::client::ServiceChannel;
use carehub_platform::config::{DatabaseConfig, KeysConfig, PlatformConfig};
use carehub_platform::keys::KeySource;
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::{TestDb, TestPki};

/// What the kit needs to start a service.
pub trait Launch: Send + Sync + 'static {
    /// The service's full configuration (platform part + its own settings).
    type Config: Send;
    /// What the running service hands back (its server, state, sandboxes).
    type Running: Send + Sync;

    /// The workload name (its certificate's SAN, `carehub serve <name>`).
    const NAME: &'static str;

    fn migrator() -> &'static Migrator;

    /// The configuration for tests: `server` is ready (port 0, TLS, database, key file); the
    /// service adds its own settings (sandboxes, cheap password hashing, ...).
    fn config(server: PlatformConfig) -> Self::Config;

    /// Starts serving until [`Launch::stop`]; `keys` replaces the configured key source. (No
    /// `Send` bound: rustc cannot prove identity's `serve` future `Send` through sqlx's
    /// higher-ranked `Acquire`, and tests await it on their own runtime anyway.)
    fn start(
        config: Self::Config,
        keys: Option<Arc<dyn KeySource>>,
    ) -> impl Future<Output = anyhow::Result<Self::Running>>;

    /// The gRPC and admin addresses it listens on.
    fn addrs(running: &Self::Running) -> (SocketAddr, SocketAddr);

    /// Stops serving and closes its pool (so that its database can be dropped).
    fn stop(running: Self::Running) -> impl Future<Output = ()>;
}

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
    /// A fresh database migrated with `migrator`, a fresh CA of `trust_domain`, a certificate
    /// for `service` and a development key file.
    pub async fn new(service: &'static str, migrator: &Migrator, trust_domain: &str) -> TestEnv {
        let db = TestDb::new(migrator).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(trust_domain);
        let key_file = crate::keys::dev_key_file(dir.path());
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
        let mut tls = self
            .pki
            .write_server(self.dir.path(), self.service, self.service);
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
            },
            keys: KeysConfig {
                file: self.key_file.clone(),
                ..KeysConfig::default()
            },
            ..PlatformConfig::default()
        }
    }
}

/// A running service with its environment.
pub struct TestService<L: Launch> {
    running: Option<L::Running>,
    pub env: TestEnv,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl<L: Launch> TestService<L> {
    /// Starts `L` with the test configuration, adjusted by `tweak`.
    pub async fn start(trust_domain: &str, tweak: impl FnOnce(&mut L::Config)) -> Self {
        Self::start_keyed(trust_domain, None, tweak).await
    }

    /// Like [`TestService::start`], with keys the test holds (to rotate them) instead of the
    /// key file.
    pub async fn start_keyed(
        trust_domain: &str,
        keys: Option<Arc<dyn KeySource>>,
        tweak: impl FnOnce(&mut L::Config),
    ) -> Self {
        let env = TestEnv::new(L::NAME, L::migrator(), trust_domain).await;
        let mut config = L::config(env.platform_config());
        tweak(&mut config);
        let running = L::start(config, keys)
            .await
            .unwrap_or_else(|e| panic!("{} starts: {e:#}", L::NAME));
        let (grpc_addr, admin_addr) = L::addrs(&running);
        TestService {
            running: Some(running),
            env,
            grpc_addr,
            admin_addr,
        }
    }

    /// What the service handed back when it started.
    pub fn running(&self) -> &L::Running {
        self.running.as_ref().expect("running")
    }

    /// Takes the running service out (to stop it mid-test); [`TestService::shutdown`] still
    /// drops the database.
    pub fn take_running(&mut self) -> Option<L::Running> {
        self.running.take()
    }

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
            .channel(self.grpc_addr, workload, L::NAME)
            .await
    }

    /// `SELECT count(*) FROM <table>`.
    pub async fn count(&self, table: &str) -> i64 {
        self.env.db.count(table).await
    }

    /// Stops the service and drops its database.
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            L::stop(running).await;
        }
        self.env.db.drop().await;
    }
}
