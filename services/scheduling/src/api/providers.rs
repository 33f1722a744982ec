//! The provider directory, visit types and availability (weekly windows and exceptions).

use carehub_platform::audit::{AuditEvent, Purpose};
use carehub_platform::auth::Role;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::paging;
use carehub_platform::timestamps;
use carehub_proto::common::v1::PageResponse;
use carehub_proto::scheduling::v1::*;
use chrono::{Duration, Utc};
use uuid::Uuid;

use super::access::keeps_calendar;
use super::convert::{
    exception_to_pb, provider_to_pb, visit_type_to_pb, weekday_from_pb, weekday_to_pb,
};
use super::kinds;
use crate::domain::appointment::Modality as DomainModality;
use crate::domain::directory::{is_code, is_language, is_name, is_state};
use crate::domain::slots::{self, LocalTime};
use crate::error::{checked, Result, SchedulingError};
use crate::store::providers::{self as store, ExceptionRow, ProviderRow, VisitTypeRow, WindowRow};
use crate::AppState;

fn directory_event(
    call: &Call,
    kind: carehub_platform::audit::Kind,
    entity: (&str, Uuid),
) -> AuditEvent {
    AuditEvent::of(kind, Purpose::Operations, entity.0, entity.1).caller(&call.caller)
}

/// Provider `id`'s directory entry, or NOT_FOUND.
pub async fn provider_row(state: &AppState, id: Uuid) -> Result<ProviderRow> {
    let mut conn = state.pool.acquire().await?;
    store::provider(&mut conn, id)
        .await?
        .ok_or_else(|| SchedulingError::NotFound {
            what: "provider",
            id: id.to_string(),
        })
}

fn check_list(
    v: &mut FieldViolations,
    field: &str,
    items: &[String],
    max: usize,
    ok: impl Fn(&str) -> bool,
    what: &str,
) {
    if items.is_empty() || items.len() > max {
        v.add(field, format!("must hold 1 to {max} values"));
    }
    for (i, s) in items.iter().enumerate() {
        if !ok(s) {
            v.add(&format!("{field}[{i}]"), format!("must be {what}"));
        }
    }
    let mut sorted: Vec<&String> = items.iter().collect();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != items.len() {
        v.add(field, "must not repeat a value");
    }
}

pub async fn put(state: &AppState, call: &Call, r: PutProviderRequest) -> Result<Provider> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let p = r.provider.clone().unwrap_or_default();
    let id = v.require_uuid("provider.provider_id", &p.provider_id);
    if slots::parse_tz(&p.time_zone).is_none() {
        v.add(
            "provider.time_zone",
            "must be an IANA time zone name such as America/New_York",
        );
    }
    check_list(
        &mut v,
        "provider.specialties",
        &p.specialties,
        20,
        is_code,
        "a lower-case code such as family-medicine",
    );
    check_list(
        &mut v,
        "provider.license_states",
        &p.license_states,
        60,
        is_state,
        "a two-letter US state code such as NY",
    );
    check_list(
        &mut v,
        "provider.languages",
        &p.languages,
        20,
        is_language,
        "a BCP 47 language tag such as en or es-MX",
    );
    if p.visit_type_ids.is_empty() || p.visit_type_ids.len() > 50 {
        v.add(
            "provider.visit_type_ids",
            "must hold 1 to 50 visit type ids",
        );
    }
    let mut visit_types = Vec::new();
    for (i, t) in p.visit_type_ids.iter().enumerate() {
        if let Some(t) = v.require_uuid(&format!("provider.visit_type_ids[{i}]"), t) {
            if visit_types.contains(&t) {
                v.add("provider.visit_type_ids", "must not repeat a value");
            }
            visit_types.push(t);
        }
    }
    v.finish()?;
    let id = checked(id)?;
    keeps_calendar(user, id)?;
    {
        let mut conn = state.pool.acquire().await?;
        let known = store::existing_visit_types(&mut conn, &visit_types).await?;
        let mut v = FieldViolations::new();
        for (i, t) in visit_types.iter().enumerate() {
            if !known.contains(t) {
                v.add(
                    &format!("provider.visit_type_ids[{i}]"),
                    "names no visit type",
                );
            }
        }
        v.finish()?;
    }
    let person = state.directory.person(id, "provider").await?;
    if person.role != Role::Provider || !person.active {
        return Err(SchedulingError::State {
            what: "user",
            id: id.to_string(),
            state: "not an active provider",
            action: "list them in the provider directory",
        });
    }
    let row = ProviderRow {
        provider_id: id,
        time_zone: p.time_zone,
        specialties: p.specialties,
        license_states: p.license_states,
        languages: p.languages,
        accepting_new_patients: p.accepting_new_patients,
        visit_type_ids: visit_types,
        updated_at: Utc::now(),
    };
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let saved = store::put_provider(conn, &row).await?;
            Ok::<_, SchedulingError>(Change::new(
                provider_to_pb(&saved),
                directory_event(call, kinds::PROVIDER_CHANGE, ("provider", id)),
            ))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn get(state: &AppState, call: &Call, r: GetProviderRequest) -> Result<Provider> {
    call.user()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("provider_id", &r.provider_id);
    v.finish()?;
    Ok(provider_to_pb(&provider_row(state, checked(id)?).await?))
}

pub async fn create_visit_type(
    state: &AppState,
    call: &Call,
    r: CreateVisitTypeRequest,
) -> Result<VisitType> {
    call.user()?;
    call.idempotency_key()?;
    let t = r.visit_type.clone().unwrap_or_default();
    let mut v = FieldViolations::new();
    let name = t.name.trim();
    v.require_len(name, "visit_type.name", 1, 100);
    v.check(
        !name.chars().any(char::is_control),
        "visit_type.name",
        "must not contain control characters",
    );
    v.check(
        (5..=480).contains(&t.duration_minutes),
        "visit_type.duration_minutes",
        "must be within 5..=480",
    );
    v.check(
        (0..=120).contains(&t.buffer_minutes),
        "visit_type.buffer_minutes",
        "must be within 0..=120",
    );
    let modality = match Modality::try_from(t.modality) {
        Ok(Modality::Telehealth) => Some(DomainModality::Telehealth),
        Ok(Modality::InPerson) => Some(DomainModality::InPerson),
        _ => {
            v.add(
                "visit_type.modality",
                "must be MODALITY_TELEHEALTH or MODALITY_IN_PERSON",
            );
            None
        }
    };
    v.check(
        is_name(&t.price_code),
        "visit_type.price_code",
        "must be 1..=64 letters, digits, '-', '_' or '.'",
    );
    v.check(
        t.intake_form.is_empty() || is_name(&t.intake_form),
        "visit_type.intake_form",
        "must be empty or 1..=64 letters, digits, '-', '_' or '.'",
    );
    v.finish()?;
    let row = VisitTypeRow {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        duration_minutes: t.duration_minutes,
        buffer_minutes: t.buffer_minutes,
        modality: checked(modality)?.as_str().to_owned(),
        price_code: t.price_code,
        intake_form: (!t.intake_form.is_empty()).then_some(t.intake_form),
        created_at: Utc::now(),
    };
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let saved = store::insert_visit_type(conn, &row).await?;
            Ok::<_, SchedulingError>(Change::new(
                visit_type_to_pb(&saved),
                directory_event(call, kinds::VISIT_TYPE_CREATE, ("visit_type", saved.id)),
            ))
        })
        .await?;
    Ok(ran.answer)
}

type Cursor = (chrono::DateTime<Utc>, Uuid);

pub async fn list_visit_types(
    state: &AppState,
    call: &Call,
    r: ListVisitTypesRequest,
) -> Result<ListVisitTypesResponse> {
    call.user()?;
    let mut v = FieldViolations::new();
    let filter = paging::Filter::new("scheduling.ListVisitTypes");
    let page = paging::Page::<Cursor>::read(r.page.as_ref(), &filter, "page", &mut v);
    v.finish()?;
    let mut rows = {
        let mut conn = state.pool.acquire().await?;
        store::list_visit_types(&mut conn, page.after, page.fetch()).await?
    };
    let next = page.finish(&mut rows, &filter, |t| (t.created_at, t.id));
    Ok(ListVisitTypesResponse {
        visit_types: rows.iter().map(visit_type_to_pb).collect(),
        page: Some(PageResponse {
            next_page_token: next,
        }),
    })
}

/// A proto window as the domain's, or violations under `field`.
pub fn window_from_pb(
    v: &mut FieldViolations,
    field: &str,
    w: &WeeklyWindow,
    offered: &[Uuid],
) -> Option<slots::Window> {
    let weekday = weekday_from_pb(w.weekday);
    if weekday.is_none() {
        v.add(&format!("{field}.weekday"), "must be a day of the week");
    }
    let time = |t: &Option<carehub_proto::scheduling::v1::LocalTime>| {
        t.as_ref().and_then(|t| {
            LocalTime::new(u32::try_from(t.hours).ok()?, u32::try_from(t.minutes).ok()?)
        })
    };
    let (start, end) = (time(&w.start), time(&w.end));
    if start.is_none() || start.is_some_and(|s| s.total_minutes() >= 24 * 60) {
        v.add(
            &format!("{field}.start"),
            "must be a time of day from 00:00 to 23:59",
        );
    }
    if end.is_none() {
        v.add(
            &format!("{field}.end"),
            "must be a time of day from 00:01 to 24:00",
        );
    }
    let mut visit_types = Vec::new();
    for (i, t) in w.visit_type_ids.iter().enumerate() {
        if let Some(t) = v.require_uuid(&format!("{field}.visit_type_ids[{i}]"), t) {
            if !offered.contains(&t) {
                v.add(
                    &format!("{field}.visit_type_ids[{i}]"),
                    "is not a visit type the provider offers",
                );
            }
            visit_types.push(t);
        }
    }
    Some(slots::Window {
        weekday: weekday?,
        start: start?,
        end: end?,
        visit_types,
    })
}

fn window_to_pb(w: &WindowRow) -> WeeklyWindow {
    let time = |m: i16| carehub_proto::scheduling::v1::LocalTime {
        hours: i32::from(m) / 60,
        minutes: i32::from(m) % 60,
    };
    WeeklyWindow {
        weekday: weekday_to_pb(w.weekday),
        start: Some(time(w.start_minute)),
        end: Some(time(w.end_minute)),
        visit_type_ids: w.visit_type_ids.iter().map(ToString::to_string).collect(),
    }
}

pub async fn set_weekly(
    state: &AppState,
    call: &Call,
    r: SetWeeklyAvailabilityRequest,
) -> Result<WeeklyAvailability> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("provider_id", &r.provider_id);
    v.check(
        r.windows.len() <= 70,
        "windows",
        "must hold at most 70 windows",
    );
    v.finish()?;
    let id = checked(id)?;
    keeps_calendar(user, id)?;
    let provider = provider_row(state, id).await?;
    let mut v = FieldViolations::new();
    let windows: Vec<Option<slots::Window>> = r
        .windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            window_from_pb(
                &mut v,
                &format!("windows[{i}]"),
                w,
                &provider.visit_type_ids,
            )
        })
        .collect();
    let windows: Vec<slots::Window> = windows.into_iter().flatten().collect();
    if windows.len() == r.windows.len() {
        for (i, why) in slots::check_windows(&windows) {
            v.add(&format!("windows[{i}]"), why);
        }
    }
    v.finish()?;
    let rows: Vec<WindowRow> = windows
        .iter()
        .map(|w| WindowRow {
            provider_id: id,
            weekday: i16::try_from(w.weekday.number_from_monday()).unwrap_or(1),
            start_minute: i16::try_from(w.start.total_minutes()).unwrap_or(0),
            end_minute: i16::try_from(w.end.total_minutes()).unwrap_or(0),
            visit_type_ids: w.visit_types.clone(),
        })
        .collect();
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let updated = store::replace_windows(conn, id, &rows).await?;
            Ok::<_, SchedulingError>(Change::new(
                WeeklyAvailability {
                    provider_id: id.to_string(),
                    time_zone: provider.time_zone.clone(),
                    windows: rows.iter().map(window_to_pb).collect(),
                    update_time: Some(timestamps::to_proto(updated)),
                },
                directory_event(call, kinds::PROVIDER_CHANGE, ("provider", id)),
            ))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn get_weekly(
    state: &AppState,
    call: &Call,
    r: GetWeeklyAvailabilityRequest,
) -> Result<WeeklyAvailability> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("provider_id", &r.provider_id);
    v.finish()?;
    let id = checked(id)?;
    keeps_calendar(user, id)?;
    let provider = provider_row(state, id).await?;
    let rows = {
        let mut conn = state.pool.acquire().await?;
        store::windows(&mut conn, &[id]).await?
    };
    Ok(WeeklyAvailability {
        provider_id: id.to_string(),
        time_zone: provider.time_zone,
        windows: rows.iter().map(window_to_pb).collect(),
        update_time: Some(timestamps::to_proto(provider.updated_at)),
    })
}

pub async fn add_exception(
    state: &AppState,
    call: &Call,
    r: AddAvailabilityExceptionRequest,
) -> Result<AvailabilityException> {
    let user = call.user()?;
    call.idempotency_key()?;
    let e = r.exception.clone().unwrap_or_default();
    let mut v = FieldViolations::new();
    let provider = v.require_uuid("exception.provider_id", &e.provider_id);
    let kind = match ExceptionKind::try_from(e.kind) {
        Ok(ExceptionKind::TimeOff) => Some("time_off"),
        Ok(ExceptionKind::ExtraHours) => Some("extra_hours"),
        _ => {
            v.add(
                "exception.kind",
                "must be EXCEPTION_KIND_TIME_OFF or EXCEPTION_KIND_EXTRA_HOURS",
            );
            None
        }
    };
    let start = timestamps::field(e.start_time.as_ref(), "exception.start_time", &mut v);
    let end = timestamps::field(e.end_time.as_ref(), "exception.end_time", &mut v);
    if e.start_time.is_none() {
        v.add("exception.start_time", "is required");
    }
    if e.end_time.is_none() {
        v.add("exception.end_time", "is required");
    }
    if let (Some(s), Some(t)) = (start, end) {
        v.check(t > s, "exception.end_time", "must be after start_time");
        v.check(
            t - s <= Duration::days(31),
            "exception.end_time",
            "must be at most 31 days after start_time",
        );
    }
    v.finish()?;
    let provider = checked(provider)?;
    keeps_calendar(user, provider)?;
    provider_row(state, provider).await?;
    let row = ExceptionRow {
        id: Uuid::now_v7(),
        provider_id: provider,
        kind: checked(kind)?.to_owned(),
        start_time: checked(start)?,
        end_time: checked(end)?,
    };
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let saved = store::insert_exception(conn, &row, user.user_id).await?;
            Ok::<_, SchedulingError>(Change::new(
                exception_to_pb(&saved),
                directory_event(call, kinds::PROVIDER_CHANGE, ("provider", provider)),
            ))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn delete_exception(
    state: &AppState,
    call: &Call,
    r: DeleteAvailabilityExceptionRequest,
) -> Result<AvailabilityException> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("id", &r.id);
    v.finish()?;
    let id = checked(id)?;
    let not_found = || SchedulingError::NotFound {
        what: "availability exception",
        id: id.to_string(),
    };
    let row = {
        let mut conn = state.pool.acquire().await?;
        store::exception(&mut conn, id)
            .await?
            .ok_or_else(not_found)?
    };
    keeps_calendar(user, row.provider_id)?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            if !store::delete_exception(conn, id).await? {
                return Err(not_found());
            }
            Ok::<_, SchedulingError>(Change::new(
                exception_to_pb(&row),
                directory_event(call, kinds::PROVIDER_CHANGE, ("provider", row.provider_id)),
            ))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn list_exceptions(
    state: &AppState,
    call: &Call,
    r: ListAvailabilityExceptionsRequest,
) -> Result<ListAvailabilityExceptionsResponse> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let provider = v.require_uuid("provider_id", &r.provider_id);
    let end_after = timestamps::field(r.end_after.as_ref(), "end_after", &mut v);
    let filter = paging::Filter::new("scheduling.ListAvailabilityExceptions")
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
    let provider = checked(provider)?;
    keeps_calendar(user, provider)?;
    let mut rows = {
        let mut conn = state.pool.acquire().await?;
        store::list_exceptions(
            &mut conn,
            provider,
            end_after.unwrap_or_else(Utc::now),
            page.after,
            page.fetch(),
        )
        .await?
    };
    let next = page.finish(&mut rows, &filter, |e| (e.start_time, e.id));
    Ok(ListAvailabilityExceptionsResponse {
        exceptions: rows.iter().map(exception_to_pb).collect(),
        page: Some(PageResponse {
            next_page_token: next,
        }),
    })
}
