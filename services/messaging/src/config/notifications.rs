//! `[messaging.notifications]`: channels, retries, quiet hours, the SMS webhook.
//!
//! Every channel defaults to its sandbox (it records what would be sent, in memory, and
//! delivers nothing): `carehub up` and the tests need no SMS gateway or mail server, and a
//! deployment has to name its real channels on purpose. Secrets (the Twilio auth token, the
//! SMTP password) are `secrecy` types: never serialized, printed or logged.

use serde::{Deserialize, Serialize};

use crate::notify::settings::{
    ChannelKinds, EmailChannelKind, SmsChannelKind, SmtpSettings, TwilioSettings,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationSettings {
    pub channels: ChannelKinds,
    pub twilio: TwilioSettings,
    pub smtp: SmtpSettings,
    /// Attempts per delivery before it is marked failed (1..=50).
    pub max_attempts: u32,
    /// The first retry's delay (10..=3600000 ms); each further one doubles, with jitter.
    pub backoff_base_ms: u64,
    /// The longest delay between two attempts (1..=86400 s).
    pub backoff_max_secs: u64,
    /// How often each replica looks for due deliveries when nothing woke it (10..=60000 ms).
    pub poll_interval_ms: u64,
    /// Deliveries one replica claims at once (1..=1000).
    pub batch_size: u32,
    /// How long one send may take (100..=120000 ms); a claim is leased for three times that.
    pub send_timeout_ms: u64,
    /// The webhook's URL as Twilio calls it (`https://host/webhooks/twilio/sms`): part of what
    /// the signature covers, which the address seen behind a proxy is not. The webhook is
    /// mounted only when this and `twilio.auth_token` are set.
    pub webhook_public_url: Option<String>,
    /// Messages each sandbox keeps in memory (the oldest are dropped) (1..=100000).
    pub sandbox_capacity: usize,
    /// Development only: a file every sandbox channel also appends what it records to, one
    /// JSON object a line (`channel`, `to`, `subject`, `body`, `notification_id`, `at`), so that
    /// another process can read a verification code (`carehub up` sets
    /// `<data-dir>/messaging/sandbox-outbox.jsonl`; `carehub demo` reads it). An absolute path,
    /// or one relative to the service's working directory, naming a file (not a directory);
    /// created with mode 0600, with its directory, when absent. It holds codes and reset links:
    /// never set it where real people receive messages. Unset (the default): memory only.
    pub sandbox_file: Option<std::path::PathBuf>,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        NotificationSettings {
            channels: ChannelKinds::default(),
            twilio: TwilioSettings::default(),
            smtp: SmtpSettings::default(),
            max_attempts: 6,
            backoff_base_ms: 2_000,
            backoff_max_secs: 900,
            poll_interval_ms: 1_000,
            batch_size: 32,
            send_timeout_ms: 10_000,
            webhook_public_url: None,
            sandbox_capacity: 1_000,
            sandbox_file: None,
        }
    }
}

fn is_http_url(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://"))
        && s.len() > "https://".len()
        && s.bytes().all(|b| b.is_ascii_graphic())
}

impl NotificationSettings {
    pub fn validate(&self, problems: &mut Vec<String>) {
        let mut check = |ok: bool, what: &str| {
            if !ok {
                problems.push(format!("messaging.notifications.{what}"));
            }
        };
        check(
            (1..=50).contains(&self.max_attempts),
            "max_attempts must be within 1..=50",
        );
        check(
            (10..=3_600_000).contains(&self.backoff_base_ms),
            "backoff_base_ms must be within 10..=3600000",
        );
        check(
            (1..=86_400).contains(&self.backoff_max_secs),
            "backoff_max_secs must be within 1..=86400",
        );
        check(
            (10..=60_000).contains(&self.poll_interval_ms),
            "poll_interval_ms must be within 10..=60000",
        );
        check(
            (1..=1_000).contains(&self.batch_size),
            "batch_size must be within 1..=1000",
        );
        check(
            (100..=120_000).contains(&self.send_timeout_ms),
            "send_timeout_ms must be within 100..=120000",
        );
        check(
            (1..=100_000).contains(&self.sandbox_capacity),
            "sandbox_capacity must be within 1..=100000",
        );
        if let Some(path) = &self.sandbox_file {
            check(
                !path.as_os_str().is_empty()
                    && path.file_name().is_some()
                    && !path
                        .as_os_str()
                        .to_string_lossy()
                        .ends_with(std::path::MAIN_SEPARATOR)
                    && !path.is_dir(),
                "sandbox_file must name a file (absolute, or relative to the working directory)",
            );
        }
        let t = &self.twilio;
        if self.channels.sms == SmsChannelKind::Twilio {
            check(
                is_http_url(&t.base_url),
                "twilio.base_url must be an http(s) URL",
            );
            check(
                t.account_sid.as_deref().is_some_and(|s| {
                    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
                }),
                "twilio.account_sid must be set (letters and digits) for channels.sms = \"twilio\"",
            );
            check(
                t.auth_token.is_some(),
                "twilio.auth_token must be set for channels.sms = \"twilio\"",
            );
            check(
                t.messaging_service_sid.is_some()
                    || t.from.as_deref().is_some_and(crate::notify::phone::is_e164),
                "twilio.from (E.164) or twilio.messaging_service_sid must be set for \
                 channels.sms = \"twilio\"",
            );
        }
        if self.channels.email == EmailChannelKind::Smtp {
            check(
                self.smtp.host.as_deref().is_some_and(|h| !h.is_empty()),
                "smtp.host must be set for channels.email = \"smtp\"",
            );
            check(self.smtp.port != 0, "smtp.port must not be 0");
            check(
                self.smtp.from.parse::<lettre::message::Mailbox>().is_ok(),
                "smtp.from must be an email address (optionally `Name <address>`)",
            );
            check(
                self.smtp.username.is_some() == self.smtp.password.is_some(),
                "smtp.username and smtp.password are set together or not at all",
            );
        }
        if let Some(url) = &self.webhook_public_url {
            check(
                is_http_url(url),
                "webhook_public_url must be an http(s) URL",
            );
            check(
                t.auth_token.is_some(),
                "webhook_public_url needs twilio.auth_token (it verifies the signature)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::settings::PushChannelKind;
    use secrecy::SecretString;

    #[test]
    fn defaults_are_sandboxes_and_valid() {
        let s = NotificationSettings::default();
        assert_eq!(s.channels.sms, SmsChannelKind::Sandbox);
        assert_eq!(s.channels.email, EmailChannelKind::Sandbox);
        assert_eq!(s.channels.push, PushChannelKind::Sandbox);
        let mut problems = Vec::new();
        s.validate(&mut problems);
        assert_eq!(problems, Vec::<String>::new());
    }

    #[test]
    fn real_channels_need_their_settings() {
        let mut s = NotificationSettings::default();
        s.channels.sms = SmsChannelKind::Twilio;
        s.channels.email = EmailChannelKind::Smtp;
        s.webhook_public_url = Some("https://example.org/webhooks/twilio/sms".into());
        let mut problems = Vec::new();
        s.validate(&mut problems);
        let all = problems.join("\n");
        for what in [
            "twilio.account_sid",
            "twilio.auth_token",
            "twilio.from",
            "smtp.host",
            "webhook_public_url needs",
        ] {
            assert!(all.contains(what), "{what} not reported in {all}");
        }
    }

    #[test]
    fn the_sandbox_file_must_name_a_file() {
        let dir = std::env::temp_dir();
        for (path, ok) in [
            ("", false),
            ("/", false),
            ("sandbox/", false),
            ("..", false),
            (dir.to_str().unwrap_or("/tmp"), false),
            ("sandbox-outbox.jsonl", true),
            ("/var/lib/carehub/sandbox-outbox.jsonl", true),
        ] {
            let s = NotificationSettings {
                sandbox_file: Some(path.into()),
                ..NotificationSettings::default()
            };
            let mut problems = Vec::new();
            s.validate(&mut problems);
            assert_eq!(
                problems.iter().any(|p| p.contains("sandbox_file")),
                !ok,
                "{path:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn secrets_are_never_serialized_or_printed() {
        let mut s = NotificationSettings::default();
        s.twilio.auth_token = Some(SecretString::from("tok-very-secret".to_owned()));
        s.smtp.password = Some(SecretString::from("pw-very-secret".to_owned()));
        let json = serde_json::to_string(&s).unwrap_or_default();
        let debug = format!("{s:?}");
        for text in [json, debug] {
            assert!(!text.contains("very-secret"), "{text}");
        }
    }
}
