//! Verification codes as the patient would receive them: identity's outbox hands the code to
//! messaging, whose sandbox channels keep what they would have sent in memory.

use std::time::Duration;

use carehub_messaging::notify::channels::Sandbox;

/// Messaging's sandbox, read for the newest code sent to an address.
#[derive(Clone)]
pub struct MessagingInbox {
    sandbox: Sandbox,
}

impl MessagingInbox {
    /// The sandbox of the messaging service running now (a restarted messaging has a new one).
    pub fn new(sandbox: Sandbox) -> Self {
        MessagingInbox { sandbox }
    }

    /// Waits (up to 30 s) for a verification code sent to `to` (an email or an E.164 phone)
    /// and answers the newest one.
    pub async fn code(&self, to: &str) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let newest = self
                .sandbox
                .sent()
                .into_iter()
                .rev()
                .filter(|m| m.to.eq_ignore_ascii_case(to))
                .find_map(|m| code_in(&m.body));
            if let Some(code) = newest {
                return Ok(code);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("no verification code reached messaging's sandbox within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[async_trait::async_trait]
impl carehub::demo::CodeInbox for MessagingInbox {
    async fn verification_code(&self, to: &str) -> anyhow::Result<String> {
        self.code(to).await
    }
}

/// The code in messaging's verification-code text ("... verification code is 123456. ...").
fn code_in(body: &str) -> Option<String> {
    let (_, after) = body.split_once("code is ")?;
    let code: String = after.chars().take_while(char::is_ascii_digit).collect();
    (!code.is_empty()).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::code_in;

    #[test]
    fn the_code_is_read_from_the_verification_text_only() {
        assert_eq!(
            code_in("Your carehub verification code is 042917. Do not share it with anyone.")
                .as_deref(),
            Some("042917")
        );
        assert_eq!(code_in("Your appointment is at 10:00"), None);
        assert_eq!(code_in("the code is pending"), None);
    }
}
