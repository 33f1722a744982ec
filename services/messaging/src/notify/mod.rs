//! Notifications: templates without PHI, channels (SMS, email, push) behind adapters, delivery
//! with retries, deduplication and quiet hours; the SMS consent ledger and its webhook.
//!
//! - [`templates`]: what each template says (fixed text, no PHI) and its parameters.
//! - [`plan`]: where a notification goes when it is accepted (addresses, preferences, the
//!   ledger, quiet hours), pure.
//! - [`channels`]: the adapters — `SandboxSms`/`SandboxEmail`/`SandboxPush` (the default:
//!   recorded in memory, never delivered), `TwilioSms`, `SmtpEmail`.
//! - [`worker`]: the per-replica delivery loop (claims, sends, retries, settles).
//! - [`ledger`] and [`webhook`]: the SMS consent ledger and the carrier keywords.

pub mod channels;
pub mod ledger;
pub mod phone;
pub mod plan;
pub mod quiet;
pub mod settings;
pub mod templates;
pub mod webhook;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use carehub_platform::client::ServiceChannel;
use carehub_platform::errors;
use carehub_platform::keys::KeySource;
use carehub_proto::common::v1::ErrorReason;
use carehub_proto::identity::v1::identity_internal_client::IdentityInternalClient;
use carehub_proto::identity::v1::{Contact, GetContactRequest};
use tonic::Code;
use uuid::Uuid;

use crate::config::NotificationSettings;
use crate::error::{MessagingError, Result};
use crate::AppState;
use channels::{
    Channel, ChannelAdapter, Sandbox, SandboxEmail, SandboxPush, SandboxSms, SmtpEmail, TwilioSms,
};
use settings::{EmailChannelKind, PushChannelKind, SmsChannelKind};

/// The notification machinery of one replica.
pub struct Notifications {
    settings: NotificationSettings,
    identity: IdentityInternalClient<ServiceChannel>,
    sms: Box<dyn ChannelAdapter>,
    email: Box<dyn ChannelAdapter>,
    push: Box<dyn ChannelAdapter>,
    sandbox: Sandbox,
    wake: Arc<tokio::sync::Notify>,
    webhook: Option<webhook::WebhookAuth>,
}

impl Notifications {
    /// The channels `settings` name, asking identity (over `identity`) who recipients are.
    pub fn new(
        settings: &NotificationSettings,
        identity: ServiceChannel,
        _keys: &Arc<dyn KeySource>,
    ) -> anyhow::Result<Self> {
        let sandbox = match &settings.sandbox_file {
            Some(path) => Sandbox::with_file(settings.sandbox_capacity, path)?,
            None => Sandbox::new(settings.sandbox_capacity),
        };
        let timeout = Duration::from_millis(settings.send_timeout_ms);
        let sms: Box<dyn ChannelAdapter> = match settings.channels.sms {
            SmsChannelKind::Sandbox => Box::new(SandboxSms(sandbox.clone())),
            SmsChannelKind::Twilio => Box::new(TwilioSms::new(&settings.twilio, timeout)?),
        };
        let email: Box<dyn ChannelAdapter> = match settings.channels.email {
            EmailChannelKind::Sandbox => Box::new(SandboxEmail(sandbox.clone())),
            EmailChannelKind::Smtp => Box::new(SmtpEmail::new(&settings.smtp, timeout)?),
        };
        let push: Box<dyn ChannelAdapter> = match settings.channels.push {
            PushChannelKind::Sandbox => Box::new(SandboxPush(sandbox.clone())),
        };
        for (channel, adapter) in [("sms", &sms), ("email", &email), ("push", &push)] {
            if adapter.name().starts_with("Sandbox") {
                tracing::warn!(
                    channel,
                    adapter = adapter.name(),
                    "notifications on this channel are recorded in memory, never delivered"
                );
            } else {
                tracing::info!(channel, adapter = adapter.name(), "notification channel");
            }
        }
        let webhook = match (&settings.webhook_public_url, &settings.twilio.auth_token) {
            (Some(url), Some(token)) => Some(webhook::WebhookAuth {
                public_url: url.clone(),
                auth_token: token.clone(),
            }),
            _ => None,
        };
        Ok(Notifications {
            settings: settings.clone(),
            identity: IdentityInternalClient::new(identity),
            sms,
            email,
            push,
            sandbox,
            wake: Arc::new(tokio::sync::Notify::new()),
            webhook,
        })
    }

    pub fn settings(&self) -> &NotificationSettings {
        &self.settings
    }

    /// What the sandbox channels recorded (every channel configured as `sandbox`).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The adapter of `channel`.
    pub fn adapter(&self, channel: Channel) -> &dyn ChannelAdapter {
        match channel {
            Channel::Sms => self.sms.as_ref(),
            Channel::Email => self.email.as_ref(),
            Channel::Push => self.push.as_ref(),
        }
    }

    /// How the webhook is verified, when it is configured.
    pub fn webhook(&self) -> Option<&webhook::WebhookAuth> {
        self.webhook.as_ref()
    }

    /// Tells this replica's worker that something is due now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn wake_handle(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// What identity says about `user` for notifying them: verified addresses, time zone,
    /// status, preferences (NOT_FOUND when identity has no such user; UNAVAILABLE when it
    /// cannot answer).
    pub async fn contact(&self, user: Uuid) -> Result<Contact> {
        let mut client = self.identity.clone();
        match client
            .get_contact(GetContactRequest {
                user_id: user.to_string(),
            })
            .await
        {
            Ok(answer) => Ok(answer.into_inner()),
            Err(s) if s.code() == Code::NotFound => Err(MessagingError::NotFound {
                what: "user",
                id: user.to_string(),
            }),
            Err(s) => {
                tracing::warn!(code = ?s.code(), user_id = %user, "identity could not answer GetContact");
                Err(MessagingError::Status(errors::retry_after(
                    Code::Unavailable,
                    ErrorReason::Unavailable,
                    "identity is unavailable; retry",
                    Duration::from_secs(1),
                )))
            }
        }
    }
}

/// Starts the background delivery of this replica.
pub fn spawn_workers(state: &Arc<AppState>) {
    worker::spawn(state);
}

/// Routes on the admin port (the inbound SMS webhook, when configured).
pub fn routes(state: Arc<AppState>) -> axum::Router {
    if state.notifications.webhook().is_some() {
        webhook::router(state)
    } else {
        axum::Router::new()
    }
}
