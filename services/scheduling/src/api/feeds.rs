//! Calendar feeds: a secret URL per patient or provider that calendar apps poll
//! (`GET /calendar/<token>.ics` on the admin port, exposed through the gateway). The token is
//! 256 random bits shown once; only its SHA-256 is stored, so a database read does not leak
//! working URLs. Revoking a feed makes its URL answer 404 at once. Events carry no PHI: the
//! summary says "Telehealth visit" or "In-person visit", never a name or a reason. Each feed
//! served is an audited read of the owner's appointments.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use carehub_platform::audit::{AuditEvent, Purpose};
use carehub_platform::auth::Role;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::timestamps::{opt_to_proto, to_proto};
use carehub_proto::scheduling::v1::*;
use chrono::{Duration, Utc};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::kinds;
use crate::domain::appointment::{Modality, Status};
use crate::domain::ical::{self, EventStatus, FeedEvent};
use crate::domain::slots;
use crate::error::{below_quota, checked, Result, SchedulingError};
use crate::store::feeds::{self as store, FeedRow};
use crate::AppState;

/// Where feeds are served on the admin port.
pub const PATH: &str = "/calendar/{file}";

/// Feeds rendered at once by one replica; beyond it the route answers 503 with Retry-After.
/// It also bounds the database look-ups of tokens that match no feed, which no per-feed count
/// can see.
pub const MAX_CONCURRENT_RENDERS: usize = 16;
/// The window of `feed_fetches_per_minute`.
const FETCH_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Feeds whose window one replica keeps at most (a few MiB); when full, windows that have
/// ended are dropped first, and a fetch that still finds no room is refused for a minute.
const MAX_TRACKED_FEEDS: usize = 100_000;

/// Keeps the public feed route from being used to load the database: it takes no credentials
/// but the URL, and each feed served costs a query and an audit event. Per replica.
pub struct FeedGate {
    per_minute: u32,
    /// Each feed's current window: when it began and the fetches counted in it.
    windows: Mutex<HashMap<Uuid, (Instant, u32)>>,
    renders: tokio::sync::Semaphore,
}

impl FeedGate {
    pub fn new(per_minute: u32) -> Self {
        FeedGate {
            per_minute,
            windows: Mutex::new(HashMap::new()),
            renders: tokio::sync::Semaphore::new(MAX_CONCURRENT_RENDERS),
        }
    }

    /// Counts a fetch of `feed` at `now`, then checks it: `Err` with how long until the window
    /// ends when it is over the minute's allowance. Counting first makes concurrent fetches
    /// of one feed each see the ones before them.
    fn admit(&self, feed: Uuid, now: Instant) -> std::result::Result<(), std::time::Duration> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= MAX_TRACKED_FEEDS && !windows.contains_key(&feed) {
            windows.retain(|_, (began, _)| now.duration_since(*began) < FETCH_WINDOW);
            if windows.len() >= MAX_TRACKED_FEEDS {
                return Err(FETCH_WINDOW);
            }
        }
        let (began, count) = windows.entry(feed).or_insert((now, 0));
        if now.duration_since(*began) >= FETCH_WINDOW {
            (*began, *count) = (now, 0);
        }
        *count = count.saturating_add(1);
        if *count > self.per_minute {
            return Err(FETCH_WINDOW.saturating_sub(now.duration_since(*began)));
        }
        Ok(())
    }
}

/// What a fetch of a feed URL comes to.
pub enum Fetch {
    Feed(String),
    /// No live feed has this token.
    Unknown,
    /// Fetched too often this minute: try again after this long.
    TooOften(std::time::Duration),
}

fn retry_after(wait: std::time::Duration) -> String {
    wait.as_secs().max(1).to_string()
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn feed_to_pb(f: &FeedRow, url: String) -> CalendarFeed {
    CalendarFeed {
        id: f.id.to_string(),
        owner_id: f.owner_id.to_string(),
        url,
        create_time: Some(to_proto(f.created_at)),
        revoke_time: opt_to_proto(f.revoked_at),
        time_zone: f.time_zone.clone(),
    }
}

/// The owner's subject: a patient's feed reads the patient's data; a provider's schedule is
/// filed under no one (it lists many patients' appointment times, without names).
fn subject(f: &FeedRow) -> Option<Uuid> {
    (f.owner_kind == "patient").then_some(f.owner_id)
}

fn feed_event(call: &Call, f: &FeedRow) -> AuditEvent {
    let e = AuditEvent::of(
        kinds::FEED_CHANGE,
        Purpose::PatientRequest,
        "calendar_feed",
        f.id,
    )
    .caller(&call.caller);
    match subject(f) {
        Some(s) => e.subject(s),
        None => e,
    }
}

pub async fn create(
    state: &AppState,
    call: &Call,
    r: CreateCalendarFeedRequest,
) -> Result<CalendarFeed> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    if slots::parse_tz(&r.time_zone).is_none() {
        v.add(
            "time_zone",
            "must be an IANA time zone name such as America/New_York",
        );
    }
    v.finish()?;
    let kind = if user.has_role(Role::Provider) {
        "provider"
    } else {
        "patient"
    };
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let token = data_encoding::BASE64URL_NOPAD.encode(&secret);
    let url = format!("{}/calendar/{token}.ics", state.settings.feed_base_url);
    let hash = token_hash(&token);
    // The answer carries the secret URL: never stored for a replay (a retry makes another feed).
    call.mutate_secret(&state.pool, async |conn| {
        // Counted under the owner's lock (the per-person advisory lock bookings take; a
        // provider's id keys it as well): a storm of creates cannot all see room.
        crate::store::appointments::lock_patient(conn, user.user_id).await?;
        below_quota(
            store::live_of_owner(conn, user.user_id).await?,
            state.settings.max_live_feeds,
            ("account", "live calendar feeds", "revoke one first"),
        )?;
        let f = store::insert(
            conn,
            Uuid::now_v7(),
            user.user_id,
            kind,
            &r.time_zone,
            &hash,
        )
        .await?;
        Ok::<_, SchedulingError>(Change::new(
            feed_to_pb(&f, url.clone()),
            feed_event(call, &f),
        ))
    })
    .await
}

pub async fn list(
    state: &AppState,
    call: &Call,
    _r: ListCalendarFeedsRequest,
) -> Result<ListCalendarFeedsResponse> {
    let user = call.user()?;
    let mut conn = state.pool.acquire().await?;
    let feeds = store::of_owner(&mut conn, user.user_id).await?;
    Ok(ListCalendarFeedsResponse {
        feeds: feeds.iter().map(|f| feed_to_pb(f, String::new())).collect(),
    })
}

pub async fn revoke(
    state: &AppState,
    call: &Call,
    r: RevokeCalendarFeedRequest,
) -> Result<CalendarFeed> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("id", &r.id);
    v.finish()?;
    let id = checked(id)?;
    let not_found = || SchedulingError::NotFound {
        what: "calendar feed",
        id: id.to_string(),
    };
    let feed = {
        let mut conn = state.pool.acquire().await?;
        store::get(&mut conn, id).await?.ok_or_else(not_found)?
    };
    // Someone else's feed is answered as absent: its existence is nobody else's business.
    if feed.owner_id != user.user_id {
        return Err(not_found());
    }
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let f = store::revoke(conn, id).await?;
            Ok::<_, SchedulingError>(Change::new(
                feed_to_pb(&f, String::new()),
                feed_event(call, &f),
            ))
        })
        .await?;
    Ok(ran.answer)
}

/// The admin-port route serving feeds.
pub fn routes(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route(PATH, axum::routing::get(serve))
        .with_state(state)
}

async fn serve(State(state): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    let Some(token) = file.strip_suffix(".ics") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // A token is 43 base64url characters; anything else is not worth a database look-up.
    if token.len() != 43
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Ok(_rendering) = state.feed_gate.renders.try_acquire() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
        )
            .into_response();
    };
    match render(&state, token).await {
        Ok(Fetch::Feed(body)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/calendar; charset=utf-8"),
                (header::CACHE_CONTROL, "private, max-age=300"),
            ],
            body,
        )
            .into_response(),
        Ok(Fetch::Unknown) => StatusCode::NOT_FOUND.into_response(),
        Ok(Fetch::TooOften(wait)) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after(wait))],
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "calendar feed failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// The feed whose token is `token`, rendered, unless there is no live feed with it or it was
/// fetched too often this minute (then nothing is read or audited).
pub async fn render(state: &AppState, token: &str) -> Result<Fetch> {
    let mut conn = state.pool.acquire().await?;
    let Some(feed) = store::by_token(&mut conn, &token_hash(token)).await? else {
        return Ok(Fetch::Unknown);
    };
    if let Err(wait) = state.feed_gate.admit(feed.id, Instant::now()) {
        return Ok(Fetch::TooOften(wait));
    }
    let since = Utc::now() - Duration::days(i64::from(state.settings.feed_past_days));
    let items = store::items(&mut conn, &feed, since).await?;
    drop(conn);
    let tz = slots::parse_tz(&feed.time_zone).unwrap_or(chrono_tz::UTC);
    let events = items
        .iter()
        .map(|a| FeedEvent {
            uid: a.id,
            start: a.start_time,
            end: a.end_time,
            status: match Status::parse(&a.status) {
                Some(Status::Cancelled) => EventStatus::Cancelled,
                Some(Status::Requested) => EventStatus::Tentative,
                _ => EventStatus::Confirmed,
            },
            summary: match Modality::parse(&a.modality) {
                Some(Modality::Telehealth) => "Telehealth visit".to_owned(),
                _ => "In-person visit".to_owned(),
            },
            sequence: u32::try_from(a.revision.saturating_sub(1)).unwrap_or(0),
            last_modified: a.updated_at,
        })
        .collect();
    let body = ical::render(
        &ical::Feed {
            name: "carehub appointments".to_owned(),
            tz,
            events,
        },
        Utc::now(),
    );
    let purpose = if feed.owner_kind == "patient" {
        Purpose::PatientRequest
    } else {
        Purpose::Treatment
    };
    let mut event = AuditEvent::of(kinds::APPOINTMENT_READ, purpose, "calendar_feed", feed.id)
        .actor_user(feed.owner_id);
    if let Some(s) = subject(&feed) {
        event = event.subject(s);
    }
    carehub_platform::call::reads::record(&state.pool, event).await?;
    Ok(Fetch::Feed(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_gets_its_allowance_per_minute_and_then_waits_for_the_window_to_end() {
        let gate = FeedGate::new(3);
        let (feed, other) = (Uuid::now_v7(), Uuid::now_v7());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(gate.admit(feed, t0), Ok(()));
        }
        let later = t0 + std::time::Duration::from_secs(20);
        assert_eq!(
            gate.admit(feed, later),
            Err(std::time::Duration::from_secs(40))
        );
        // Refused fetches count too: hammering does not shorten the wait.
        assert!(gate.admit(feed, later).is_err());
        // Another feed has its own allowance.
        assert_eq!(gate.admit(other, later), Ok(()));
        // A new window starts a minute after the first fetch of the last one.
        assert_eq!(gate.admit(feed, t0 + FETCH_WINDOW), Ok(()));
        assert_eq!(retry_after(std::time::Duration::from_millis(300)), "1");
    }
}
