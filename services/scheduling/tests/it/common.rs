//! Test harness: identity, records, messaging and scheduling side by side on one dev CA, as a
//! deployment runs them, with scheduling's outbox delivering to the real records and messaging
//! and to a recording stand-in for billing (billing is not built yet: it records what reaches
//! `carehub.common.v1.AppointmentEvents` and applies each idempotency key once, as billing will).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carehub_identity::config::NotifierKind;
use carehub_identity::IdentityDef;
use carehub_messaging::MessagingDef;
use carehub_platform::auth::Role;
use carehub_platform::client::ServiceChannel;
use carehub_platform::config::{OutboxTarget, PlatformConfig};
use carehub_platform::idempotency;
use carehub_platform::server::{RunningServer, ServiceHost};
use carehub_platform::timestamps::to_proto;
use carehub_proto::common::v1::appointment_events_server::{
    AppointmentEvents, AppointmentEventsServer,
};
use carehub_proto::scheduling::v1::scheduling_service_client::SchedulingServiceClient;
use carehub_proto::scheduling::v1::*;
use carehub_records::RecordsDef;
use carehub_scheduling::config::SchedulingConfig;
use carehub_scheduling::SchedulingDef;
use carehub_testkit::service::TestService;
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

#[allow(unused_imports)]
pub use carehub_testkit::grpc::{assert_status, reason, with_key, with_token};
pub use carehub_testkit::PASSWORD;

/// What reached the billing stand-in: (idempotency-key, event).
#[derive(Clone, Default)]
pub struct Billing {
    pub deliveries: Arc<Mutex<Vec<(String, AppointmentEvent)>>>,
}

impl Billing {
    /// Events applied once per idempotency key, as a receiver that deduplicates applies them.
    pub fn applied(&self) -> Vec<AppointmentEvent> {
        let mut seen = HashMap::new();
        for (key, e) in self.deliveries.lock().unwrap().iter() {
            seen.entry(key.clone()).or_insert_with(|| e.clone());
        }
        let mut events: Vec<AppointmentEvent> = seen.into_values().collect();
        events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        events
    }

    pub fn deliveries(&self) -> usize {
        self.deliveries.lock().unwrap().len()
    }
}

#[tonic::async_trait]
impl AppointmentEvents for Billing {
    async fn apply_appointment_event(
        &self,
        request: Request<AppointmentEvent>,
    ) -> Result<Response<()>, Status> {
        let key = idempotency::key_of(&request)?
            .ok_or_else(|| Status::invalid_argument("idempotency-key missing"))?;
        self.deliveries
            .lock()
            .unwrap()
            .push((key, request.into_inner()));
        Ok(Response::new(()))
    }
}

pub struct Suite {
    pub identity: TestService<IdentityDef>,
    pub records: TestService<RecordsDef>,
    pub messaging: TestService<MessagingDef>,
    pub scheduling: TestService<SchedulingDef>,
    pub billing: Billing,
    billing_server: RunningServer,
    _dir: tempfile::TempDir,
}

/// A signed-in user.
#[derive(Clone, Debug)]
pub struct User {
    pub role: Role,
    pub id: String,
    pub token: String,
}

fn target(port: u16, name: &str) -> OutboxTarget {
    OutboxTarget {
        endpoint: format!("https://127.0.0.1:{port}"),
        server_name: name.to_owned(),
    }
}

async fn ready(admin: &std::net::SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = carehub_testkit::grpc::http_get_raw(&admin.to_string(), "/readyz")
            .await
            .is_some_and(|(code, _)| code == 200);
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{what} not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Database connections of identity, records and messaging under test.
const SUPPORT_CONNECTIONS: u32 = 4;

pub async fn spawn() -> Suite {
    spawn_with(|_| {}).await
}

/// The four services wired as a deployment wires them; `adjust` tunes scheduling.
pub async fn spawn_with(adjust: impl FnOnce(&mut SchedulingConfig)) -> Suite {
    let records_port = carehub_testkit::grpc::free_port();
    let messaging_port = carehub_testkit::grpc::free_port();
    let scheduling_port = carehub_testkit::grpc::free_port();
    // Four services per test, two tests at a time, one Postgres (max_connections 100 on a
    // default install): the three supporting services make do with a few connections each.
    let identity = TestService::start(&carehub_identity::SERVICE, |c| {
        c.server.database.max_connections = SUPPORT_CONNECTIONS;
        c.identity.notifier = NotifierKind::MemorySandbox;
        c.server.outbox.poll_interval_ms = 100;
        c.server
            .outbox
            .targets
            .insert("records".to_owned(), target(records_port, "records"));
        c.server
            .outbox
            .targets
            .insert("messaging".to_owned(), target(messaging_port, "messaging"));
        c.server.outbox.targets.insert(
            "scheduling".to_owned(),
            target(scheduling_port, "scheduling"),
        );
    })
    .await;
    let identity_endpoint = format!("https://{}", identity.grpc_addr);
    let identity_port = identity.grpc_addr.port();
    let records = TestService::start_with_pki(
        &carehub_records::SERVICE,
        identity.pki().clone(),
        |c: &mut carehub_records::config::RecordsConfig| {
            c.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], records_port));
            c.server.database.max_connections = SUPPORT_CONNECTIONS;
            c.server.auth.identity_endpoint = Some(identity_endpoint.clone());
        },
    )
    .await;
    let records_endpoint = format!("https://{}", records.grpc_addr);
    let messaging = TestService::start_with_pki(
        &carehub_messaging::SERVICE,
        identity.pki().clone(),
        |c: &mut carehub_messaging::config::MessagingConfig| {
            c.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], messaging_port));
            c.server.database.max_connections = SUPPORT_CONNECTIONS;
            c.server.auth.identity_endpoint = Some(identity_endpoint.clone());
            c.server.outbox.poll_interval_ms = 100;
            c.server
                .outbox
                .targets
                .insert("identity".to_owned(), target(identity_port, "identity"));
            c.messaging.records_endpoint = Some(records_endpoint);
        },
    )
    .await;
    // The billing stand-in, on the suite's CA.
    let dir = tempfile::tempdir().unwrap();
    let tls = identity
        .pki()
        .write_server(dir.path(), "billing", "billing");
    let billing_config = PlatformConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        ..PlatformConfig::default()
    };
    let billing = Billing::default();
    let billing_server = ServiceHost::new("billing", &billing_config)
        .add_service(AppointmentEventsServer::new(billing.clone()))
        .start(std::future::pending())
        .await
        .unwrap();
    let billing_port = billing_server.grpc_addr.port();
    let scheduling = TestService::start_with_pki(
        &carehub_scheduling::SERVICE,
        identity.pki().clone(),
        |c: &mut SchedulingConfig| {
            c.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], scheduling_port));
            c.server.auth.identity_endpoint = Some(identity_endpoint.clone());
            c.server.outbox.poll_interval_ms = 100;
            c.server.outbox.backoff_base_ms = 50;
            c.server
                .outbox
                .targets
                .insert("records".to_owned(), target(records_port, "records"));
            c.server
                .outbox
                .targets
                .insert("messaging".to_owned(), target(messaging_port, "messaging"));
            c.server
                .outbox
                .targets
                .insert("billing".to_owned(), target(billing_port, "billing"));
            c.scheduling.reminder_poll_ms = 100;
            adjust(c);
        },
    )
    .await;
    ready(&records.admin_addr, "records").await;
    ready(&messaging.admin_addr, "messaging").await;
    ready(&scheduling.admin_addr, "scheduling").await;
    Suite {
        identity,
        records,
        messaging,
        scheduling,
        billing,
        billing_server,
        _dir: dir,
    }
}

impl Suite {
    /// Creates a user of `role` in identity and signs them in through Login.
    pub async fn user(&self, role: Role, name: &str) -> User {
        let state = &self.identity.handle().state;
        let email = format!("{name}-{}@example.org", uuid::Uuid::now_v7().simple());
        let (account, _) = carehub_identity::store::accounts::create_user_direct(
            &state.pool,
            &state.crypto,
            &state.hasher,
            &email,
            role,
            "Test",
            "User",
            Some(PASSWORD),
        )
        .await
        .expect("create_user_direct");
        let tokens =
            carehub_testkit::users::login(self.identity.channel("gateway").await, &email, PASSWORD)
                .await;
        User {
            role,
            id: account.id.to_string(),
            token: tokens.access_token,
        }
    }

    /// Scheduling's public API as the gateway.
    pub async fn public(&self) -> SchedulingServiceClient<ServiceChannel> {
        SchedulingServiceClient::new(self.scheduling.channel("gateway").await)
    }

    /// Scheduling's database (the test's own pool).
    pub fn pool(&self) -> &PgPool {
        self.scheduling.pool()
    }

    /// A visit type created by a staff member.
    pub async fn visit_type(
        &self,
        staff: &User,
        duration: i32,
        buffer: i32,
        modality: Modality,
        intake_form: &str,
    ) -> VisitType {
        self.public()
            .await
            .create_visit_type(as_user(
                staff,
                CreateVisitTypeRequest {
                    visit_type: Some(VisitType {
                        name: "Follow-up visit".into(),
                        duration_minutes: duration,
                        buffer_minutes: buffer,
                        modality: modality as i32,
                        price_code: "EM-99213".into(),
                        intake_form: intake_form.into(),
                        ..Default::default()
                    }),
                },
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// A provider in `tz`, licensed in NY and CA, offering `visit_types`, available every day
    /// from `from` to `to` local time (hours).
    pub async fn provider(
        &self,
        staff: &User,
        tz: &str,
        visit_types: &[&VisitType],
        from: i32,
        to: i32,
    ) -> User {
        let provider = self.user(Role::Provider, "doc").await;
        let mut api = self.public().await;
        api.put_provider(as_user(
            staff,
            PutProviderRequest {
                provider: Some(Provider {
                    provider_id: provider.id.clone(),
                    time_zone: tz.into(),
                    specialties: vec!["family-medicine".into()],
                    license_states: vec!["NY".into(), "CA".into()],
                    languages: vec!["en".into(), "es".into()],
                    accepting_new_patients: true,
                    visit_type_ids: visit_types.iter().map(|v| v.id.clone()).collect(),
                    update_time: None,
                }),
            },
        ))
        .await
        .unwrap();
        let windows = (1..=7)
            .map(|d| WeeklyWindow {
                weekday: d,
                start: Some(LocalTime {
                    hours: from,
                    minutes: 0,
                }),
                end: Some(LocalTime {
                    hours: to,
                    minutes: 0,
                }),
                visit_type_ids: vec![],
            })
            .collect();
        api.set_weekly_availability(as_user(
            staff,
            SetWeeklyAvailabilityRequest {
                provider_id: provider.id.clone(),
                windows,
            },
        ))
        .await
        .unwrap();
        provider
    }

    /// A staff member, a 30-minute telehealth visit type (no buffer) and a provider in
    /// America/New_York available 08:00–18:00 every day.
    pub async fn clinic(&self) -> (User, VisitType, User) {
        let staff = self.user(Role::Staff, "desk").await;
        let visit = self
            .visit_type(&staff, 30, 0, Modality::Telehealth, "")
            .await;
        let provider = self
            .provider(&staff, "America/New_York", &[&visit], 8, 18)
            .await;
        (staff, visit, provider)
    }

    /// `patient` books `visit` with `provider` at `start`.
    pub async fn book(
        &self,
        patient: &User,
        provider: &User,
        visit: &VisitType,
        start: DateTime<Utc>,
    ) -> Result<Appointment, Status> {
        self.public()
            .await
            .book_appointment(as_user(
                patient,
                BookAppointmentRequest {
                    provider_id: provider.id.clone(),
                    visit_type_id: visit.id.clone(),
                    start_time: Some(to_proto(start)),
                    reason: "persistent cough".into(),
                    ..Default::default()
                },
            ))
            .await
            .map(Response::into_inner)
    }

    /// Every sealed audit event of scheduling, as (kind, purpose, subject).
    pub async fn audit(&self) -> Vec<(String, String, Option<String>)> {
        carehub_platform::audit::seal_all(self.pool())
            .await
            .unwrap();
        sqlx::query_as(
            "SELECT kind, purpose, subject_id::text FROM carehub_platform.audit_events ORDER BY seq",
        )
        .fetch_all(self.pool())
        .await
        .unwrap()
    }

    /// Active claims of one provider that overlap another (must always be none).
    pub async fn overlaps(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM slot_claims a JOIN slot_claims b
                ON a.id < b.id AND a.active AND b.active
               AND ((a.provider_id = b.provider_id AND a.blocked && b.blocked)
                 OR (a.patient_id = b.patient_id AND a.visit && b.visit))",
        )
        .fetch_one(self.pool())
        .await
        .unwrap()
    }

    pub async fn shutdown(self) {
        self.scheduling.shutdown().await;
        self.billing_server.shutdown().await.ok();
        self.messaging.shutdown().await;
        self.records.shutdown().await;
        self.identity.shutdown().await;
    }
}

/// `req` with `user`'s token.
pub fn as_user<T>(user: &User, req: T) -> Request<T> {
    with_token(Request::new(req), &user.token)
}

/// `req` with `user`'s token and an idempotency key.
pub fn keyed<T>(user: &User, req: T, key: &str) -> Request<T> {
    with_key(as_user(user, req), key)
}

/// `hours:minutes` local time in `tz` on the date `days` days from today (in `tz`).
pub fn local(tz: Tz, days: i64, hours: u32, minutes: u32) -> DateTime<Utc> {
    let today = Utc::now().with_timezone(&tz).date_naive();
    let date = today + chrono::Duration::days(days);
    at(tz, date, hours, minutes)
}

/// `hours:minutes` local time in `tz` on `date` (the earlier instant when repeated).
pub fn at(tz: Tz, date: NaiveDate, hours: u32, minutes: u32) -> DateTime<Utc> {
    tz.with_ymd_and_hms(date.year(), date.month(), date.day(), hours, minutes, 0)
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}

pub const NEW_YORK: Tz = chrono_tz::America::New_York;

/// Waits until `check` holds (polling every 50 ms, at most `secs`).
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
