//! Scheduling and billing wired as a deployment wires them: scheduling's outbox delivers its
//! appointment events to the real billing, which makes one invoice per booked appointment and
//! voids it when the visit is cancelled in time.

use std::time::{Duration, Instant};

use carehub_platform::auth::Role;
use carehub_platform::config::OutboxTarget;
use carehub_platform::timestamps::to_proto;
use carehub_proto::billing::v1::{InvoiceStatus, ListInvoicesRequest};
use carehub_proto::scheduling::v1::scheduling_service_client::SchedulingServiceClient;
use carehub_proto::scheduling::v1::*;
use carehub_scheduling::config::SchedulingConfig;
use carehub_testkit::service::TestService;
use chrono::{Datelike, TimeZone};

use crate::common::*;

async fn invoices(
    s: &Suite,
    office: &User,
    patient: &User,
) -> Vec<carehub_proto::billing::v1::Invoice> {
    s.api()
        .await
        .list_invoices(with_token(
            tonic::Request::new(ListInvoicesRequest {
                patient_id: patient.id.clone(),
                ..Default::default()
            }),
            &office.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .invoices
}

async fn eventually_status(
    s: &Suite,
    office: &User,
    patient: &User,
    status: InvoiceStatus,
) -> Vec<carehub_proto::billing::v1::Invoice> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = invoices(s, office, patient).await;
        if found.first().is_some_and(|i| i.status == status as i32) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "invoice not {status:?} within 30 s: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_booking_in_scheduling_makes_one_invoice_and_a_timely_cancellation_voids_it() {
    let s = spawn().await;
    let billing_endpoint = format!("https://127.0.0.1:{}", s.billing.grpc_addr.port());
    let identity_endpoint = format!("https://{}", s.identity.grpc_addr);
    let scheduling = TestService::start_with_pki(
        &carehub_scheduling::SERVICE,
        s.identity.pki().clone(),
        |c: &mut SchedulingConfig| {
            c.server.auth.identity_endpoint = Some(identity_endpoint);
            c.server.database.max_connections = 4;
            c.server.outbox.poll_interval_ms = 100;
            c.server.outbox.backoff_base_ms = 50;
            c.server.outbox.targets.insert(
                "billing".to_owned(),
                OutboxTarget {
                    endpoint: billing_endpoint,
                    server_name: "billing".to_owned(),
                },
            );
        },
    )
    .await;
    let office = s.user(Role::Billing, "office").await;
    let staff = s.user(Role::Staff, "desk").await;
    let provider = s.user(Role::Provider, "doc").await;
    let patient = s.user(Role::Patient, "pat").await;
    s.price(&office, "video-30", 9000, 2500, 4000).await;
    let mut api = SchedulingServiceClient::new(scheduling.channel("gateway").await);
    let visit = api
        .create_visit_type(as_user(
            &staff,
            CreateVisitTypeRequest {
                visit_type: Some(VisitType {
                    name: "Video visit".into(),
                    duration_minutes: 30,
                    buffer_minutes: 0,
                    modality: Modality::Telehealth as i32,
                    price_code: "video-30".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
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
    .unwrap();
    let windows = (1..=7)
        .map(|d| WeeklyWindow {
            weekday: d,
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
    .unwrap();
    let tz = chrono_tz::America::New_York;
    let day = chrono::Utc::now().with_timezone(&tz).date_naive() + chrono::Duration::days(3);
    let start = tz
        .with_ymd_and_hms(day.year(), day.month(), day.day(), 10, 0, 0)
        .earliest()
        .unwrap()
        .with_timezone(&chrono::Utc);
    let appointment = api
        .book_appointment(as_user(
            &patient,
            BookAppointmentRequest {
                provider_id: provider.id.clone(),
                visit_type_id: visit.id.clone(),
                start_time: Some(to_proto(start)),
                reason: "a rash".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let drafts = eventually_status(&s, &office, &patient, InvoiceStatus::Draft).await;
    assert_eq!(drafts.len(), 1);
    assert_eq!(drafts[0].appointment_id, appointment.id);
    assert_eq!(drafts[0].total_minor, 9000);
    api.cancel_appointment(as_user(
        &patient,
        CancelAppointmentRequest {
            appointment_id: appointment.id.clone(),
            reason: CancelReason::PatientRequest as i32,
            note: String::new(),
        },
    ))
    .await
    .unwrap();
    let voided = eventually_status(&s, &office, &patient, InvoiceStatus::Void).await;
    assert_eq!(voided.len(), 1, "one invoice per appointment: {voided:?}");
    assert_eq!(voided[0].number, "", "a voided draft takes no number");
    scheduling.shutdown().await;
}
