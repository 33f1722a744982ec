//! The sandbox channels, the default of every channel (and of `carehub up`): they deliver
//! nothing and keep what would have been sent in memory, where tests (and a developer, through
//! the handle) read it. Bounded: the oldest messages are dropped past `sandbox_capacity`.
//!
//! With `sandbox_file` set, every recorded message is also appended to that file as one JSON
//! line, so that a process other than the service (`carehub demo`, a developer's `tail -f`) can
//! read a verification code. The file holds codes and reset links: it is created 0600, and only
//! the development setup (`carehub up`) sets it. It is bounded too: past [`MAX_FILE_BYTES`] it
//! moves to `<file>.1` (replacing the one before) and a new file starts, so that a data
//! directory kept between runs does not grow without end.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Channel, ChannelAdapter, Outgoing, SendError, Sent};

/// The size past which the sandbox file starts anew (the old one kept as `<file>.1`).
pub const MAX_FILE_BYTES: u64 = 8 << 20;

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

/// One line of the sandbox file.
#[derive(serde::Serialize)]
struct FileLine<'a> {
    channel: &'a str,
    to: &'a str,
    subject: &'a str,
    body: &'a str,
    notification_id: String,
    at: String,
}

/// The memory the three sandboxes share.
#[derive(Clone)]
pub struct Sandbox {
    messages: Arc<Mutex<VecDeque<SandboxMessage>>>,
    capacity: usize,
    /// The file every message is mirrored to; the lock keeps lines whole across senders.
    file: Option<Arc<Mutex<SandboxFile>>>,
}

/// The sandbox file and how much it holds.
struct SandboxFile {
    path: PathBuf,
    file: std::fs::File,
    bytes: u64,
    max_bytes: u64,
}

/// Opens `path` for appending, created 0600 when absent.
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

impl SandboxFile {
    /// `<file>.1`, where the file goes when it is full.
    fn previous(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".1");
        PathBuf::from(name)
    }

    /// Appends `line`, first moving a file that `line` would take past its bound aside.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = u64::try_from(line.len()).unwrap_or(u64::MAX);
        if self.bytes > 0 && self.bytes.saturating_add(len) > self.max_bytes {
            std::fs::rename(&self.path, self.previous())?;
            self.file = open_private(&self.path)?;
            self.bytes = 0;
        }
        self.file.write_all(line)?;
        self.bytes = self.bytes.saturating_add(len);
        Ok(())
    }
}

impl Sandbox {
    pub fn new(capacity: usize) -> Sandbox {
        Sandbox {
            messages: Arc::default(),
            capacity: capacity.max(1),
            file: None,
        }
    }

    /// Like [`Sandbox::new`], also appending every message to `path` (created 0600 when
    /// absent, its directory too), which holds at most [`MAX_FILE_BYTES`].
    pub fn with_file(capacity: usize, path: &Path) -> anyhow::Result<Sandbox> {
        Self::with_bounded_file(capacity, path, MAX_FILE_BYTES)
    }

    fn with_bounded_file(capacity: usize, path: &Path, max_bytes: u64) -> anyhow::Result<Sandbox> {
        use anyhow::Context as _;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = open_private(path)
            .with_context(|| format!("opening the sandbox file {}", path.display()))?;
        let bytes = file
            .metadata()
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        Ok(Sandbox {
            file: Some(Arc::new(Mutex::new(SandboxFile {
                path: path.to_owned(),
                file,
                bytes,
                max_bytes,
            }))),
            ..Sandbox::new(capacity)
        })
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
        let message = SandboxMessage {
            channel,
            notification: m.notification,
            to: m.to.to_owned(),
            subject: m.subject.to_owned(),
            body: m.body.to_owned(),
            at: Utc::now(),
        };
        self.mirror(&message);
        messages.push_back(message);
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

impl Sandbox {
    /// Appends `m` to the sandbox file, if any. A failed write is logged, not returned: the
    /// memory copy is what the sandbox promises, the file is a convenience.
    fn mirror(&self, m: &SandboxMessage) {
        let Some(file) = &self.file else {
            return;
        };
        let line = FileLine {
            channel: m.channel.as_str(),
            to: &m.to,
            subject: &m.subject,
            body: &m.body,
            notification_id: m.notification.to_string(),
            at: m.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        text.push('\n');
        let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = file.append(text.as_bytes()) {
            tracing::warn!(notification_id = %m.notification, error = %e, "sandbox file: write failed");
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn outgoing(body: &str) -> Outgoing<'_> {
        Outgoing {
            notification: Uuid::now_v7(),
            to: "+15555550100",
            subject: "",
            body,
        }
    }

    #[test]
    fn the_sandbox_file_starts_anew_past_its_bound_keeping_one_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let sandbox = Sandbox::with_bounded_file(8, &path, 1_000).unwrap();
        for i in 0..30 {
            sandbox.record(Channel::Sms, &outgoing(&format!("your code is {i:06}")));
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let previous = std::fs::read_to_string(dir.path().join("outbox.jsonl.1")).unwrap();
        assert!(current.len() <= 1_000 && previous.len() <= 1_000);
        // The newest message is in the file readers read, whole.
        let last = current.lines().last().unwrap();
        assert!(last.contains("your code is 000029"), "{last}");
        assert!(previous.lines().all(|l| l.ends_with('}')));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for p in [path.clone(), dir.path().join("outbox.jsonl.1")] {
                let mode = std::fs::metadata(&p).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", p.display());
            }
        }
        // A sandbox opened on a full file counts what it holds.
        let reopened = Sandbox::with_bounded_file(8, &path, 1_000).unwrap();
        reopened.record(Channel::Sms, &outgoing("your code is 999999"));
        assert!(std::fs::metadata(&path).unwrap().len() <= 1_000);
    }
}
