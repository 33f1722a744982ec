//! Signed-in users and the direct RPC steps the tests take beside the journey: a clinic with a
//! bookable provider, and bookings (with a trace id of the test's choosing).

use std::time::Duration;

use carehub_platform::auth::Role;
use carehub_platform::timestamps::to_proto;
use carehub_proto::billing::v1::billing_service_client::BillingServiceClient;
use carehub_proto::billing::v1::{Invoice, ListInvoicesRequest, SetPriceRequest};
use carehub_proto::common::v1::Money;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::GetProfileRequest;
use carehub_proto::messaging::v1::messaging_service_client::MessagingServiceClient;
use carehub_proto::messaging::v1::ListConversationsRequest;
use carehub_proto::records::v1::records_service_client::RecordsServiceClient;
use carehub_proto::records::v1::GetChartRequest;
use carehub_proto::scheduling::v1::scheduling_service_client::SchedulingServiceClient;
use carehub_proto::scheduling::v1::ListAppointmentsRequest;
use carehub_proto::scheduling::v1::{
    Appointment, BookAppointmentRequest, CreateVisitTypeRequest, LocalTime, Modality, Provider,
    PutProviderRequest, SetWeeklyAvailabilityRequest, VisitType, WeeklyWindow,
};
use carehub_testkit::{with_key, with_token, PASSWORD};
use chrono::{DateTime, Datelike as _, TimeZone as _, Utc};
use tonic::{Request, Status};

use crate::Suite;

/// A user signed in through identity's Login (as the gateway would forward them).
#[derive(Clone, Debug)]
pub struct User {
    pub role: Role,
    pub id: String,
    pub email: String,
    pub token: String,
}

/// A fresh idempotency key.
pub fn key() -> String {
    format!("e2e-{}", uuid::Uuid::now_v7().simple())
}

/// `msg` as `user`, with a fresh idempotency key.
pub fn as_user<T>(user: &User, msg: T) -> tonic::Request<T> {
    with_key(with_token(tonic::Request::new(msg), &user.token), &key())
}

/// A fresh W3C trace id (32 lower-case hex digits) and the `traceparent` (sampled) that starts
/// a trace under it.
pub fn new_trace() -> (String, String) {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    let trace: u128 = rng.gen_range(1..=u128::MAX);
    let span: u64 = rng.gen_range(1..=u64::MAX);
    let trace_id = format!("{trace:032x}");
    let traceparent = format!("00-{trace_id}-{span:016x}-01");
    (trace_id, traceparent)
}

impl Suite {
    /// Creates an account of `role` directly in identity's database (with the kit's password)
    /// and signs it in through identity's public Login.
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
        .unwrap_or_else(|e| panic!("creating a {role} account: {e:?}"));
        let tokens =
            carehub_testkit::users::login(self.identity.channel("gateway").await, &email, PASSWORD)
                .await;
        User {
            role,
            id: account.id.to_string(),
            email,
            token: tokens.access_token,
        }
    }

    pub async fn scheduling_api(
        &self,
    ) -> SchedulingServiceClient<carehub_platform::client::ServiceChannel> {
        SchedulingServiceClient::new(self.scheduling.channel("gateway").await)
    }

    pub async fn billing_api(
        &self,
    ) -> BillingServiceClient<carehub_platform::client::ServiceChannel> {
        BillingServiceClient::new(self.billing.channel("gateway").await)
    }

    /// A provider who sees patients by video every day 08:00-18:00 New York time, at a price
    /// billing knows.
    pub async fn clinic(&self) -> Clinic {
        let staff = self.user(Role::Staff, "desk").await;
        let office = self.user(Role::Billing, "office").await;
        let provider = self.user(Role::Provider, "doc").await;
        let price_code = format!("video-{}", &key()[4..12]);
        self.billing_api()
            .await
            .set_price(as_user(
                &office,
                SetPriceRequest {
                    price_code: price_code.clone(),
                    price: Some(Money {
                        currency_code: "USD".into(),
                        amount_minor: 9000,
                    }),
                    description: "Video visit, 30 min".into(),
                    late_cancellation_fee_minor: 2500,
                    no_show_fee_minor: 4000,
                },
            ))
            .await
            .expect("SetPrice");
        let mut api = self.scheduling_api().await;
        let visit = api
            .create_visit_type(as_user(
                &staff,
                CreateVisitTypeRequest {
                    visit_type: Some(VisitType {
                        name: "Video visit".into(),
                        duration_minutes: 30,
                        buffer_minutes: 0,
                        modality: Modality::Telehealth as i32,
                        price_code: price_code.clone(),
                        ..Default::default()
                    }),
                },
            ))
            .await
            .expect("CreateVisitType")
            .into_inner();
        api.put_provider(as_user(
            &staff,
            PutProviderRequest {
                provider: Some(Provider {
                    provider_id: provider.id.clone(),
                    time_zone: "America/New_York".into(),
                    specialties: vec!["family-medicine".into()],
                    license_states: vec!["NY".into()],
                    languages: vec!["en".into()],
                    accepting_new_patients: true,
                    visit_type_ids: vec![visit.id.clone()],
                    update_time: None,
                }),
            },
        ))
        .await
        .expect("PutProvider");
        let windows = (1..=7)
            .map(|weekday| WeeklyWindow {
                weekday,
                start: Some(LocalTime {
                    hours: 8,
                    minutes: 0,
                }),
                end: Some(LocalTime {
                    hours: 18,
                    minutes: 0,
                }),
                visit_type_ids: vec![],
            })
            .collect();
        api.set_weekly_availability(as_user(
            &staff,
            SetWeeklyAvailabilityRequest {
                provider_id: provider.id.clone(),
                windows,
            },
        ))
        .await
        .expect("SetWeeklyAvailability");
        Clinic {
            staff,
            office,
            provider,
            visit_type_id: visit.id,
        }
    }

    /// `patient` books the clinic's provider `days` days ahead at `hour`:00 New York time, the
    /// call carrying `traceparent` when given.
    pub async fn book(
        &self,
        clinic: &Clinic,
        patient: &User,
        days: i64,
        hour: u32,
        traceparent: Option<&str>,
    ) -> Appointment {
        let mut request = as_user(
            patient,
            BookAppointmentRequest {
                provider_id: clinic.provider.id.clone(),
                visit_type_id: clinic.visit_type_id.clone(),
                start_time: Some(to_proto(slot(days, hour))),
                reason: "follow-up".into(),
                ..Default::default()
            },
        );
        if let Some(tp) = traceparent {
            request
                .metadata_mut()
                .insert("traceparent", tp.parse().expect("traceparent"));
        }
        self.scheduling_api()
            .await
            .book_appointment(request)
            .await
            .expect("BookAppointment")
            .into_inner()
    }

    /// The invoices of `patient`, as billing staff see them.
    pub async fn invoices(&self, office: &User, patient: &User) -> Vec<Invoice> {
        self.billing_api()
            .await
            .list_invoices(with_token(
                tonic::Request::new(ListInvoicesRequest {
                    patient_id: patient.id.clone(),
                    ..Default::default()
                }),
                &office.token,
            ))
            .await
            .expect("ListInvoices")
            .into_inner()
            .invoices
    }

    /// Waits (up to 30 s) until billing holds an invoice for each of `appointments`.
    pub async fn eventually_invoiced(
        &self,
        office: &User,
        patient: &User,
        appointments: &[&str],
    ) -> Vec<Invoice> {
        crate::eventually(
            "an invoice for every booked appointment",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async {
                let found = self.invoices(office, patient).await;
                let billed = appointments
                    .iter()
                    .all(|a| found.iter().any(|i| i.appointment_id == *a));
                if billed {
                    Ok(found)
                } else {
                    Err(format!("{found:?}"))
                }
            },
        )
        .await
    }
}

/// What [`Suite::clinic`] set up.
pub struct Clinic {
    pub staff: User,
    pub office: User,
    pub provider: User,
    pub visit_type_id: String,
}

/// `days` days from today (New York) at `hour`:00 there.
fn slot(days: i64, hour: u32) -> DateTime<Utc> {
    let tz = chrono_tz::America::New_York;
    let day = Utc::now().with_timezone(&tz).date_naive() + chrono::Duration::days(days);
    tz.with_ymd_and_hms(day.year(), day.month(), day.day(), hour, 0, 0)
        .earliest()
        .expect("a local time that exists")
        .with_timezone(&Utc)
}

impl Suite {
    /// One read RPC of `service` as `user`, of the user's own data (a patient's profile,
    /// chart, conversations, appointments, invoices).
    pub async fn read_own(&self, service: &str, user: &User) -> Result<(), Status> {
        fn req<T>(user: &User, msg: T) -> Request<T> {
            with_token(Request::new(msg), &user.token)
        }
        let id = user.id.clone();
        match service {
            "identity" => IdentityServiceClient::new(self.identity.channel("gateway").await)
                .get_profile(req(user, GetProfileRequest {}))
                .await
                .map(drop),
            "records" => RecordsServiceClient::new(self.records.channel("gateway").await)
                .get_chart(req(user, GetChartRequest { patient_id: id }))
                .await
                .map(drop),
            "messaging" => MessagingServiceClient::new(self.messaging.channel("gateway").await)
                .list_conversations(req(user, ListConversationsRequest::default()))
                .await
                .map(drop),
            "scheduling" => self
                .scheduling_api()
                .await
                .list_appointments(req(
                    user,
                    ListAppointmentsRequest {
                        patient_id: id,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
            "billing" => self
                .billing_api()
                .await
                .list_invoices(req(
                    user,
                    ListInvoicesRequest {
                        patient_id: id,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
            other => panic!("no service {other}"),
        }
    }

    /// An admin as `carehub admin create` makes one (a one-time password, to be changed at
    /// first login), directly in identity's database.
    pub async fn admin(&self) -> carehub::demo::AdminLogin {
        let state = &self.identity.handle().state;
        let email = format!("admin-{}@example.org", uuid::Uuid::now_v7().simple());
        let (_, password) = carehub_identity::bootstrap::create_account(
            &state.pool,
            &state.crypto,
            &state.hasher,
            Role::Admin,
            &email,
            "Ada",
            "Admin",
        )
        .await
        .unwrap_or_else(|e| panic!("creating an admin: {e:#}"));
        carehub::demo::AdminLogin { email, password }
    }

    /// What the demo journey runs against: the five services as the gateway, an admin, and
    /// messaging's sandbox for the verification code.
    pub async fn demo_target(&self) -> carehub::demo::Target {
        let sandbox = self
            .messaging
            .handle()
            .state
            .notifications
            .sandbox()
            .clone();
        carehub::demo::Target {
            identity: self.identity.channel("gateway").await,
            records: self.records.channel("gateway").await,
            messaging: self.messaging.channel("gateway").await,
            scheduling: self.scheduling.channel("gateway").await,
            billing: self.billing.channel("gateway").await,
            admin: self.admin().await,
            inbox: std::sync::Arc::new(crate::inbox::MessagingInbox::new(sandbox)),
            tag: key()[4..16].to_owned(),
        }
    }
}
