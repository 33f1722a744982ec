//! The parts of `[messaging.notifications]` that name channels and their providers (the
//! table itself is `crate::config::NotificationSettings`). They live beside the code that reads
//! them because the configuration module re-exports only its top-level tables.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Where SMS go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsChannelKind {
    /// Recorded in memory, never delivered (`SandboxSms`).
    #[default]
    Sandbox,
    /// A Twilio-compatible REST API (`[messaging.notifications.twilio]`).
    Twilio,
}

/// Where email goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailChannelKind {
    /// Recorded in memory, never delivered (`SandboxEmail`).
    #[default]
    Sandbox,
    /// An SMTP relay (`[messaging.notifications.smtp]`).
    Smtp,
}

/// Where push notifications go. Only the sandbox exists until devices can register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushChannelKind {
    /// Recorded in memory, never delivered (`SandboxPush`).
    #[default]
    Sandbox,
}

/// `[messaging.notifications.channels]`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelKinds {
    pub sms: SmsChannelKind,
    pub email: EmailChannelKind,
    pub push: PushChannelKind,
}

/// `[messaging.notifications.twilio]`: the REST API SMS are sent through, and the auth token
/// that also verifies the inbound webhook's `X-Twilio-Signature`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwilioSettings {
    /// `https://api.twilio.com` (or a compatible gateway).
    pub base_url: String,
    /// The account SID (`AC...`): the basic-auth user and part of the URL.
    pub account_sid: Option<String>,
    /// The account's auth token: the basic-auth password and the webhook signing key.
    #[serde(skip_serializing)]
    pub auth_token: Option<SecretString>,
    /// The sending number (E.164); or set `messaging_service_sid`.
    pub from: Option<String>,
    /// A messaging service (`MG...`) that picks the sender; takes precedence over `from`.
    pub messaging_service_sid: Option<String>,
}

impl Default for TwilioSettings {
    fn default() -> Self {
        TwilioSettings {
            base_url: "https://api.twilio.com".to_owned(),
            account_sid: None,
            auth_token: None,
            from: None,
            messaging_service_sid: None,
        }
    }
}

/// How the SMTP connection is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS, required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain text: only for a relay on the same host or pod (and tests).
    None,
}

/// `[messaging.notifications.smtp]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: Option<String>,
    pub port: u16,
    pub tls: SmtpTls,
    /// The sender, `Name <address>` or `address`.
    pub from: String,
    pub username: Option<String>,
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        SmtpSettings {
            host: None,
            port: 587,
            tls: SmtpTls::Starttls,
            from: "carehub <no-reply@carehub.invalid>".to_owned(),
            username: None,
            password: None,
        }
    }
}
