//! Quiet hours: no non-urgent notification between the recipient's local `start` and `end`
//! hours (identity's communication preferences), in their own time zone — a reminder due at
//! 02:00 in Chicago waits for the morning there, whatever the server's clock says.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone as _, Timelike as _, Utc};
use chrono_tz::Tz;

/// The recipient's quiet window: local hours `start..end` (wrapping past midnight when
/// `start > end`; none when equal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietHours {
    pub tz: Tz,
    pub start: u32,
    pub end: u32,
}

impl QuietHours {
    /// From identity's values; hours outside 0..=23 mean no quiet hours (never silence a user
    /// because of a value we do not understand), an unknown time zone means UTC.
    pub fn new(time_zone: &str, start: i32, end: i32) -> QuietHours {
        let tz = time_zone.parse::<Tz>().unwrap_or(Tz::UTC);
        let hour = |h: i32| u32::try_from(h).ok().filter(|h| *h <= 23);
        match (hour(start), hour(end)) {
            (Some(start), Some(end)) => QuietHours { tz, start, end },
            _ => QuietHours {
                tz,
                start: 0,
                end: 0,
            },
        }
    }

    fn contains(&self, hour: u32) -> bool {
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Equal => false,
            std::cmp::Ordering::Less => (self.start..self.end).contains(&hour),
            std::cmp::Ordering::Greater => hour >= self.start || hour < self.end,
        }
    }

    /// When a non-urgent notification due at `at` may go: `None` when `at` is outside the
    /// window, else the window's end (local `end`:00 the same or the next day).
    pub fn deferred_until(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.tz);
        if !self.contains(local.hour()) {
            return None;
        }
        let today = local.date_naive();
        let day = if self.start > self.end && local.hour() >= self.start {
            today.succ_opt().unwrap_or(today)
        } else {
            today
        };
        Some(self.local_hour(day, self.end).max(at))
    }

    /// `hour`:00 on `day` in the recipient's zone as an instant. In a DST gap (the hour does
    /// not exist) the first instant after it; in an overlap the earlier one.
    fn local_hour(&self, day: NaiveDate, hour: u32) -> DateTime<Utc> {
        let naive = day.and_time(NaiveTime::from_hms_opt(hour, 0, 0).unwrap_or(NaiveTime::MIN));
        for shift in 0..=3 {
            let candidate = naive + Duration::minutes(30 * shift);
            if let Some(t) = self.tz.from_local_datetime(&candidate).earliest() {
                return t.with_timezone(&Utc);
            }
        }
        // No zone has a gap of two hours; UTC is a sane answer should one appear.
        Utc.from_utc_datetime(&naive)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn overnight_window_in_the_recipients_zone() {
        let q = QuietHours::new("America/Chicago", 22, 7);
        // 02:00 in Chicago (UTC-6 in December): deferred to 07:00 local = 13:00 UTC.
        assert_eq!(
            q.deferred_until(utc("2026-12-08T08:00:00Z")),
            Some(utc("2026-12-08T13:00:00Z"))
        );
        // 23:00 in Chicago: the window ends tomorrow morning.
        assert_eq!(
            q.deferred_until(utc("2026-12-09T05:00:00Z")),
            Some(utc("2026-12-09T13:00:00Z"))
        );
        // 12:00 in Chicago: not quiet, whatever UTC says.
        assert_eq!(q.deferred_until(utc("2026-12-08T18:00:00Z")), None);
        // 07:00 sharp is past the window.
        assert_eq!(q.deferred_until(utc("2026-12-08T13:00:00Z")), None);
    }

    #[test]
    fn same_day_window_and_no_window() {
        let q = QuietHours::new("Europe/Paris", 12, 14);
        assert_eq!(
            q.deferred_until(utc("2026-06-01T10:30:00Z")),
            Some(utc("2026-06-01T12:00:00Z"))
        );
        assert_eq!(q.deferred_until(utc("2026-06-01T09:59:00Z")), None);
        let none = QuietHours::new("Europe/Paris", 9, 9);
        assert_eq!(none.deferred_until(utc("2026-06-01T07:00:00Z")), None);
        let nonsense = QuietHours::new("Nowhere/Else", 25, 3);
        assert_eq!(nonsense.tz, Tz::UTC);
        assert_eq!(nonsense.deferred_until(utc("2026-06-01T01:00:00Z")), None);
    }

    #[test]
    fn dst_gap_ends_at_the_first_real_instant() {
        // 2026-03-08: 02:00 does not exist in New York (clocks go from 02:00 to 03:00).
        let q = QuietHours::new("America/New_York", 23, 2);
        let end = q.deferred_until(utc("2026-03-08T05:30:00Z")).unwrap();
        assert_eq!(end, utc("2026-03-08T07:00:00Z"));
    }
}
