//! Scheduling's settings, under `[scheduling]`, on top of the platform's `[server]`.
//!
//! Scheduling's effects on other services go through its outbox (`[server.outbox.targets]`):
//! `records` (the booked provider joins the care team; intake answers), `messaging` (reminders,
//! video visits) and `billing` (appointment events; kept pending until billing is configured).

use carehub_platform::config::{PlatformConfig, Validate};
use serde::{Deserialize, Serialize};

/// The whole configuration of `carehub serve scheduling`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulingConfig {
    pub server: PlatformConfig,
    pub scheduling: SchedulingSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulingSettings {
    /// Envelope encryption of reasons, notes and intake answers.
    pub crypto: carehub_platform::crypto::CryptoConfig,
    /// How long a hold keeps its slot (1..=60 minutes).
    pub hold_minutes: u32,
    /// A cancellation less than this many hours before the start is flagged late (0..=336).
    pub late_cancel_hours: u32,
    /// When reminders go out, in minutes before the start (each 5..=20160, at most 5,
    /// distinct). Default: 24 hours and 1 hour.
    pub reminder_offsets_minutes: Vec<u32>,
    /// How often each replica looks for due reminders and expired holds (100..=60000 ms).
    pub reminder_poll_ms: u64,
    /// Live holds one patient may have at once (1..=20): holds cannot be used to keep a
    /// provider's calendar from everyone else.
    pub max_live_holds: u32,
    /// Upcoming appointments (requested to in progress) one patient may have at once (1..=500).
    pub max_upcoming_appointments: u32,
    /// Open consultation requests one patient may have at once (1..=100): each sits in the
    /// staff's triage queue until accepted or declined.
    pub max_open_consultations: u32,
    /// Live (not revoked) calendar feeds one account may have at once (1..=100): each is a
    /// public URL that serves the account's schedule.
    pub max_live_feeds: u32,
    /// How far ahead a visit may be held or booked (1..=1095 days); searches stop there too.
    pub max_booking_days: u32,
    /// The longest range one slot search covers (1..=31 days).
    pub max_search_days: u32,
    /// The most providers one slot search considers (1..=1000).
    pub max_search_providers: u32,
    /// The public base of calendar feed URLs (`<base>/calendar/<token>.ics`): where the gateway
    /// exposes scheduling's admin-port `/calendar/` route. No trailing slash.
    pub feed_base_url: String,
    /// Calendar feeds carry appointments from this many days back (0..=365).
    pub feed_past_days: u32,
    /// Fetches of one feed a replica serves in a minute (1..=600); more get 429 with
    /// Retry-After. Calendar apps poll every few minutes: this only stops a leaked URL from
    /// being used to load the database, each fetch being a query and an audit event.
    pub feed_fetches_per_minute: u32,
}

impl Default for SchedulingSettings {
    fn default() -> Self {
        Self {
            crypto: carehub_platform::crypto::CryptoConfig::default(),
            hold_minutes: 10,
            late_cancel_hours: 24,
            reminder_offsets_minutes: vec![24 * 60, 60],
            reminder_poll_ms: 1_000,
            max_live_holds: 3,
            max_upcoming_appointments: 20,
            max_open_consultations: 5,
            max_live_feeds: 10,
            max_booking_days: 730,
            max_search_days: 31,
            max_search_providers: 200,
            feed_base_url: "http://127.0.0.1:9054".to_owned(),
            feed_past_days: 30,
            feed_fetches_per_minute: 30,
        }
    }
}

impl Validate for SchedulingConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        self.server.validate(problems);
        let s = &self.scheduling;
        let mut within = |ok: bool, what: &str| {
            if !ok {
                problems.push(format!("scheduling.{what}"));
            }
        };
        within(
            (1..=60).contains(&s.hold_minutes),
            "hold_minutes must be within 1..=60",
        );
        within(
            s.late_cancel_hours <= 336,
            "late_cancel_hours must be at most 336",
        );
        let mut offsets = s.reminder_offsets_minutes.clone();
        offsets.sort_unstable();
        offsets.dedup();
        within(
            offsets.len() == s.reminder_offsets_minutes.len()
                && offsets.len() <= 5
                && offsets.iter().all(|m| (5..=20_160).contains(m)),
            "reminder_offsets_minutes must hold at most 5 distinct values within 5..=20160",
        );
        within(
            (100..=60_000).contains(&s.reminder_poll_ms),
            "reminder_poll_ms must be within 100..=60000",
        );
        within(
            (1..=20).contains(&s.max_live_holds),
            "max_live_holds must be within 1..=20",
        );
        within(
            (1..=500).contains(&s.max_upcoming_appointments),
            "max_upcoming_appointments must be within 1..=500",
        );
        within(
            (1..=100).contains(&s.max_open_consultations),
            "max_open_consultations must be within 1..=100",
        );
        within(
            (1..=100).contains(&s.max_live_feeds),
            "max_live_feeds must be within 1..=100",
        );
        within(
            (1..=600).contains(&s.feed_fetches_per_minute),
            "feed_fetches_per_minute must be within 1..=600",
        );
        within(
            (1..=1095).contains(&s.max_booking_days),
            "max_booking_days must be within 1..=1095",
        );
        within(
            (1..=31).contains(&s.max_search_days),
            "max_search_days must be within 1..=31",
        );
        within(
            (1..=1000).contains(&s.max_search_providers),
            "max_search_providers must be within 1..=1000",
        );
        within(
            (s.feed_base_url.starts_with("https://") || s.feed_base_url.starts_with("http://"))
                && !s.feed_base_url.ends_with('/'),
            "feed_base_url must be an http(s) URL without a trailing slash",
        );
        within(
            s.feed_past_days <= 365,
            "feed_past_days must be at most 365",
        );
        if let Err(e) = s.crypto.validate() {
            problems.push(format!("scheduling.crypto: {e}"));
        }
        if self.server.auth.identity_endpoint.is_none() {
            problems.push(
                "server.auth.identity_endpoint must be set: scheduling verifies identity's tokens \
                 and looks users up there"
                    .to_owned(),
            );
        }
    }
}
