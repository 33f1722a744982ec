//! Delivery of codes and notices to a user's email or phone.
//!
//! Real delivery (an email provider, an SMS gateway) is third-party SaaS and sits behind
//! [`Notifier`]. Only sandboxes exist today, named as such.

use std::sync::{Arc, Mutex};

use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Email,
    Sms,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotificationKind {
    /// A contact-verification code.
    VerificationCode { code: String },
    /// A password-reset token.
    PasswordReset { token: String },
    /// The password was changed or reset (sent to the email on file).
    PasswordChanged,
    /// An account was created by an admin.
    AccountCreated,
}

#[derive(Clone, Debug)]
pub struct Notification {
    pub user_id: Uuid,
    pub channel: Channel,
    /// The email address or E.164 phone to deliver to.
    pub destination: String,
    pub kind: NotificationKind,
}

#[async_trait::async_trait]
pub trait Notifier: Send + Sync + 'static {
    async fn send(&self, notification: Notification) -> anyhow::Result<()>;
}

/// Development sandbox: logs the notification, secrets included, so that a developer running
/// `carehub up` can read codes. Logs the destination never (PHI), only the user id.
pub struct LogSandboxNotifier;

#[async_trait::async_trait]
impl Notifier for LogSandboxNotifier {
    async fn send(&self, n: Notification) -> anyhow::Result<()> {
        tracing::warn!(
            user_id = %n.user_id,
            channel = ?n.channel,
            notification = ?n.kind,
            "SANDBOX notifier: not delivered, logged instead (development only)"
        );
        Ok(())
    }
}

/// Test sandbox: keeps every notification in memory.
#[derive(Clone, Default)]
pub struct MemorySandboxNotifier {
    sent: Arc<Mutex<Vec<Notification>>>,
}

impl MemorySandboxNotifier {
    pub fn sent(&self) -> Vec<Notification> {
        self.sent.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The newest verification code sent to `user_id` on `channel`.
    pub fn last_code(&self, user_id: Uuid, channel: Channel) -> Option<String> {
        self.sent().into_iter().rev().find_map(|n| match n.kind {
            NotificationKind::VerificationCode { code }
                if n.user_id == user_id && n.channel == channel =>
            {
                Some(code)
            }
            _ => None,
        })
    }

    /// The newest password-reset token sent to `user_id`.
    pub fn last_reset_token(&self, user_id: Uuid) -> Option<String> {
        self.sent().into_iter().rev().find_map(|n| match n.kind {
            NotificationKind::PasswordReset { token } if n.user_id == user_id => Some(token),
            _ => None,
        })
    }
}

#[async_trait::async_trait]
impl Notifier for MemorySandboxNotifier {
    async fn send(&self, n: Notification) -> anyhow::Result<()> {
        if let Ok(mut v) = self.sent.lock() {
            v.push(n);
        }
        Ok(())
    }
}
