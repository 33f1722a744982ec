//! Test harness: a real identity server (real Postgres, real mTLS) per test.
//!
//! ```ignore
//! let app = common::spawn().await;
//! let user = app.register_patient("ann@example.org", common::PASSWORD).await;
//! let tokens = app.login("ann@example.org", common::PASSWORD).await;
//! let mut c = app.public("gateway").await;
//! let me = c.get_profile(app.with_token(GetProfileRequest {}, &tokens.access_token)).await?;
//! app.shutdown().await;
//! ```
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use carehub_identity::config::{IdentityConfig, IdentitySettings, NotifierKind};
use carehub_identity::domain::account::Account;
use carehub_identity::notify::{Channel as NotifyChannel, MemorySandboxNotifier};
use carehub_identity::{AppState, Identity};
use carehub_platform::auth::Role;
use carehub_platform::config::{DatabaseConfig, PlatformConfig, TlsConfig};
use carehub_platform::db::TestDatabase;
use carehub_platform::devcerts::DevPki;
use carehub_platform::keys::{KeyError, KeyName, KeySource, KeyVersions, StaticKeys};
use carehub_platform::tls::TlsStore;
use carehub_proto::common::v1::Date;
use carehub_proto::identity::v1::identity_internal_client::IdentityInternalClient;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::*;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tonic::transport::Channel;
use uuid::Uuid;

/// A password that satisfies the policy.
pub const PASSWORD: &str = "correct horse battery staple";
pub const TRUST_DOMAIN: &str = "carehub.local";

pub struct TestApp {
    pub identity: Option<Identity>,
    db: Option<TestDatabase>,
    pool: PgPool,
    pki: DevPki,
    dir: tempfile::TempDir,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

/// Starts identity on 127.0.0.1:0 with a fresh database, a fresh dev PKI, a fresh signing key,
/// the in-memory notification sandbox and argon2 at its minimum allowed costs.
pub async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

/// Like [`spawn`], with a chance to adjust the configuration first.
pub async fn spawn_with(adjust: impl FnOnce(&mut IdentityConfig)) -> TestApp {
    spawn_keyed(None, adjust).await
}

/// Like [`spawn_with`], with keys the test holds (to rotate them) instead of the key file.
pub async fn spawn_with_keys(
    keys: Arc<dyn KeySource>,
    adjust: impl FnOnce(&mut IdentityConfig),
) -> TestApp {
    spawn_keyed(Some(keys), adjust).await
}

async fn spawn_keyed(
    keys: Option<Arc<dyn KeySource>>,
    adjust: impl FnOnce(&mut IdentityConfig),
) -> TestApp {
    let db = TestDatabase::new(&carehub_identity::MIGRATOR)
        .await
        .expect("test database");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = DevPki::new(TRUST_DOMAIN).expect("dev pki");
    pki.write_to(dir.path(), &["identity"])
        .expect("writing certs");
    // The development key file, as `carehub up` makes it (KEK, blind-index, signing keys).
    let key_file = dir.path().join("dev-keys.json");
    carehub_platform::keys::file::write_dev_key_file(&key_file).expect("dev key file");

    let mut config = IdentityConfig {
        server: PlatformConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: TlsConfig {
                cert_file: dir.path().join("identity.pem"),
                key_file: dir.path().join("identity-key.pem"),
                ca_file: dir.path().join("ca.pem"),
                trust_domain: TRUST_DOMAIN.to_owned(),
                reload_interval_secs: 30,
                ..TlsConfig::default()
            },
            database: DatabaseConfig {
                url: Some(SecretString::from(db.url.expose_secret().to_owned())),
                max_connections: 10,
                acquire_timeout_secs: 5,
                migrate_on_start: false,
            },
            keys: carehub_platform::config::KeysConfig {
                file: key_file,
                ..Default::default()
            },
            ..PlatformConfig::default()
        },
        identity: IdentitySettings {
            notifier: NotifierKind::MemorySandbox,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            ..IdentitySettings::default()
        },
    };
    adjust(&mut config);
    let identity = match keys {
        Some(keys) => carehub_identity::serve_with_keys(config, keys, std::future::pending()).await,
        None => carehub_identity::serve(config, std::future::pending()).await,
    }
    .expect("identity starts");
    TestApp {
        grpc_addr: identity.server.grpc_addr,
        admin_addr: identity.server.admin_addr,
        pool: db.pool.clone(),
        identity: Some(identity),
        db: Some(db),
        pki,
        dir,
    }
}

impl TestApp {
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn state(&self) -> Arc<AppState> {
        self.identity.as_ref().expect("running").state.clone()
    }

    pub fn sandbox(&self) -> MemorySandboxNotifier {
        self.identity
            .as_ref()
            .expect("running")
            .sandbox
            .clone()
            .expect("memory sandbox configured")
    }

    pub fn admin_http_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The dev CA, to issue more certificates.
    pub fn pki(&self) -> &DevPki {
        &self.pki
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// An mTLS channel to identity presenting a certificate of `workload`.
    pub async fn channel(&self, workload: &str) -> Channel {
        let cert = self.pki.issue(workload).expect("issuing client cert");
        let store = TlsStore::from_pem(
            &cert.cert_pem,
            &cert.key_pem,
            &self.pki.ca_pem,
            TRUST_DOMAIN,
        )
        .expect("client tls");
        carehub_platform::client::connect(
            &format!("https://{}", self.grpc_addr),
            &store,
            "identity",
        )
        .await
        .expect("connecting to identity")
        .into_inner()
    }

    /// IdentityService client calling as `workload` (usually "gateway").
    pub async fn public(&self, workload: &str) -> IdentityServiceClient<Channel> {
        IdentityServiceClient::new(self.channel(workload).await)
    }

    /// IdentityInternal client calling as `workload` ("scheduling", "records", ...).
    pub async fn internal(&self, workload: &str) -> IdentityInternalClient<Channel> {
        IdentityInternalClient::new(self.channel(workload).await)
    }

    /// `req` with `authorization: Bearer <token>`.
    pub fn with_token<T>(&self, req: T, access_token: &str) -> tonic::Request<T> {
        with_token(tonic::Request::new(req), access_token)
    }

    /// `req` with `idempotency-key: <key>`.
    pub fn with_key<T>(&self, req: T, key: &str) -> tonic::Request<T> {
        with_key(tonic::Request::new(req), key)
    }

    /// Registers an adult patient through the gateway (born 1990-05-17, phone none).
    pub async fn register_patient(&self, email: &str, password: &str) -> User {
        self.public("gateway")
            .await
            .register_patient(patient_request(email, password))
            .await
            .expect("RegisterPatient")
            .into_inner()
    }

    /// Logs in through the gateway; panics unless tokens come back (no MFA).
    pub async fn login(&self, email: &str, password: &str) -> AuthTokens {
        let resp = self
            .public("gateway")
            .await
            .login(LoginRequest {
                email: email.to_owned(),
                password: password.to_owned(),
            })
            .await
            .expect("Login")
            .into_inner();
        match resp.result {
            Some(login_response::Result::Tokens(t)) => t,
            other => panic!("login did not return tokens: {other:?}"),
        }
    }

    /// Inserts an active user of `role` with `password` directly through the store (no
    /// password change required) and returns it.
    pub async fn create_user_with_role(&self, email: &str, role: Role, password: &str) -> Account {
        let state = self.state();
        let (account, _) = carehub_identity::store::accounts::create_user_direct(
            &self.pool,
            &state.crypto,
            &state.hasher,
            email,
            role,
            "Test",
            "User",
            Some(password),
        )
        .await
        .expect("create_user_direct");
        account
    }

    /// An access token for `account` on a fresh session inserted directly (password method),
    /// for tests that are not about logging in.
    pub async fn token_for(&self, account: &Account) -> String {
        let state = self.state();
        let session_id = Uuid::now_v7();
        let lifetime = i64::try_from(state.settings.session_lifetime_secs).unwrap();
        let expires_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
            "INSERT INTO sessions (id, user_id, expires_at, auth_methods, password_change_required)
             VALUES ($1, $2, now() + make_interval(secs => $3::double precision), ARRAY['pwd'], $4)
             RETURNING expires_at",
        )
        .bind(session_id)
        .bind(account.id)
        .bind(lifetime as f64)
        .bind(account.password_change_required)
        .fetch_one(&self.pool)
        .await
        .expect("inserting a session");
        let amr = vec!["pwd".to_owned()];
        carehub_identity::token::issue_access_token(
            &state,
            &carehub_identity::token::TokenSubject {
                user_id: account.id,
                session_id,
                role: account.role,
                amr: &amr,
                password_change_required: account.password_change_required,
                session_expires_at: expires_at,
            },
        )
        .expect("issuing a token")
        .token
    }

    /// The account of a user id (for [`TestApp::token_for`] after RegisterPatient).
    pub async fn account(&self, user_id: &str) -> Account {
        let mut conn = self.pool.acquire().await.unwrap();
        let crypto = self.state().crypto.clone();
        carehub_identity::store::accounts::get_user(
            &mut conn,
            &crypto,
            Uuid::parse_str(user_id).unwrap(),
        )
        .await
        .unwrap()
        .expect("user exists")
    }

    /// An admin (admin@carehub.test / [`PASSWORD`]) inserted directly through the store.
    pub async fn create_admin(&self) -> Account {
        self.create_user_with_role("admin@carehub.test", Role::Admin, PASSWORD)
            .await
    }

    /// An admin, logged in: (account, access token).
    pub async fn admin_token(&self) -> (Account, String) {
        let admin = self.create_admin().await;
        let tokens = self.login("admin@carehub.test", PASSWORD).await;
        (admin, tokens.access_token)
    }

    /// The newest verification code the sandbox delivered to `user_id` by email / SMS.
    pub fn last_email_code(&self, user_id: &str) -> Option<String> {
        self.sandbox()
            .last_code(Uuid::parse_str(user_id).ok()?, NotifyChannel::Email)
    }

    pub fn last_sms_code(&self, user_id: &str) -> Option<String> {
        self.sandbox()
            .last_code(Uuid::parse_str(user_id).ok()?, NotifyChannel::Sms)
    }

    /// `SELECT count(*) FROM <table>` (table names are test constants).
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Row counts of every table a bad request must not touch.
    pub async fn counts(&self) -> Vec<(&'static str, i64)> {
        let mut out = Vec::new();
        for t in [
            "users",
            "verification_codes",
            "consents",
            "consent_events",
            "communication_preferences",
            "sessions",
            "refresh_tokens",
            "revocations",
            "password_resets",
            "device_pins",
            "recovery_codes",
            "mfa_challenges",
            "carehub_platform.idempotency_keys",
        ] {
            out.push((t, self.count(t).await));
        }
        out
    }

    /// Stops the server and drops the database.
    pub async fn shutdown(mut self) {
        if let Some(identity) = self.identity.take() {
            let _ = identity.server.shutdown().await;
            identity.state.pool.close().await;
        }
        if let Some(db) = self.db.take() {
            db.drop_database().await.expect("dropping test database");
        }
    }
}

pub fn with_token<T>(mut req: tonic::Request<T>, access_token: &str) -> tonic::Request<T> {
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {access_token}")
            .parse()
            .expect("header value"),
    );
    req
}

pub fn with_key<T>(mut req: tonic::Request<T>, key: &str) -> tonic::Request<T> {
    req.metadata_mut()
        .insert("idempotency-key", key.parse().expect("header value"));
    req
}

/// A valid adult RegisterPatientRequest.
pub fn patient_request(email: &str, password: &str) -> RegisterPatientRequest {
    RegisterPatientRequest {
        email: email.to_owned(),
        password: password.to_owned(),
        phone: String::new(),
        given_name: "Ann".to_owned(),
        family_name: "Example".to_owned(),
        date_of_birth: Some(Date {
            year: 1990,
            month: 5,
            day: 17,
        }),
        time_zone: "America/New_York".to_owned(),
        accepted_terms_version: "2025-01".to_owned(),
        accepted_privacy_version: "2025-01".to_owned(),
        marketing_opt_in: false,
        sms_opt_in: false,
    }
}

/// Asserts `status` is `code` and, when given, carries `reason`; returns the violated fields.
pub fn assert_status(
    status: &tonic::Status,
    code: tonic::Code,
    reason: Option<&str>,
) -> Vec<String> {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let d = carehub_platform::errors::details_of(status);
    if let Some(r) = reason {
        assert_eq!(
            d.reason.as_deref(),
            Some(r),
            "unexpected reason: {status:?}"
        );
    }
    d.field_violations.into_iter().map(|(f, _)| f).collect()
}

/// A key source the test can rotate while identity runs.
#[derive(Default)]
pub struct RotatingKeys(std::sync::RwLock<StaticKeys>);

impl RotatingKeys {
    pub fn new() -> Arc<Self> {
        Arc::new(RotatingKeys(std::sync::RwLock::new(StaticKeys::generate())))
    }

    /// Adds a version of `name` and makes it current; returns its number.
    pub fn rotate(&self, name: KeyName) -> u32 {
        let mut keys = self.0.write().unwrap();
        let mut versions: KeyVersions = keys.versions(name).unwrap().as_ref().clone();
        let next = versions.rotate();
        *keys = keys.clone().with(name, versions);
        next
    }
}

impl KeySource for RotatingKeys {
    fn versions(&self, name: KeyName) -> Result<Arc<KeyVersions>, KeyError> {
        self.0.read().unwrap().versions(name)
    }
}
