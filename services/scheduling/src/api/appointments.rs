//! Appointments: booking (from a hold or directly), reading, listing, cancelling, rescheduling
//! and the state machine's steps. Every change locks the appointment row first, checks the
//! transition (`domain::appointment`), and writes the change, its audit event and its effects
//! on other services (`effects`) in one transaction.

use carehub_platform::audit::{AuditEvent, Purpose};
use carehub_platform::auth::{Role, UserCaller};
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::paging;
use carehub_platform::timestamps;
use carehub_proto::common::v1::PageResponse;
use carehub_proto::scheduling::v1::*;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::access::{party, patient_for};
use super::convert::{appointment_to_pb, cancel_reason_from_pb};
use super::holds::{hold_row, slot_fields, span, visit_type};
use super::providers::provider_row;
use super::slots::{check_offered, check_offered_to};
use super::{effects, kinds};
use crate::domain::appointment::{is_late_cancellation, Action, IntakeStatus, Status};
use crate::error::{below_quota, checked, Result, SchedulingError};
use crate::store::appointments::{self as store, AppointmentRow, Whose};
use crate::store::providers::{ProviderRow, VisitTypeRow};
use crate::AppState;

/// Longest reason for a visit.
pub const MAX_REASON: usize = 1000;
/// Longest cancellation note.
pub const MAX_NOTE: usize = 500;

/// Free text a patient or clinician writes: length in characters, no control characters but
/// line breaks and tabs.
pub fn check_text(v: &mut FieldViolations, field: &str, text: &str, min: usize, max: usize) {
    let n = text.chars().count();
    if n < min || n > max {
        v.add(field, format!("must be {min} to {max} characters"));
    }
    v.check_free_text(field, text);
}

fn not_found(id: Uuid) -> SchedulingError {
    SchedulingError::NotFound {
        what: "appointment",
        id: id.to_string(),
    }
}

/// Appointment `id` as read now (unlocked), or NOT_FOUND.
pub async fn appointment_row(state: &AppState, id: Uuid) -> Result<AppointmentRow> {
    let mut conn = state.pool.acquire().await?;
    store::appointment(&mut conn, id, false)
        .await?
        .ok_or_else(|| not_found(id))
}

/// Appointment `id` locked in the change's transaction.
pub async fn locked(conn: &mut PgConnection, id: Uuid) -> Result<AppointmentRow> {
    store::appointment(conn, id, true)
        .await?
        .ok_or_else(|| not_found(id))
}

pub fn status_of(a: &AppointmentRow) -> Result<Status> {
    Status::parse(&a.status).ok_or_else(|| {
        SchedulingError::Internal(format!("appointment {} has no known state", a.id))
    })
}

/// The state `action` leads `a` to, or FAILED_PRECONDITION (STATE_CONFLICT).
pub fn step(a: &AppointmentRow, action: Action) -> Result<Status> {
    let from = status_of(a)?;
    from.after(action).ok_or_else(|| SchedulingError::State {
        what: "appointment",
        id: a.id.to_string(),
        state: from.as_str(),
        action: action.verb(),
    })
}

pub async fn open_reason(state: &AppState, a: &AppointmentRow) -> Result<String> {
    match &a.reason {
        Some(r) => Ok(state
            .crypto
            .open_cell(a.patient_id, ("appointments", "reason", a.id), r)
            .await?),
        None => Ok(String::new()),
    }
}

pub fn event(
    call: &Call,
    kind: carehub_platform::audit::Kind,
    purpose: Purpose,
    a: &AppointmentRow,
) -> AuditEvent {
    AuditEvent::of(kind, purpose, "appointment", a.id)
        .caller(&call.caller)
        .subject(a.patient_id)
}

/// What a new appointment is made of.
pub struct NewAppointment<'a> {
    pub id: Uuid,
    pub provider: &'a ProviderRow,
    pub visit: &'a VisitTypeRow,
    pub patient: Uuid,
    pub start: DateTime<Utc>,
    pub status: Status,
    pub reason: Option<Vec<u8>>,
    pub consultation: Option<Uuid>,
    /// Book from this hold (its claim becomes the appointment's); `None`: claim the slot now.
    pub hold: Option<Uuid>,
    pub created_by: Uuid,
}

/// Writes a new appointment in `conn`'s transaction: the claim (SLOT_TAKEN, PATIENT_BUSY) or
/// the hold's (HOLD_EXPIRED), the row, and the booking's effects when it is booked.
pub async fn insert(
    state: &AppState,
    conn: &mut PgConnection,
    n: &NewAppointment<'_>,
) -> Result<AppointmentRow> {
    let span = span(n.visit, n.start);
    store::lock_patient(conn, n.patient).await?;
    below_quota(
        store::upcoming(conn, n.patient).await?,
        state.settings.max_upcoming_appointments,
        (
            "patient",
            "upcoming appointments",
            "release, book or cancel one first",
        ),
    )?;
    let claim_id = match n.hold {
        Some(hold_id) => {
            let hold = store::hold(conn, hold_id, true)
                .await?
                .ok_or_else(|| SchedulingError::HoldExpired(hold_id.to_string()))?;
            if hold.status != "active" {
                return Err(SchedulingError::HoldExpired(hold_id.to_string()));
            }
            store::keep_claim(conn, hold_id).await?;
            store::set_hold_status(conn, hold_id, "booked").await?;
            hold_id
        }
        None => {
            store::claim(conn, n.id, n.provider.provider_id, n.patient, span, None).await?;
            n.id
        }
    };
    let intake = if n.visit.intake_form.is_some() {
        IntakeStatus::Pending
    } else {
        IntakeStatus::NotRequired
    };
    let row = store::insert_appointment(
        conn,
        &AppointmentRow {
            id: n.id,
            claim_id,
            provider_id: n.provider.provider_id,
            patient_id: n.patient,
            visit_type_id: n.visit.id,
            modality: n.visit.modality.clone(),
            start_time: span.start,
            end_time: span.end,
            status: n.status.as_str().to_owned(),
            intake_form: n.visit.intake_form.clone(),
            intake_status: intake.as_str().to_owned(),
            reason: n.reason.clone(),
            cancel_reason: None,
            cancel_note: None,
            late_cancellation: false,
            reschedule_count: 0,
            consultation_request_id: n.consultation,
            revision: 1,
            created_by: n.created_by,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        },
    )
    .await?;
    if n.status == Status::Booked {
        effects::booked(state, conn, &row, &n.visit.price_code).await?;
    }
    Ok(row)
}

pub async fn book(state: &AppState, call: &Call, r: BookAppointmentRequest) -> Result<Appointment> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let hold = if r.hold_id.is_empty() {
        None
    } else {
        let h = v.require_uuid("hold_id", &r.hold_id);
        for (field, empty) in [
            ("provider_id", r.provider_id.is_empty()),
            ("visit_type_id", r.visit_type_id.is_empty()),
            ("start_time", r.start_time.is_none()),
        ] {
            v.check(empty, field, "must be empty when booking from a hold");
        }
        h
    };
    let slot = if r.hold_id.is_empty() {
        Some(slot_fields(
            &mut v,
            &r.provider_id,
            &r.visit_type_id,
            r.start_time.as_ref(),
        ))
    } else {
        None
    };
    check_text(&mut v, "reason", &r.reason, 0, MAX_REASON);
    v.finish()?;
    let patient = patient_for(state, user, "patient_id", &r.patient_id).await?;
    let (provider_id, visit_type_id, start) = match (hold, slot) {
        (Some(h), _) => {
            let hold = hold_row(state, h).await?;
            if hold.patient_id != patient {
                return Err(SchedulingError::PermissionDenied(
                    "the hold is another patient's".to_owned(),
                ));
            }
            (hold.provider_id, hold.visit_type_id, hold.start_time)
        }
        (None, Some((p, t, s))) => (checked(p)?, checked(t)?, checked(s)?),
        (None, None) => return Err(SchedulingError::Internal("no slot and no hold".into())),
    };
    let purpose = party(user, patient, Some(provider_id))?;
    let provider = provider_row(state, provider_id).await?;
    let visit = visit_type(state, visit_type_id).await?;
    if hold.is_none() {
        let mut conn = state.pool.acquire().await?;
        let own = user.has_role(Role::Patient).then_some(patient);
        check_offered_to(state, &mut conn, &provider, &visit, start, own).await?;
    }
    let id = Uuid::now_v7();
    let reason_text = r.reason.trim().to_owned();
    let reason = if reason_text.is_empty() {
        None
    } else {
        Some(
            state
                .crypto
                .seal_cell(patient, ("appointments", "reason", id), &reason_text)
                .await?,
        )
    };
    let status = if r.request_only {
        Status::Requested
    } else {
        Status::Booked
    };
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let row = insert(
                state,
                conn,
                &NewAppointment {
                    id,
                    provider: &provider,
                    visit: &visit,
                    patient,
                    start,
                    status,
                    reason: reason.clone(),
                    consultation: None,
                    hold,
                    created_by: user.user_id,
                },
            )
            .await?;
            Ok::<_, SchedulingError>(Change::new(
                appointment_to_pb(&row, reason_text.clone()),
                event(call, kinds::APPOINTMENT_BOOK, purpose, &row),
            ))
        })
        .await?;
    Ok(ran.answer)
}

fn appointment_id(v: &mut FieldViolations, id: &str) -> Option<Uuid> {
    v.require_uuid("appointment_id", id)
}

pub async fn get(state: &AppState, call: &Call, r: GetAppointmentRequest) -> Result<Appointment> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let id = appointment_id(&mut v, &r.appointment_id);
    v.finish()?;
    let a = appointment_row(state, checked(id)?).await?;
    let purpose = party(user, a.patient_id, Some(a.provider_id))?;
    let reason = open_reason(state, &a).await?;
    call.read(
        &state.pool,
        event(call, kinds::APPOINTMENT_READ, purpose, &a),
        appointment_to_pb(&a, reason),
    )
    .await
}

type Cursor = (DateTime<Utc>, Uuid);

/// Whose appointments `user` may list with these fields.
fn whose(user: &UserCaller, patient: Option<Uuid>, provider: Option<Uuid>) -> Result<Whose> {
    match (patient, provider) {
        (Some(p), None) if user.has_role(Role::Staff) || user.user_id == p => Ok(Whose::Patient(p)),
        (None, Some(p)) if user.has_role(Role::Staff) || user.user_id == p => {
            Ok(Whose::Provider(p))
        }
        _ => Err(SchedulingError::PermissionDenied(
            "patients list their own appointments and providers their own schedule".to_owned(),
        )),
    }
}

pub async fn list(
    state: &AppState,
    call: &Call,
    r: ListAppointmentsRequest,
) -> Result<ListAppointmentsResponse> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = (!r.patient_id.is_empty())
        .then(|| v.require_uuid("patient_id", &r.patient_id))
        .flatten();
    let provider = (!r.provider_id.is_empty())
        .then(|| v.require_uuid("provider_id", &r.provider_id))
        .flatten();
    v.check(
        r.patient_id.is_empty() != r.provider_id.is_empty(),
        "patient_id",
        "exactly one of patient_id and provider_id must be given",
    );
    let end_after = timestamps::field(r.end_after.as_ref(), "end_after", &mut v);
    let filter = paging::Filter::new("scheduling.ListAppointments")
        .field("patient_id", Some(r.patient_id.as_bytes()))
        .field("provider_id", Some(r.provider_id.as_bytes()))
        .field(
            "end_after",
            end_after
                .map(|t| t.timestamp_micros().to_be_bytes())
                .as_ref()
                .map(|b| b.as_slice()),
        );
    let page = paging::Page::<Cursor>::read(r.page.as_ref(), &filter, "page", &mut v);
    v.finish()?;
    let whose = whose(user, patient, provider)?;
    let mut rows = {
        let mut conn = state.pool.acquire().await?;
        store::list(&mut conn, whose, end_after, page.after, page.fetch()).await?
    };
    let next = page.finish(&mut rows, &filter, |a| (a.start_time, a.id));
    let mut appointments = Vec::with_capacity(rows.len());
    for a in &rows {
        let purpose = party(user, a.patient_id, Some(a.provider_id))?;
        let reason = open_reason(state, a).await?;
        carehub_platform::call::reads::record(
            &state.pool,
            event(call, kinds::APPOINTMENT_READ, purpose, a),
        )
        .await?;
        call.mark_audited();
        appointments.push(appointment_to_pb(a, reason));
    }
    Ok(ListAppointmentsResponse {
        appointments,
        page: Some(PageResponse {
            next_page_token: next,
        }),
    })
}

pub async fn cancel(
    state: &AppState,
    call: &Call,
    r: CancelAppointmentRequest,
) -> Result<Appointment> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = appointment_id(&mut v, &r.appointment_id);
    let reason = cancel_reason_from_pb(r.reason);
    if reason.is_none() {
        v.add("reason", "must be a CANCEL_REASON other than UNSPECIFIED");
    }
    check_text(&mut v, "note", &r.note, 0, MAX_NOTE);
    v.finish()?;
    let (id, reason) = (checked(id)?, checked(reason)?);
    let current = appointment_row(state, id).await?;
    let purpose = party(user, current.patient_id, Some(current.provider_id))?;
    let note = r.note.trim();
    let note = if note.is_empty() {
        None
    } else {
        Some(
            state
                .crypto
                .seal_cell(
                    current.patient_id,
                    ("appointments", "cancel_note", id),
                    note,
                )
                .await?,
        )
    };
    let visit = visit_type(state, current.visit_type_id).await?;
    let late_hours = state.settings.late_cancel_hours;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let mut a = locked(conn, id).await?;
            let from = status_of(&a)?;
            let to = step(&a, Action::Cancel)?;
            a.status = to.as_str().to_owned();
            a.cancel_reason = Some(reason.as_str().to_owned());
            a.cancel_note = note.clone();
            a.late_cancellation = is_late_cancellation(a.start_time, Utc::now(), late_hours);
            store::release_claim(conn, a.claim_id).await?;
            let a = store::save_appointment(conn, &a).await?;
            effects::cancelled(
                state,
                conn,
                &a,
                from != Status::Requested,
                &visit.price_code,
            )
            .await?;
            let reason = open_reason(state, &a).await?;
            Ok::<_, SchedulingError>(Change::new(
                appointment_to_pb(&a, reason),
                event(call, kinds::APPOINTMENT_CHANGE, purpose, &a),
            ))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn reschedule(
    state: &AppState,
    call: &Call,
    r: RescheduleAppointmentRequest,
) -> Result<Appointment> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = appointment_id(&mut v, &r.appointment_id);
    let hold = (!r.hold_id.is_empty())
        .then(|| v.require_uuid("hold_id", &r.hold_id))
        .flatten();
    v.check(
        r.hold_id.is_empty() == r.start_time.is_some(),
        "start_time",
        "exactly one of start_time and hold_id must be given",
    );
    let start = timestamps::field(r.start_time.as_ref(), "start_time", &mut v);
    v.finish()?;
    let id = checked(id)?;
    let current = appointment_row(state, id).await?;
    let purpose = party(user, current.patient_id, Some(current.provider_id))?;
    let provider = provider_row(state, current.provider_id).await?;
    let visit = visit_type(state, current.visit_type_id).await?;
    let start = match (hold, start) {
        (Some(h), _) => {
            let hold = hold_row(state, h).await?;
            if hold.patient_id != current.patient_id
                || hold.provider_id != current.provider_id
                || hold.visit_type_id != current.visit_type_id
            {
                return Err(SchedulingError::PermissionDenied(
                    "the hold is for another patient, provider or visit type".to_owned(),
                ));
            }
            hold.start_time
        }
        (None, Some(s)) => {
            let mut conn = state.pool.acquire().await?;
            check_offered(state, &mut conn, &provider, &visit, s).await?;
            s
        }
        (None, None) => return Err(SchedulingError::Internal("no start and no hold".into())),
    };
    if start == current.start_time {
        return Err(SchedulingError::State {
            what: "appointment",
            id: id.to_string(),
            state: "already at that time",
            action: "reschedule it there",
        });
    }
    let new_span = span(&visit, start);
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let mut a = locked(conn, id).await?;
            let status = step(&a, Action::Reschedule)?;
            // Before any claim of this provider is touched (the hold's below): see lock_provider.
            store::lock_provider(conn, a.provider_id).await?;
            if let Some(h) = hold {
                // The hold's time passes to the appointment: released and taken in the same
                // transaction, so no one else can take it in between.
                let held = store::hold(conn, h, true)
                    .await?
                    .filter(|held| held.status == "active")
                    .ok_or_else(|| SchedulingError::HoldExpired(h.to_string()))?;
                store::release_claim(conn, held.id).await?;
                store::set_hold_status(conn, held.id, "booked").await?;
            }
            store::move_claim(conn, a.claim_id, a.patient_id, a.provider_id, new_span).await?;
            a.start_time = new_span.start;
            a.end_time = new_span.end;
            a.reschedule_count += 1;
            let a = store::save_appointment(conn, &a).await?;
            effects::rescheduled(state, conn, &a, status == Status::Booked, &visit.price_code)
                .await?;
            let reason = open_reason(state, &a).await?;
            Ok::<_, SchedulingError>(Change::new(
                appointment_to_pb(&a, reason),
                event(call, kinds::APPOINTMENT_CHANGE, purpose, &a),
            ))
        })
        .await?;
    Ok(ran.answer)
}

/// One step of the state machine on appointment `r.appointment_id`.
async fn transition(
    state: &AppState,
    call: &Call,
    r: AppointmentActionRequest,
    action: Action,
) -> Result<Appointment> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = appointment_id(&mut v, &r.appointment_id);
    v.finish()?;
    let id = checked(id)?;
    let current = appointment_row(state, id).await?;
    let purpose = party(user, current.patient_id, Some(current.provider_id))?;
    let visit = visit_type(state, current.visit_type_id).await?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let mut a = locked(conn, id).await?;
            let to = step(&a, action)?;
            if action == Action::NoShow && Utc::now() < a.start_time {
                return Err(SchedulingError::State {
                    what: "appointment",
                    id: id.to_string(),
                    state: "not started yet",
                    action: action.verb(),
                });
            }
            a.status = to.as_str().to_owned();
            if !to.is_active() {
                store::release_claim(conn, a.claim_id).await?;
            }
            let a = store::save_appointment(conn, &a).await?;
            match action {
                Action::Confirm => effects::booked(state, conn, &a, &visit.price_code).await?,
                Action::Complete => {
                    effects::ended(
                        state,
                        conn,
                        &a,
                        AppointmentEventKind::Completed,
                        &visit.price_code,
                    )
                    .await?
                }
                Action::NoShow => {
                    effects::ended(
                        state,
                        conn,
                        &a,
                        AppointmentEventKind::NoShow,
                        &visit.price_code,
                    )
                    .await?
                }
                _ => {}
            }
            let reason = open_reason(state, &a).await?;
            Ok::<_, SchedulingError>(Change::new(
                appointment_to_pb(&a, reason),
                event(call, kinds::APPOINTMENT_CHANGE, purpose, &a),
            ))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn confirm(
    state: &AppState,
    call: &Call,
    r: AppointmentActionRequest,
) -> Result<Appointment> {
    transition(state, call, r, Action::Confirm).await
}

pub async fn check_in(
    state: &AppState,
    call: &Call,
    r: AppointmentActionRequest,
) -> Result<Appointment> {
    transition(state, call, r, Action::CheckIn).await
}

pub async fn start(
    state: &AppState,
    call: &Call,
    r: AppointmentActionRequest,
) -> Result<Appointment> {
    transition(state, call, r, Action::Start).await
}

pub async fn complete(
    state: &AppState,
    call: &Call,
    r: AppointmentActionRequest,
) -> Result<Appointment> {
    transition(state, call, r, Action::Complete).await
}

pub async fn no_show(
    state: &AppState,
    call: &Call,
    r: AppointmentActionRequest,
) -> Result<Appointment> {
    transition(state, call, r, Action::NoShow).await
}
