//! SMS through a Twilio-compatible REST API: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`
//! with the form fields `To`, `Body` and `From` (or `MessagingServiceSid`), basic auth with the
//! account SID and auth token. 2xx: accepted; 429 and 5xx: try again later (429 honours
//! `Retry-After`); any other 4xx: the request itself is wrong (a bad or unsubscribed number),
//! so retrying cannot help.

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};

use super::{ChannelAdapter, Outgoing, SendError, Sent};
use crate::notify::settings::TwilioSettings;

pub struct TwilioSms {
    client: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: SecretString,
    /// `("From", number)` or `("MessagingServiceSid", sid)`.
    sender: (&'static str, String),
}

impl TwilioSms {
    pub fn new(settings: &TwilioSettings, timeout: Duration) -> anyhow::Result<TwilioSms> {
        let (Some(account_sid), Some(auth_token)) = (&settings.account_sid, &settings.auth_token)
        else {
            anyhow::bail!("messaging.notifications.twilio needs account_sid and auth_token");
        };
        let sender = match (&settings.messaging_service_sid, &settings.from) {
            (Some(service), _) => ("MessagingServiceSid", service.clone()),
            (None, Some(from)) => ("From", from.clone()),
            (None, None) => {
                anyhow::bail!("messaging.notifications.twilio needs from or messaging_service_sid")
            }
        };
        // reqwest is built without a default crypto provider: everything in carehub uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("building the Twilio client: {e}"))?;
        let url = format!(
            "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
            settings.base_url.trim_end_matches('/')
        );
        Ok(TwilioSms {
            client,
            url,
            account_sid: account_sid.clone(),
            auth_token: auth_token.clone(),
            sender,
        })
    }
}

/// Twilio's error code from an error answer's JSON (`{"code": 21610, ...}`): a number, never
/// the message text (which may repeat the recipient's number).
fn twilio_code(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("code")?
        .as_i64()
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[async_trait::async_trait]
impl ChannelAdapter for TwilioSms {
    fn name(&self) -> &'static str {
        "TwilioSms"
    }

    async fn send(&self, m: &Outgoing<'_>) -> Result<Sent, SendError> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("To", m.to)
            .append_pair(self.sender.0, &self.sender.1)
            .append_pair("Body", m.body)
            .finish();
        let answer = self
            .client
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(|e| {
                SendError::transient(if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                })
            })?;
        let status = answer.status();
        let after = retry_after(answer.headers());
        let body = answer.bytes().await.unwrap_or_default();
        if status.is_success() {
            let provider_ref = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("sid")?.as_str().map(str::to_owned))
                .filter(|sid| sid.len() <= 64 && sid.bytes().all(|b| b.is_ascii_alphanumeric()));
            return Ok(Sent { provider_ref });
        }
        let code = status.as_u16();
        if code == 429 {
            return Err(SendError::Transient {
                code: "rate_limited".to_owned(),
                retry_after: after,
            });
        }
        if status.is_server_error() {
            return Err(SendError::Transient {
                code: format!("http_{code}"),
                retry_after: after,
            });
        }
        Err(SendError::permanent(match twilio_code(&body) {
            Some(t) => format!("twilio_{t}"),
            None => format!("http_{code}"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_error_number_is_kept() {
        assert_eq!(
            twilio_code(br#"{"code": 21610, "message": "Attempt to send to +15550100000"}"#),
            Some(21610)
        );
        assert_eq!(twilio_code(b"<html>oops</html>"), None);
    }
}
