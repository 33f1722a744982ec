//! Consultation requests: a patient asks for a physician's evaluation; staff triage the open
//! ones (oldest first), accept one by booking it into a provider's slot (the appointment and the
//! decision commit together) or decline it saying why.

use carehub_platform::audit::AuditEvent;
use carehub_platform::auth::Role;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::paging;
use carehub_platform::timestamps;
use carehub_proto::common::v1::PageResponse;
use carehub_proto::scheduling::v1::*;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::access::{party, patient_for};
use super::appointments::{check_text, insert, NewAppointment};
use super::convert::consultation_to_pb;
use super::holds::{slot_fields, visit_type};
use super::kinds;
use super::providers::provider_row;
use super::slots::check_offered;
use crate::domain::appointment::Status;
use crate::domain::directory::{is_code, is_state};
use crate::error::{below_quota, checked, Result, SchedulingError};
use crate::store::consultations::{self as store, ConsultationRow};
use crate::AppState;

const MAX_REASON: usize = 2000;
const MAX_DECLINE: usize = 1000;

async fn row(state: &AppState, id: Uuid) -> Result<ConsultationRow> {
    let mut conn = state.pool.acquire().await?;
    store::get(&mut conn, id, false)
        .await?
        .ok_or_else(|| SchedulingError::NotFound {
            what: "consultation request",
            id: id.to_string(),
        })
}

async fn to_pb(state: &AppState, c: &ConsultationRow) -> Result<ConsultationRequest> {
    let reason = state
        .crypto
        .open_cell(
            c.patient_id,
            ("consultation_requests", "reason", c.id),
            &c.reason,
        )
        .await?;
    let decline = match &c.decline_reason {
        Some(d) => {
            state
                .crypto
                .open_cell(
                    c.patient_id,
                    ("consultation_requests", "decline_reason", c.id),
                    d,
                )
                .await?
        }
        None => String::new(),
    };
    Ok(consultation_to_pb(c, reason, decline))
}

fn event(
    call: &Call,
    kind: carehub_platform::audit::Kind,
    purpose: carehub_platform::audit::Purpose,
    c: &ConsultationRow,
) -> AuditEvent {
    AuditEvent::of(kind, purpose, "consultation_request", c.id)
        .caller(&call.caller)
        .subject(c.patient_id)
}

pub async fn request(
    state: &AppState,
    call: &Call,
    r: RequestConsultationRequest,
) -> Result<ConsultationRequest> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let reason = r.reason.trim().to_owned();
    check_text(&mut v, "reason", &reason, 1, MAX_REASON);
    v.check(
        is_state(&r.state),
        "state",
        "must be a two-letter US state code such as NY",
    );
    v.check(
        r.specialty.is_empty() || is_code(&r.specialty),
        "specialty",
        "must be empty or a lower-case code such as dermatology",
    );
    v.check(
        r.preferred_times.len() <= 10,
        "preferred_times",
        "must hold at most 10 ranges",
    );
    let mut times = Vec::new();
    for (i, t) in r.preferred_times.iter().enumerate() {
        let s = timestamps::field(
            t.start_time.as_ref(),
            &format!("preferred_times[{i}].start_time"),
            &mut v,
        );
        let e = timestamps::field(
            t.end_time.as_ref(),
            &format!("preferred_times[{i}].end_time"),
            &mut v,
        );
        match (s, e) {
            (Some(s), Some(e)) if e > s => times.push(serde_json::json!([
                s.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ])),
            (Some(_), Some(_)) => v.add(
                &format!("preferred_times[{i}].end_time"),
                "must be after start_time",
            ),
            // A malformed instant was reported by its own field above.
            _ if t.start_time.is_some() && t.end_time.is_some() => {}
            _ => v.add(
                &format!("preferred_times[{i}]"),
                "must have a start_time and an end_time",
            ),
        }
    }
    v.finish()?;
    let patient = patient_for(state, user, "patient_id", &r.patient_id).await?;
    let purpose = party(user, patient, None)?;
    let id = Uuid::now_v7();
    let sealed_reason = state
        .crypto
        .seal_cell(patient, ("consultation_requests", "reason", id), &reason)
        .await?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            // Counted under the patient's lock: a storm of requests cannot all see room.
            crate::store::appointments::lock_patient(conn, patient).await?;
            below_quota(
                store::open_of_patient(conn, patient).await?,
                state.settings.max_open_consultations,
                (
                    "patient",
                    "open consultation requests",
                    "wait until staff accept or decline one",
                ),
            )?;
            let c = store::insert(
                conn,
                &ConsultationRow {
                    id,
                    patient_id: patient,
                    reason: sealed_reason.clone(),
                    preferred_times: serde_json::Value::Array(times.clone()),
                    state: r.state.clone(),
                    specialty: (!r.specialty.is_empty()).then(|| r.specialty.clone()),
                    status: "open".to_owned(),
                    appointment_id: None,
                    decline_reason: None,
                    created_by: user.user_id,
                    created_at: Utc::now(),
                    updated_at: Utc::now(),
                },
            )
            .await?;
            Ok::<_, SchedulingError>(Change::new(
                consultation_to_pb(&c, reason.clone(), String::new()),
                event(call, kinds::CONSULTATION_CREATE, purpose, &c),
            ))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn get(
    state: &AppState,
    call: &Call,
    r: GetConsultationRequestRequest,
) -> Result<ConsultationRequest> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("id", &r.id);
    v.finish()?;
    let c = row(state, checked(id)?).await?;
    let purpose = party(user, c.patient_id, None)?;
    let answer = to_pb(state, &c).await?;
    call.read(
        &state.pool,
        event(call, kinds::CONSULTATION_READ, purpose, &c),
        answer,
    )
    .await
}

type Cursor = (DateTime<Utc>, Uuid);

pub async fn list(
    state: &AppState,
    call: &Call,
    r: ListConsultationRequestsRequest,
) -> Result<ListConsultationRequestsResponse> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let status = match ConsultationStatus::try_from(r.status) {
        Ok(ConsultationStatus::Unspecified | ConsultationStatus::Open) => "open",
        Ok(ConsultationStatus::Accepted) => "accepted",
        Ok(ConsultationStatus::Declined) => "declined",
        Err(_) => {
            v.add("status", "must be a CONSULTATION_STATUS value");
            "open"
        }
    };
    // Patients see their own; staff the whole queue.
    let patient = (!user.has_role(Role::Staff)).then_some(user.user_id);
    let filter = paging::Filter::new("scheduling.ListConsultationRequests")
        .field("status", Some(status.as_bytes()))
        .field(
            "patient",
            patient
                .map(|p| *p.as_bytes())
                .as_ref()
                .map(|b| b.as_slice()),
        );
    let page = paging::Page::<Cursor>::read(r.page.as_ref(), &filter, "page", &mut v);
    v.finish()?;
    let mut rows = {
        let mut conn = state.pool.acquire().await?;
        store::list(&mut conn, status, patient, page.after, page.fetch()).await?
    };
    let next = page.finish(&mut rows, &filter, |c| (c.created_at, c.id));
    let mut requests = Vec::with_capacity(rows.len());
    for c in &rows {
        let purpose = party(user, c.patient_id, None)?;
        requests.push(to_pb(state, c).await?);
        carehub_platform::call::reads::record(
            &state.pool,
            event(call, kinds::CONSULTATION_READ, purpose, c),
        )
        .await?;
        call.mark_audited();
    }
    Ok(ListConsultationRequestsResponse {
        requests,
        page: Some(PageResponse {
            next_page_token: next,
        }),
    })
}

/// Request `id` locked in the decision's transaction, still open (or STATE_CONFLICT): two
/// staff deciding at once decide one after the other, and the second finds it decided.
async fn locked_open(conn: &mut sqlx::PgConnection, id: Uuid, action: &'static str) -> Result<()> {
    let current = store::get(conn, id, true)
        .await?
        .ok_or_else(|| SchedulingError::NotFound {
            what: "consultation request",
            id: id.to_string(),
        })?;
    still_open(&current, action)
}

fn still_open(c: &ConsultationRow, action: &'static str) -> Result<()> {
    if c.status == "open" {
        return Ok(());
    }
    Err(SchedulingError::State {
        what: "consultation request",
        id: c.id.to_string(),
        state: if c.status == "accepted" {
            "accepted"
        } else {
            "declined"
        },
        action,
    })
}

pub async fn accept(
    state: &AppState,
    call: &Call,
    r: AcceptConsultationRequestRequest,
) -> Result<ConsultationRequest> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("id", &r.id);
    let (provider, visit_type_id, start) = slot_fields(
        &mut v,
        &r.provider_id,
        &r.visit_type_id,
        r.start_time.as_ref(),
    );
    v.finish()?;
    let (id, provider, visit_type_id, start) = (
        checked(id)?,
        checked(provider)?,
        checked(visit_type_id)?,
        checked(start)?,
    );
    let c = row(state, id).await?;
    still_open(&c, "accept it")?;
    let purpose = party(user, c.patient_id, Some(provider))?;
    let provider = provider_row(state, provider).await?;
    if !provider.license_states.contains(&c.state) {
        return Err(SchedulingError::State {
            what: "provider",
            id: provider.provider_id.to_string(),
            state: "not licensed in the patient's state",
            action: "take this consultation",
        });
    }
    let visit = visit_type(state, visit_type_id).await?;
    {
        let mut conn = state.pool.acquire().await?;
        check_offered(state, &mut conn, &provider, &visit, start).await?;
    }
    let reason = to_pb(state, &c).await?.reason;
    let appointment = Uuid::now_v7();
    let sealed_reason = state
        .crypto
        .seal_cell(
            c.patient_id,
            ("appointments", "reason", appointment),
            &reason,
        )
        .await?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            locked_open(conn, id, "accept it").await?;
            let a = insert(
                state,
                conn,
                &NewAppointment {
                    id: appointment,
                    provider: &provider,
                    visit: &visit,
                    patient: c.patient_id,
                    start,
                    status: Status::Booked,
                    reason: Some(sealed_reason.clone()),
                    consultation: Some(id),
                    hold: None,
                    created_by: user.user_id,
                },
            )
            .await?;
            let decided =
                store::decide(conn, id, "accepted", Some(a.id), None, user.user_id).await?;
            Ok::<_, SchedulingError>(
                Change::new(
                    consultation_to_pb(&decided, reason.clone(), String::new()),
                    event(call, kinds::CONSULTATION_DECIDE, purpose, &decided),
                )
                .with(super::appointments::event(
                    call,
                    kinds::APPOINTMENT_BOOK,
                    purpose,
                    &a,
                )),
            )
        })
        .await?;
    Ok(ran.answer)
}

pub async fn decline(
    state: &AppState,
    call: &Call,
    r: DeclineConsultationRequestRequest,
) -> Result<ConsultationRequest> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("id", &r.id);
    let why = r.reason.trim().to_owned();
    check_text(&mut v, "reason", &why, 1, MAX_DECLINE);
    v.finish()?;
    let id = checked(id)?;
    let c = row(state, id).await?;
    still_open(&c, "decline it")?;
    let purpose = party(user, c.patient_id, None)?;
    let reason = to_pb(state, &c).await?.reason;
    let sealed_why = state
        .crypto
        .seal_cell(
            c.patient_id,
            ("consultation_requests", "decline_reason", id),
            &why,
        )
        .await?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            locked_open(conn, id, "decline it").await?;
            let decided =
                store::decide(conn, id, "declined", None, Some(&sealed_why), user.user_id).await?;
            Ok::<_, SchedulingError>(Change::new(
                consultation_to_pb(&decided, reason.clone(), why.clone()),
                event(call, kinds::CONSULTATION_DECIDE, purpose, &decided),
            ))
        })
        .await?;
    Ok(ran.answer)
}
