//! Delivery of codes and notices to a user's email or phone.
//!
//! Identity does not talk to email providers or SMS gateways: messaging does
//! (`MessagingInternal.SendNotification`). [`MessagingNotifier`] (`identity.notifier =
//! "messaging"`, the default) writes the request to identity's transactional outbox in the
//! transaction that stores the code or reset token ([`Notifier::stage`]): the notification
//! exists exactly when the code does. The sandboxes, named as such, deliver nothing: they log
//! (development) or keep in memory (tests) after the commit ([`Notifier::send`]).

use std::sync::{Arc, Mutex};

use carehub_platform::outbox::Outbox;
use carehub_proto::messaging::v1 as messaging;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::IdentityError;

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

impl NotificationKind {
    /// The kind's name, for logs (never its secret).
    pub fn name(&self) -> &'static str {
        match self {
            NotificationKind::VerificationCode { .. } => "verification_code",
            NotificationKind::PasswordReset { .. } => "password_reset",
            NotificationKind::PasswordChanged => "password_changed",
            NotificationKind::AccountCreated => "account_created",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Notification {
    pub user_id: Uuid,
    pub channel: Channel,
    /// The email address or E.164 phone to deliver to.
    pub destination: String,
    pub kind: NotificationKind,
}

/// What [`Notifier::stage`] did with a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Staged {
    /// Written in the transaction: it commits (and is delivered) with the change, or not at all.
    Written,
    /// Not written: hand it to [`Notifier::send`] once the transaction committed.
    AfterCommit,
}

#[async_trait::async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Called in the transaction `tx` that stores what `notification` carries (a verification
    /// code, a reset token). An error rolls the change back: a code must not commit without its
    /// notification.
    async fn stage(
        &self,
        tx: &mut PgConnection,
        notification: &Notification,
    ) -> Result<Staged, IdentityError> {
        let _ = (tx, notification);
        Ok(Staged::AfterCommit)
    }

    /// Delivers a notification that was not [`Staged::Written`], after the commit (best effort:
    /// notices such as "your password changed").
    async fn send(&self, notification: Notification) -> anyhow::Result<()>;
}

/// The outbox target of the notifications.
pub const MESSAGING_TARGET: &str = "messaging";

/// The RPC messaging delivers notifications through.
pub const SEND_NOTIFICATION: &str = "/carehub.messaging.v1.MessagingInternal/SendNotification";

/// Sends codes and reset links through messaging: a `SendNotificationRequest` in identity's
/// transactional outbox, written with the code, delivered by the platform's relay to
/// `[server.outbox.targets.messaging]` (kept pending until that target is configured).
///
/// The payload carries the secret (the code, the link with the reset token) because messaging
/// must put it in the text. The outbox seals every payload at rest (AES-256-GCM under a key
/// derived from identity's KEK, bound to the row id: `carehub_platform::outbox`, payload
/// sealer), so the code is never in clear in the database, and the relay opens it only to send
/// it over mTLS.
pub struct MessagingNotifier {
    outbox: Outbox,
    /// For notices with no transaction of their own (password changed, account created): their
    /// outbox row is written in one of its own.
    pool: sqlx::PgPool,
    /// `identity.password_reset_link`, with `{token}` where the token goes.
    reset_link: String,
}

impl MessagingNotifier {
    pub fn new(outbox: Outbox, pool: sqlx::PgPool, reset_link: String) -> Self {
        MessagingNotifier {
            outbox,
            pool,
            reset_link,
        }
    }

    async fn enqueue(
        &self,
        tx: &mut PgConnection,
        request: &messaging::SendNotificationRequest,
    ) -> Result<Uuid, IdentityError> {
        Ok(self
            .outbox
            .enqueue(tx, MESSAGING_TARGET, SEND_NOTIFICATION, request)
            .await
            .map_err(tonic::Status::from)?)
    }

    /// The request for `n`.
    fn request(&self, n: &Notification) -> messaging::SendNotificationRequest {
        let (template, param) = match &n.kind {
            NotificationKind::VerificationCode { code } => (
                messaging::Template::VerificationCode,
                Some(("code", code.clone())),
            ),
            NotificationKind::PasswordReset { token } => (
                messaging::Template::PasswordReset,
                Some(("link", self.reset_link.replace("{token}", token))),
            ),
            NotificationKind::PasswordChanged => (messaging::Template::PasswordChanged, None),
            NotificationKind::AccountCreated => (messaging::Template::AccountCreated, None),
        };
        let channel = match n.channel {
            Channel::Email => messaging::Channel::Email,
            Channel::Sms => messaging::Channel::Sms,
        };
        messaging::SendNotificationRequest {
            user_id: n.user_id.to_string(),
            template: template as i32,
            // The address being verified (or asked for) is the only one to use: the user's
            // other channels are not what the code proves.
            channels: vec![channel as i32],
            urgent: true,
            params: param.map(|(k, v)| (k.to_owned(), v)).into_iter().collect(),
            // One notification per code or token issued; the relay's retries repeat the key.
            idempotency_key: format!("identity-{}", Uuid::now_v7()),
            address: n.destination.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Notifier for MessagingNotifier {
    async fn stage(
        &self,
        tx: &mut PgConnection,
        n: &Notification,
    ) -> Result<Staged, IdentityError> {
        let id = self.enqueue(tx, &self.request(n)).await?;
        tracing::debug!(outbox.id = %id, user_id = %n.user_id, channel = ?n.channel, "notification queued for messaging");
        Ok(Staged::Written)
    }

    async fn send(&self, n: Notification) -> anyhow::Result<()> {
        if let NotificationKind::VerificationCode { .. } | NotificationKind::PasswordReset { .. } =
            n.kind
        {
            // A code sent outside its transaction could outlive a rollback: a wiring bug.
            anyhow::bail!("codes and reset links go through stage(), in their transaction");
        }
        // A notice about a change that already committed: its row commits on its own.
        let mut tx = self.pool.begin().await?;
        let id = self
            .enqueue(&mut tx, &self.request(&n))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tx.commit().await?;
        tracing::debug!(outbox.id = %id, user_id = %n.user_id, notice = n.kind.name(), "notice queued for messaging");
        Ok(())
    }
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
