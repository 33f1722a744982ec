//! Login throttling policy (pure): exponential delay after repeated consecutive failures, an
//! hourly cap per account, and a per-minute cap per source address. The counters live in
//! `login_throttle`. An attempt is counted before it is checked: it reserves its place in the
//! counters (as if it failed) and sets the lock its failure would cause, before its password
//! is verified; a correct password gives the place back. So a burst of concurrent guesses
//! gets no more password checks than the policy allows, and every guess that arrives while a
//! lock is in force is refused unchecked.

use chrono::{DateTime, Duration, Utc};

/// Length of an account's failure window.
pub const ACCOUNT_WINDOW_SECS: i64 = 3600;
/// Length of a source address's failure window.
pub const SOURCE_WINDOW_SECS: i64 = 60;

/// The knobs, from the identity settings.
#[derive(Clone, Copy, Debug)]
pub struct ThrottlePolicy {
    pub free_attempts: u32,
    pub max_delay_secs: u64,
    pub max_failures_per_hour: u32,
    pub max_failures_per_source_per_minute: u32,
}

/// Counters of one key right after an attempt reserved its place.
#[derive(Clone, Copy, Debug)]
pub struct Counters {
    pub consecutive_failures: i32,
    pub window_start: DateTime<Utc>,
    pub window_failures: i32,
}

impl ThrottlePolicy {
    /// Delay imposed after `consecutive` consecutive failures: none for the first
    /// `free_attempts`, then 1 s, 2 s, 4 s, ... capped at `max_delay_secs`.
    pub fn consecutive_delay(&self, consecutive: i32) -> Option<Duration> {
        let n = u32::try_from(consecutive).ok()?;
        if n < self.free_attempts.max(1) {
            return None;
        }
        let exp = n - self.free_attempts;
        let secs = if exp >= 63 { u64::MAX } else { 1u64 << exp };
        let secs = secs.min(self.max_delay_secs).max(1);
        Some(Duration::seconds(
            i64::try_from(secs).unwrap_or(i64::MAX / 1000),
        ))
    }

    /// Until when an account is locked after a failure that left it with `c` (set when the
    /// attempt reserves its place, so that concurrent guesses are refused while it runs).
    pub fn account_lock(&self, c: &Counters, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let delay = self
            .consecutive_delay(c.consecutive_failures)
            .map(|d| now + d);
        let hourly = (c.window_failures >= cap(self.max_failures_per_hour))
            .then(|| c.window_start + Duration::seconds(ACCOUNT_WINDOW_SECS));
        later(delay, hourly)
    }

    /// Until when a source is throttled after a failure that left it with `c`: once
    /// `max_failures_per_source_per_minute` attempts of the minute are spent, the rest of the
    /// minute is refused unchecked.
    pub fn source_lock(&self, c: &Counters) -> Option<DateTime<Utc>> {
        (c.window_failures >= cap(self.max_failures_per_source_per_minute))
            .then(|| c.window_start + Duration::seconds(SOURCE_WINDOW_SECS))
    }
}

fn cap(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn later(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// How long a client must wait for a lock ending at `until` (at least one second).
pub fn retry_after(until: DateTime<Utc>, now: DateTime<Utc>) -> std::time::Duration {
    let ms = (until - now).num_milliseconds().max(0);
    let secs = u64::try_from((ms + 999) / 1000).unwrap_or(1).max(1);
    std::time::Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            free_attempts: 5,
            max_delay_secs: 900,
            max_failures_per_hour: 100,
            max_failures_per_source_per_minute: 300,
        }
    }

    #[test]
    fn exponential_delay() {
        let p = policy();
        for n in 0..5 {
            assert_eq!(p.consecutive_delay(n), None, "n={n}");
        }
        assert_eq!(p.consecutive_delay(5), Some(Duration::seconds(1)));
        assert_eq!(p.consecutive_delay(6), Some(Duration::seconds(2)));
        assert_eq!(p.consecutive_delay(9), Some(Duration::seconds(16)));
        assert_eq!(p.consecutive_delay(15), Some(Duration::seconds(900)));
        assert_eq!(p.consecutive_delay(500), Some(Duration::seconds(900)));
        assert_eq!(p.consecutive_delay(-1), None);
    }

    #[test]
    fn an_unbounded_delay_saturates_at_the_longest_duration() {
        // No cap on the delay: past 2^62 s the delay is the longest chrono can hold, not a
        // wrapped or tiny one.
        let p = ThrottlePolicy {
            max_delay_secs: u64::MAX,
            ..policy()
        };
        let longest = Duration::seconds(i64::MAX / 1000);
        assert_eq!(p.consecutive_delay(5 + 63), Some(longest));
        assert_eq!(p.consecutive_delay(5 + 200), Some(longest));
        assert_eq!(
            p.consecutive_delay(5 + 20),
            Some(Duration::seconds(1 << 20))
        );
    }

    #[test]
    fn hourly_cap_locks_until_window_end() {
        let p = ThrottlePolicy {
            free_attempts: 1000,
            ..policy()
        };
        let now = Utc::now();
        let start = now - Duration::minutes(10);
        let c = Counters {
            consecutive_failures: 3,
            window_start: start,
            window_failures: 99,
        };
        assert_eq!(p.account_lock(&c, now), None);
        let c = Counters {
            window_failures: 100,
            ..c
        };
        assert_eq!(p.account_lock(&c, now), Some(start + Duration::hours(1)));
        // The later of the two locks wins.
        let p = policy();
        let c = Counters {
            consecutive_failures: 20,
            window_start: now - Duration::minutes(59),
            window_failures: 100,
        };
        assert_eq!(p.account_lock(&c, now), Some(now + Duration::seconds(900)));
    }

    #[test]
    fn source_cap_and_retry() {
        let p = ThrottlePolicy {
            max_failures_per_source_per_minute: 3,
            ..policy()
        };
        let now = Utc::now();
        let c = Counters {
            consecutive_failures: 0,
            window_start: now,
            window_failures: 2,
        };
        assert_eq!(p.source_lock(&c), None);
        let c = Counters {
            window_failures: 3,
            ..c
        };
        assert_eq!(p.source_lock(&c), Some(now + Duration::seconds(60)));
        assert_eq!(
            retry_after(now + Duration::milliseconds(1500), now).as_secs(),
            2
        );
        assert_eq!(retry_after(now - Duration::seconds(5), now).as_secs(), 1);
    }
}
