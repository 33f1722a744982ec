//! What a change to an appointment means for other services, queued in the change's own
//! transaction through the platform outbox (at least once; each receiver applies a delivery
//! once, keyed by the outbox row id):
//!
//! - booked: the provider joins the patient's care team (records), reminders are written, the
//!   video visit is prepared (messaging, telehealth only), `appointment.booked` for billing;
//! - cancelled: pending reminders cancelled, the video visit cancelled, `.cancelled`;
//! - rescheduled: reminders of the old time cancelled and new ones written, the video visit
//!   moved, `.rescheduled`;
//! - completed, no-show: `.completed`, `.no_show`.
//!
//! Video visits carry the appointment's revision, so that a late redelivery of an older upsert
//! cannot undo a newer one in messaging.

use carehub_platform::timestamps::to_proto;
use carehub_proto::messaging::v1::{UpsertVideoVisitRequest, VideoVisit};
use carehub_proto::records::v1::AddBookedProviderRequest;
use carehub_proto::scheduling::v1::{AppointmentEvent, AppointmentEventKind};
use chrono::Utc;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::appointment::Modality;
use crate::error::Result;
use crate::store::appointments::AppointmentRow;
use crate::store::reminders;
use crate::AppState;

pub const ADD_BOOKED_PROVIDER: &str = "/carehub.records.v1.RecordsInternal/AddBookedProvider";
pub const RECORD_INTAKE: &str = "/carehub.records.v1.RecordsInternal/RecordIntakeResponse";
pub const SEND_NOTIFICATION: &str = "/carehub.messaging.v1.MessagingInternal/SendNotification";
pub const UPSERT_VIDEO_VISIT: &str = "/carehub.messaging.v1.MessagingInternal/UpsertVideoVisit";
pub const APPLY_APPOINTMENT_EVENT: &str =
    "/carehub.common.v1.AppointmentEvents/ApplyAppointmentEvent";

/// The outbox targets (keys of `[server.outbox.targets]`).
pub const RECORDS: &str = "records";
pub const MESSAGING: &str = "messaging";
pub const BILLING: &str = "billing";

fn is_telehealth(a: &AppointmentRow) -> bool {
    Modality::parse(&a.modality) == Some(Modality::Telehealth)
}

async fn video(
    state: &AppState,
    conn: &mut PgConnection,
    a: &AppointmentRow,
    cancelled: bool,
) -> Result<()> {
    if !is_telehealth(a) {
        return Ok(());
    }
    let visit = VideoVisit {
        appointment_id: a.id.to_string(),
        patient_id: a.patient_id.to_string(),
        provider_id: a.provider_id.to_string(),
        start_time: Some(to_proto(a.start_time)),
        end_time: Some(to_proto(a.end_time)),
        cancelled,
        room: String::new(),
        revision: a.revision,
    };
    state
        .outbox
        .enqueue(
            conn,
            MESSAGING,
            UPSERT_VIDEO_VISIT,
            &UpsertVideoVisitRequest { visit: Some(visit) },
        )
        .await?;
    Ok(())
}

async fn billing(
    state: &AppState,
    conn: &mut PgConnection,
    a: &AppointmentRow,
    kind: AppointmentEventKind,
    price_code: &str,
) -> Result<()> {
    let event = AppointmentEvent {
        event_id: Uuid::now_v7().to_string(),
        kind: kind as i32,
        appointment_id: a.id.to_string(),
        patient_id: a.patient_id.to_string(),
        provider_id: a.provider_id.to_string(),
        visit_type_id: a.visit_type_id.to_string(),
        price_code: price_code.to_owned(),
        start_time: Some(to_proto(a.start_time)),
        end_time: Some(to_proto(a.end_time)),
        late_cancellation: a.late_cancellation,
        occur_time: Some(to_proto(Utc::now())),
    };
    state
        .outbox
        .enqueue(conn, BILLING, APPLY_APPOINTMENT_EVENT, &event)
        .await?;
    Ok(())
}

/// `a` was just booked (directly, from a hold, a confirmed request, an accepted consultation).
pub async fn booked(
    state: &AppState,
    conn: &mut PgConnection,
    a: &AppointmentRow,
    price_code: &str,
) -> Result<()> {
    state
        .outbox
        .enqueue(
            conn,
            RECORDS,
            ADD_BOOKED_PROVIDER,
            &AddBookedProviderRequest {
                patient_id: a.patient_id.to_string(),
                provider_id: a.provider_id.to_string(),
                appointment_id: a.id.to_string(),
            },
        )
        .await?;
    reminders::schedule(
        conn,
        a.id,
        a.start_time,
        &state.settings.reminder_offsets_minutes,
        Utc::now(),
    )
    .await?;
    video(state, conn, a, false).await?;
    billing(state, conn, a, AppointmentEventKind::Booked, price_code).await
}

/// `a` was cancelled; `was_booked`: whether it had been booked (a request that was never
/// confirmed told nobody).
pub async fn cancelled(
    state: &AppState,
    conn: &mut PgConnection,
    a: &AppointmentRow,
    was_booked: bool,
    price_code: &str,
) -> Result<()> {
    reminders::cancel_pending(conn, a.id).await?;
    if was_booked {
        video(state, conn, a, true).await?;
        billing(state, conn, a, AppointmentEventKind::Cancelled, price_code).await?;
    }
    Ok(())
}

/// `a` moved to its new time.
pub async fn rescheduled(
    state: &AppState,
    conn: &mut PgConnection,
    a: &AppointmentRow,
    booked: bool,
    price_code: &str,
) -> Result<()> {
    reminders::cancel_pending(conn, a.id).await?;
    if booked {
        reminders::schedule(
            conn,
            a.id,
            a.start_time,
            &state.settings.reminder_offsets_minutes,
            Utc::now(),
        )
        .await?;
        video(state, conn, a, false).await?;
        billing(
            state,
            conn,
            a,
            AppointmentEventKind::Rescheduled,
            price_code,
        )
        .await?;
    }
    Ok(())
}

/// `a` reached an end: completed or no-show.
pub async fn ended(
    state: &AppState,
    conn: &mut PgConnection,
    a: &AppointmentRow,
    kind: AppointmentEventKind,
    price_code: &str,
) -> Result<()> {
    reminders::cancel_pending(conn, a.id).await?;
    video(state, conn, a, kind == AppointmentEventKind::NoShow).await?;
    billing(state, conn, a, kind, price_code).await
}
