//! Calendar feeds pass two iCalendar readers we did not write, run from here: PyPI vobject 0.9.9
//! (`validate=True`, and the VTIMEZONE read by dateutil) and icalendar 7.3.2 (TZIDs resolved by
//! zoneinfo, and the VTIMEZONE read on its own) — installed pinned by scripts/ical/install.sh on
//! first use — through scripts/ical/check.py, which also checks CRLF, folding and TZIDs on the
//! raw octets. Events on daylight-saving transition days keep their instants through both, and
//! the checker refuses broken feeds, so it can fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use carehub_scheduling::domain::ical::{render, EventStatus, Feed, FeedEvent};
use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use EventStatus::{Cancelled, Confirmed, Tentative};

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ical")
}

/// The checkers' python (installed once per test process; install.sh serializes processes).
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = Command::new(scripts().join("install.sh")).output().unwrap();
            assert!(
                out.status.success(),
                "installing the iCalendar checkers: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
}

fn run_checker(ics: &str) -> Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), ics.as_bytes()).unwrap();
    Command::new(python())
        .arg(scripts().join("check.py"))
        .arg(file.path())
        .output()
        .unwrap()
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs check.py over `ics`; panics with its output unless every check passes, else returns
/// its summary: `{"events": [{"uid", "start_utc", "end_utc", "status", "summary",
/// "sequence"}], "tzids": [...], "calname": ...}`.
pub fn check(ics: &str) -> Value {
    let out = run_checker(ics);
    assert!(
        out.status.success(),
        "check.py refuses the feed:\n{}\n--- feed ---\n{ics}",
        output_text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs check.py over `ics`, which must fail; returns what it said.
pub fn check_fails(ics: &str) -> String {
    let out = run_checker(ics);
    assert!(
        !out.status.success(),
        "check.py accepts a broken feed:\n{}\n--- feed ---\n{ics}",
        output_text(&out)
    );
    output_text(&out)
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// One event per (UTC start, minutes, status), with ids 1, 2, ...
fn events(list: &[(DateTime<Utc>, i64, EventStatus)]) -> Vec<FeedEvent> {
    list.iter()
        .enumerate()
        .map(|(i, &(start, minutes, status))| FeedEvent {
            uid: uuid::Uuid::from_u128(i as u128 + 1),
            start,
            end: start + Duration::minutes(minutes),
            status,
            summary: "Telehealth visit".into(),
            sequence: i as u32,
            last_modified: at(2026, 1, 2, 3, 4),
        })
        .collect()
}

/// Renders `feed`, checks it and asserts every event came back at the same instants, with the
/// same status, summary and sequence. Returns the rendered feed.
fn round_trip(feed: &Feed, now: DateTime<Utc>) -> String {
    let ics = render(feed, now);
    let summary = check(&ics);
    assert_eq!(summary["tzids"], serde_json::json!([feed.tz.name()]));
    assert_eq!(summary["calname"], feed.name.as_str());
    let got = summary["events"].as_array().unwrap();
    assert_eq!(got.len(), feed.events.len(), "{summary}");
    for (e, g) in feed.events.iter().zip(got) {
        let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let want = serde_json::json!({
            "uid": format!("{}@carehub", e.uid),
            "start_utc": fmt(e.start),
            "end_utc": fmt(e.end),
            "status": status_text(e.status),
            "summary": e.summary,
            "sequence": e.sequence,
        });
        assert_eq!(g, &want, "in {}:\n{ics}", feed.tz);
    }
    ics
}

/// Written out here rather than taken from the writer, so a swapped status shows.
fn status_text(status: EventStatus) -> &'static str {
    match status {
        Confirmed => "CONFIRMED",
        Tentative => "TENTATIVE",
        Cancelled => "CANCELLED",
    }
}

fn feed(tz: Tz, events: Vec<FeedEvent>) -> Feed {
    Feed {
        name: "Dr. Okafor, clinic; telehealth".into(),
        tz,
        events,
    }
}

#[test]
fn events_on_new_york_transition_days_keep_their_instants() {
    let mut list = events(&[
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
        (at(2026, 3, 8, 6, 30), 60, Confirmed), // 01:30 EST to 03:30 EDT, across the gap
        (at(2026, 3, 8, 7, 0), 30, Tentative),  // 03:00 EDT, the first minute after it
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST (06:00 UTC); 01:00-02:00 happens twice.
        (at(2026, 11, 1, 5, 30), 30, Confirmed), // 01:30 EDT, the first 01:30
        (at(2026, 11, 1, 6, 30), 30, Cancelled), // 01:30 EST, the second 01:30
        (at(2026, 11, 1, 5, 45), 60, Confirmed), // 01:45 EDT to 01:45 EST
        (at(2026, 1, 15, 15, 0), 30, Confirmed), // January, before the first 2026 transition
    ]);
    list[5].summary = "Telehealth visit — follow-up, résumé; «é» ".repeat(6);
    let ics = round_trip(
        &feed(chrono_tz::America::New_York, list),
        at(2026, 1, 10, 12, 0),
    );
    assert!(ics.contains("\r\n "), "the long summary is folded");
    assert!(ics.contains("\r\nSTATUS:CANCELLED\r\n"));
}

#[test]
fn events_on_berlin_transition_days_keep_their_instants() {
    let list = events(&[
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        (at(2026, 3, 29, 0, 30), 30, Confirmed), // 01:30 CET
        (at(2026, 3, 29, 1, 0), 45, Confirmed),  // 03:00 CEST
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC).
        (at(2026, 10, 25, 0, 30), 30, Cancelled), // 02:30 CEST, the first 02:30
        (at(2026, 10, 25, 1, 30), 30, Tentative), // 02:30 CET, the second 02:30
        (at(2026, 12, 31, 23, 30), 60, Confirmed), // across the new year, local and UTC
    ]);
    round_trip(&feed(chrono_tz::Europe::Berlin, list), at(2026, 3, 1, 0, 0));
}

#[test]
fn events_on_lord_howe_half_hour_transition_days_keep_their_instants() {
    let list = events(&[
        // 2026-04-05: 02:00 +11 falls back to 01:30 +1030 (15:00 UTC on the 4th).
        (at(2026, 4, 4, 14, 45), 30, Confirmed), // 01:45 +11, the first 01:45
        (at(2026, 4, 4, 15, 15), 30, Confirmed), // 01:45 +1030, the second 01:45
        // 2026-10-04: 02:00 +1030 jumps to 02:30 +11 (15:30 UTC on the 3rd).
        (at(2026, 10, 3, 15, 0), 60, Tentative), // 01:30 +1030 to 03:00 +11
        (at(2026, 10, 3, 15, 30), 30, Cancelled), // 02:30 +11
        (at(2027, 1, 20, 0, 0), 30, Confirmed),  // next summer, in the next year
    ]);
    round_trip(
        &feed(chrono_tz::Australia::Lord_Howe, list),
        at(2026, 2, 1, 0, 0),
    );
}

#[test]
fn utc_feeds_pass_too() {
    for tz in [Tz::UTC, Tz::Etc__UTC] {
        let list = events(&[(at(2026, 6, 1, 9, 0), 30, Confirmed)]);
        round_trip(&feed(tz, list), at(2026, 5, 1, 0, 0));
    }
}

#[test]
fn the_checker_refuses_broken_feeds() {
    let list = events(&[
        (at(2026, 3, 8, 6, 30), 60, Confirmed),
        (at(2026, 11, 1, 5, 30), 30, Confirmed),
    ]);
    let good = render(
        &feed(chrono_tz::America::New_York, list),
        at(2026, 1, 10, 0, 0),
    );
    check(&good);

    let bare_lf = good.replacen("METHOD:PUBLISH\r\n", "METHOD:PUBLISH\n", 1);
    assert!(check_fails(&bare_lf).contains("bare LF"));

    let long = good.replacen("SUMMARY:", &format!("SUMMARY:{}", "x".repeat(80)), 1);
    assert!(check_fails(&long).contains("more than 75"));

    // The VTIMEZONE taken out: the TZID= parameters point at nothing.
    let begin = good.find("BEGIN:VTIMEZONE").unwrap();
    let end = good.find("END:VTIMEZONE\r\n").unwrap() + "END:VTIMEZONE\r\n".len();
    let no_vtimezone = format!("{}{}", &good[..begin], &good[end..]);
    assert!(check_fails(&no_vtimezone).contains("no VTIMEZONE with that TZID"));

    // A daylight offset an hour off: the VTIMEZONE disagrees with the zone database.
    let wrong_offset = good.replace("TZOFFSETTO:-0400", "TZOFFSETTO:-0300");
    assert!(check_fails(&wrong_offset).contains("reads as"));

    let no_dtstamp = good.replacen("DTSTAMP:", "X-DTSTAMP:", 1);
    assert!(check_fails(&no_dtstamp).contains("DTSTAMP"));
}
