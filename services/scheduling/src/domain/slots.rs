//! Weekly availability in the provider's zone, turned into bookable slots.
//!
//! A provider describes availability as wall-clock windows per weekday ("Mondays 09:00–17:00")
//! in their IANA zone, plus dated exceptions stored as instants (time off, extra hours). Slots
//! are instants; they are computed by turning each window into instants *date by date* in the
//! provider's zone, never by adding fixed 24-hour days to one instant (which is what makes
//! afternoon slots drift an hour on daylight-saving days).
//!
//! Daylight-saving rules, applied to every local time a window names:
//!
//! - **Gap (spring forward)**: a local time the clocks skip (New York 02:30 on 2026-03-08,
//!   Lord Howe 02:15 on 2026-10-04) resolves to the first valid local instant after it, i.e.
//!   the end of the gap (03:00 EDT, 02:30 +11:00). Gap ends are found minute by minute, up to
//!   three hours ahead. A window that spans the gap is as much shorter that day in real time;
//!   no slot starts at a skipped local time.
//! - **Overlap (fall back)**: a local time that happens twice (New York 01:30 on 2026-11-01)
//!   is the *earlier* instant when it starts a window and the *later* instant when it ends one.
//!   A window that spans the repeated hour is therefore an hour (Lord Howe: 30 minutes) longer
//!   that day and is one interval, never two copies; both readings of a repeated local time can
//!   carry a slot, each at its own instant.
//!
//! Slot alignment: slots within an open interval start at its start and follow each other
//! every `duration + buffer` minutes of real time. Open intervals are split at the provider's
//! local midnights before slots are laid out, so each local day is aligned from its own first
//! open minute and a slot never runs across the provider's midnight. That keeps the slots a
//! query returns independent of where the query range starts, and makes a round-the-clock
//! availability give one slot per real hour of each day (23 or 25 on transition days).

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, SecondsFormat, TimeDelta, TimeZone,
    Utc, Weekday,
};
use chrono_tz::Tz;
use std::fmt;
use uuid::Uuid;

/// Real transitions are at most an hour or two long; three hours leaves room for the odd
/// historical double shift without making a bad lookup expensive.
const GAP_SEARCH_MINUTES: i64 = 180;

const MINUTES_PER_DAY: u16 = 24 * 60;

/// A wall-clock time of day in minutes, 0..=1440 (1440 = 24:00, only as an end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalTime(u16);

impl LocalTime {
    /// 00:00.
    pub const MIDNIGHT: LocalTime = LocalTime(0);
    /// 24:00, the end of the day (only meaningful as a window end).
    pub const END_OF_DAY: LocalTime = LocalTime(MINUTES_PER_DAY);

    /// `None` if out of range; 24:00 is allowed (as an end of day), 24:01 is not.
    pub fn new(hours: u32, minutes: u32) -> Option<LocalTime> {
        if minutes >= 60 {
            return None;
        }
        LocalTime::from_total_minutes(hours.checked_mul(60)?.checked_add(minutes)?)
    }

    /// From minutes since midnight (how the store keeps it); `None` above 1440.
    pub fn from_total_minutes(total: u32) -> Option<LocalTime> {
        let total = u16::try_from(total).ok()?;
        (total <= MINUTES_PER_DAY).then_some(LocalTime(total))
    }

    pub fn hours(self) -> u32 {
        u32::from(self.0) / 60
    }

    pub fn minutes(self) -> u32 {
        u32::from(self.0) % 60
    }

    pub fn total_minutes(self) -> u32 {
        u32::from(self.0)
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hours(), self.minutes())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub weekday: Weekday,
    pub start: LocalTime,
    pub end: LocalTime,
    /// Empty: every visit type.
    pub visit_types: Vec<Uuid>,
}

impl Window {
    fn applies_to(&self, visit_type: Uuid) -> bool {
        self.visit_types.is_empty() || self.visit_types.contains(&visit_type)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionKind {
    TimeOff,
    ExtraHours,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub kind: ExceptionKind,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A provider's rules.
#[derive(Clone, Debug)]
pub struct Availability {
    pub tz: Tz,
    pub windows: Vec<Window>,
    pub exceptions: Vec<Exception>,
}

/// What is being booked.
#[derive(Clone, Copy, Debug)]
pub struct VisitShape {
    pub id: Uuid,
    pub duration_minutes: u32,
    pub buffer_minutes: u32,
}

/// An instant interval [start, end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Validation for windows of one provider: each start < end, windows of one weekday do not
/// overlap; returns (index, reason) for each bad window.
///
/// Both windows of an overlapping pair are reported, so the caller can point at each of them.
/// Windows that touch (12:00 end, 12:00 start) do not overlap.
pub fn check_windows(windows: &[Window]) -> Vec<(usize, &'static str)> {
    let mut bad = Vec::new();
    for (i, w) in windows.iter().enumerate() {
        if w.start >= w.end {
            bad.push((i, "start must be before end"));
            continue;
        }
        let overlaps = windows.iter().enumerate().any(|(j, other)| {
            j != i
                && other.weekday == w.weekday
                && other.start < other.end
                && other.start < w.end
                && w.start < other.end
        });
        if overlaps {
            bad.push((i, "overlaps another window on the same weekday"));
        }
    }
    bad
}

/// The instants the provider is available for `visit` within [from, to): each window turned
/// into instants date by date in `tz` (see the module docs for gaps and repeated hours),
/// windows whose `visit_types` is non-empty and lacks `visit.id` ignored, then united with
/// ExtraHours exceptions (any visit type), minus TimeOff exceptions; merged, sorted, clipped
/// to [from, to).
pub fn open_intervals(
    av: &Availability,
    visit: &VisitShape,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Interval> {
    if from >= to {
        return Vec::new();
    }
    let (first, last) = local_dates_around(av.tz, from, to);
    open_unclipped(av, visit, first, last)
        .into_iter()
        .filter_map(|iv| {
            let start = iv.start.max(from);
            let end = iv.end.min(to);
            (start < end).then_some(Interval { start, end })
        })
        .collect()
}

/// Bookable slot starts in [from, to), sorted ascending, no duplicates.
///
/// Slots follow each other every `duration + buffer` from the start of each open interval
/// (split at the provider's local midnights, computed over whole local days around the range
/// so alignment does not depend on `from`). A slot's visit must fit in its interval; its buffer
/// may run past it. Slots before `not_before`, and slots whose blocked span
/// [s, s + duration + buffer) overlaps any `busy` interval, are dropped.
pub fn slots(
    av: &Availability,
    visit: &VisitShape,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    not_before: DateTime<Utc>,
    busy: &[Interval],
) -> Vec<DateTime<Utc>> {
    let Some(blocked) =
        minutes(u64::from(visit.duration_minutes) + u64::from(visit.buffer_minutes))
    else {
        return Vec::new();
    };
    let busy = merge(busy.to_vec());
    candidates(av, visit, from, to)
        .into_iter()
        .filter(|&s| s >= not_before)
        .filter(|&s| match s.checked_add_signed(blocked) {
            Some(end) => !overlaps_any(&busy, s, end),
            // A blocked span that runs off the calendar cannot be booked anyway.
            None => false,
        })
        .collect()
}

/// Whether `start` is a slot start the availability offers for `visit`, ignoring what is busy
/// and ignoring not_before (the database's exclusion constraint decides overlaps; the caller
/// checks the past). Same alignment as [`slots`].
pub fn is_offered(av: &Availability, visit: &VisitShape, start: DateTime<Utc>) -> bool {
    let Some(to) = start.checked_add_signed(TimeDelta::seconds(1)) else {
        return false;
    };
    candidates(av, visit, start, to).contains(&start)
}

/// `instant` as RFC 3339 with the zone's offset at that instant, seconds included, e.g.
/// "2026-03-08T10:00:00-04:00" (Lord Howe: "+10:30"/"+11:00").
pub fn local_rfc3339(tz: Tz, instant: DateTime<Utc>) -> String {
    // chrono panics when formatting a local time outside its calendar range; at those
    // (nonsensical) instants UTC is the only rendering that exists.
    if local_naive(tz, instant).is_none() {
        return instant.to_rfc3339_opts(SecondsFormat::Secs, false);
    }
    instant
        .with_timezone(&tz)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// Parses an IANA zone name ("America/New_York"); `None` when unknown, empty, or containing
/// whitespace (which would otherwise be a stored value that only looks like a zone).
pub fn parse_tz(name: &str) -> Option<Tz> {
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return None;
    }
    name.parse::<Tz>().ok()
}

/// Which side of a window a local time is, deciding how a repeated local time resolves.
#[derive(Clone, Copy)]
enum Edge {
    Start,
    End,
}

fn minutes(n: u64) -> Option<TimeDelta> {
    TimeDelta::try_minutes(i64::try_from(n).ok()?)
}

/// The local wall-clock reading of `instant`, or `None` when it falls off chrono's calendar
/// (`DateTime::naive_local` would panic there).
fn local_naive(tz: Tz, instant: DateTime<Utc>) -> Option<NaiveDateTime> {
    let utc = instant.naive_utc();
    let offset = tz.offset_from_utc_datetime(&utc);
    utc.checked_add_offset(chrono::Offset::fix(&offset))
}

fn local_date(tz: Tz, instant: DateTime<Utc>) -> NaiveDate {
    local_naive(tz, instant).map_or_else(|| instant.date_naive(), |n| n.date())
}

/// The local dates whose windows can touch [from, to): one day of margin on each side, since
/// a window of the day before can reach into the range start and alignment needs whole days.
fn local_dates_around(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
    let first = local_date(tz, from);
    let last = local_date(tz, to);
    (
        first.pred_opt().unwrap_or(first),
        last.succ_opt().unwrap_or(last),
    )
}

fn dates(first: NaiveDate, last: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    first.iter_days().take_while(move |d| *d <= last)
}

fn resolve(tz: Tz, local: NaiveDateTime, edge: Edge) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(dt) => Some(dt.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
            Some(match edge {
                Edge::Start => a.min(b),
                Edge::End => a.max(b),
            })
        }
        LocalResult::None => first_after_gap(tz, local),
    }
}

/// The first valid local instant after a skipped local time: the end of the gap. Both a start
/// and an end in the gap land there, so a window lying wholly inside a gap is empty that day.
fn first_after_gap(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    (1..=GAP_SEARCH_MINUTES).find_map(|m| {
        let candidate = local.checked_add_signed(TimeDelta::try_minutes(m)?)?;
        match tz.from_local_datetime(&candidate) {
            LocalResult::Single(dt) => Some(dt.with_timezone(&Utc)),
            LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
            LocalResult::None => None,
        }
    })
}

fn at(date: NaiveDate, time: LocalTime) -> Option<NaiveDateTime> {
    date.and_hms_opt(0, 0, 0)?
        .checked_add_signed(TimeDelta::try_minutes(i64::from(time.0))?)
}

/// Where the provider's local day `date` begins (00:00, or the end of a gap covering it).
fn day_start(tz: Tz, date: NaiveDate) -> Option<DateTime<Utc>> {
    resolve(tz, at(date, LocalTime::MIDNIGHT)?, Edge::Start)
}

fn window_on(tz: Tz, date: NaiveDate, w: &Window) -> Option<Interval> {
    if w.start >= w.end {
        return None;
    }
    let start = resolve(tz, at(date, w.start)?, Edge::Start)?;
    let end = resolve(tz, at(date, w.end)?, Edge::End)?;
    (start < end).then_some(Interval { start, end })
}

/// Open intervals over the local dates `first..=last`, merged, not clipped: exceptions are
/// kept whole so callers can decide what a boundary means.
fn open_unclipped(
    av: &Availability,
    visit: &VisitShape,
    first: NaiveDate,
    last: NaiveDate,
) -> Vec<Interval> {
    let mut open = Vec::new();
    for date in dates(first, last) {
        let weekday = date.weekday();
        open.extend(
            av.windows
                .iter()
                .filter(|w| w.weekday == weekday && w.applies_to(visit.id))
                .filter_map(|w| window_on(av.tz, date, w)),
        );
    }
    let of_kind = |kind: ExceptionKind| {
        av.exceptions
            .iter()
            .filter(move |e| e.kind == kind)
            .map(|e| Interval {
                start: e.start,
                end: e.end,
            })
            .collect::<Vec<_>>()
    };
    open.extend(of_kind(ExceptionKind::ExtraHours));
    subtract(&merge(open), &merge(of_kind(ExceptionKind::TimeOff)))
}

/// Every slot start the rules offer in [from, to), before busy and not_before are applied.
fn candidates(
    av: &Availability,
    visit: &VisitShape,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    // A zero-length visit would never advance through an interval.
    if from >= to || visit.duration_minutes == 0 {
        return Vec::new();
    }
    let (Some(duration), Some(step)) = (
        minutes(u64::from(visit.duration_minutes)),
        minutes(u64::from(visit.duration_minutes) + u64::from(visit.buffer_minutes)),
    ) else {
        return Vec::new();
    };
    let (first, last) = local_dates_around(av.tz, from, to);
    let open = open_unclipped(av, visit, first, last);
    let mut out = Vec::new();
    for date in dates(first, last) {
        let Some(next) = date.succ_opt() else {
            continue;
        };
        let (Some(day_from), Some(day_to)) = (day_start(av.tz, date), day_start(av.tz, next))
        else {
            continue;
        };
        let begin = open.partition_point(|iv| iv.end <= day_from);
        for iv in open[begin..].iter().take_while(|iv| iv.start < day_to) {
            let piece_end = iv.end.min(day_to);
            let mut s = iv.start.max(day_from);
            while s < to {
                match s.checked_add_signed(duration) {
                    Some(visit_end) if visit_end <= piece_end => {}
                    _ => break,
                }
                if s >= from {
                    out.push(s);
                }
                match s.checked_add_signed(step) {
                    Some(n) => s = n,
                    None => break,
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Sorted, non-empty, non-touching intervals covering the same instants.
fn merge(mut intervals: Vec<Interval>) -> Vec<Interval> {
    intervals.retain(|iv| iv.start < iv.end);
    intervals.sort_unstable();
    let mut out: Vec<Interval> = Vec::with_capacity(intervals.len());
    for iv in intervals {
        match out.last_mut() {
            Some(last) if iv.start <= last.end => last.end = last.end.max(iv.end),
            _ => out.push(iv),
        }
    }
    out
}

/// `open` minus `off`, both as returned by [`merge`].
fn subtract(open: &[Interval], off: &[Interval]) -> Vec<Interval> {
    let mut out = Vec::new();
    for iv in open {
        let mut cur = iv.start;
        let begin = off.partition_point(|o| o.end <= cur);
        for o in off[begin..].iter().take_while(|o| o.start < iv.end) {
            if o.start > cur {
                out.push(Interval {
                    start: cur,
                    end: o.start,
                });
            }
            cur = cur.max(o.end);
        }
        if cur < iv.end {
            out.push(Interval {
                start: cur,
                end: iv.end,
            });
        }
    }
    out
}

/// Whether [start, end) meets any interval of `busy` (as returned by [`merge`]).
fn overlaps_any(busy: &[Interval], start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
    let i = busy.partition_point(|b| b.end <= start);
    busy.get(i).is_some_and(|b| b.start < end)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use chrono_tz::America::New_York;
    use chrono_tz::Australia::Lord_Howe;
    use chrono_tz::Europe::Berlin;
    use std::collections::BTreeMap;

    const ALL_DAYS: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().unwrap()
    }

    fn date(y: i32, mo: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, mo, d).unwrap()
    }

    fn lt(h: u32, m: u32) -> LocalTime {
        LocalTime::new(h, m).unwrap()
    }

    fn mins(n: i64) -> TimeDelta {
        TimeDelta::minutes(n)
    }

    fn win(weekday: Weekday, start: (u32, u32), end: (u32, u32)) -> Window {
        Window {
            weekday,
            start: lt(start.0, start.1),
            end: lt(end.0, end.1),
            visit_types: Vec::new(),
        }
    }

    fn on_days(days: &[Weekday], start: (u32, u32), end: (u32, u32)) -> Vec<Window> {
        days.iter().map(|&d| win(d, start, end)).collect()
    }

    fn avail(tz: Tz, windows: Vec<Window>) -> Availability {
        Availability {
            tz,
            windows,
            exceptions: Vec::new(),
        }
    }

    fn visit(duration_minutes: u32, buffer_minutes: u32) -> VisitShape {
        VisitShape {
            id: Uuid::from_u128(0xA),
            duration_minutes,
            buffer_minutes,
        }
    }

    fn free(
        av: &Availability,
        v: &VisitShape,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        slots(av, v, from, to, DateTime::<Utc>::MIN_UTC, &[])
    }

    fn every(first: DateTime<Utc>, step_minutes: i64, count: i64) -> Vec<DateTime<Utc>> {
        (0..count).map(|i| first + mins(step_minutes * i)).collect()
    }

    fn rendered(tz: Tz, instants: &[DateTime<Utc>]) -> Vec<String> {
        instants.iter().map(|&i| local_rfc3339(tz, i)).collect()
    }

    fn assert_steps(instants: &[DateTime<Utc>], step_minutes: i64) {
        for pair in instants.windows(2) {
            assert_eq!(pair[1] - pair[0], mins(step_minutes), "{pair:?}");
        }
    }

    // ---- (a) business hours on transition days -------------------------------------------

    /// A 09:00–17:00 window on a Saturday and the Sunday of a transition: both days show the
    /// same 16 local slots, each at its own day's offset.
    fn business_hours_case(
        tz: Tz,
        saturday: NaiveDate,
        saturday_first: DateTime<Utc>,
        saturday_offset: &str,
        sunday_first: DateTime<Utc>,
        sunday_offset: &str,
    ) {
        let av = avail(tz, on_days(&[Weekday::Sat, Weekday::Sun], (9, 0), (17, 0)));
        let got = free(
            &av,
            &visit(30, 0),
            saturday_first - TimeDelta::days(1),
            sunday_first + TimeDelta::days(1),
        );
        let mut want = every(saturday_first, 30, 16);
        want.extend(every(sunday_first, 30, 16));
        assert_eq!(got, want);

        let sunday = saturday.succ_opt().unwrap();
        let local = |day: NaiveDate, offset: &str| {
            (0..16)
                .map(|i| {
                    let m = 9 * 60 + 30 * i;
                    format!("{day}T{:02}:{:02}:00{offset}", m / 60, m % 60)
                })
                .collect::<Vec<_>>()
        };
        let mut want_local = local(saturday, saturday_offset);
        want_local.extend(local(sunday, sunday_offset));
        assert_eq!(rendered(tz, &got), want_local);
    }

    #[test]
    fn business_hours_new_york_spring_forward() {
        // 09:00 EST = 14:00Z; 09:00 EDT = 13:00Z (Cal.com's "afternoon an hour late" bug
        // would put Sunday at 14:00Z).
        business_hours_case(
            New_York,
            date(2026, 3, 7),
            utc(2026, 3, 7, 14, 0),
            "-05:00",
            utc(2026, 3, 8, 13, 0),
            "-04:00",
        );
        let av = avail(New_York, on_days(&[Weekday::Sun], (9, 0), (17, 0)));
        let day = free(
            &av,
            &visit(30, 0),
            utc(2026, 3, 8, 0, 0),
            utc(2026, 3, 9, 0, 0),
        );
        assert_eq!(day.last(), Some(&utc(2026, 3, 8, 20, 30)));
    }

    #[test]
    fn business_hours_new_york_fall_back() {
        business_hours_case(
            New_York,
            date(2026, 10, 31),
            utc(2026, 10, 31, 13, 0),
            "-04:00",
            utc(2026, 11, 1, 14, 0),
            "-05:00",
        );
    }

    #[test]
    fn business_hours_berlin_spring_forward() {
        business_hours_case(
            Berlin,
            date(2026, 3, 28),
            utc(2026, 3, 28, 8, 0),
            "+01:00",
            utc(2026, 3, 29, 7, 0),
            "+02:00",
        );
    }

    #[test]
    fn business_hours_berlin_fall_back() {
        business_hours_case(
            Berlin,
            date(2026, 10, 24),
            utc(2026, 10, 24, 7, 0),
            "+02:00",
            utc(2026, 10, 25, 8, 0),
            "+01:00",
        );
    }

    #[test]
    fn business_hours_lord_howe_dst_starts() {
        // 09:00 +10:30 = 22:30Z the day before; 09:00 +11:00 = 22:00Z the day before.
        business_hours_case(
            Lord_Howe,
            date(2026, 10, 3),
            utc(2026, 10, 2, 22, 30),
            "+10:30",
            utc(2026, 10, 3, 22, 0),
            "+11:00",
        );
    }

    #[test]
    fn business_hours_lord_howe_dst_ends() {
        business_hours_case(
            Lord_Howe,
            date(2026, 4, 4),
            utc(2026, 4, 3, 22, 0),
            "+11:00",
            utc(2026, 4, 4, 22, 30),
            "+10:30",
        );
    }

    // ---- (b) a night window spanning the transition -------------------------------------

    /// A Sunday 00:00–06:00 window with 30-minute visits on the transition Sunday.
    fn night_case(tz: Tz, sunday: NaiveDate, first: DateTime<Utc>, want_local: &[&str]) {
        let av = avail(tz, on_days(&[Weekday::Sun], (0, 0), (6, 0)));
        let v = visit(30, 0);
        let from = first - TimeDelta::days(1);
        let to = first + TimeDelta::days(2);
        let got = free(&av, &v, from, to);
        let want_local: Vec<String> = want_local
            .iter()
            .map(|hm| format!("{sunday}T{hm}"))
            .collect();
        assert_eq!(rendered(tz, &got), want_local);
        // Exactly one slot per real half hour: no instant doubled, none missing.
        assert_eq!(got, every(first, 30, want_local.len() as i64));
        assert_steps(&got, 30);
        // And the window is one interval, as long as the day's real clock allows.
        let open = open_intervals(&av, &v, from, to);
        assert_eq!(
            open,
            vec![Interval {
                start: first,
                end: first + mins(30 * want_local.len() as i64),
            }]
        );
        for s in &got {
            assert!(is_offered(&av, &v, *s), "{s}");
        }
    }

    #[test]
    fn night_window_new_york_spring_forward() {
        // 00:00 EST = 05:00Z .. 06:00 EDT = 10:00Z: five real hours, no 02:xx.
        night_case(
            New_York,
            date(2026, 3, 8),
            utc(2026, 3, 8, 5, 0),
            &[
                "00:00:00-05:00",
                "00:30:00-05:00",
                "01:00:00-05:00",
                "01:30:00-05:00",
                "03:00:00-04:00",
                "03:30:00-04:00",
                "04:00:00-04:00",
                "04:30:00-04:00",
                "05:00:00-04:00",
                "05:30:00-04:00",
            ],
        );
    }

    #[test]
    fn night_window_new_york_fall_back() {
        // 00:00 EDT = 04:00Z .. 06:00 EST = 11:00Z: seven real hours; 01:00 EDT (05:00Z) and
        // 01:00 EST (06:00Z) both appear.
        night_case(
            New_York,
            date(2026, 11, 1),
            utc(2026, 11, 1, 4, 0),
            &[
                "00:00:00-04:00",
                "00:30:00-04:00",
                "01:00:00-04:00",
                "01:30:00-04:00",
                "01:00:00-05:00",
                "01:30:00-05:00",
                "02:00:00-05:00",
                "02:30:00-05:00",
                "03:00:00-05:00",
                "03:30:00-05:00",
                "04:00:00-05:00",
                "04:30:00-05:00",
                "05:00:00-05:00",
                "05:30:00-05:00",
            ],
        );
        let av = avail(New_York, on_days(&[Weekday::Sun], (0, 0), (6, 0)));
        let got = free(
            &av,
            &visit(30, 0),
            utc(2026, 11, 1, 0, 0),
            utc(2026, 11, 2, 0, 0),
        );
        assert!(got.contains(&utc(2026, 11, 1, 5, 0)));
        assert!(got.contains(&utc(2026, 11, 1, 6, 0)));
    }

    #[test]
    fn night_window_berlin_spring_forward() {
        // 00:00 CET = 23:00Z (Saturday) .. 06:00 CEST = 04:00Z.
        night_case(
            Berlin,
            date(2026, 3, 29),
            utc(2026, 3, 28, 23, 0),
            &[
                "00:00:00+01:00",
                "00:30:00+01:00",
                "01:00:00+01:00",
                "01:30:00+01:00",
                "03:00:00+02:00",
                "03:30:00+02:00",
                "04:00:00+02:00",
                "04:30:00+02:00",
                "05:00:00+02:00",
                "05:30:00+02:00",
            ],
        );
    }

    #[test]
    fn night_window_berlin_fall_back() {
        // 00:00 CEST = 22:00Z (Saturday) .. 06:00 CET = 05:00Z; 02:xx happens twice.
        night_case(
            Berlin,
            date(2026, 10, 25),
            utc(2026, 10, 24, 22, 0),
            &[
                "00:00:00+02:00",
                "00:30:00+02:00",
                "01:00:00+02:00",
                "01:30:00+02:00",
                "02:00:00+02:00",
                "02:30:00+02:00",
                "02:00:00+01:00",
                "02:30:00+01:00",
                "03:00:00+01:00",
                "03:30:00+01:00",
                "04:00:00+01:00",
                "04:30:00+01:00",
                "05:00:00+01:00",
                "05:30:00+01:00",
            ],
        );
    }

    #[test]
    fn night_window_lord_howe_dst_starts() {
        // 00:00 +10:30 = 13:30Z (Saturday) .. 06:00 +11:00 = 19:00Z: 5.5 real hours, 02:00
        // and 02:15 do not exist, 02:30 does.
        night_case(
            Lord_Howe,
            date(2026, 10, 4),
            utc(2026, 10, 3, 13, 30),
            &[
                "00:00:00+10:30",
                "00:30:00+10:30",
                "01:00:00+10:30",
                "01:30:00+10:30",
                "02:30:00+11:00",
                "03:00:00+11:00",
                "03:30:00+11:00",
                "04:00:00+11:00",
                "04:30:00+11:00",
                "05:00:00+11:00",
                "05:30:00+11:00",
            ],
        );
    }

    #[test]
    fn night_window_lord_howe_dst_ends() {
        // 00:00 +11:00 = 13:00Z (Saturday) .. 06:00 +10:30 = 19:30Z: 6.5 real hours; only
        // 01:30 repeats.
        night_case(
            Lord_Howe,
            date(2026, 4, 5),
            utc(2026, 4, 4, 13, 0),
            &[
                "00:00:00+11:00",
                "00:30:00+11:00",
                "01:00:00+11:00",
                "01:30:00+11:00",
                "01:30:00+10:30",
                "02:00:00+10:30",
                "02:30:00+10:30",
                "03:00:00+10:30",
                "03:30:00+10:30",
                "04:00:00+10:30",
                "04:30:00+10:30",
                "05:00:00+10:30",
                "05:30:00+10:30",
            ],
        );
    }

    // ---- (c) local times inside a gap or a repeated hour ---------------------------------

    fn sunday_window(tz: Tz, start: (u32, u32), end: (u32, u32)) -> Availability {
        avail(tz, on_days(&[Weekday::Sun], start, end))
    }

    #[test]
    fn gap_start_new_york_starts_at_end_of_gap() {
        let av = sunday_window(New_York, (2, 30), (4, 0));
        let (from, to) = (utc(2026, 3, 7, 0, 0), utc(2026, 3, 10, 0, 0));
        // 03:00 EDT = 07:00Z .. 04:00 EDT = 08:00Z.
        assert_eq!(
            open_intervals(&av, &visit(30, 0), from, to),
            vec![Interval {
                start: utc(2026, 3, 8, 7, 0),
                end: utc(2026, 3, 8, 8, 0)
            }]
        );
        let got = free(&av, &visit(30, 0), from, to);
        assert_eq!(got, vec![utc(2026, 3, 8, 7, 0), utc(2026, 3, 8, 7, 30)]);
        assert_eq!(
            rendered(New_York, &got),
            ["2026-03-08T03:00:00-04:00", "2026-03-08T03:30:00-04:00"]
        );
        // A week later the same window starts at 02:30 EDT.
        let later = free(
            &av,
            &visit(30, 0),
            utc(2026, 3, 14, 0, 0),
            utc(2026, 3, 17, 0, 0),
        );
        assert_eq!(later[0], utc(2026, 3, 15, 6, 30));
    }

    #[test]
    fn gap_start_berlin_starts_at_end_of_gap() {
        let av = sunday_window(Berlin, (2, 30), (4, 0));
        let got = free(
            &av,
            &visit(30, 0),
            utc(2026, 3, 28, 0, 0),
            utc(2026, 3, 30, 0, 0),
        );
        // 03:00 CEST = 01:00Z.
        assert_eq!(got, vec![utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 30)]);
        assert_eq!(local_rfc3339(Berlin, got[0]), "2026-03-29T03:00:00+02:00");
    }

    #[test]
    fn gap_start_lord_howe_starts_at_end_of_half_hour_gap() {
        let av = sunday_window(Lord_Howe, (2, 15), (4, 0));
        let got = free(
            &av,
            &visit(30, 0),
            utc(2026, 10, 2, 0, 0),
            utc(2026, 10, 5, 0, 0),
        );
        // 02:30 +11:00 = 15:30Z .. 04:00 +11:00 = 17:00Z.
        assert_eq!(
            got,
            vec![
                utc(2026, 10, 3, 15, 30),
                utc(2026, 10, 3, 16, 0),
                utc(2026, 10, 3, 16, 30)
            ]
        );
        assert_eq!(
            local_rfc3339(Lord_Howe, got[0]),
            "2026-10-04T02:30:00+11:00"
        );
    }

    #[test]
    fn gap_end_ends_window_at_end_of_gap() {
        // 00:00-02:30 on the spring-forward day: 02:30 does not exist, the window runs to
        // 03:00 EDT (07:00Z), two real hours.
        let av = sunday_window(New_York, (0, 0), (2, 30));
        let open = open_intervals(
            &av,
            &visit(30, 0),
            utc(2026, 3, 7, 0, 0),
            utc(2026, 3, 10, 0, 0),
        );
        assert_eq!(
            open,
            vec![Interval {
                start: utc(2026, 3, 8, 5, 0),
                end: utc(2026, 3, 8, 7, 0)
            }]
        );
    }

    #[test]
    fn gap_end_is_found_to_the_minute() {
        // 02:59 NY and 02:29 Lord Howe are one minute before their gaps end.
        let ny = sunday_window(New_York, (2, 59), (4, 0));
        let open = open_intervals(
            &ny,
            &visit(30, 0),
            utc(2026, 3, 7, 0, 0),
            utc(2026, 3, 10, 0, 0),
        );
        assert_eq!(open[0].start, utc(2026, 3, 8, 7, 0));
        let lh = sunday_window(Lord_Howe, (2, 29), (4, 0));
        let open = open_intervals(
            &lh,
            &visit(30, 0),
            utc(2026, 10, 2, 0, 0),
            utc(2026, 10, 5, 0, 0),
        );
        assert_eq!(open[0].start, utc(2026, 10, 3, 15, 30));
    }

    #[test]
    fn repeated_end_is_the_later_instant() {
        // 00:00-01:30 on the fall-back day ends at 01:30 EST (06:30Z), not 01:30 EDT: 2.5
        // real hours, slots through 01:00 EST.
        let av = sunday_window(New_York, (0, 0), (1, 30));
        let v = visit(30, 0);
        let (from, to) = (utc(2026, 10, 31, 0, 0), utc(2026, 11, 3, 0, 0));
        assert_eq!(
            open_intervals(&av, &v, from, to),
            vec![Interval {
                start: utc(2026, 11, 1, 4, 0),
                end: utc(2026, 11, 1, 6, 30)
            }]
        );
        assert_eq!(
            rendered(New_York, &free(&av, &v, from, to)),
            [
                "2026-11-01T00:00:00-04:00",
                "2026-11-01T00:30:00-04:00",
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T01:00:00-05:00",
            ]
        );
        // Lord Howe: 00:00-01:45 ends at 01:45 +10:30 (15:15Z), not 01:45 +11:00 (14:45Z).
        let lh = sunday_window(Lord_Howe, (0, 0), (1, 45));
        let open = open_intervals(&lh, &v, utc(2026, 4, 3, 0, 0), utc(2026, 4, 6, 0, 0));
        assert_eq!(
            open,
            vec![Interval {
                start: utc(2026, 4, 4, 13, 0),
                end: utc(2026, 4, 4, 15, 15)
            }]
        );
    }

    #[test]
    fn window_inside_gap_is_empty_that_day() {
        let av = sunday_window(New_York, (2, 0), (2, 45));
        let v = visit(15, 0);
        assert!(open_intervals(&av, &v, utc(2026, 3, 7, 0, 0), utc(2026, 3, 10, 0, 0)).is_empty());
        assert!(free(&av, &v, utc(2026, 3, 7, 0, 0), utc(2026, 3, 10, 0, 0)).is_empty());
        // It exists on ordinary Sundays.
        assert_eq!(
            free(&av, &v, utc(2026, 3, 14, 0, 0), utc(2026, 3, 17, 0, 0)).len(),
            3
        );
    }

    #[test]
    fn repeated_hour_start_is_earlier_and_end_is_later() {
        // 01:00-02:00 on the fall-back day: 01:00 EDT (05:00Z) .. 02:00 EST (07:00Z).
        let av = sunday_window(New_York, (1, 0), (2, 0));
        let v = visit(60, 0);
        let (from, to) = (utc(2026, 10, 31, 0, 0), utc(2026, 11, 3, 0, 0));
        assert_eq!(
            open_intervals(&av, &v, from, to),
            vec![Interval {
                start: utc(2026, 11, 1, 5, 0),
                end: utc(2026, 11, 1, 7, 0)
            }]
        );
        assert_eq!(
            rendered(New_York, &free(&av, &v, from, to)),
            ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00"]
        );
    }

    // ---- patient time ------------------------------------------------------------------

    #[test]
    fn patient_time_when_dst_rules_differ() {
        let av = avail(Berlin, on_days(&[Weekday::Mon], (9, 0), (10, 0)));
        let v = visit(60, 0);
        let mondays = free(&av, &v, utc(2026, 3, 1, 0, 0), utc(2026, 4, 1, 0, 0));
        // Berlin 09:00 is CET until 2026-03-29, CEST after; New York switched on 03-08.
        assert_eq!(
            mondays,
            vec![
                utc(2026, 3, 2, 8, 0),
                utc(2026, 3, 9, 8, 0),
                utc(2026, 3, 16, 8, 0),
                utc(2026, 3, 23, 8, 0),
                utc(2026, 3, 30, 7, 0),
            ]
        );
        assert_eq!(
            rendered(Berlin, &mondays),
            [
                "2026-03-02T09:00:00+01:00",
                "2026-03-09T09:00:00+01:00",
                "2026-03-16T09:00:00+01:00",
                "2026-03-23T09:00:00+01:00",
                "2026-03-30T09:00:00+02:00",
            ]
        );
        // The patient's view moves by an hour for three weeks, then back.
        assert_eq!(
            rendered(New_York, &mondays),
            [
                "2026-03-02T03:00:00-05:00",
                "2026-03-09T04:00:00-04:00",
                "2026-03-16T04:00:00-04:00",
                "2026-03-23T04:00:00-04:00",
                "2026-03-30T03:00:00-04:00",
            ]
        );
    }

    #[test]
    fn lord_howe_rendering_uses_half_hour_offsets() {
        let av = avail(Lord_Howe, on_days(&ALL_DAYS, (9, 0), (10, 0)));
        let v = visit(60, 0);
        let june = free(&av, &v, utc(2026, 6, 14, 12, 0), utc(2026, 6, 15, 12, 0));
        // 09:00 +10:30 on 06-15 = 22:30Z on 06-14.
        assert_eq!(june, vec![utc(2026, 6, 14, 22, 30)]);
        assert_eq!(
            local_rfc3339(Lord_Howe, june[0]),
            "2026-06-15T09:00:00+10:30"
        );
        assert_eq!(
            local_rfc3339(New_York, june[0]),
            "2026-06-14T18:30:00-04:00"
        );
        let december = free(&av, &v, utc(2026, 11, 30, 12, 0), utc(2026, 12, 1, 12, 0));
        assert_eq!(december, vec![utc(2026, 11, 30, 22, 0)]);
        assert_eq!(
            local_rfc3339(Lord_Howe, december[0]),
            "2026-12-01T09:00:00+11:00"
        );
    }

    #[test]
    fn local_rfc3339_formats() {
        assert_eq!(
            local_rfc3339(New_York, utc(2026, 3, 8, 14, 0)),
            "2026-03-08T10:00:00-04:00"
        );
        assert_eq!(
            local_rfc3339(chrono_tz::UTC, utc(2026, 3, 8, 14, 0)),
            "2026-03-08T14:00:00+00:00"
        );
        // Sub-second precision is dropped, not rounded.
        let odd = utc(2026, 3, 8, 14, 0) + TimeDelta::milliseconds(999);
        assert_eq!(local_rfc3339(Berlin, odd), "2026-03-08T15:00:00+01:00");
        // Off chrono's calendar in local time: rendered in UTC rather than panicking.
        let s = local_rfc3339(New_York, DateTime::<Utc>::MIN_UTC);
        assert!(s.ends_with("+00:00"), "{s}");
    }

    // ---- exceptions, busy, visit types -------------------------------------------------

    fn weekday_9_to_17() -> Availability {
        avail(New_York, on_days(&ALL_DAYS[..5], (9, 0), (17, 0)))
    }

    /// Wednesday 2026-06-10 in New York (EDT, 09:00 = 13:00Z).
    fn june_10() -> (DateTime<Utc>, DateTime<Utc>) {
        (utc(2026, 6, 10, 4, 0), utc(2026, 6, 11, 4, 0))
    }

    #[test]
    fn time_off_removes_slots() {
        let mut av = weekday_9_to_17();
        av.exceptions.push(Exception {
            kind: ExceptionKind::TimeOff,
            start: utc(2026, 6, 10, 16, 0), // 12:00 EDT
            end: utc(2026, 6, 10, 17, 0),
        });
        let (from, to) = june_10();
        let got = free(&av, &visit(30, 0), from, to);
        assert_eq!(got.len(), 14);
        assert!(!got.contains(&utc(2026, 6, 10, 16, 0)));
        assert!(!got.contains(&utc(2026, 6, 10, 16, 30)));
        assert!(got.contains(&utc(2026, 6, 10, 15, 30)));
        assert!(got.contains(&utc(2026, 6, 10, 17, 0)));
        // A whole day off.
        av.exceptions.push(Exception {
            kind: ExceptionKind::TimeOff,
            start: from,
            end: to,
        });
        assert!(free(&av, &visit(30, 0), from, to).is_empty());
    }

    #[test]
    fn time_off_realigns_the_rest_of_the_interval() {
        // The open interval after time off starts at 09:10, and slots follow from there.
        let mut av = weekday_9_to_17();
        av.exceptions.push(Exception {
            kind: ExceptionKind::TimeOff,
            start: utc(2026, 6, 10, 13, 0),
            end: utc(2026, 6, 10, 13, 10),
        });
        let (from, to) = june_10();
        assert_eq!(
            open_intervals(&av, &visit(30, 0), from, to),
            vec![Interval {
                start: utc(2026, 6, 10, 13, 10),
                end: utc(2026, 6, 10, 21, 0)
            }]
        );
        let got = free(&av, &visit(30, 0), from, to);
        assert_eq!(got[0], utc(2026, 6, 10, 13, 10));
        assert_eq!(got.last(), Some(&utc(2026, 6, 10, 20, 10)));
        assert_eq!(got.len(), 15);
    }

    #[test]
    fn extra_hours_add_slots_for_any_visit_type() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let mut av = avail(
            New_York,
            vec![Window {
                visit_types: vec![a],
                ..win(Weekday::Wed, (9, 0), (12, 0))
            }],
        );
        // Saturday 2026-06-13 10:00-12:00 EDT, and Wednesday 12:00-13:00 right after the window.
        av.exceptions.push(Exception {
            kind: ExceptionKind::ExtraHours,
            start: utc(2026, 6, 13, 14, 0),
            end: utc(2026, 6, 13, 16, 0),
        });
        av.exceptions.push(Exception {
            kind: ExceptionKind::ExtraHours,
            start: utc(2026, 6, 10, 16, 0),
            end: utc(2026, 6, 10, 17, 0),
        });
        let (from, to) = (utc(2026, 6, 8, 0, 0), utc(2026, 6, 15, 0, 0));
        let va = VisitShape {
            id: a,
            ..visit(60, 0)
        };
        let vb = VisitShape {
            id: b,
            ..visit(60, 0)
        };
        // Type a: the window and the adjacent extra hour form one interval 09:00-13:00.
        assert_eq!(
            free(&av, &va, from, to),
            vec![
                utc(2026, 6, 10, 13, 0),
                utc(2026, 6, 10, 14, 0),
                utc(2026, 6, 10, 15, 0),
                utc(2026, 6, 10, 16, 0),
                utc(2026, 6, 13, 14, 0),
                utc(2026, 6, 13, 15, 0),
            ]
        );
        // Type b: the restricted window does not apply, extra hours do.
        assert_eq!(
            free(&av, &vb, from, to),
            vec![
                utc(2026, 6, 10, 16, 0),
                utc(2026, 6, 13, 14, 0),
                utc(2026, 6, 13, 15, 0)
            ]
        );
        assert!(is_offered(&av, &vb, utc(2026, 6, 13, 14, 0)));
        assert!(!is_offered(&av, &vb, utc(2026, 6, 10, 13, 0)));
    }

    #[test]
    fn time_off_wins_over_extra_hours() {
        let mut av = avail(New_York, Vec::new());
        av.exceptions = vec![
            Exception {
                kind: ExceptionKind::TimeOff,
                start: utc(2026, 6, 13, 14, 0),
                end: utc(2026, 6, 13, 15, 0),
            },
            Exception {
                kind: ExceptionKind::ExtraHours,
                start: utc(2026, 6, 13, 14, 0),
                end: utc(2026, 6, 13, 16, 0),
            },
        ];
        let got = free(
            &av,
            &visit(60, 0),
            utc(2026, 6, 13, 0, 0),
            utc(2026, 6, 14, 0, 0),
        );
        assert_eq!(got, vec![utc(2026, 6, 13, 15, 0)]);
    }

    #[test]
    fn busy_intervals_remove_overlapping_slots_including_buffer() {
        let av = weekday_9_to_17();
        let v = visit(30, 10); // step 40: 13:00Z, 13:40Z, 14:20Z, 15:00Z, ...
        let (from, to) = june_10();
        let all = free(&av, &v, from, to);
        assert_eq!(all[..4], every(utc(2026, 6, 10, 13, 0), 40, 4)[..]);
        let busy = [
            // Unsorted and overlapping on purpose.
            Interval {
                start: utc(2026, 6, 10, 15, 10),
                end: utc(2026, 6, 10, 15, 20),
            },
            // Only the buffer of the 13:00Z slot (13:30-13:40) meets this one.
            Interval {
                start: utc(2026, 6, 10, 13, 35),
                end: utc(2026, 6, 10, 13, 40),
            },
            Interval {
                start: utc(2026, 6, 10, 15, 0),
                end: utc(2026, 6, 10, 15, 15),
            },
            // Ends exactly where 15:40Z's blocked span begins: touching is not overlapping.
            Interval {
                start: utc(2026, 6, 10, 15, 39),
                end: utc(2026, 6, 10, 15, 40),
            },
            // Empty intervals block nothing.
            Interval {
                start: utc(2026, 6, 10, 17, 0),
                end: utc(2026, 6, 10, 17, 0),
            },
        ];
        let got = slots(&av, &v, from, to, DateTime::<Utc>::MIN_UTC, &busy);
        let dropped: Vec<_> = all.iter().filter(|s| !got.contains(s)).copied().collect();
        assert_eq!(
            dropped,
            vec![utc(2026, 6, 10, 13, 0), utc(2026, 6, 10, 15, 0)]
        );
        // 14:20Z's blocked span 14:20-15:00 touches the busy 15:00 without overlapping.
        assert!(got.contains(&utc(2026, 6, 10, 14, 20)));
        assert!(got.contains(&utc(2026, 6, 10, 15, 40)));
        // Busy does not matter to is_offered.
        assert!(is_offered(&av, &v, utc(2026, 6, 10, 13, 0)));
    }

    #[test]
    fn buffer_may_run_past_the_interval() {
        let av = avail(New_York, on_days(&[Weekday::Wed], (9, 0), (10, 0)));
        let (from, to) = june_10();
        // Step 35: 09:00 and 09:35 (visit ends at 10:00, buffer to 10:10).
        assert_eq!(
            free(&av, &visit(25, 10), from, to),
            vec![utc(2026, 6, 10, 13, 0), utc(2026, 6, 10, 13, 35)]
        );
        // The visit itself must fit: 09:45 would end at 10:15.
        assert_eq!(
            free(&av, &visit(30, 15), from, to),
            vec![utc(2026, 6, 10, 13, 0)]
        );
        assert!(free(&av, &visit(61, 0), from, to).is_empty());
    }

    #[test]
    fn visit_type_restricted_windows() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let av = avail(
            New_York,
            vec![
                Window {
                    visit_types: vec![a],
                    ..win(Weekday::Wed, (9, 0), (10, 0))
                },
                Window {
                    visit_types: vec![a, b],
                    ..win(Weekday::Wed, (10, 0), (11, 0))
                },
                win(Weekday::Wed, (14, 0), (15, 0)),
            ],
        );
        let (from, to) = june_10();
        let of = |id: Uuid| free(&av, &VisitShape { id, ..visit(60, 0) }, from, to);
        assert_eq!(
            of(a),
            vec![
                utc(2026, 6, 10, 13, 0),
                utc(2026, 6, 10, 14, 0),
                utc(2026, 6, 10, 18, 0)
            ]
        );
        assert_eq!(
            of(b),
            vec![utc(2026, 6, 10, 14, 0), utc(2026, 6, 10, 18, 0)]
        );
        assert_eq!(of(Uuid::from_u128(3)), vec![utc(2026, 6, 10, 18, 0)]);
    }

    #[test]
    fn check_windows_reports_bad_windows() {
        let windows = vec![
            win(Weekday::Mon, (9, 0), (12, 0)),
            win(Weekday::Mon, (12, 0), (17, 0)), // touches, fine
            win(Weekday::Mon, (16, 0), (18, 0)), // overlaps the one above
            win(Weekday::Tue, (10, 0), (10, 0)), // empty
            win(Weekday::Tue, (11, 0), (9, 0)),  // backwards
            win(Weekday::Wed, (9, 0), (17, 0)),  // same hours, other day, fine
            win(Weekday::Thu, (0, 0), (24, 0)),  // whole day, fine
        ];
        assert_eq!(
            check_windows(&windows),
            vec![
                (1, "overlaps another window on the same weekday"),
                (2, "overlaps another window on the same weekday"),
                (3, "start must be before end"),
                (4, "start must be before end"),
            ]
        );
        assert!(check_windows(&[]).is_empty());
        // Overlap is overlap whatever the visit types.
        let typed = vec![
            Window {
                visit_types: vec![Uuid::from_u128(1)],
                ..win(Weekday::Fri, (9, 0), (10, 0))
            },
            Window {
                visit_types: vec![Uuid::from_u128(2)],
                ..win(Weekday::Fri, (9, 30), (11, 0))
            },
        ];
        assert_eq!(check_windows(&typed).len(), 2);
    }

    #[test]
    fn is_offered_matches_generated_starts() {
        let av = weekday_9_to_17();
        let v = visit(45, 15);
        let (from, to) = june_10();
        let all = free(&av, &v, from, to);
        assert_eq!(all, every(utc(2026, 6, 10, 13, 0), 60, 8));
        for s in &all {
            assert!(is_offered(&av, &v, *s));
            assert!(!is_offered(&av, &v, *s + mins(1)));
            assert!(!is_offered(&av, &v, *s + mins(30)));
            assert!(!is_offered(&av, &v, *s + TimeDelta::seconds(1)));
        }
        // 17:00 is the window end, 16:45 would not fit; Saturday has no window.
        assert!(!is_offered(&av, &v, utc(2026, 6, 10, 21, 0)));
        assert!(!is_offered(&av, &v, utc(2026, 6, 13, 13, 0)));
        // The past is the caller's concern.
        assert!(is_offered(&av, &v, utc(2020, 6, 10, 13, 0)));
        // Across a transition too.
        let night = sunday_window(New_York, (0, 0), (6, 0));
        assert!(is_offered(&night, &visit(30, 0), utc(2026, 11, 1, 6, 0)));
        assert!(!is_offered(&night, &visit(30, 0), utc(2026, 11, 1, 6, 15)));
    }

    #[test]
    fn not_before_drops_past_slots() {
        let av = weekday_9_to_17();
        let (from, to) = june_10();
        let now = utc(2026, 6, 10, 15, 10);
        let got = slots(&av, &visit(30, 0), from, to, now, &[]);
        assert_eq!(got[0], utc(2026, 6, 10, 15, 30));
        assert_eq!(got.len(), 11);
        // A slot starting exactly at not_before is kept.
        let got = slots(&av, &visit(30, 0), from, to, utc(2026, 6, 10, 15, 0), &[]);
        assert_eq!(got[0], utc(2026, 6, 10, 15, 0));
    }

    #[test]
    fn end_of_day_window() {
        let av = avail(New_York, on_days(&[Weekday::Wed], (20, 0), (24, 0)));
        let (from, to) = (utc(2026, 6, 10, 0, 0), utc(2026, 6, 12, 0, 0));
        let got = free(&av, &visit(60, 0), from, to);
        // 20:00 EDT = 00:00Z on the 11th; the window ends at Thursday 00:00 EDT = 04:00Z.
        assert_eq!(got, every(utc(2026, 6, 11, 0, 0), 60, 4));
        assert_eq!(
            open_intervals(&av, &visit(60, 0), from, to),
            vec![Interval {
                start: utc(2026, 6, 11, 0, 0),
                end: utc(2026, 6, 11, 4, 0)
            }]
        );
    }

    #[test]
    fn slots_never_cross_the_providers_midnight() {
        // A night shift over two days: one open interval, but each day aligned on its own.
        let av = avail(
            New_York,
            vec![
                win(Weekday::Tue, (22, 0), (24, 0)),
                win(Weekday::Wed, (0, 0), (2, 0)),
            ],
        );
        let v = visit(90, 0);
        let (from, to) = (utc(2026, 6, 9, 0, 0), utc(2026, 6, 12, 0, 0));
        assert_eq!(
            open_intervals(&av, &v, from, to),
            vec![Interval {
                start: utc(2026, 6, 10, 2, 0),
                end: utc(2026, 6, 10, 6, 0)
            }]
        );
        // 22:00, then 00:00 (not 23:30, which would run into Wednesday).
        assert_eq!(
            free(&av, &v, from, to),
            vec![utc(2026, 6, 10, 2, 0), utc(2026, 6, 10, 4, 0)]
        );
    }

    #[test]
    fn alignment_does_not_depend_on_from() {
        let mut av = avail(Lord_Howe, on_days(&ALL_DAYS, (0, 0), (24, 0)));
        av.exceptions.push(Exception {
            kind: ExceptionKind::ExtraHours,
            start: utc(2026, 4, 1, 0, 0),
            end: utc(2026, 4, 9, 0, 0),
        });
        let v = visit(50, 5);
        let (from, to) = (utc(2026, 4, 2, 0, 0), utc(2026, 4, 8, 0, 0));
        let all = free(&av, &v, from, to);
        assert!(!all.is_empty());
        for k in 0..300 {
            let later = from + mins(k * 17);
            let got = free(&av, &v, later, to);
            let want: Vec<_> = all.iter().copied().filter(|s| *s >= later).collect();
            assert_eq!(got, want, "from {later}");
        }
    }

    #[test]
    fn open_intervals_merge_and_clip() {
        let mut av = avail(
            Berlin,
            vec![
                win(Weekday::Wed, (9, 0), (12, 0)),
                win(Weekday::Wed, (12, 0), (17, 0)),
            ],
        );
        av.exceptions.push(Exception {
            kind: ExceptionKind::TimeOff,
            start: utc(2026, 6, 10, 11, 0), // 13:00 CEST
            end: utc(2026, 6, 10, 11, 30),
        });
        let v = visit(30, 0);
        // Touching windows merge; time off splits; the range clips.
        assert_eq!(
            open_intervals(&av, &v, utc(2026, 6, 10, 8, 0), utc(2026, 6, 10, 14, 0)),
            vec![
                Interval {
                    start: utc(2026, 6, 10, 8, 0),
                    end: utc(2026, 6, 10, 11, 0)
                },
                Interval {
                    start: utc(2026, 6, 10, 11, 30),
                    end: utc(2026, 6, 10, 14, 0)
                },
            ]
        );
        assert!(
            open_intervals(&av, &v, utc(2026, 6, 10, 14, 0), utc(2026, 6, 10, 8, 0)).is_empty()
        );
        assert!(free(&av, &v, utc(2026, 6, 10, 14, 0), utc(2026, 6, 10, 14, 0)).is_empty());
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let av = weekday_9_to_17();
        let (from, to) = june_10();
        assert!(free(&av, &visit(0, 0), from, to).is_empty());
        assert!(!is_offered(&av, &visit(0, 10), utc(2026, 6, 10, 13, 0)));
        assert!(free(&av, &visit(u32::MAX, u32::MAX), from, to).is_empty());
        let max = DateTime::<Utc>::MAX_UTC;
        let min = DateTime::<Utc>::MIN_UTC;
        assert!(!is_offered(&av, &visit(30, 0), max));
        assert!(!is_offered(&av, &visit(30, 0), min));
        // At the ends of chrono's calendar, whatever exists is fine; panicking is not.
        let _ = free(&av, &visit(30, 0), max - TimeDelta::days(3), max);
        let _ = free(&av, &visit(30, 0), min, min + TimeDelta::days(3));
        let _ = open_intervals(&av, &visit(30, 0), max - TimeDelta::days(3), max);
        let _ = open_intervals(&av, &visit(30, 0), min, min + TimeDelta::days(3));
        let lh = avail(Lord_Howe, on_days(&ALL_DAYS, (0, 0), (24, 0)));
        let _ = free(&lh, &visit(30, 0), max - TimeDelta::days(3), max);
        let _ = free(&lh, &visit(30, 0), min, min + TimeDelta::days(3));
    }

    // ---- the whole year ----------------------------------------------------------------

    /// Round-the-clock availability, 60-minute visits: every local day of 2026 has one slot
    /// per whole real hour of the day, starting at local midnight, exactly 60 minutes apart.
    fn whole_year_case(
        tz: Tz,
        year_start: DateTime<Utc>,
        year_end: DateTime<Utc>,
        special: &[(NaiveDate, usize)],
    ) {
        let av = avail(tz, on_days(&ALL_DAYS, (0, 0), (24, 0)));
        let v = visit(60, 0);
        let all = free(&av, &v, year_start, year_end);
        for pair in all.windows(2) {
            assert!(pair[0] < pair[1], "not strictly increasing: {pair:?}");
        }
        let mut by_day: BTreeMap<NaiveDate, Vec<DateTime<Utc>>> = BTreeMap::new();
        for s in &all {
            by_day
                .entry(s.with_timezone(&tz).date_naive())
                .or_default()
                .push(*s);
        }
        assert_eq!(by_day.len(), 365);
        for (day, day_slots) in &by_day {
            assert_eq!(day.year(), 2026);
            let want = special
                .iter()
                .find(|(d, _)| d == day)
                .map_or(24, |(_, n)| *n);
            assert_eq!(day_slots.len(), want, "{tz} {day}");
            assert_eq!(
                local_rfc3339(tz, day_slots[0])[..19],
                format!("{day}T00:00:00"),
                "{tz} {day}"
            );
            assert_steps(day_slots, 60);
        }
        let expected_total =
            365 * 24 + special.iter().map(|(_, n)| *n).sum::<usize>() - 24 * special.len();
        assert_eq!(all.len(), expected_total);
        // Spot-check is_offered on every slot of the transition days.
        for (day, _) in special {
            for s in &by_day[day] {
                assert!(is_offered(&av, &v, *s), "{tz} {s}");
                assert!(!is_offered(&av, &v, *s + mins(30)), "{tz} {s}");
            }
        }
    }

    #[test]
    fn whole_year_new_york() {
        whole_year_case(
            New_York,
            utc(2026, 1, 1, 5, 0),
            utc(2027, 1, 1, 5, 0),
            &[(date(2026, 3, 8), 23), (date(2026, 11, 1), 25)],
        );
    }

    #[test]
    fn whole_year_berlin() {
        whole_year_case(
            Berlin,
            utc(2025, 12, 31, 23, 0),
            utc(2026, 12, 31, 23, 0),
            &[(date(2026, 3, 29), 23), (date(2026, 10, 25), 25)],
        );
    }

    #[test]
    fn whole_year_lord_howe() {
        // 23.5 and 24.5 real hours: 23 and 24 whole slots.
        whole_year_case(
            Lord_Howe,
            utc(2025, 12, 31, 13, 0),
            utc(2026, 12, 31, 13, 0),
            &[(date(2026, 10, 4), 23), (date(2026, 4, 5), 24)],
        );
    }

    // ---- small pieces ------------------------------------------------------------------

    #[test]
    fn local_time_bounds() {
        assert_eq!(LocalTime::new(0, 0), Some(LocalTime::MIDNIGHT));
        assert_eq!(LocalTime::new(24, 0), Some(LocalTime::END_OF_DAY));
        assert_eq!(LocalTime::new(24, 1), None);
        assert_eq!(LocalTime::new(23, 60), None);
        assert_eq!(LocalTime::new(25, 0), None);
        assert_eq!(LocalTime::new(u32::MAX, 0), None);
        let t = lt(16, 45);
        assert_eq!((t.hours(), t.minutes(), t.total_minutes()), (16, 45, 1005));
        assert_eq!(t.to_string(), "16:45");
        assert_eq!(LocalTime::from_total_minutes(1005), Some(t));
        assert_eq!(LocalTime::from_total_minutes(1441), None);
        assert!(lt(9, 0) < lt(17, 0));
    }

    #[test]
    fn parse_tz_accepts_iana_names_only() {
        assert_eq!(parse_tz("America/New_York"), Some(New_York));
        assert_eq!(parse_tz("Australia/Lord_Howe"), Some(Lord_Howe));
        assert_eq!(parse_tz("UTC"), Some(chrono_tz::UTC));
        assert_eq!(parse_tz(""), None);
        assert_eq!(parse_tz(" America/New_York"), None);
        assert_eq!(parse_tz("America/New_York\n"), None);
        assert_eq!(parse_tz("America/New York"), None);
        assert_eq!(parse_tz("Mars/Olympus_Mons"), None);
    }
}
