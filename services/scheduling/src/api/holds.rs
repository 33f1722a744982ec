//! Holds: a slot reserved for a few minutes (`scheduling.hold_minutes`) while the patient
//! completes intake or payment. A hold is a claim like an appointment's, so two holds, or a
//! hold and an appointment, never overlap; it lapses on its own.

use carehub_platform::audit::AuditEvent;
use carehub_platform::auth::Role;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::timestamps;
use carehub_proto::scheduling::v1::*;
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::access::{party, patient_for};
use super::convert::hold_to_pb;
use super::kinds;
use super::providers::provider_row;
use super::slots::check_offered_to;
use crate::error::{below_quota, checked, Result, SchedulingError};
use crate::store::appointments::{self as store, HoldRow, Span};
use crate::store::providers::{self as providers_store, VisitTypeRow};
use crate::AppState;

/// The span a visit of `visit` starting at `start` takes.
pub fn span(visit: &VisitTypeRow, start: DateTime<Utc>) -> Span {
    let end = start + Duration::minutes(i64::from(visit.duration_minutes));
    Span {
        start,
        end,
        blocked_end: end + Duration::minutes(i64::from(visit.buffer_minutes)),
    }
}

/// Visit type `id`, or NOT_FOUND.
pub async fn visit_type(state: &AppState, id: Uuid) -> Result<VisitTypeRow> {
    let mut conn = state.pool.acquire().await?;
    providers_store::visit_type(&mut conn, id)
        .await?
        .ok_or_else(|| SchedulingError::NotFound {
            what: "visit type",
            id: id.to_string(),
        })
}

/// Hold `id`, or NOT_FOUND.
pub async fn hold_row(state: &AppState, id: Uuid) -> Result<HoldRow> {
    let mut conn = state.pool.acquire().await?;
    store::hold(&mut conn, id, false)
        .await?
        .ok_or_else(|| SchedulingError::NotFound {
            what: "hold",
            id: id.to_string(),
        })
}

/// The slot fields of a hold or booking request: provider, visit type, start.
pub fn slot_fields(
    v: &mut FieldViolations,
    provider: &str,
    visit_type: &str,
    start: Option<&prost_types::Timestamp>,
) -> (Option<Uuid>, Option<Uuid>, Option<DateTime<Utc>>) {
    let p = v.require_uuid("provider_id", provider);
    let t = v.require_uuid("visit_type_id", visit_type);
    if start.is_none() {
        v.add("start_time", "is required");
    }
    let s = timestamps::field(start, "start_time", v);
    (p, t, s)
}

pub async fn create(state: &AppState, call: &Call, r: CreateHoldRequest) -> Result<Hold> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let (provider, visit_type_id, start) = slot_fields(
        &mut v,
        &r.provider_id,
        &r.visit_type_id,
        r.start_time.as_ref(),
    );
    v.finish()?;
    let (provider, visit_type_id, start) =
        (checked(provider)?, checked(visit_type_id)?, checked(start)?);
    let patient = patient_for(state, user, "patient_id", &r.patient_id).await?;
    let purpose = party(user, patient, Some(provider))?;
    let provider_row = provider_row(state, provider).await?;
    let visit = visit_type(state, visit_type_id).await?;
    {
        let mut conn = state.pool.acquire().await?;
        let own = user.has_role(Role::Patient).then_some(patient);
        check_offered_to(state, &mut conn, &provider_row, &visit, start, own).await?;
    }
    let span = span(&visit, start);
    let minutes = i32::try_from(state.settings.hold_minutes).unwrap_or(10);
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let id = Uuid::now_v7();
            store::lock_patient(conn, patient).await?;
            below_quota(
                store::live_holds(conn, patient).await?,
                state.settings.max_live_holds,
                ("patient", "live holds", "release, book or cancel one first"),
            )?;
            let expires = store::claim(conn, id, provider, patient, span, Some(minutes))
                .await?
                .ok_or_else(|| SchedulingError::Internal("a hold without expiry".into()))?;
            let hold = store::insert_hold(
                conn,
                &HoldRow {
                    id,
                    provider_id: provider,
                    patient_id: patient,
                    visit_type_id,
                    start_time: span.start,
                    end_time: span.end,
                    expires_at: expires,
                    status: "active".to_owned(),
                    created_by: user.user_id,
                },
            )
            .await?;
            let event = AuditEvent::of(kinds::HOLD_CREATE, purpose, "hold", id)
                .caller(&call.caller)
                .subject(patient);
            Ok::<_, SchedulingError>(Change::new(hold_to_pb(&hold), event))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn release(state: &AppState, call: &Call, r: ReleaseHoldRequest) -> Result<Hold> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("hold_id", &r.hold_id);
    v.finish()?;
    let id = checked(id)?;
    let hold = hold_row(state, id).await?;
    let purpose = party(user, hold.patient_id, None)?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let mut hold =
                store::hold(conn, id, true)
                    .await?
                    .ok_or_else(|| SchedulingError::NotFound {
                        what: "hold",
                        id: id.to_string(),
                    })?;
            match hold.status.as_str() {
                "active" => {
                    store::release_claim(conn, id).await?;
                    store::set_hold_status(conn, id, "released").await?;
                    hold.status = "released".to_owned();
                }
                "booked" => {
                    return Err(SchedulingError::State {
                        what: "hold",
                        id: id.to_string(),
                        state: "booked",
                        action: "release it (cancel the appointment instead)",
                    })
                }
                "expired" => {
                    store::release_claim(conn, id).await?;
                    store::set_hold_status(conn, id, "expired").await?;
                }
                // Released already: releasing again changes nothing.
                _ => {}
            }
            let event = AuditEvent::of(kinds::HOLD_RELEASE, purpose, "hold", id)
                .caller(&call.caller)
                .subject(hold.patient_id);
            Ok::<_, SchedulingError>(Change::new(hold_to_pb(&hold), event))
        })
        .await?;
    Ok(ran.answer)
}
