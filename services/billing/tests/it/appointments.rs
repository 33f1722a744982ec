//! Invoices from scheduling's appointment events (delivered by scheduling's outbox as the
//! `scheduling` workload): one invoice per appointment whatever the redeliveries, finalized,
//! voided or turned into a fee as the visit ends, whatever order the events arrive in, and
//! numbered without gaps.

use carehub_platform::auth::Role;
use carehub_platform::client::ServiceChannel;
use carehub_proto::billing::v1::*;
use carehub_proto::common::v1::appointment_events_client::AppointmentEventsClient;
use carehub_proto::scheduling::v1::{AppointmentEvent, AppointmentEventKind};
use tonic::Code;

use crate::common::*;

fn event(
    kind: AppointmentEventKind,
    appointment: &str,
    patient: &User,
    late: bool,
) -> AppointmentEvent {
    AppointmentEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        kind: kind as i32,
        appointment_id: appointment.to_owned(),
        patient_id: patient.id.clone(),
        provider_id: uuid::Uuid::now_v7().to_string(),
        visit_type_id: uuid::Uuid::now_v7().to_string(),
        price_code: "video-30".into(),
        late_cancellation: late,
        ..Default::default()
    }
}

async fn scheduling(s: &Suite) -> AppointmentEventsClient<ServiceChannel> {
    AppointmentEventsClient::new(s.billing.channel("scheduling").await)
}

async fn deliver(s: &Suite, e: &AppointmentEvent) {
    let req = with_key(tonic::Request::new(e.clone()), &key());
    scheduling(s)
        .await
        .apply_appointment_event(req)
        .await
        .unwrap();
}

async fn invoice_of(s: &Suite, office: &User, patient: &User) -> Vec<Invoice> {
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

#[tokio::test]
async fn a_booked_appointment_gets_one_invoice_finalized_when_completed() {
    let s = spawn().await;
    let office = s.user(Role::Billing, "office").await;
    let patient = s.user(Role::Patient, "pat").await;
    s.price(&office, "video-30", 9000, 2500, 4000).await;
    let appt = uuid::Uuid::now_v7().to_string();
    let booked = event(AppointmentEventKind::Booked, &appt, &patient, false);
    // Delivered three times (the outbox redelivers until acknowledged), under new keys.
    for _ in 0..3 {
        deliver(&s, &booked).await;
    }
    let drafts = invoice_of(&s, &office, &patient).await;
    assert_eq!(drafts.len(), 1);
    let draft = &drafts[0];
    assert_eq!(
        (draft.status, draft.total_minor),
        (InvoiceStatus::Draft as i32, 9000)
    );
    assert_eq!(draft.number, "", "drafts are not numbered");
    assert_eq!(draft.appointment_id, appt);
    // Not payable before the visit.
    s.card(&patient, "tok_visa").await;
    let early = s
        .api()
        .await
        .pay_invoice(as_user(&patient, pay(draft, 0)))
        .await
        .unwrap_err();
    assert_status(&early, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    deliver(
        &s,
        &event(AppointmentEventKind::Rescheduled, &appt, &patient, false),
    )
    .await;
    deliver(
        &s,
        &event(AppointmentEventKind::Completed, &appt, &patient, false),
    )
    .await;
    let open = invoice_of(&s, &office, &patient).await;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].status, InvoiceStatus::Open as i32);
    assert!(!open[0].number.is_empty());
    // A late BOOKED redelivery changes nothing.
    deliver(&s, &booked).await;
    assert_eq!(
        invoice_of(&s, &office, &patient).await[0].status,
        InvoiceStatus::Open as i32
    );
    // Only scheduling may deliver.
    let mut other = AppointmentEventsClient::new(s.billing.channel("messaging").await);
    let refused = other
        .apply_appointment_event(with_key(tonic::Request::new(booked.clone()), &key()))
        .await
        .unwrap_err();
    assert_status(
        &refused,
        Code::PermissionDenied,
        Some("WORKLOAD_NOT_ALLOWED"),
    );
}

#[tokio::test]
async fn cancellations_void_or_charge_the_fee_and_numbers_have_no_gaps() {
    let s = spawn().await;
    let office = s.user(Role::Billing, "office").await;
    let patient = s.user(Role::Patient, "pat").await;
    s.price(&office, "video-30", 9000, 2500, 4000).await;
    let (early, late, no_show, done) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    for a in [&early, &late, &no_show, &done] {
        deliver(&s, &event(AppointmentEventKind::Booked, a, &patient, false)).await;
    }
    deliver(
        &s,
        &event(AppointmentEventKind::Cancelled, &early, &patient, false),
    )
    .await;
    deliver(
        &s,
        &event(AppointmentEventKind::Cancelled, &late, &patient, true),
    )
    .await;
    deliver(
        &s,
        &event(AppointmentEventKind::NoShow, &no_show, &patient, false),
    )
    .await;
    // A completion that arrives before its booking still makes one finalized invoice.
    let out_of_order = uuid::Uuid::now_v7().to_string();
    deliver(
        &s,
        &event(
            AppointmentEventKind::Completed,
            &out_of_order,
            &patient,
            false,
        ),
    )
    .await;
    deliver(
        &s,
        &event(AppointmentEventKind::Booked, &out_of_order, &patient, false),
    )
    .await;
    let all = invoice_of(&s, &office, &patient).await;
    let by = |a: &str| all.iter().find(|i| i.appointment_id == a).unwrap().clone();
    assert_eq!(by(&early).status, InvoiceStatus::Void as i32);
    assert_eq!(by(&early).number, "");
    let fee = by(&late);
    assert_eq!(
        (fee.status, fee.total_minor),
        (InvoiceStatus::Open as i32, 2500)
    );
    assert_eq!(fee.lines[0].kind, LineKind::LateCancellationFee as i32);
    assert_eq!(by(&no_show).total_minor, 4000);
    assert_eq!(by(&no_show).lines[0].kind, LineKind::NoShowFee as i32);
    assert_eq!(by(&done).status, InvoiceStatus::Draft as i32);
    assert_eq!(by(&out_of_order).status, InvoiceStatus::Open as i32);
    // Numbers: the finalized invoices of the year, consecutive (the voided draft took none).
    let mut numbers: Vec<i64> = all
        .iter()
        .filter(|i| !i.number.is_empty())
        .map(|i| i.number.split('-').nth(1).unwrap().parse().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers.len(), 3);
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
}
