//! The reminder worker of each replica, and the sweeper of lapsed holds.
//!
//! Every `scheduling.reminder_poll_ms` it takes the due pending reminders (`FOR UPDATE SKIP
//! LOCKED`, so replicas share them and none takes one twice) and, in the same transaction,
//! queues messaging's SendNotification (APPOINTMENT_REMINDER, keyed by the reminder id) in the
//! outbox, records the audit event and marks the row sent. A reminder whose appointment is no
//! longer booked at that time is marked cancelled instead. Cancelling or rescheduling marks
//! pending rows cancelled under the same row locks: a cancelled appointment's reminder is never
//! queued, and a queued one is delivered once (the outbox's idempotency-key and the
//! notification's own key).
//!
//! Reminders are urgent notifications: quiet hours would move a reminder due an hour before
//! the visit past the visit itself, and a deferred notification could no longer be stopped by
//! a cancellation.

use std::sync::{Arc, Weak};
use std::time::Duration;

use carehub_platform::audit::{AuditEvent, Purpose};
use carehub_proto::messaging::v1::{SendNotificationRequest, Template};
use chrono::Utc;

use crate::api::effects::{MESSAGING, SEND_NOTIFICATION};
use crate::api::kinds;
use crate::domain::appointment::Status;
use crate::error::Result;
use crate::store::{appointments, reminders};
use crate::AppState;

/// Reminders one round takes.
const BATCH: i64 = 100;
/// Lapsed holds one round releases.
const SWEEP: i64 = 500;

/// Runs this replica's worker until the service's state is dropped.
pub fn spawn(state: Arc<AppState>) {
    let every = Duration::from_millis(state.settings.reminder_poll_ms);
    let state: Weak<AppState> = Arc::downgrade(&state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else {
                return;
            };
            if let Err(e) = round(&state).await {
                tracing::warn!(error = %e, "reminders: round failed");
            }
            if let Err(e) = sweep(&state).await {
                tracing::warn!(error = %e, "holds: sweep failed");
            }
        }
    });
}

/// One round: the due reminders, in one transaction; how many were queued.
pub async fn round(state: &AppState) -> Result<usize> {
    let mut tx = state.pool.begin().await?;
    let due = reminders::claim_due(&mut tx, BATCH).await?;
    let now = Utc::now();
    let mut queued = 0;
    for r in due {
        let still_on = Status::parse(&r.status) == Some(Status::Booked)
            && r.appointment_start == r.start_time
            && r.start_time > now;
        if !still_on {
            reminders::mark(&mut tx, r.id, "cancelled").await?;
            continue;
        }
        let request = SendNotificationRequest {
            user_id: r.patient_id.to_string(),
            template: Template::AppointmentReminder as i32,
            channels: vec![],
            urgent: true,
            params: [("start_time".to_owned(), rfc3339(r.start_time))]
                .into_iter()
                .collect(),
            idempotency_key: format!("scheduling-reminder-{}", r.id),
            address: String::new(),
        };
        state
            .outbox
            .enqueue(&mut tx, MESSAGING, SEND_NOTIFICATION, &request)
            .await?;
        let event = AuditEvent::of(
            kinds::REMINDER_SEND,
            Purpose::Treatment,
            "appointment",
            r.appointment_id,
        )
        .subject(r.patient_id);
        carehub_platform::audit::record(&mut tx, &event).await?;
        reminders::mark(&mut tx, r.id, "sent").await?;
        queued += 1;
    }
    tx.commit().await?;
    Ok(queued)
}

/// Template parameters are text: instants go as RFC 3339 in UTC.
fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Releases lapsed holds (writers release the ones in their way; this keeps the rest tidy).
pub async fn sweep(state: &AppState) -> Result<u64> {
    let mut conn = state.pool.acquire().await?;
    appointments::sweep_expired_holds(&mut conn, SWEEP).await
}
