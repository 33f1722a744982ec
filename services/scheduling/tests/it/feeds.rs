#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Calendar feeds over HTTP on scheduling's admin port: a patient's and a provider's feed parse
//! with PyPI `vobject` (validate=True) and `icalendar` (scripts/ical/check.py), lines end in
//! CRLF and are folded at 75 octets, every TZID has its VTIMEZONE, appointments across DST
//! days keep their instants, a cancellation shows as STATUS:CANCELLED, no PHI appears, and a
//! revoked (or unknown) token gets 404.

use carehub_platform::auth::Role;
use carehub_proto::scheduling::v1::*;
use chrono::NaiveDate;
use tonic::Code;

use crate::common::*;
use crate::ical_tools::check;

/// The feed at `url` (a URL under the default feed_base_url) from the admin port: status,
/// raw response (headers and body).
async fn fetch(suite: &Suite, url: &str) -> (u16, String) {
    let path = url
        .split_once("/calendar/")
        .map(|(_, t)| format!("/calendar/{t}"))
        .unwrap();
    carehub_testkit::grpc::http_get_raw(&suite.scheduling.admin_addr.to_string(), &path)
        .await
        .unwrap()
}

fn body(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// What the test itself checks beside the tools: CRLF, 75 octets, TZIDs with VTIMEZONEs.
fn assert_wire_format(ics: &str) {
    assert!(ics.ends_with("\r\n"));
    for line in ics.split("\r\n") {
        assert!(
            !line.contains('\n') && !line.contains('\r'),
            "bare line break in {line:?}"
        );
        assert!(line.len() <= 75, "line longer than 75 octets: {line:?}");
    }
    let unfolded = ics.replace("\r\n ", "");
    for tzid in unfolded
        .split("TZID=")
        .skip(1)
        .map(|r| r.split([':', ';']).next().unwrap())
    {
        assert!(
            unfolded.contains(&format!("BEGIN:VTIMEZONE\r\nTZID:{tzid}\r\n")),
            "TZID {tzid} without its VTIMEZONE"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_parse_with_vobject_and_icalendar_keep_dst_instants_and_die_when_revoked() {
    let suite = spawn().await;
    let (_staff, visit, provider) = suite.clinic().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let mut api = suite.public().await;
    let ny = NEW_YORK;
    let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
    // Visits on both of New York's 2027 transition days and one that is cancelled.
    let spring = suite
        .book(&patient, &provider, &visit, at(ny, day(2027, 3, 14), 9, 0))
        .await
        .unwrap();
    let fall = suite
        .book(&patient, &provider, &visit, at(ny, day(2027, 11, 7), 9, 30))
        .await
        .unwrap();
    let dropped = suite
        .book(&patient, &provider, &visit, at(ny, day(2027, 11, 7), 11, 0))
        .await
        .unwrap();
    api.cancel_appointment(as_user(
        &patient,
        CancelAppointmentRequest {
            appointment_id: dropped.id.clone(),
            reason: CancelReason::PatientRequest as i32,
            note: String::new(),
        },
    ))
    .await
    .unwrap();

    let feed = api
        .create_calendar_feed(as_user(
            &patient,
            CreateCalendarFeedRequest {
                time_zone: "America/New_York".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(feed.url.ends_with(".ics"), "{}", feed.url);
    let (status, raw) = fetch(&suite, &feed.url).await;
    assert_eq!(status, 200, "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("content-type: text/calendar"),
        "{raw}"
    );
    let ics = body(&raw);
    assert_wire_format(ics);
    // No PHI: the reason, the patient's id and name never appear.
    for secret in ["persistent cough", patient.id.as_str(), "Test User"] {
        assert!(!ics.contains(secret), "the feed shows {secret:?}");
    }
    let summary = check(ics);
    assert_eq!(summary["tzids"], serde_json::json!(["America/New_York"]));
    let events = summary["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    let event = |a: &Appointment| {
        events
            .iter()
            .find(|e| e["uid"] == format!("{}@carehub", a.id))
            .unwrap_or_else(|| panic!("no event for {}", a.id))
            .clone()
    };
    assert_eq!(event(&spring)["start_utc"], "2027-03-14T13:00:00Z");
    assert_eq!(event(&spring)["end_utc"], "2027-03-14T13:30:00Z");
    assert_eq!(event(&fall)["start_utc"], "2027-11-07T14:30:00Z");
    assert_eq!(event(&fall)["status"], "CONFIRMED");
    assert_eq!(event(&fall)["summary"], "Telehealth visit");
    assert_eq!(event(&dropped)["status"], "CANCELLED");
    // The same UID on every render: calendar apps update the event they have.
    let (_, again) = fetch(&suite, &feed.url).await;
    assert_eq!(check(body(&again))["events"].as_array().unwrap().len(), 3);

    // The provider's schedule, written in Berlin time for a provider travelling there.
    let theirs = api
        .create_calendar_feed(as_user(
            &provider,
            CreateCalendarFeedRequest {
                time_zone: "Europe/Berlin".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let (status, raw) = fetch(&suite, &theirs.url).await;
    assert_eq!(status, 200);
    assert_wire_format(body(&raw));
    let summary = check(body(&raw));
    assert_eq!(summary["tzids"], serde_json::json!(["Europe/Berlin"]));
    assert_eq!(summary["events"].as_array().unwrap().len(), 3);
    assert!(
        body(&raw).contains("DTSTART;TZID=Europe/Berlin:20270314T140000"),
        "{raw}"
    );

    // Bad zone, someone else's feed, then revocation.
    let bad = api
        .create_calendar_feed(as_user(
            &patient,
            CreateCalendarFeedRequest {
                time_zone: "Mars/Olympus".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let not_yours = api
        .revoke_calendar_feed(as_user(
            &provider,
            RevokeCalendarFeedRequest {
                id: feed.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(not_yours.code(), Code::NotFound);
    let revoked = api
        .revoke_calendar_feed(as_user(
            &patient,
            RevokeCalendarFeedRequest {
                id: feed.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoke_time.is_some() && revoked.url.is_empty());
    assert_eq!(fetch(&suite, &feed.url).await.0, 404);
    assert_eq!(
        fetch(&suite, &theirs.url).await.0,
        200,
        "other feeds live on"
    );
    let forged = format!("{}x.ics", &theirs.url[..theirs.url.len() - 5]);
    assert_eq!(fetch(&suite, &forged).await.0, 404);
    assert_eq!(fetch(&suite, "/calendar/nothing.ics").await.0, 404);
    let listed = api
        .list_calendar_feeds(as_user(&patient, ListCalendarFeedsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.feeds.iter().all(|f| f.url.is_empty()),
        "the URL is shown once"
    );

    // Only hashes of tokens are stored, and each feed served is an audited read.
    let token = feed
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".ics")
        .to_owned();
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM calendar_feeds WHERE position(convert_to($1, 'UTF8') in token_hash) > 0",
    )
    .bind(&token)
    .fetch_one(suite.pool())
    .await
    .unwrap();
    assert_eq!(stored, 0);
    let reads = suite
        .audit()
        .await
        .into_iter()
        .filter(|(k, _, s)| {
            k == "scheduling.appointment.read" && s.as_deref() == Some(patient.id.as_str())
        })
        .count();
    assert!(reads >= 2, "each served patient feed is audited: {reads}");
    suite.shutdown().await;
}

/// Every feed is a live public URL: one account may keep only `max_live_feeds` of them, counted
/// under the owner's lock so that a storm of creates cannot all see room. Revoking one frees
/// its place; another account is not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_account_cannot_mint_more_live_feeds_than_allowed_even_in_a_storm() {
    let suite = spawn_with(|c| c.scheduling.max_live_feeds = 3).await;
    let minter = suite.user(Role::Patient, "minter").await;
    let create = |user: &User| {
        let (suite, user) = (&suite, user.clone());
        async move {
            suite
                .public()
                .await
                .create_calendar_feed(as_user(
                    &user,
                    CreateCalendarFeedRequest {
                        time_zone: "America/New_York".into(),
                    },
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    let storm = futures::future::join_all((0..12).map(|_| create(&minter))).await;
    let made: Vec<&CalendarFeed> = storm.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(made.len(), 3, "{storm:?}");
    for s in storm.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert_eq!(reason(s).as_deref(), Some("RATE_LIMITED"));
        assert!(
            s.message().contains("3 live calendar feeds"),
            "{}",
            s.message()
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM calendar_feeds WHERE owner_id = $1")
        .bind(uuid::Uuid::parse_str(&minter.id).unwrap())
        .fetch_one(suite.pool())
        .await
        .unwrap();
    assert_eq!(rows, 3, "a refused create left a row behind");

    let mut api = suite.public().await;
    api.revoke_calendar_feed(as_user(
        &minter,
        RevokeCalendarFeedRequest {
            id: made[0].id.clone(),
        },
    ))
    .await
    .unwrap();
    create(&minter).await.unwrap();
    let full = create(&minter).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    let other = suite.user(Role::Patient, "other").await;
    create(&other).await.unwrap();
    suite.shutdown().await;
}

/// A feed URL is a credential of its own: one that leaked must not let anyone load the
/// database (each fetch is a query and an audit event). A storm of fetches of one feed gets
/// `feed_fetches_per_minute` answers and 429 with Retry-After for the rest, which read and
/// audit nothing; another feed is served all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leaked_feed_url_is_served_a_few_times_a_minute_and_then_refused_with_429() {
    let suite = spawn_with(|c| c.scheduling.feed_fetches_per_minute = 3).await;
    let patient = suite.user(Role::Patient, "leaky").await;
    let mut api = suite.public().await;
    let feed = || {
        let mut api = api.clone();
        let patient = patient.clone();
        async move {
            api.create_calendar_feed(as_user(
                &patient,
                CreateCalendarFeedRequest {
                    time_zone: "America/New_York".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
        }
    };
    let leaked = feed().await;
    let other = feed().await;
    let storm = futures::future::join_all((0..8).map(|_| fetch(&suite, &leaked.url))).await;
    let served = storm.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(served, 3, "{storm:?}");
    for (status, raw) in storm.iter().filter(|(status, _)| *status != 200) {
        assert_eq!(*status, 429, "{raw}");
        let wait: u64 = raw
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("retry-after: ")
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("no Retry-After: {raw}"))
            .trim()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{raw}");
    }
    let (status, raw) = fetch(&suite, &other.url).await;
    assert_eq!(status, 200, "{raw}");
    // Only the fetches served were audited as reads of the patient's appointments.
    carehub_platform::audit::seal_all(suite.pool())
        .await
        .unwrap();
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM carehub_platform.audit_events
          WHERE entity_type = 'calendar_feed' AND entity_id = $1 AND action = 'read'",
    )
    .bind(&leaked.id)
    .fetch_one(suite.pool())
    .await
    .unwrap();
    assert_eq!(audited, 3);
    api.revoke_calendar_feed(as_user(
        &patient,
        RevokeCalendarFeedRequest {
            id: leaked.id.clone(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(fetch(&suite, &leaked.url).await.0, 404);
    suite.shutdown().await;
}
