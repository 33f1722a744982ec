//! iCalendar (RFC 5545) calendar feeds: a pure writer, no I/O.
//!
//! A feed is one `VCALENDAR` with one `VTIMEZONE` (the feed's IANA zone) and one `VEVENT` per
//! appointment. Event times are written as local times of the feed's zone (`DTSTART;TZID=...`),
//! so calendar clients show them in that zone, except where a local time would not name the
//! instant unambiguously (see [`render`]), where the UTC form is used instead.
//!
//! chrono-tz does not expose a zone's transitions, so the `VTIMEZONE` is built by scanning the
//! zone's offsets over the years the feed spans and bisecting each change down to the second.

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Offset, SubsecRound, TimeZone, Utc,
};
use chrono_tz::{OffsetComponents, OffsetName, Tz, TzOffset};

/// Product identifier written in every feed.
pub const PRODID: &str = "-//carehub//scheduling//EN";

/// RFC 5545 §3.1: content lines SHOULD NOT be longer than 75 octets, excluding the line break.
const MAX_LINE_OCTETS: usize = 75;

/// Years whose instants are written as local times of the feed's zone. chrono-tz's tables list
/// explicit transitions only until 2099 and then keep the last offset forever, while other
/// readers (zoneinfo, dateutil) keep applying the zone's rules; outside this window the local
/// form could be read as another instant, so the UTC form is written there. Bounding the window
/// also bounds the transition scan, whatever the events' dates.
const LOCAL_YEARS: std::ops::RangeInclusive<i32> = 1900..=2099;

/// Step of the offset scan. Smaller than any gap between two transitions of a zone in tzdb, so
/// none is missed (two transitions inside one step that cancel out would be invisible).
const SCAN_STEP_SECS: i64 = 6 * 3600;

/// `YYYYMMDDTHHMMSS`: a local ("floating" or `TZID=`) DATE-TIME.
const LOCAL_FORMAT: &str = "%Y%m%dT%H%M%S";
/// `YYYYMMDDTHHMMSSZ`: a UTC DATE-TIME.
const UTC_FORMAT: &str = "%Y%m%dT%H%M%SZ";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStatus {
    Confirmed,
    Tentative,
    Cancelled,
}

impl EventStatus {
    /// The RFC 5545 `STATUS` value for a `VEVENT`.
    pub fn as_ical(self) -> &'static str {
        match self {
            EventStatus::Confirmed => "CONFIRMED",
            EventStatus::Tentative => "TENTATIVE",
            EventStatus::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Clone, Debug)]
pub struct FeedEvent {
    /// The appointment id; the event's UID is `<uuid>@carehub`, stable across renders so
    /// clients update (or cancel) the event they already have.
    pub uid: uuid::Uuid,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub status: EventStatus,
    /// Shown in the calendar; feeds are fetched by URL, so this must carry no PHI.
    pub summary: String,
    /// Bumped on every change of the appointment (RFC 5545 §3.8.7.4).
    pub sequence: u32,
    pub last_modified: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct Feed {
    /// X-WR-CALNAME: the calendar's display name in clients.
    pub name: String,
    pub tz: Tz,
    pub events: Vec<FeedEvent>,
}

/// The whole `VCALENDAR`, every line folded by [`fold`] and ended by CRLF.
///
/// `DTSTART`/`DTEND` are written as `;TZID=<zone>:YYYYMMDDTHHMMSS` in the feed's zone, unless
/// the instant is the second occurrence of a repeated local time (the hour after a DST end:
/// RFC 5545 §3.3.5 reads such a local time as its first occurrence) or lies outside the years
/// the zone table describes reliably; those are written in UTC (`...Z`), which every reader
/// takes as the same instant.
pub fn render(feed: &Feed, now: DateTime<Utc>) -> String {
    let tz = feed.tz;
    let now = now.trunc_subsecs(0);
    let mut lines = vec![
        "BEGIN:VCALENDAR".to_owned(),
        format!("PRODID:{PRODID}"),
        "VERSION:2.0".to_owned(),
        "CALSCALE:GREGORIAN".to_owned(),
        "METHOD:PUBLISH".to_owned(),
        format!("X-WR-CALNAME:{}", escape_text(&feed.name)),
        // Google and Apple clients use this as the calendar's default zone.
        format!("X-WR-TIMEZONE:{}", tz.name()),
    ];
    let instants = std::iter::once(now).chain(feed.events.iter().flat_map(|e| [e.start, e.end]));
    vtimezone(tz, instants, &mut lines);
    let dtstamp = format!("DTSTAMP:{}", now.format(UTC_FORMAT));
    for event in &feed.events {
        lines.push("BEGIN:VEVENT".to_owned());
        lines.push(format!("UID:{}@carehub", event.uid));
        lines.push(dtstamp.clone());
        lines.push(date_time("DTSTART", tz, event.start));
        lines.push(date_time("DTEND", tz, event.end));
        lines.push(format!("SUMMARY:{}", escape_text(&event.summary)));
        lines.push(format!("STATUS:{}", event.status.as_ical()));
        lines.push(format!("SEQUENCE:{}", event.sequence));
        lines.push(format!(
            "LAST-MODIFIED:{}",
            event.last_modified.trunc_subsecs(0).format(UTC_FORMAT)
        ));
        lines.push("END:VEVENT".to_owned());
    }
    lines.push("END:VCALENDAR".to_owned());

    let mut out = String::with_capacity(lines.iter().map(|l| l.len() + 8).sum());
    for line in &lines {
        out.push_str(&fold(line));
        out.push_str("\r\n");
    }
    out
}

/// Folds one content line (given without its line break) into physical lines of at most 75
/// octets joined by CRLF + one space (RFC 5545 §3.1). Breaks fall between characters, never
/// inside a UTF-8 sequence; the leading space counts toward its line's 75 octets. The result
/// has no trailing line break.
pub fn fold(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + line.len() / (MAX_LINE_OCTETS - 1) * 3);
    let mut used = 0;
    for ch in line.chars() {
        let octets = ch.len_utf8();
        if used + octets > MAX_LINE_OCTETS {
            out.push_str("\r\n ");
            used = 1;
        }
        out.push(ch);
        used += octets;
    }
    out
}

/// Escapes a TEXT value (RFC 5545 §3.3.11): backslash, semicolon and comma get a backslash,
/// line breaks (LF, CRLF or a lone CR) become `\n`. Other ASCII control characters except TAB
/// are not allowed in TEXT at all and are dropped, so no input can break the feed's structure.
pub fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {
                // CRLF is one line break; the LF writes it.
                if chars.peek() != Some(&'\n') {
                    out.push_str("\\n");
                }
            }
            c if c.is_ascii_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// `NAME;TZID=<zone>:<local>` when the local time names `at` unambiguously, else `NAME:<utc>Z`.
fn date_time(name: &str, tz: Tz, at: DateTime<Utc>) -> String {
    let at = at.trunc_subsecs(0);
    if LOCAL_YEARS.contains(&at.year()) {
        let local = at.with_timezone(&tz).naive_local();
        // RFC 5545 §3.3.5: a repeated local time means its first occurrence.
        if tz
            .from_local_datetime(&local)
            .earliest()
            .map(|d| d.to_utc())
            == Some(at)
        {
            return format!("{name};TZID={}:{}", tz.name(), local.format(LOCAL_FORMAT));
        }
    }
    format!("{name}:{}", at.format(UTC_FORMAT))
}

/// One change of offset: from `at` (UTC, whole seconds) on, `to` applies instead of `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Transition {
    at: i64,
    from: TzOffset,
    to: TzOffset,
}

/// Appends the `VTIMEZONE` of `tz` covering every one of `instants` that is written in local
/// time: every transition from Jan 1 of the earliest year to Dec 31 of the latest, plus the
/// observance already in effect on that Jan 1 (the last transition before it, or, if the zone
/// did not change in the year before, a constant observance from 1970).
fn vtimezone(tz: Tz, instants: impl Iterator<Item = DateTime<Utc>>, lines: &mut Vec<String>) {
    // Years in UTC, clamped to the local-time window; a day's margin on each side below covers
    // the zone's local new year, which may fall on either side of UTC's.
    let (lo_year, hi_year) = instants
        .map(|t| t.year().clamp(*LOCAL_YEARS.start(), *LOCAL_YEARS.end()))
        .fold((i32::MAX, i32::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo_year, hi_year) = if lo_year > hi_year {
        // No instants at all: describe the zone around 1970.
        (1970, 1970)
    } else {
        (lo_year, hi_year)
    };
    let day = Duration::days(1).num_seconds();
    let span_start = jan_first(lo_year) - day;
    let span_end = jan_first(hi_year + 1) + day;
    // A year back finds the observance in effect at span_start in any zone that changes
    // yearly; a zone that did not change in that year has had one offset all along.
    let lookback = jan_first(lo_year - 1) - day;

    let found = transitions(tz, lookback, span_end);
    let in_effect = found.iter().rev().find(|t| t.at < span_start).copied();
    lines.push("BEGIN:VTIMEZONE".to_owned());
    lines.push(format!("TZID:{}", tz.name()));
    match in_effect {
        Some(t) => observance(&t, lines),
        None => {
            let offset = offset_at(tz, span_start);
            let local_onset = NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .unwrap_or_default();
            let lookback_local = local_time(lookback, offset);
            observance_lines(local_onset.min(lookback_local), offset, offset, lines);
        }
    }
    for t in found.iter().filter(|t| t.at >= span_start) {
        observance(t, lines);
    }
    lines.push("END:VTIMEZONE".to_owned());
}

fn observance(t: &Transition, lines: &mut Vec<String>) {
    // RFC 5545 §3.6.5: an observance's DTSTART is the onset in the local time before it.
    observance_lines(local_time(t.at, t.from), t.from, t.to, lines);
}

fn observance_lines(onset: NaiveDateTime, from: TzOffset, to: TzOffset, lines: &mut Vec<String>) {
    // DAYLIGHT only for a positive DST part: tzdb's negative "DST" (Europe/Dublin's winter)
    // is standard time to every reader of iCalendar.
    let kind = if to.dst_offset() > Duration::zero() {
        "DAYLIGHT"
    } else {
        "STANDARD"
    };
    lines.push(format!("BEGIN:{kind}"));
    lines.push(format!("DTSTART:{}", onset.format(LOCAL_FORMAT)));
    lines.push(format!("TZOFFSETFROM:{}", utc_offset(from)));
    lines.push(format!("TZOFFSETTO:{}", utc_offset(to)));
    let name = to
        .abbreviation()
        .map_or_else(|| numeric_name(to), escape_text);
    lines.push(format!("TZNAME:{name}"));
    lines.push(format!("END:{kind}"));
}

/// Every change of `tz`'s offset (total offset, DST part or abbreviation) in `[from, to]`.
fn transitions(tz: Tz, from: i64, to: i64) -> Vec<Transition> {
    let mut found = Vec::new();
    let mut lo = from;
    let mut lo_offset = offset_at(tz, lo);
    while lo < to {
        let hi = (lo + SCAN_STEP_SECS).min(to);
        if offset_at(tz, hi) == lo_offset {
            lo = hi;
            continue;
        }
        // Bisect to the first second with another offset: offset(a) == lo_offset != offset(b).
        let (mut a, mut b) = (lo, hi);
        while b - a > 1 {
            let mid = a + (b - a) / 2;
            if offset_at(tz, mid) == lo_offset {
                a = mid;
            } else {
                b = mid;
            }
        }
        let to_offset = offset_at(tz, b);
        if visible_change(lo_offset, to_offset) {
            found.push(Transition {
                at: b,
                from: lo_offset,
                to: to_offset,
            });
        }
        // Continue from b, not hi: a second transition may lie in the same step.
        lo = b;
        lo_offset = to_offset;
    }
    found
}

/// Whether iCalendar can tell the two offsets apart (tzdb also splits spans where only the
/// base/DST split changes, which no observance property expresses).
fn visible_change(a: TzOffset, b: TzOffset) -> bool {
    a.fix() != b.fix()
        || (a.dst_offset() > Duration::zero()) != (b.dst_offset() > Duration::zero())
        || a.abbreviation() != b.abbreviation()
}

fn offset_at(tz: Tz, unix_secs: i64) -> TzOffset {
    // Callers stay within LOCAL_YEARS (± two years), always representable; the epoch is only
    // a fallback that keeps this total.
    let at = DateTime::from_timestamp(unix_secs, 0).unwrap_or_default();
    tz.offset_from_utc_datetime(&at.naive_utc())
}

fn local_time(unix_secs: i64, offset: TzOffset) -> NaiveDateTime {
    let at = DateTime::from_timestamp(unix_secs, 0).unwrap_or_default();
    at.naive_utc() + Duration::seconds(i64::from(offset.fix().local_minus_utc()))
}

fn jan_first(year: i32) -> i64 {
    NaiveDate::from_ymd_opt(year, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default()
        .and_utc()
        .timestamp()
}

/// `±HHMM`, or `±HHMMSS` for the odd historical offset with seconds (RFC 5545 §3.3.14).
fn utc_offset(offset: TzOffset) -> String {
    let (sign, h, m, s) = offset_parts(offset);
    if s == 0 {
        format!("{sign}{h:02}{m:02}")
    } else {
        format!("{sign}{h:02}{m:02}{s:02}")
    }
}

/// The name tzdb gives zones without an abbreviation (`%z`: `+11`, `+1030`), which chrono-tz
/// leaves out; zoneinfo and dateutil show the same.
fn numeric_name(offset: TzOffset) -> String {
    match offset_parts(offset) {
        (sign, h, 0, 0) => format!("{sign}{h:02}"),
        (sign, h, m, 0) => format!("{sign}{h:02}{m:02}"),
        (sign, h, m, s) => format!("{sign}{h:02}{m:02}{s:02}"),
    }
}

fn offset_parts(offset: TzOffset) -> (char, u32, u32, u32) {
    let secs = offset.fix().local_minus_utc();
    let sign = if secs < 0 { '-' } else { '+' };
    let secs = secs.unsigned_abs();
    (sign, secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use chrono_tz::{America, Australia, Europe};

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn event(start: DateTime<Utc>, minutes: i64, status: EventStatus) -> FeedEvent {
        FeedEvent {
            uid: uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0),
            start,
            end: start + Duration::minutes(minutes),
            status,
            summary: "Telehealth visit".into(),
            sequence: 2,
            last_modified: utc(2026, 1, 2, 3, 4),
        }
    }

    fn feed(tz: Tz, events: Vec<FeedEvent>) -> Feed {
        Feed {
            name: "carehub appointments".into(),
            tz,
            events,
        }
    }

    /// Content lines: the feed unfolded and split at CRLF.
    fn unfolded(ics: &str) -> Vec<String> {
        ics.replace("\r\n ", "")
            .split("\r\n")
            .map(str::to_owned)
            .collect()
    }

    /// The observances of the feed's VTIMEZONE as (kind, DTSTART, FROM, TO, NAME).
    fn observances(ics: &str) -> Vec<[String; 5]> {
        let lines = unfolded(ics);
        let mut out = Vec::new();
        let mut cur: Option<[String; 5]> = None;
        for l in lines {
            if l == "BEGIN:STANDARD" || l == "BEGIN:DAYLIGHT" {
                cur = Some(Default::default());
                cur.as_mut().unwrap()[0] = l["BEGIN:".len()..].to_owned();
            } else if l.starts_with("END:STANDARD") || l.starts_with("END:DAYLIGHT") {
                out.push(cur.take().unwrap());
            } else if let Some(c) = cur.as_mut() {
                let (k, v) = l.split_once(':').unwrap();
                let i = match k {
                    "DTSTART" => 1,
                    "TZOFFSETFROM" => 2,
                    "TZOFFSETTO" => 3,
                    "TZNAME" => 4,
                    other => panic!("unexpected {other}"),
                };
                c[i] = v.to_owned();
            }
        }
        out
    }

    fn obs(kind: &str, start: &str, from: &str, to: &str, name: &str) -> [String; 5] {
        [kind, start, from, to, name].map(str::to_owned)
    }

    #[test]
    fn every_line_ends_with_crlf_and_fits_75_octets() {
        let mut e = event(utc(2026, 3, 8, 14, 0), 30, EventStatus::Confirmed);
        e.summary = "Télésanté, suivi; très long résumé ".repeat(12);
        let ics = render(&feed(America::New_York, vec![e]), utc(2026, 3, 1, 0, 0));
        assert!(ics.ends_with("\r\n"));
        for (i, b) in ics.bytes().enumerate() {
            if b == b'\n' {
                assert_eq!(ics.as_bytes()[i - 1], b'\r', "bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(ics.as_bytes()[i + 1], b'\n', "bare CR at {i}");
            }
        }
        let body = ics.strip_suffix("\r\n").unwrap();
        for line in body.split("\r\n") {
            assert!(line.len() <= 75, "{} octets: {line}", line.len());
        }
        assert!(body.split("\r\n").any(|l| l.starts_with(' ')), "folded");
        assert!(unfolded(&ics).contains(&format!(
            "SUMMARY:{}",
            escape_text(&"Télésanté, suivi; très long résumé ".repeat(12))
        )));
    }

    #[test]
    fn folding_never_splits_a_character_and_unfolds_to_the_original() {
        for prefix in ["", "S", "SU", "SUMMARY:"] {
            let line = format!("{prefix}{}", "é".repeat(200));
            let folded = fold(&line);
            for physical in folded.split("\r\n") {
                // Every piece is a whole &str (split would panic mid-character otherwise),
                // and within the limit.
                assert!(physical.len() <= 75);
            }
            // Continuation pieces start with exactly one space, then content.
            let pieces: Vec<&str> = folded.split("\r\n").collect();
            assert!(pieces.len() > 1);
            for p in &pieces[1..] {
                assert!(p.starts_with(' ') && !p.starts_with("  "));
            }
            // The first line uses the room it has: adding the next character would overflow.
            assert!(pieces[0].len() + 2 > 75);
            assert_eq!(folded.replace("\r\n ", ""), line);
        }
        let four_byte = "🩺".repeat(40);
        assert_eq!(fold(&four_byte).replace("\r\n ", ""), four_byte);
        assert!(fold(&four_byte).split("\r\n").all(|l| l.len() <= 75));
        assert_eq!(fold(""), "");
        let exact = "x".repeat(75);
        assert_eq!(fold(&exact), exact);
        assert_eq!(fold(&"x".repeat(76)), format!("{exact}\r\n x"));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape_text("a\\b;c,d\ne\r\nf\rg:\"h\"\u{0}\ti"),
            "a\\\\b\\;c\\,d\\ne\\nf\\ng:\"h\"\ti"
        );
        let mut f = feed(Europe::Berlin, vec![]);
        f.name = "Dr. A; B, C\nclinic".into();
        let ics = render(&f, utc(2026, 5, 1, 0, 0));
        assert!(ics.contains("X-WR-CALNAME:Dr. A\\; B\\, C\\nclinic\r\n"));
    }

    #[test]
    fn calendar_header_and_event_properties() {
        let start = utc(2026, 3, 8, 14, 0);
        let e = event(start, 45, EventStatus::Tentative);
        let ics = render(&feed(America::New_York, vec![e]), utc(2026, 2, 1, 9, 30));
        let lines = unfolded(&ics);
        assert_eq!(
            &lines[..7],
            [
                "BEGIN:VCALENDAR",
                "PRODID:-//carehub//scheduling//EN",
                "VERSION:2.0",
                "CALSCALE:GREGORIAN",
                "METHOD:PUBLISH",
                "X-WR-CALNAME:carehub appointments",
                "X-WR-TIMEZONE:America/New_York",
            ]
        );
        let vevent: Vec<&str> = lines
            .iter()
            .map(String::as_str)
            .skip_while(|l| *l != "BEGIN:VEVENT")
            .collect();
        assert_eq!(
            vevent,
            [
                "BEGIN:VEVENT",
                "UID:12345678-9abc-def0-1234-56789abcdef0@carehub",
                "DTSTAMP:20260201T093000Z",
                // 14:00 UTC on the day DST starts is 10:00 EDT.
                "DTSTART;TZID=America/New_York:20260308T100000",
                "DTEND;TZID=America/New_York:20260308T104500",
                "SUMMARY:Telehealth visit",
                "STATUS:TENTATIVE",
                "SEQUENCE:2",
                "LAST-MODIFIED:20260102T030400Z",
                "END:VEVENT",
                "END:VCALENDAR",
                "",
            ]
        );
    }

    #[test]
    fn a_cancelled_event_says_so() {
        let e = event(utc(2026, 6, 1, 12, 0), 30, EventStatus::Cancelled);
        let ics = render(&feed(Europe::Berlin, vec![e]), utc(2026, 5, 1, 0, 0));
        assert!(ics.contains("\r\nSTATUS:CANCELLED\r\n"));
        // Summer in Berlin: UTC+2.
        assert!(ics.contains("\r\nDTSTART;TZID=Europe/Berlin:20260601T140000\r\n"));
        assert!(ics.contains("\r\nDTEND;TZID=Europe/Berlin:20260601T143000\r\n"));
    }

    #[test]
    fn new_york_2026_has_both_transitions() {
        let e = event(utc(2026, 7, 1, 12, 0), 30, EventStatus::Confirmed);
        let ics = render(&feed(America::New_York, vec![e]), utc(2026, 6, 1, 0, 0));
        assert!(ics.contains("\r\nBEGIN:VTIMEZONE\r\nTZID:America/New_York\r\n"));
        assert_eq!(
            observances(&ics),
            [
                // In effect on Jan 1: the transition of Nov 2025.
                obs("STANDARD", "20251102T020000", "-0400", "-0500", "EST"),
                obs("DAYLIGHT", "20260308T020000", "-0500", "-0400", "EDT"),
                obs("STANDARD", "20261101T020000", "-0400", "-0500", "EST"),
            ]
        );
    }

    #[test]
    fn berlin_transitions_over_two_years() {
        let a = event(utc(2026, 3, 29, 1, 0), 60, EventStatus::Confirmed);
        let b = event(utc(2027, 10, 31, 0, 30), 60, EventStatus::Confirmed);
        let ics = render(&feed(Europe::Berlin, vec![a, b]), utc(2026, 1, 10, 0, 0));
        assert_eq!(
            observances(&ics),
            [
                obs("STANDARD", "20251026T030000", "+0200", "+0100", "CET"),
                obs("DAYLIGHT", "20260329T020000", "+0100", "+0200", "CEST"),
                obs("STANDARD", "20261025T030000", "+0200", "+0100", "CET"),
                obs("DAYLIGHT", "20270328T020000", "+0100", "+0200", "CEST"),
                obs("STANDARD", "20271031T030000", "+0200", "+0100", "CET"),
            ]
        );
        // 01:00 UTC on 2026-03-29 is 03:00 CEST, the first hour after the gap.
        assert!(ics.contains("DTSTART;TZID=Europe/Berlin:20260329T030000\r\n"));
    }

    #[test]
    fn lord_howe_half_hour_shifts() {
        let e = event(utc(2026, 4, 4, 14, 45), 60, EventStatus::Confirmed);
        let ics = render(&feed(Australia::Lord_Howe, vec![e]), utc(2026, 3, 1, 0, 0));
        assert_eq!(
            observances(&ics),
            [
                // tzdb has no abbreviations for Lord Howe: numeric names, as zoneinfo shows.
                obs("DAYLIGHT", "20251005T020000", "+1030", "+1100", "+11"),
                obs("STANDARD", "20260405T020000", "+1100", "+1030", "+1030"),
                obs("DAYLIGHT", "20261004T020000", "+1030", "+1100", "+11"),
            ]
        );
        // 14:45 UTC is 01:45 +11, the first occurrence of the repeated half hour 01:30-02:00;
        // an hour later it is 02:15 +1030.
        assert!(ics.contains("DTSTART;TZID=Australia/Lord_Howe:20260405T014500\r\n"));
        assert!(ics.contains("DTEND;TZID=Australia/Lord_Howe:20260405T021500\r\n"));
        // 15:00 UTC is 01:30 +1030, the second 01:30 of the night.
        let e = event(utc(2026, 4, 4, 15, 0), 60, EventStatus::Confirmed);
        let ics = render(&feed(Australia::Lord_Howe, vec![e]), utc(2026, 3, 1, 0, 0));
        assert!(ics.contains("\r\nDTSTART:20260404T150000Z\r\n"));
    }

    #[test]
    fn second_occurrence_of_a_repeated_local_time_is_written_in_utc() {
        // 2026-11-01 01:30 happens twice in New York: 05:30 UTC (EDT) and 06:30 UTC (EST).
        let first = event(utc(2026, 11, 1, 5, 30), 30, EventStatus::Confirmed);
        let second = event(utc(2026, 11, 1, 6, 30), 30, EventStatus::Confirmed);
        let ics = render(
            &feed(America::New_York, vec![first]),
            utc(2026, 10, 1, 0, 0),
        );
        assert!(ics.contains("DTSTART;TZID=America/New_York:20261101T013000\r\n"));
        // Its end, 06:00 UTC, is 01:00 EST: the second 01:00 of the night.
        assert!(ics.contains("\r\nDTEND:20261101T060000Z\r\n"));
        let ics = render(
            &feed(America::New_York, vec![second]),
            utc(2026, 10, 1, 0, 0),
        );
        assert!(ics.contains("\r\nDTSTART:20261101T063000Z\r\n"));
        assert!(ics.contains("\r\nDTEND;TZID=America/New_York:20261101T020000\r\n"));
    }

    #[test]
    fn zones_without_transitions_get_one_constant_observance() {
        for tz in [Tz::UTC, Tz::Etc__UTC, chrono_tz::Asia::Tokyo] {
            let e = event(utc(2026, 7, 1, 12, 0), 30, EventStatus::Confirmed);
            let ics = render(&feed(tz, vec![e]), utc(2026, 6, 1, 0, 0));
            let o = observances(&ics);
            assert_eq!(o.len(), 1, "{tz}: {o:?}");
            assert_eq!(o[0][0], "STANDARD");
            assert_eq!(o[0][1], "19700101T000000");
            assert_eq!(o[0][2], o[0][3]);
        }
    }

    #[test]
    fn instants_outside_the_zone_tables_years_are_written_in_utc() {
        let far = event(utc(2150, 7, 1, 12, 0), 30, EventStatus::Confirmed);
        let ics = render(&feed(America::New_York, vec![far]), utc(2026, 6, 1, 0, 0));
        assert!(ics.contains("\r\nDTSTART:21500701T120000Z\r\n"));
        // The scan stops at 2099 whatever the dates.
        assert!(observances(&ics).len() < 300);
    }

    #[test]
    fn offsets_with_seconds_and_negative_sign() {
        let lmt =
            Tz::America__New_York.offset_from_utc_datetime(&utc(1880, 1, 1, 0, 0).naive_utc());
        assert_eq!(utc_offset(lmt), "-045602");
        let ist =
            chrono_tz::Asia::Kolkata.offset_from_utc_datetime(&utc(2026, 1, 1, 0, 0).naive_utc());
        assert_eq!(utc_offset(ist), "+0530");
    }
}
