//! Test harness: a real identity server (real Postgres, real mTLS) per test, on the test kit
//! (`carehub-testkit`); what is identity's own (its settings, its users and sandboxes) is here.
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

use carehub_identity::config::{IdentityConfig, NotifierKind};
use carehub_identity::domain::account::Account;
use carehub_identity::notify::{Channel as NotifyChannel, MemorySandboxNotifier};
use carehub_identity::{AppState, IdentityDef, IdentityHandle};
use carehub_platform::auth::Role;
use carehub_platform::devcerts::DevPki;
use carehub_platform::keys::KeySource;
use carehub_platform::kit::Started;
use carehub_proto::common::v1::Date;
use carehub_proto::identity::v1::identity_internal_client::IdentityInternalClient;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::*;
use carehub_testkit::service::TestService;
use carehub_testkit::users::SignedIn;
use sqlx::PgPool;
use tonic::transport::Channel;
use uuid::Uuid;

pub use carehub_testkit::grpc::{assert_status, with_key, with_token};
pub use carehub_testkit::keys::RotatingKeys;
pub use carehub_testkit::PASSWORD;

pub use carehub_testkit::TRUST_DOMAIN;

pub struct TestApp {
    svc: TestService<IdentityDef>,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

/// Starts identity (`carehub_identity::SERVICE`, through the platform's service kit) on
/// 127.0.0.1:0 with a fresh database, a fresh dev PKI, a fresh signing key, the in-memory
/// notification sandbox and argon2 at its minimum allowed costs (its defaults).
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
    let svc = TestService::start_keyed(&carehub_identity::SERVICE, keys, |config| {
        config.identity.notifier = NotifierKind::MemorySandbox;
        adjust(config);
    })
    .await;
    TestApp {
        grpc_addr: svc.grpc_addr,
        admin_addr: svc.admin_addr,
        svc,
    }
}

impl TestApp {
    pub fn pool(&self) -> &PgPool {
        self.svc.pool()
    }

    fn identity(&self) -> &IdentityHandle {
        self.svc.handle()
    }

    /// Takes the started server and its handle out (to stop it mid-test);
    /// [`TestApp::shutdown`] still drops the database.
    pub fn take_identity(&mut self) -> Option<Started<IdentityHandle>> {
        self.svc.take_started()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.identity().state.clone()
    }

    pub fn sandbox(&self) -> MemorySandboxNotifier {
        self.identity()
            .sandbox
            .clone()
            .expect("memory sandbox configured")
    }

    pub fn admin_http_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The dev CA, to issue more certificates.
    pub fn pki(&self) -> &DevPki {
        self.svc.pki().ca()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.svc.dir()
    }

    /// An mTLS channel to identity presenting a certificate of `workload`.
    pub async fn channel(&self, workload: &str) -> Channel {
        self.svc.channel(workload).await.into_inner()
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
        carehub_testkit::users::login(self.channel("gateway").await, email, password).await
    }

    /// One user of each role (made through the store with [`PASSWORD`]), signed in through the
    /// gateway: emails `<tag>-<role>@example.org`.
    pub async fn sign_in_every_role(&self, tag: &str) -> Vec<SignedIn> {
        carehub_testkit::users::sign_in_every_role(
            tag,
            |role, email| async move {
                self.create_user_with_role(&email, role, PASSWORD)
                    .await
                    .id
                    .to_string()
            },
            |email| async move { self.login(&email, PASSWORD).await.access_token },
        )
        .await
    }

    /// Enrolls a device PIN for the holder of `access_token` through the gateway.
    pub async fn enroll_device_pin(
        &self,
        access_token: &str,
        pin: &str,
    ) -> EnrollDevicePinResponse {
        self.public("gateway")
            .await
            .enroll_device_pin(self.with_token(
                EnrollDevicePinRequest {
                    pin: pin.to_owned(),
                    device_name: "Pixel 9".to_owned(),
                },
                access_token,
            ))
            .await
            .expect("EnrollDevicePin")
            .into_inner()
    }

    /// Inserts an active user of `role` with `password` directly through the store (no
    /// password change required) and returns it.
    pub async fn create_user_with_role(&self, email: &str, role: Role, password: &str) -> Account {
        let state = self.state();
        let (account, _) = carehub_identity::store::accounts::create_user_direct(
            self.pool(),
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
        self.session_token_for(account).await.1
    }

    /// Like [`TestApp::token_for`]: (the new session's id, the access token).
    pub async fn session_token_for(&self, account: &Account) -> (Uuid, String) {
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
        .fetch_one(self.pool())
        .await
        .expect("inserting a session");
        let amr = vec!["pwd".to_owned()];
        let token = carehub_identity::token::issue_access_token(
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
        .expect("issuing a token");
        (session_id, token.token)
    }

    /// The account of a user id (for [`TestApp::token_for`] after RegisterPatient).
    pub async fn account(&self, user_id: &str) -> Account {
        let mut conn = self.pool().acquire().await.unwrap();
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
        self.svc.count(table).await
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

    /// Another identity replica on this one's database, keys and CA (with the in-memory
    /// sandbox, then `adjust`): what a second pod of the deployment is.
    pub async fn start_replica(&self, adjust: impl FnOnce(&mut IdentityConfig)) -> Replica {
        let started = self
            .svc
            .start_replica(&carehub_identity::SERVICE, None, |config| {
                config.identity.notifier = NotifierKind::MemorySandbox;
                adjust(config);
            })
            .await;
        let channel = self
            .svc
            .pki()
            .channel(started.server.grpc_addr, "gateway", "identity")
            .await
            .into_inner();
        Replica { started, channel }
    }

    /// The value of the series of `name` on `/metrics` whose labels include `label`
    /// (`source="memory"`), 0 when absent.
    pub async fn metric(&self, name: &str, label: &str) -> f64 {
        metric(self.admin_addr, name, label).await
    }

    /// Stops the server, closes its pool and drops the database.
    pub async fn shutdown(mut self) {
        if let Some(identity) = self.svc.take_started() {
            let _ = identity.server.shutdown().await;
            identity.handle.state.pool.close().await;
        }
        self.svc.shutdown().await;
    }
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

/// A second identity replica started by [`TestApp::start_replica`].
pub struct Replica {
    pub started: Started<IdentityHandle>,
    channel: Channel,
}

impl Replica {
    /// IdentityService client calling the replica as the gateway.
    pub fn public(&self) -> IdentityServiceClient<Channel> {
        IdentityServiceClient::new(self.channel.clone())
    }

    pub fn state(&self) -> Arc<AppState> {
        self.started.handle.state.clone()
    }

    /// Stops the replica and closes its pool (before the first app drops the database).
    pub async fn shutdown(self) {
        let _ = self.started.server.shutdown().await;
        self.started.handle.state.pool.close().await;
    }
}

/// The value of the series of `name` on the admin port's `/metrics` whose labels include
/// `label` (empty: any), 0 when absent.
pub async fn metric(admin: SocketAddr, name: &str, label: &str) -> f64 {
    let (status, body) = carehub_testkit::grpc::http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter(|(series, _)| {
            series.split('{').next() == Some(name) && (label.is_empty() || series.contains(label))
        })
        .map(|(_, v)| v.trim().parse::<f64>().expect("a metric value"))
        .sum()
}
