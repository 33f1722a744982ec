#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What a booking means for other services, through scheduling's outbox to the real records
//! and messaging (and billing's stand-in): the provider joins the care team, the video visit is
//! prepared, reminders go out, billing hears of it — each exactly once, also when the relay
//! dies between a delivery and its acknowledgement (simulated by putting delivered rows back
//! to pending, which is the state a relay killed before recording the acknowledgement leaves).
//! A cancelled appointment's reminders are never sent; a reschedule moves them.

use carehub_platform::auth::Role;
use carehub_platform::timestamps::to_proto;
use carehub_proto::scheduling::v1::*;
use chrono::Duration;
use sqlx::PgPool;
use uuid::Uuid;

use crate::common::*;

async fn count(pool: &PgPool, sql: &str, id: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(Uuid::parse_str(id).unwrap())
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn pending_outbox(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM carehub_platform.outbox WHERE state <> 'delivered'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Reminders of `appointment` as (id, state, start).
async fn reminders(
    pool: &PgPool,
    appointment: &str,
) -> Vec<(Uuid, String, chrono::DateTime<chrono::Utc>)> {
    sqlx::query_as(
        "SELECT id, state, start_time FROM reminders WHERE appointment_id = $1::uuid ORDER BY offset_minutes DESC",
    )
    .bind(appointment)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Makes `appointment`'s pending reminders due now (the clock moved on).
async fn make_due(pool: &PgPool, appointment: &str) {
    sqlx::query("UPDATE reminders SET due_at = now() WHERE appointment_id = $1::uuid")
        .bind(appointment)
        .execute(pool)
        .await
        .unwrap();
}

/// Notifications messaging accepted for reminder `id`.
async fn notified(suite: &Suite, reminder: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE caller_workload = 'scheduling'
            AND idempotency_key = $1 AND template = 'appointment_reminder'",
    )
    .bind(format!("scheduling-reminder-{reminder}"))
    .fetch_one(suite.messaging.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_reaches_records_messaging_and_billing_once_even_when_the_relay_dies_before_acknowledging(
) {
    let suite = spawn().await;
    let (_staff, visit, provider) = suite.clinic().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let a = suite
        .book(&patient, &provider, &visit, local(NEW_YORK, 2, 10, 0))
        .await
        .unwrap();
    let team = "SELECT count(*) FROM care_team_members WHERE patient_id = $1 AND member_id = $2 AND ended_at IS NULL";
    let video = "SELECT count(*) FROM video_visits WHERE appointment_id = $1";
    let on_team = || async {
        sqlx::query_scalar::<_, i64>(team)
            .bind(Uuid::parse_str(&patient.id).unwrap())
            .bind(Uuid::parse_str(&provider.id).unwrap())
            .fetch_one(suite.records.pool())
            .await
            .unwrap()
    };
    eventually(20, "the provider joins the care team", || async {
        on_team().await == 1
    })
    .await;
    eventually(20, "the video visit is prepared", || async {
        count(suite.messaging.pool(), video, &a.id).await == 1
    })
    .await;
    eventually(20, "billing hears of the booking", || async {
        suite.billing.deliveries() == 1
    })
    .await;
    let booked = &suite.billing.applied()[0];
    assert_eq!(booked.kind, AppointmentEventKind::Booked as i32);
    assert_eq!(
        (booked.appointment_id.as_str(), booked.price_code.as_str()),
        (a.id.as_str(), "EM-99213")
    );

    // Two reminders were written (24 h and 1 h before); the clock reaches them.
    let written = reminders(suite.pool(), &a.id).await;
    assert_eq!(written.len(), 2);
    assert!(written.iter().all(|(_, state, _)| state == "pending"));
    make_due(suite.pool(), &a.id).await;
    for (id, _, _) in &written {
        eventually(20, "the reminder reaches messaging", || async {
            notified(&suite, *id).await == 1
        })
        .await;
    }
    eventually(20, "everything is delivered", || async {
        pending_outbox(suite.pool()).await == 0
    })
    .await;
    let delivered: i64 = sqlx::query_scalar("SELECT count(*) FROM carehub_platform.outbox")
        .fetch_one(suite.pool())
        .await
        .unwrap();
    // Care team, video visit, billing, two reminders.
    assert_eq!(delivered, 5);

    // The relay dies after every delivery, before recording the acknowledgement: every row is
    // delivered again.
    sqlx::query(
        "UPDATE carehub_platform.outbox
            SET state = 'pending', delivered_at = NULL, attempts = 0, next_attempt_at = now()",
    )
    .execute(suite.pool())
    .await
    .unwrap();
    eventually(20, "everything is delivered again", || async {
        pending_outbox(suite.pool()).await == 0
    })
    .await;
    eventually(20, "billing got the repeat", || async {
        suite.billing.deliveries() == 2
    })
    .await;

    // Each effect happened once.
    assert_eq!(on_team().await, 1);
    assert_eq!(count(suite.messaging.pool(), video, &a.id).await, 1);
    for (id, _, _) in &written {
        assert_eq!(
            notified(&suite, *id).await,
            1,
            "reminder {id} notified twice"
        );
    }
    let deliveries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
          WHERE n.caller_workload = 'scheduling'",
    )
    .fetch_one(suite.messaging.pool())
    .await
    .unwrap();
    assert!(
        deliveries <= 2 * 3,
        "at most one delivery per channel per reminder: {deliveries}"
    );
    // Billing received the event twice under one key and one event id: applied once.
    let repeats = suite.billing.deliveries.lock().unwrap().clone();
    assert_eq!(
        repeats[0].0, repeats[1].0,
        "a redelivery carries the same idempotency-key"
    );
    assert_eq!(repeats[0].1.event_id, repeats[1].1.event_id);
    assert_eq!(suite.billing.applied().len(), 1);
    // Sent reminders stay sent: the worker never hands one over twice.
    assert!(reminders(suite.pool(), &a.id)
        .await
        .iter()
        .all(|(_, s, _)| s == "sent"));
    suite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_appointments_reminders_are_never_sent_and_a_reschedule_moves_them() {
    let suite = spawn().await;
    let (_staff, visit, provider) = suite.clinic().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let mut api = suite.public().await;

    // Cancelled: its reminders are cancelled with it and never reach messaging, even once due.
    let cancelled = suite
        .book(&patient, &provider, &visit, local(NEW_YORK, 2, 10, 0))
        .await
        .unwrap();
    let answer = api
        .cancel_appointment(as_user(
            &patient,
            CancelAppointmentRequest {
                appointment_id: cancelled.id.clone(),
                reason: CancelReason::PatientRequest as i32,
                note: "feeling better".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, AppointmentStatus::Cancelled as i32);
    assert!(!answer.late_cancellation, "two days ahead is not late");
    make_due(suite.pool(), &cancelled.id).await;

    // Rescheduled: the old time's reminders are cancelled, the new time's written.
    let moved = suite
        .book(&patient, &provider, &visit, local(NEW_YORK, 3, 10, 0))
        .await
        .unwrap();
    let old = reminders(suite.pool(), &moved.id).await;
    let new_start = local(NEW_YORK, 3, 14, 0);
    api.reschedule_appointment(as_user(
        &patient,
        RescheduleAppointmentRequest {
            appointment_id: moved.id.clone(),
            start_time: Some(to_proto(new_start)),
            hold_id: String::new(),
        },
    ))
    .await
    .unwrap();
    let after = reminders(suite.pool(), &moved.id).await;
    assert_eq!(after.len(), 4);
    for (id, state, start) in &after {
        if old.iter().any(|(o, _, _)| o == id) {
            assert_eq!(state, "cancelled");
        } else {
            assert_eq!((state.as_str(), *start), ("pending", new_start));
        }
    }
    make_due(suite.pool(), &moved.id).await;
    for (id, _, _) in after
        .iter()
        .filter(|(id, _, _)| !old.iter().any(|(o, _, _)| o == id))
    {
        eventually(20, "the new time's reminder is sent", || async {
            notified(&suite, *id).await == 1
        })
        .await;
    }
    // Several worker rounds have passed since the cancelled ones were due.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for (id, state, _) in reminders(suite.pool(), &cancelled.id)
        .await
        .iter()
        .chain(old.iter())
    {
        assert_eq!(
            notified(&suite, *id).await,
            0,
            "reminder {id} ({state}) of an old time was sent"
        );
    }
    assert!(reminders(suite.pool(), &cancelled.id)
        .await
        .iter()
        .all(|(_, s, _)| s == "cancelled"));

    // Billing heard: booked, cancelled; booked, rescheduled.
    eventually(20, "billing hears everything", || async {
        suite.billing.applied().len() == 4
    })
    .await;
    let kinds: Vec<(String, i32, bool)> = suite
        .billing
        .applied()
        .into_iter()
        .map(|e| (e.appointment_id, e.kind, e.late_cancellation))
        .collect();
    assert!(kinds.contains(&(
        cancelled.id.clone(),
        AppointmentEventKind::Cancelled as i32,
        false
    )));
    assert!(kinds.contains(&(
        moved.id.clone(),
        AppointmentEventKind::Rescheduled as i32,
        false
    )));
    // The video visit followed the move.
    eventually(20, "the video visit moves", || async {
        let starts: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT starts_at FROM video_visits WHERE appointment_id = $1::uuid",
        )
        .bind(&moved.id)
        .fetch_optional(suite.messaging.pool())
        .await
        .unwrap();
        starts == Some(new_start)
    })
    .await;
    let gone: bool =
        sqlx::query_scalar("SELECT cancelled FROM video_visits WHERE appointment_id = $1::uuid")
            .bind(&cancelled.id)
            .fetch_one(suite.messaging.pool())
            .await
            .unwrap();
    assert!(gone, "the cancelled appointment's video visit is cancelled");
    suite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_hand_each_due_reminder_over_once() {
    let suite = spawn().await;
    let (_staff, visit, provider) = suite.clinic().await;
    let identity_endpoint = format!("https://{}", suite.identity.grpc_addr);
    let targets = suite.scheduling.handle().state.settings.clone();
    let replica = suite
        .scheduling
        .start_replica(&carehub_scheduling::SERVICE, None, |c| {
            c.server.auth.identity_endpoint = Some(identity_endpoint);
            c.scheduling = targets;
            c.scheduling.reminder_poll_ms = 100;
        })
        .await;
    let mut appointments = Vec::new();
    for i in 0..15 {
        let patient = suite.user(Role::Patient, &format!("p{i}")).await;
        let start = local(NEW_YORK, 2, 8, 0) + Duration::minutes(30 * i64::from(i));
        appointments.push(
            suite
                .book(&patient, &provider, &visit, start)
                .await
                .unwrap(),
        );
    }
    sqlx::query("UPDATE reminders SET due_at = now()")
        .execute(suite.pool())
        .await
        .unwrap();
    eventually(30, "every reminder handed over", || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM reminders WHERE state = 'pending'")
                .fetch_one(suite.pool())
                .await
                .unwrap();
        pending == 0
    })
    .await;
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM carehub_platform.outbox
          WHERE method = '/carehub.messaging.v1.MessagingInternal/SendNotification'",
    )
    .fetch_one(suite.pool())
    .await
    .unwrap();
    assert_eq!(
        queued, 30,
        "one notification per reminder, whichever replica took it"
    );
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM reminders WHERE state = 'sent'")
        .fetch_one(suite.pool())
        .await
        .unwrap();
    assert_eq!(sent, 30);
    replica.server.shutdown().await.ok();
    suite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_account_gives_its_time_back_through_identitys_outbox() {
    use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
    let suite = spawn().await;
    let (_staff, visit, provider) = suite.clinic().await;
    let leaving = suite.user(Role::Patient, "leaving").await;
    let staying = suite.user(Role::Patient, "staying").await;
    let start = local(NEW_YORK, 2, 10, 0);
    let theirs = suite
        .book(&leaving, &provider, &visit, start)
        .await
        .unwrap();
    let kept = suite
        .book(&staying, &provider, &visit, start + Duration::hours(1))
        .await
        .unwrap();
    let admin = suite.user(Role::Admin, "admin").await;
    IdentityServiceClient::new(suite.identity.channel("gateway").await)
        .terminate_user(as_user(
            &admin,
            carehub_proto::identity::v1::TerminateUserRequest {
                user_id: leaving.id.clone(),
                reason: "account closed at the patient's request".into(),
            },
        ))
        .await
        .unwrap();
    eventually(
        20,
        "the terminated patient's appointment is cancelled",
        || async {
            let status: String =
                sqlx::query_scalar("SELECT status FROM appointments WHERE id = $1::uuid")
                    .bind(&theirs.id)
                    .fetch_one(suite.pool())
                    .await
                    .unwrap();
            status == "cancelled"
        },
    )
    .await;
    // Its slot is free again; the other patient's appointment is untouched.
    let other = suite.user(Role::Patient, "next").await;
    suite.book(&other, &provider, &visit, start).await.unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM appointments WHERE id = $1::uuid")
        .bind(&kept.id)
        .fetch_one(suite.pool())
        .await
        .unwrap();
    assert_eq!(status, "booked");
    // Its reminders are cancelled and billing hears of the cancellation.
    assert!(reminders(suite.pool(), &theirs.id)
        .await
        .iter()
        .all(|(_, s, _)| s == "cancelled"));
    eventually(20, "billing hears of it", || async {
        suite.billing.applied().iter().any(|e| {
            e.appointment_id == theirs.id && e.kind == AppointmentEventKind::Cancelled as i32
        })
    })
    .await;
    suite.shutdown().await;
}
