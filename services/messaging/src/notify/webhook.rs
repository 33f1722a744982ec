//! The inbound SMS webhook (`POST /webhooks/twilio/sms` on the admin port): the carrier
//! keywords people text back.
//!
//! Only Twilio may call it: `X-Twilio-Signature` must be base64(HMAC-SHA1(auth token, public
//! URL followed by every POST parameter's name and value, sorted by name)), compared in
//! constant time. A missing or forged signature gets 403 and nothing is recorded. The public
//! URL is configured (`webhook_public_url`): behind a proxy the address we see is not the one
//! Twilio signed.
//!
//! Keywords are single words, trimmed and case-insensitive: STOP, STOPALL, UNSUBSCRIBE,
//! CANCEL, END, QUIT, REVOKE, OPTOUT opt the number out at once; START, YES, UNSTOP opt it back
//! in; HELP, INFO answer the help text and change nothing. A change answers one confirmation
//! (TwiML); a repeat (a second STOP) changes nothing and answers none. Any other text is not
//! ours to read: it is neither stored nor logged.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use carehub_platform::audit::{self, AuditEvent, Purpose};
use chrono::Utc;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret as _, SecretString};
use sha1::Sha1;

use super::ledger::{self, Consent, Decision};
use super::phone;
use crate::api::kinds;
use crate::error::Result;
use crate::AppState;

/// Where the webhook is mounted on the admin router.
pub const PATH: &str = "/webhooks/twilio/sms";
/// The header Twilio signs requests with.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
/// Twilio's parameters are a few hundred bytes; nothing larger is a real request.
const MAX_BODY: usize = 64 * 1024;

pub const OPT_OUT_REPLY: &str = "carehub: you are unsubscribed and will get no more texts from \
    us. Reply START to resubscribe.";
pub const OPT_IN_REPLY: &str = "carehub: you are subscribed to texts about your care and your \
    account. Reply HELP for help, STOP to unsubscribe.";
pub const HELP_REPLY: &str = "carehub: texts about your care and your account. Reply STOP to \
    unsubscribe, START to resubscribe. Msg & data rates may apply.";

/// What verifies the webhook.
#[derive(Clone)]
pub struct WebhookAuth {
    pub public_url: String,
    pub auth_token: SecretString,
}

type HmacSha1 = Hmac<Sha1>;

fn mac(token: &[u8], url: &str, params: &[(String, String)]) -> HmacSha1 {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <HmacSha1 as Mac>::new_from_slice(token)
        .unwrap_or_else(|_| <HmacSha1 as Mac>::new(&Default::default()));
    mac.update(url.as_bytes());
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac
}

/// The signature Twilio sends for `params` posted to `url` (base64).
pub fn sign(token: &str, url: &str, params: &[(String, String)]) -> String {
    data_encoding::BASE64.encode(&mac(token.as_bytes(), url, params).finalize().into_bytes())
}

/// Whether `signature` is Twilio's for `params` posted to `url`, in constant time.
pub fn verify(token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    let Ok(given) = data_encoding::BASE64.decode(signature.trim().as_bytes()) else {
        return false;
    };
    mac(token.as_bytes(), url, params)
        .verify_slice(&given)
        .is_ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyword {
    OptOut(&'static str),
    OptIn(&'static str),
    Help(&'static str),
}

const OPT_OUT: [&str; 8] = [
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
];
const OPT_IN: [&str; 3] = ["START", "YES", "UNSTOP"];
const HELP: [&str; 2] = ["HELP", "INFO"];

/// The keyword `body` is, if it is one word that is a keyword.
pub fn keyword(body: &str) -> Option<Keyword> {
    let word = body.trim();
    let find =
        |words: &[&'static str]| words.iter().copied().find(|w| w.eq_ignore_ascii_case(word));
    if let Some(w) = find(&OPT_OUT) {
        return Some(Keyword::OptOut(w));
    }
    if let Some(w) = find(&OPT_IN) {
        return Some(Keyword::OptIn(w));
    }
    find(&HELP).map(Keyword::Help)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A TwiML answer: one message back to the sender, or none.
pub fn twiml(message: Option<&str>) -> String {
    match message {
        Some(m) => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>{}</Message></Response>",
            xml_escape(m)
        ),
        None => "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>".to_owned(),
    }
}

fn reply(message: Option<&str>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        twiml(message),
    )
        .into_response()
}

/// The webhook's routes (mounted by `notify::routes` when it is configured).
pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route(PATH, axum::routing::post(inbound))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn inbound(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(auth) = state.notifications.webhook() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let signed = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|sig| {
            verify(
                auth.auth_token.expose_secret(),
                &auth.public_url,
                &params,
                sig,
            )
        });
    if !signed {
        tracing::warn!("SMS webhook: missing or invalid X-Twilio-Signature; refused");
        return StatusCode::FORBIDDEN.into_response();
    }
    let field = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(from), Some(text)) = (field("From"), field("Body")) else {
        return reply(None);
    };
    // Not a number we text (a short code, another channel's address): nothing to apply.
    if !phone::is_e164(from) {
        return reply(None);
    }
    let (consent, word) = match keyword(text) {
        None => return reply(None),
        Some(Keyword::Help(_)) => return reply(Some(HELP_REPLY)),
        Some(Keyword::OptOut(w)) => (Consent::OptedOut, w),
        Some(Keyword::OptIn(w)) => (Consent::OptedIn, w),
    };
    match apply(&state, from, consent, word).await {
        Ok(true) => reply(Some(match consent {
            Consent::OptedOut => OPT_OUT_REPLY,
            _ => OPT_IN_REPLY,
        })),
        Ok(false) => reply(None),
        Err(e) => {
            // The error names ids only (MessagingError's rule); Twilio will show a failure.
            tracing::error!(error = %e, keyword = word, "SMS webhook: keyword not applied");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Records the keyword `word` from `from` (with identity told and the change audited, in one
/// transaction); whether it changed the number's state.
async fn apply(state: &AppState, from: &str, consent: Consent, word: &str) -> Result<bool> {
    let source = format!("webhook:{word}");
    let mut tx = state.pool.begin().await?;
    let applied = ledger::decide(
        &mut tx,
        state,
        from,
        &Decision {
            consent,
            source: &source,
            at: Utc::now(),
            user: None,
            record_repeat: false,
            only_if_newer: false,
            tell_identity: true,
        },
    )
    .await?;
    if applied.changed {
        let mut event = AuditEvent::of(
            kinds::SMS_CONSENT_CHANGE,
            Purpose::Operations,
            "sms_number",
            applied.number.id,
        )
        .outcome(audit::Outcome::Success, Some(word));
        // No user and no mTLS workload: the carrier, through its signed webhook.
        event.actor_workload = Some("sms-webhook".to_owned());
        if let Some(user) = applied.number.user_id {
            event = event.subject(user);
        }
        audit::record(&mut tx, &event).await?;
    }
    tx.commit().await?;
    tracing::info!(
        number_id = %applied.number.id,
        keyword = word,
        changed = applied.changed,
        "SMS keyword applied"
    );
    Ok(applied.changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The example of Twilio's webhook-security documentation (auth token 12345): an
    /// implementation that only agrees with itself would not reproduce it.
    #[test]
    fn twilio_documented_signature() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = pairs(&[
            ("Digits", "1234"),
            ("To", "+18005551212"),
            ("From", "+14158675310"),
            ("Caller", "+14158675310"),
            ("CallSid", "CA1234567890ABCDE"),
        ]);
        assert_eq!(sign("12345", url, &params), "GvWf1cFY/Q7PnoempGyD5oXAezc=");
        assert!(verify(
            "12345",
            url,
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!verify(
            "12344",
            url,
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!verify(
            "12345",
            "https://mycompany.com/myapp.php",
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!verify("12345", url, &params, "not base64!"));
        assert!(!verify("12345", url, &params, ""));
    }

    #[test]
    fn keywords_are_single_words_in_any_case() {
        assert_eq!(keyword(" stop "), Some(Keyword::OptOut("STOP")));
        assert_eq!(keyword("StopAll"), Some(Keyword::OptOut("STOPALL")));
        for w in OPT_OUT {
            assert_eq!(keyword(&w.to_lowercase()), Some(Keyword::OptOut(w)));
        }
        for w in OPT_IN {
            assert_eq!(keyword(w), Some(Keyword::OptIn(w)));
        }
        assert_eq!(keyword("info"), Some(Keyword::Help("INFO")));
        assert_eq!(keyword("please stop"), None);
        assert_eq!(keyword("STOP NOW"), None);
        assert_eq!(keyword("stopp"), None);
        assert_eq!(keyword(""), None);
    }

    #[test]
    fn twiml_escapes() {
        assert_eq!(
            twiml(Some("a & b")),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>a &amp; b</Message></Response>"
        );
        assert!(!twiml(None).contains("<Message>"));
    }
}
