//! The sandbox channels, the default of every channel (and of `carehub up`): they deliver
//! nothing and keep what would have been sent in memory, where tests (and a developer, through
//! the handle) read it. Bounded: the oldest messages are dropped past `sandbox_capacity`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Channel, ChannelAdapter, Outgoing, SendError, Sent};

/// What a sandbox channel would have sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxMessage {
    pub channel: Channel,
    pub notification: Uuid,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub at: DateTime<Utc>,
}

/// The memory the three sandboxes share.
#[derive(Clone)]
pub struct Sandbox {
    messages: Arc<Mutex<VecDeque<SandboxMessage>>>,
    capacity: usize,
}

impl Sandbox {
    pub fn new(capacity: usize) -> Sandbox {
        Sandbox {
            messages: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Everything recorded, oldest first.
    pub fn sent(&self) -> Vec<SandboxMessage> {
        self.messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// What was recorded for `notification`.
    pub fn sent_for(&self, notification: Uuid) -> Vec<SandboxMessage> {
        self.sent()
            .into_iter()
            .filter(|m| m.notification == notification)
            .collect()
    }

    fn record(&self, channel: Channel, m: &Outgoing<'_>) -> Sent {
        let mut messages = self.messages.lock().unwrap_or_else(PoisonError::into_inner);
        while messages.len() >= self.capacity {
            messages.pop_front();
        }
        messages.push_back(SandboxMessage {
            channel,
            notification: m.notification,
            to: m.to.to_owned(),
            subject: m.subject.to_owned(),
            body: m.body.to_owned(),
            at: Utc::now(),
        });
        // Ids only: what was "sent" is in memory, not in the log.
        tracing::info!(
            notification_id = %m.notification,
            channel = channel.as_str(),
            "SANDBOX channel: notification recorded, not delivered"
        );
        Sent {
            provider_ref: Some(format!("sandbox-{}", Uuid::now_v7())),
        }
    }
}

macro_rules! sandbox_channel {
    ($name:ident, $channel:expr, $doc:literal) => {
        #[doc = $doc]
        pub struct $name(pub Sandbox);

        #[async_trait::async_trait]
        impl ChannelAdapter for $name {
            fn name(&self) -> &'static str {
                stringify!($name)
            }
            async fn send(&self, message: &Outgoing<'_>) -> Result<Sent, SendError> {
                Ok(self.0.record($channel, message))
            }
        }
    };
}

sandbox_channel!(
    SandboxSms,
    Channel::Sms,
    "SMS that are recorded, never sent (the default SMS channel)."
);
sandbox_channel!(
    SandboxEmail,
    Channel::Email,
    "Email that is recorded, never sent (the default email channel)."
);
sandbox_channel!(
    SandboxPush,
    Channel::Push,
    "Push notifications that are recorded, never sent (the only push channel so far)."
);
