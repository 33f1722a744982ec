//! The channels notifications leave through, each behind one adapter trait so that the
//! delivery worker does not know whether it talks to Twilio, an SMTP relay or a sandbox.
//!
//! An adapter reports a failure as a short code (`http_503`, `smtp_451`, `timeout`), never the
//! provider's text: providers echo numbers and addresses back in their error messages, and the
//! code is what the delivery row and the logs keep.

mod sandbox;
mod smtp;
mod twilio;

use std::time::Duration;

use carehub_proto::messaging::v1 as pb;
use uuid::Uuid;

pub use sandbox::{Sandbox, SandboxEmail, SandboxMessage, SandboxPush, SandboxSms};
pub use smtp::SmtpEmail;
pub use twilio::TwilioSms;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Sms,
    Email,
    Push,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Sms, Channel::Email, Channel::Push];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Email => "email",
            Channel::Push => "push",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn from_pb(value: i32) -> Option<Channel> {
        match pb::Channel::try_from(value).ok()? {
            pb::Channel::Sms => Some(Channel::Sms),
            pb::Channel::Email => Some(Channel::Email),
            pb::Channel::Push => Some(Channel::Push),
            pb::Channel::Unspecified => None,
        }
    }

    pub fn to_pb(self) -> pb::Channel {
        match self {
            Channel::Sms => pb::Channel::Sms,
            Channel::Email => pb::Channel::Email,
            Channel::Push => pb::Channel::Push,
        }
    }
}

/// One message for one recipient.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    pub notification: Uuid,
    /// E.164 for SMS, an email address, the user id for push.
    pub to: &'a str,
    /// Email subject, push title; empty for SMS.
    pub subject: &'a str,
    pub body: &'a str,
}

/// The provider accepted the message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// The provider's id of the message (Twilio's `SM...`), when it gives one.
    pub provider_ref: Option<String>,
}

/// Why a send did not go through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Worth another attempt (the provider is down, throttling, timing out).
    Transient {
        code: String,
        /// The provider asked for at least this pause (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Another attempt would fail the same way (bad address, rejected by the provider).
    Permanent { code: String },
}

impl SendError {
    pub fn transient(code: impl Into<String>) -> SendError {
        SendError::Transient {
            code: code.into(),
            retry_after: None,
        }
    }

    pub fn permanent(code: impl Into<String>) -> SendError {
        SendError::Permanent { code: code.into() }
    }

    pub fn code(&self) -> &str {
        match self {
            SendError::Transient { code, .. } | SendError::Permanent { code } => code,
        }
    }
}

/// A channel's adapter.
#[async_trait::async_trait]
pub trait ChannelAdapter: Send + Sync {
    /// Names the implementation in logs and metrics (`SandboxSms`, `TwilioSms`, ...).
    fn name(&self) -> &'static str;
    async fn send(&self, message: &Outgoing<'_>) -> Result<Sent, SendError>;
}
