//! Messaging's settings, under `[messaging]`, on top of the platform's `[server]`.
//! Notifications and video visits keep theirs in their own sections
//! (`[messaging.notifications]`, `[messaging.video]`).

mod notifications;
mod video;

pub use notifications::NotificationSettings;
pub use video::VideoSettings;

use carehub_platform::config::{PlatformConfig, Validate};
use serde::{Deserialize, Serialize};

/// The whole configuration of `carehub serve messaging`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagingConfig {
    pub server: PlatformConfig,
    pub messaging: MessagingSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagingSettings {
    /// Envelope encryption of conversations (data-key use limit, reservation batch, key cache).
    pub crypto: carehub_platform::crypto::CryptoConfig,
    /// Records' gRPC endpoint (care teams: who is in a care conversation). Required.
    pub records_endpoint: Option<String>,
    /// How long the sender may retract a message (0..=86400 seconds; 0: never).
    pub retract_window_secs: u32,
    /// How long records' answer about a care team is trusted (1..=300 seconds): the longest a
    /// member who left the team keeps reading, sending or receiving.
    pub care_team_cache_secs: u32,
    /// Events buffered for one live stream (16..=10000); a consumer that lets them pile up
    /// for `slow_consumer_ms` is closed with a resumable position.
    pub stream_buffer: u32,
    /// How long a stream may stay full before it is closed (10..=60000 ms).
    pub slow_consumer_ms: u64,
    /// How often each replica checks the conversations it streams for events a lost
    /// notification did not announce (50..=60000 ms): the longest a lost notification delays
    /// delivery.
    pub catch_up_ms: u64,
    /// Live streams one replica serves at once (1..=100000); more are refused with
    /// UNAVAILABLE and RetryInfo.
    pub max_streams: u32,
    /// How long a message may stay unread before its recipients get a new-message alert
    /// (0..=86400 s); one alert per conversation and recipient until they read it.
    pub new_message_alert_secs: u32,
    /// Attachment uploads served at once (1..=64); more are refused with UNAVAILABLE.
    pub max_concurrent_uploads: u32,
    pub notifications: NotificationSettings,
    pub video: VideoSettings,
}

impl Default for MessagingSettings {
    fn default() -> Self {
        Self {
            crypto: carehub_platform::crypto::CryptoConfig::default(),
            records_endpoint: None,
            retract_window_secs: 300,
            care_team_cache_secs: 5,
            stream_buffer: 256,
            slow_consumer_ms: 5_000,
            catch_up_ms: 1_000,
            max_streams: 10_000,
            max_concurrent_uploads: 4,
            new_message_alert_secs: 60,
            notifications: NotificationSettings::default(),
            video: VideoSettings::default(),
        }
    }
}

impl Validate for MessagingConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        self.server.validate(problems);
        let s = &self.messaging;
        let mut within = |ok: bool, what: &str| {
            if !ok {
                problems.push(format!("messaging.{what}"));
            }
        };
        within(
            s.retract_window_secs <= 86_400,
            "retract_window_secs must be at most 86400",
        );
        within(
            (1..=300).contains(&s.care_team_cache_secs),
            "care_team_cache_secs must be within 1..=300",
        );
        within(
            (16..=10_000).contains(&s.stream_buffer),
            "stream_buffer must be within 16..=10000",
        );
        within(
            (10..=60_000).contains(&s.slow_consumer_ms),
            "slow_consumer_ms must be within 10..=60000",
        );
        within(
            (50..=60_000).contains(&s.catch_up_ms),
            "catch_up_ms must be within 50..=60000",
        );
        within(
            (1..=100_000).contains(&s.max_streams),
            "max_streams must be within 1..=100000",
        );
        within(
            s.new_message_alert_secs <= 86_400,
            "new_message_alert_secs must be at most 86400",
        );
        within(
            (1..=64).contains(&s.max_concurrent_uploads),
            "max_concurrent_uploads must be within 1..=64",
        );
        if let Err(e) = s.crypto.validate() {
            problems.push(format!("messaging.crypto: {e}"));
        }
        if s.records_endpoint.is_none() {
            problems.push(
                "messaging.records_endpoint must be set: care conversations are between a \
                 patient and the care team records keeps"
                    .to_owned(),
            );
        }
        if self.server.auth.identity_endpoint.is_none() {
            problems.push(
                "server.auth.identity_endpoint must be set: messaging verifies identity's tokens \
                 and looks users up there"
                    .to_owned(),
            );
        }
        s.notifications.validate(problems);
        s.video.validate(problems);
    }
}
