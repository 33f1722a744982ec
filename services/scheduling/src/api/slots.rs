//! Slot search: the providers that match, their availability turned into slots over the range
//! (`domain::slots`, date by date in each provider's zone), minus live claims, merged in
//! (start, provider) order and paged.

use std::collections::HashMap;

use carehub_platform::auth::Role;
use carehub_platform::call::Call;
use carehub_platform::errors::FieldViolations;
use carehub_platform::paging;
use carehub_platform::timestamps::{self, to_proto};
use carehub_proto::common::v1::PageResponse;
use carehub_proto::scheduling::v1::*;
use chrono::{DateTime, Duration, Utc, Weekday};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::directory::{is_code, is_language, is_state};
use crate::domain::slots::{self, Availability, ExceptionKind, Interval, LocalTime, VisitShape};
use crate::error::{checked, Result, SchedulingError};
use crate::store::appointments as claims;
use crate::store::providers::{self as store, ProviderRow, VisitTypeRow};
use crate::AppState;

pub fn shape(v: &VisitTypeRow) -> VisitShape {
    VisitShape {
        id: v.id,
        duration_minutes: u32::try_from(v.duration_minutes).unwrap_or(0),
        buffer_minutes: u32::try_from(v.buffer_minutes).unwrap_or(0),
    }
}

fn weekday(iso: i16) -> Option<Weekday> {
    Some(match iso {
        1 => Weekday::Mon,
        2 => Weekday::Tue,
        3 => Weekday::Wed,
        4 => Weekday::Thu,
        5 => Weekday::Fri,
        6 => Weekday::Sat,
        7 => Weekday::Sun,
        _ => return None,
    })
}

fn minutes(m: i16) -> Option<LocalTime> {
    let m = u32::try_from(m).ok()?;
    LocalTime::new(m / 60, m % 60)
}

/// The availability of `providers` around [from, to) (exceptions a day either side, so that
/// windows crossing the range's edges see theirs).
pub async fn availability(
    conn: &mut PgConnection,
    providers: &[ProviderRow],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<HashMap<Uuid, Availability>> {
    let ids: Vec<Uuid> = providers.iter().map(|p| p.provider_id).collect();
    let windows = store::windows(conn, &ids).await?;
    let exceptions =
        store::exceptions_between(conn, &ids, from - Duration::days(2), to + Duration::days(2))
            .await?;
    let mut out = HashMap::with_capacity(providers.len());
    for p in providers {
        let tz = slots::parse_tz(&p.time_zone).ok_or_else(|| {
            SchedulingError::Internal(format!("provider {} has an unknown zone", p.provider_id))
        })?;
        out.insert(
            p.provider_id,
            Availability {
                tz,
                windows: Vec::new(),
                exceptions: Vec::new(),
            },
        );
    }
    for w in windows {
        if let (Some(av), Some(weekday), Some(start), Some(end)) = (
            out.get_mut(&w.provider_id),
            weekday(w.weekday),
            minutes(w.start_minute),
            minutes(w.end_minute),
        ) {
            av.windows.push(slots::Window {
                weekday,
                start,
                end,
                visit_types: w.visit_type_ids,
            });
        }
    }
    for e in exceptions {
        let kind = match e.kind.as_str() {
            "time_off" => ExceptionKind::TimeOff,
            _ => ExceptionKind::ExtraHours,
        };
        if let Some(av) = out.get_mut(&e.provider_id) {
            av.exceptions.push(slots::Exception {
                kind,
                start: e.start_time,
                end: e.end_time,
            });
        }
    }
    Ok(out)
}

/// Whether `start` is a slot `provider` offers for `visit` (its windows and exceptions; what
/// is taken is the exclusion constraints' to decide), and in the future.
pub async fn check_offered(
    state: &AppState,
    conn: &mut PgConnection,
    provider: &ProviderRow,
    visit: &VisitTypeRow,
    start: DateTime<Utc>,
) -> Result<()> {
    check_offered_to(state, conn, provider, visit, start, None).await
}

/// [`check_offered`], and for `patient` (a patient booking for themselves): a provider who
/// takes no new patients only sees patients they have seen before (staff may book anyone).
pub async fn check_offered_to(
    state: &AppState,
    conn: &mut PgConnection,
    provider: &ProviderRow,
    visit: &VisitTypeRow,
    start: DateTime<Utc>,
    patient: Option<Uuid>,
) -> Result<()> {
    if let Some(patient) = patient {
        if !provider.accepting_new_patients
            && claims::seen_by(conn, patient, &[provider.provider_id])
                .await?
                .is_empty()
        {
            return Err(SchedulingError::SlotUnavailable(
                "the provider takes no new patients".into(),
            ));
        }
    }
    let now = Utc::now();
    if start <= now {
        return Err(SchedulingError::SlotUnavailable("it is in the past".into()));
    }
    let days = state.settings.max_booking_days;
    if start > now + Duration::days(i64::from(days)) {
        return Err(SchedulingError::SlotUnavailable(format!(
            "it is more than {days} days ahead"
        )));
    }
    if !provider.visit_type_ids.contains(&visit.id) {
        return Err(SchedulingError::SlotUnavailable(
            "the provider does not offer this visit type".into(),
        ));
    }
    let end = start + Duration::minutes(i64::from(visit.duration_minutes));
    let av = availability(conn, std::slice::from_ref(provider), start, end).await?;
    let offered = av
        .get(&provider.provider_id)
        .is_some_and(|av| slots::is_offered(av, &shape(visit), start));
    if !offered {
        return Err(SchedulingError::SlotUnavailable(
            "it is not a slot of the provider's availability for this visit type".into(),
        ));
    }
    Ok(())
}

type Cursor = (DateTime<Utc>, Uuid);

pub async fn search(
    state: &AppState,
    call: &Call,
    r: SearchSlotsRequest,
) -> Result<SearchSlotsResponse> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let start = timestamps::field(r.start_time.as_ref(), "start_time", &mut v);
    let end = timestamps::field(r.end_time.as_ref(), "end_time", &mut v);
    if r.start_time.is_none() {
        v.add("start_time", "is required");
    }
    if r.end_time.is_none() {
        v.add("end_time", "is required");
    }
    let max_days = i64::from(state.settings.max_search_days);
    if let (Some(s), Some(e)) = (start, end) {
        v.check(e > s, "end_time", "must be after start_time");
        v.check(
            e - s <= Duration::days(max_days),
            "end_time",
            &format!("must be at most {max_days} days after start_time"),
        );
    }
    let visit_type = v.require_uuid("visit_type_id", &r.visit_type_id);
    let tz = slots::parse_tz(&r.time_zone);
    if tz.is_none() {
        v.add(
            "time_zone",
            "must be an IANA time zone name such as America/New_York",
        );
    }
    v.check(
        r.specialty.is_empty() || is_code(&r.specialty),
        "specialty",
        "must be a lower-case code such as family-medicine",
    );
    v.check(
        r.state.is_empty() || is_state(&r.state),
        "state",
        "must be a two-letter US state code such as NY",
    );
    v.check(
        r.language.is_empty() || is_language(&r.language),
        "language",
        "must be a BCP 47 language tag such as en",
    );
    v.check(
        r.provider_ids.len() <= 100,
        "provider_ids",
        "must name at most 100 providers",
    );
    let only: Vec<Uuid> = r
        .provider_ids
        .iter()
        .enumerate()
        .filter_map(|(i, p)| v.require_uuid(&format!("provider_ids[{i}]"), p))
        .collect();
    let filter = paging::Filter::new("scheduling.SearchSlots")
        .field(
            "start_time",
            start
                .map(|t| t.timestamp_micros().to_be_bytes())
                .as_ref()
                .map(|b| b.as_slice()),
        )
        .field(
            "end_time",
            end.map(|t| t.timestamp_micros().to_be_bytes())
                .as_ref()
                .map(|b| b.as_slice()),
        )
        .field("visit_type_id", Some(r.visit_type_id.as_bytes()))
        .field("specialty", Some(r.specialty.as_bytes()))
        .field("state", Some(r.state.as_bytes()))
        .field("language", Some(r.language.as_bytes()))
        .field("provider_ids", Some(r.provider_ids.join(",").as_bytes()));
    let page = paging::Page::<Cursor>::read(r.page.as_ref(), &filter, "page", &mut v);
    v.finish()?;
    let (start, end, visit_type, tz) = (
        checked(start)?,
        checked(end)?,
        checked(visit_type)?,
        checked(tz)?,
    );
    let now = Utc::now();
    let from = start.max(now);
    let end = end.min(now + Duration::days(i64::from(state.settings.max_booking_days)));
    let mut conn = state.pool.acquire().await?;
    let visit = store::visit_type(&mut conn, visit_type)
        .await?
        .ok_or_else(|| SchedulingError::NotFound {
            what: "visit type",
            id: visit_type.to_string(),
        })?;
    let nonempty = |s: &str| (!s.is_empty()).then_some(s.to_owned());
    let (specialty, us_state, language) = (
        nonempty(&r.specialty),
        nonempty(&r.state),
        nonempty(&r.language),
    );
    let providers = store::matching(
        &mut conn,
        &store::ProviderFilter {
            visit_type,
            specialty: specialty.as_deref(),
            state: us_state.as_deref(),
            language: language.as_deref(),
            only: &only,
            limit: i64::from(state.settings.max_search_providers),
        },
    )
    .await?;
    // A patient sees a provider who takes no new patients only if they are one of theirs.
    let providers = match user.has_role(Role::Patient) {
        true => {
            let closed: Vec<Uuid> = providers
                .iter()
                .filter(|p| !p.accepting_new_patients)
                .map(|p| p.provider_id)
                .collect();
            let known = claims::seen_by(&mut conn, user.user_id, &closed).await?;
            providers
                .into_iter()
                .filter(|p| p.accepting_new_patients || known.contains(&p.provider_id))
                .collect()
        }
        false => providers,
    };
    let mut found: Vec<(DateTime<Utc>, Uuid)> = Vec::new();
    if from < end && !providers.is_empty() {
        let av = availability(&mut conn, &providers, from, end).await?;
        let ids: Vec<Uuid> = providers.iter().map(|p| p.provider_id).collect();
        let mut busy: HashMap<Uuid, Vec<Interval>> = HashMap::new();
        for (p, s, e) in claims::busy(
            &mut conn,
            &ids,
            from - Duration::days(1),
            end + Duration::days(1),
        )
        .await?
        {
            busy.entry(p)
                .or_default()
                .push(Interval { start: s, end: e });
        }
        let shape = shape(&visit);
        // A day at a time, in order, until the page is full: a first page of 50 needs the
        // first day of 50 providers, not their whole week (generating and sorting the week's
        // slots took most of a search's CPU). A slot's alignment does not depend on where the
        // range starts (domain::slots), so chunks and the page cursor cut nowhere.
        let want = usize::try_from(page.fetch()).unwrap_or(usize::MAX);
        let mut chunk_from = page.after.map_or(from, |(t, _)| t.max(from));
        while chunk_from < end && found.len() < want {
            let chunk_to = (chunk_from + Duration::days(1)).min(end);
            let mut chunk = Vec::new();
            for p in &providers {
                let Some(av) = av.get(&p.provider_id) else {
                    continue;
                };
                let taken = busy.get(&p.provider_id).map(Vec::as_slice).unwrap_or(&[]);
                chunk.extend(
                    slots::slots(av, &shape, chunk_from, chunk_to, now, taken)
                        .into_iter()
                        .map(|s| (s, p.provider_id)),
                );
            }
            chunk.sort_unstable();
            if let Some(after) = page.after {
                chunk.retain(|k| *k > after);
            }
            found.extend(chunk);
            chunk_from = chunk_to;
        }
        found.truncate(want);
    }
    drop(conn);
    let next = page.finish(&mut found, &filter, |k| *k);
    let zones: HashMap<Uuid, chrono_tz::Tz> = providers
        .iter()
        .filter_map(|p| Some((p.provider_id, slots::parse_tz(&p.time_zone)?)))
        .collect();
    let duration = Duration::minutes(i64::from(visit.duration_minutes));
    let slots = found
        .iter()
        .map(|(s, p)| Slot {
            provider_id: p.to_string(),
            visit_type_id: visit.id.to_string(),
            start_time: Some(to_proto(*s)),
            end_time: Some(to_proto(*s + duration)),
            patient_local_start: slots::local_rfc3339(tz, *s),
            provider_local_start: zones
                .get(p)
                .map(|z| slots::local_rfc3339(*z, *s))
                .unwrap_or_default(),
        })
        .collect();
    Ok(SearchSlotsResponse {
        slots,
        page: Some(PageResponse {
            next_page_token: next,
        }),
    })
}
