//! `[messaging.video]`: the SFU and its join tokens.
//!
//! The SFU (any LiveKit-compatible server) verifies join tokens with an API key and secret.
//! The key is named here; the secret is never configured: messaging derives it from its
//! key-encryption key for that API key (see `crate::video`), and the SFU is given the same
//! value by the operator.

use serde::{Deserialize, Serialize};

/// Longest allowed `window_minutes`: two hours on either side of a visit is already more than
/// any waiting room needs.
pub const MAX_WINDOW_MINUTES: u32 = 120;
/// Shortest and longest allowed `token_ttl_secs`. A token the SFU still accepts an hour later
/// is the most a leaked one may be worth.
pub const MIN_TOKEN_TTL_SECS: u32 = 60;
pub const MAX_TOKEN_TTL_SECS: u32 = 3_600;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VideoSettings {
    /// The SFU's API key: the `iss` of every join token, and what the secret is derived for
    /// (1..=64 characters of `A-Za-z0-9_-`). Changing it changes the secret.
    pub api_key: String,
    /// The SFU's WebSocket URL handed to clients with their token: `wss://...` (`ws://` only
    /// for an SFU on localhost, in development).
    pub url: String,
    /// How early before a visit's start and how late after its end a participant may get a
    /// token (0..=120 minutes).
    pub window_minutes: u32,
    /// Longest lifetime of a token (60..=3600 seconds); a token never outlives the visit's end
    /// plus the window.
    pub token_ttl_secs: u32,
}

impl Default for VideoSettings {
    fn default() -> Self {
        Self {
            api_key: "carehub".to_owned(),
            url: "wss://localhost:7880".to_owned(),
            window_minutes: 15,
            token_ttl_secs: MAX_TOKEN_TTL_SECS,
        }
    }
}

/// Whether `url` is a WebSocket URL clients may be sent to: TLS, or plain only on this machine.
fn acceptable_url(url: &str) -> bool {
    if let Some(rest) = url.strip_prefix("wss://") {
        return !rest.is_empty() && !rest.starts_with('/');
    }
    let Some(rest) = url.strip_prefix("ws://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

impl VideoSettings {
    pub fn validate(&self, problems: &mut Vec<String>) {
        let key_ok = (1..=64).contains(&self.api_key.len())
            && self
                .api_key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !key_ok {
            problems.push(
                "messaging.video.api_key must be 1..=64 characters of A-Za-z0-9_-".to_owned(),
            );
        }
        if !acceptable_url(&self.url) {
            problems.push(
                "messaging.video.url must be a wss:// URL (ws:// only for an SFU on localhost)"
                    .to_owned(),
            );
        }
        if self.window_minutes > MAX_WINDOW_MINUTES {
            problems.push(format!(
                "messaging.video.window_minutes must be within 0..={MAX_WINDOW_MINUTES}"
            ));
        }
        if !(MIN_TOKEN_TTL_SECS..=MAX_TOKEN_TTL_SECS).contains(&self.token_ttl_secs) {
            problems.push(format!(
                "messaging.video.token_ttl_secs must be within \
                 {MIN_TOKEN_TTL_SECS}..={MAX_TOKEN_TTL_SECS}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn problems(s: &VideoSettings) -> Vec<String> {
        let mut p = Vec::new();
        s.validate(&mut p);
        p
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(problems(&VideoSettings::default()), Vec::<String>::new());
    }

    #[test]
    fn out_of_range_settings_are_named() {
        let bad = VideoSettings {
            api_key: "has space".into(),
            url: "https://sfu.example".into(),
            window_minutes: 121,
            token_ttl_secs: 3_601,
        };
        let p = problems(&bad);
        for key in ["api_key", "url", "window_minutes", "token_ttl_secs"] {
            assert!(
                p.iter().any(|m| m.contains(&format!("video.{key}"))),
                "{key}: {p:?}"
            );
        }
        let short = VideoSettings {
            token_ttl_secs: 59,
            api_key: String::new(),
            ..VideoSettings::default()
        };
        assert_eq!(problems(&short).len(), 2);
    }

    #[test]
    fn plain_websockets_only_on_this_machine() {
        for ok in [
            "wss://sfu.example.org",
            "wss://sfu.example.org:7881/rtc",
            "ws://localhost:7880",
            "ws://127.0.0.1:7880",
            "ws://[::1]:7880",
        ] {
            assert!(acceptable_url(ok), "{ok}");
        }
        for bad in [
            "ws://sfu.example.org",
            "ws://localhost.example.org",
            "wss://",
            "https://sfu.example.org",
            "",
        ] {
            assert!(!acceptable_url(bad), "{bad}");
        }
    }
}
