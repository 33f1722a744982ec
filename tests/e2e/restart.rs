//! Services restarted mid-journey lose nothing: billing and messaging stop, a patient books
//! meanwhile (scheduling's outbox keeps the appointment event for billing and the video visit
//! for messaging, their deliveries failing), both start again on the same ports and databases,
//! and the effects arrive: one draft invoice per appointment and the video visit, none lost,
//! none twice; no outbox of any service is left with an undelivered row.

use std::time::Duration;

use carehub_e2e::Suite;
use carehub_platform::auth::Role;
use carehub_proto::billing::v1::InvoiceStatus;

/// (state, attempts) of scheduling's outbox rows for `target`, oldest first.
async fn rows_for(suite: &Suite, target: &str) -> Vec<(String, i32)> {
    sqlx::query_as(
        "SELECT state, attempts FROM carehub_platform.outbox WHERE target = $1
          ORDER BY created_at",
    )
    .bind(target)
    .fetch_all(suite.scheduling.pool())
    .await
    .expect("scheduling's outbox")
}

/// How many video visits messaging holds for `appointment`.
async fn video_visits(suite: &Suite, appointment: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM video_visits WHERE appointment_id = $1::uuid")
        .bind(appointment)
        .fetch_one(suite.messaging.pool())
        .await
        .expect("messaging's video visits")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_service_loses_no_outbox_delivery() {
    if !carehub_testkit::process::in_own_process(
        "restart::restarted_service_loses_no_outbox_delivery",
    ) {
        return;
    }
    let mut suite = Suite::start().await;
    let clinic = suite.clinic().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let before = suite.book(&clinic, &patient, 3, 10, None).await;
    suite
        .eventually_invoiced(&clinic.office, &patient, &[&before.id])
        .await;
    suite.eventually_all_delivered().await;
    assert_eq!(video_visits(&suite, &before.id).await, 1, "the video visit");

    suite.billing.stop().await;
    suite.messaging.stop().await;
    let during = suite.book(&clinic, &patient, 3, 14, None).await;
    // Both effects are kept and retried while their targets are down.
    for target in ["billing", "messaging"] {
        carehub_e2e::eventually(
            &format!("a failed delivery to the stopped {target}"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let rows = rows_for(&suite, target).await;
                match rows.last() {
                    Some((state, attempts)) if state == "pending" && *attempts > 0 => Ok(()),
                    _ => Err(format!("{rows:?}")),
                }
            },
        )
        .await;
    }

    suite.messaging.start().await;
    suite.billing.start().await;
    suite.until_ready(&["messaging", "billing"]).await;
    suite
        .eventually_invoiced(&clinic.office, &patient, &[&before.id, &during.id])
        .await;
    suite.eventually_all_delivered().await;
    // Let a few more relay rounds pass: a redelivery would show as a second invoice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let invoices = suite.invoices(&clinic.office, &patient).await;
    assert_eq!(
        invoices.len(),
        2,
        "one invoice per appointment: {invoices:?}"
    );
    for appointment in [&before.id, &during.id] {
        let billed: Vec<_> = invoices
            .iter()
            .filter(|i| i.appointment_id == *appointment)
            .collect();
        assert_eq!(billed.len(), 1, "invoices of {appointment}: {invoices:?}");
        assert_eq!(billed[0].status, InvoiceStatus::Draft as i32, "{billed:?}");
        assert_eq!(billed[0].total_minor, 9000, "{billed:?}");
    }
    assert_eq!(video_visits(&suite, &during.id).await, 1, "the video visit");
    let billing_rows = rows_for(&suite, "billing").await;
    assert_eq!(billing_rows.len(), 2, "{billing_rows:?}");
    suite.shutdown().await;
}
