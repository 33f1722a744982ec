//! Email through an SMTP relay (lettre, rustls with ring; never native-tls). Plain-text bodies
//! only: the templates are plain text, and HTML would invite tracking pixels and remote
//! content into a health-care mailbox. 4xx replies and connection trouble are retried; 5xx
//! replies and addresses that do not parse are not.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use secrecy::ExposeSecret as _;

use super::{ChannelAdapter, Outgoing, SendError, Sent};
use crate::notify::settings::{SmtpSettings, SmtpTls};

pub struct SmtpEmail {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpEmail {
    pub fn new(settings: &SmtpSettings, timeout: Duration) -> anyhow::Result<SmtpEmail> {
        let host = settings
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow::anyhow!("messaging.notifications.smtp.host is not set"))?;
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|_| anyhow::anyhow!("messaging.notifications.smtp.from is not an address"))?;
        let tls = match settings.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls => Tls::Required(TlsParameters::new_rustls(host.clone())?),
            SmtpTls::Tls => Tls::Wrapper(TlsParameters::new_rustls(host.clone())?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(settings.port)
            .tls(tls)
            .timeout(Some(timeout));
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        Ok(SmtpEmail {
            transport: builder.build(),
            from,
        })
    }
}

fn smtp_error(e: &lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(|c| format!("smtp_{c}"));
    if e.is_permanent() {
        SendError::permanent(code.unwrap_or_else(|| "smtp_permanent".to_owned()))
    } else if e.is_transient() {
        SendError::transient(code.unwrap_or_else(|| "smtp_transient".to_owned()))
    } else if e.is_timeout() {
        SendError::transient("timeout")
    } else if e.is_tls() {
        SendError::transient("smtp_tls")
    } else {
        SendError::transient("smtp_connection")
    }
}

#[async_trait::async_trait]
impl ChannelAdapter for SmtpEmail {
    fn name(&self) -> &'static str {
        "SmtpEmail"
    }

    async fn send(&self, m: &Outgoing<'_>) -> Result<Sent, SendError> {
        let to: Mailbox =
            m.to.parse()
                .map_err(|_| SendError::permanent("invalid_address"))?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(m.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(m.body.to_owned())
            .map_err(|_| SendError::permanent("invalid_message"))?;
        let response = self
            .transport
            .send(email)
            .await
            .map_err(|e| smtp_error(&e))?;
        Ok(Sent {
            provider_ref: Some(format!("smtp_{}", response.code())),
        })
    }
}
