//! The verification code, read from the file `carehub up`'s messaging mirrors its sandbox
//! channels to (`messaging.notifications.sandbox_file`: one JSON object a line with `channel`,
//! `to`, `subject`, `body`, `notification_id`, `at`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::CodeInbox;

/// How long [`FileInbox`] waits for the message.
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// Reads messaging's sandbox file.
#[derive(Clone, Debug)]
pub struct FileInbox {
    path: PathBuf,
}

impl FileInbox {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The code of the newest message to `to` in the file now, if any.
    fn newest_code(&self, to: &str) -> anyhow::Result<Option<String>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        Ok(newest_code_in(&text, to))
    }
}

/// The verification code of the newest line of `text` addressed to `to` that carries one.
fn newest_code_in(text: &str, to: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        // A line being appended right now may be cut short: skipped, read next time.
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if !v["to"].as_str()?.eq_ignore_ascii_case(to) {
            return None;
        }
        code_in(v["body"].as_str()?)
    })
}

/// The last run of exactly six digits in `body` ("Your carehub verification code is 123456.").
fn code_in(body: &str) -> Option<String> {
    body.rsplit(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == 6)
        .map(str::to_owned)
}

#[async_trait::async_trait]
impl CodeInbox for FileInbox {
    async fn verification_code(&self, to: &str) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            if let Some(code) = self.newest_code(to)? {
                return Ok(code);
            }
            if started.elapsed() >= WAIT {
                anyhow::bail!(
                    "no verification code for the patient in {} after {} s (is `carehub up` \
                     running with this --data-dir, and messaging's sandbox file set?)",
                    self.path.display(),
                    WAIT.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_code_to_the_address_is_read() {
        let text = [
            r#"{"channel":"email","to":"a@example.org","subject":"s","body":"Your carehub verification code is 111111.","notification_id":"n1","at":"t"}"#,
            r#"{"channel":"email","to":"b@example.org","subject":"s","body":"Your carehub verification code is 222222.","notification_id":"n2","at":"t"}"#,
            r#"{"channel":"email","to":"A@example.org","subject":"s","body":"Your carehub verification code is 333333.","notification_id":"n3","at":"t"}"#,
            r#"{"channel":"email","to":"a@example.org","subject":"s","body":"Reminder: you have a visit on 2026-01-02T10:00:00Z.","notification_id":"n4","at":"t"}"#,
            r#"{"channel":"email","to":"a@exam"#,
        ]
        .join("\n");
        assert_eq!(
            newest_code_in(&text, "a@example.org").as_deref(),
            Some("333333")
        );
        assert_eq!(
            newest_code_in(&text, "b@example.org").as_deref(),
            Some("222222")
        );
        assert_eq!(newest_code_in(&text, "c@example.org"), None);
    }

    #[test]
    fn only_six_digit_runs_are_codes() {
        assert_eq!(code_in("code 1234567 or 12345").as_deref(), None);
        assert_eq!(
            code_in("2026-01-02 code 004211.").as_deref(),
            Some("004211")
        );
    }
}
