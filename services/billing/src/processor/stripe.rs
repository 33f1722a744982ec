//! Stripe behind [`Processor`], over Stripe's REST API (PaymentIntents, Refunds, Customers,
//! PaymentMethods) with a pinned `Stripe-Version`, so that an upgrade of the account's default
//! API version cannot change the shapes this module reads.
//!
//! Why it is written the way it is:
//! - Every POST that creates something carries an `Idempotency-Key`: Stripe saves the first
//!   answer for a key and replays it, which is what makes billing's retry after a timeout or a
//!   crash charge once. The keys are billing's (`carehub-payment-<id>`, ...), or derived from the
//!   request itself where billing has none (attaching a card), so a retry reuses them.
//! - An unknown outcome is [`ProcessorError::Unavailable`] (connection error, timeout, 5xx, 429,
//!   409 "key in use"): the caller must ask again with the same key, never with a new one. Only
//!   an answer that says the request itself is wrong is [`ProcessorError::Rejected`].
//! - A declined card is an outcome, not an error: Stripe answers 402 with the PaymentIntent it
//!   created embedded in the error, and billing records that intent as failed.
//! - Minimum necessary: customers carry billing's customer id as metadata and nothing else, and
//!   error messages and logs carry HTTP status, Stripe's error type and code and its request id
//!   only — never the secret key, card data or a response body.
//! - Charges pin `payment_method_types[]=card`: with the newer API versions' automatic payment
//!   methods, an off-session confirmation without a `return_url` is refused when redirecting
//!   methods are enabled in the dashboard.
//! - reqwest is built without the `form` feature: bodies are encoded here
//!   (`application/x-www-form-urlencoded`, Stripe's `a[b]=c` nesting).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;
use uuid::Uuid;

use super::{
    CardDetails, ChargeOutcome, ChargeRequest, ChargeStatus, EventObject, Processor,
    ProcessorError, ProcessorEvent, RefundOutcome, RefundRequest, RefundStatus,
};

/// The API version every request is pinned to.
pub const STRIPE_VERSION: &str = "2024-06-20";

/// Stripe's REST API as billing's processor.
pub struct StripeProcessor {
    client: reqwest::Client,
    /// `https://api.stripe.com` (no trailing slash).
    base: String,
    secret_key: SecretString,
}

impl std::fmt::Debug for StripeProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeProcessor")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// One answer of Stripe's: status, JSON body (`Null` when it was not JSON) and Stripe's request
/// id (for support and logs).
struct Answer {
    status: StatusCode,
    body: Value,
    request_id: Option<String>,
}

impl StripeProcessor {
    /// A client for `api_base` (`https://api.stripe.com`, or a test double on loopback over plain
    /// HTTP) with `timeout` per request.
    pub fn new(
        api_base: &str,
        secret_key: SecretString,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let base = api_base.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base)
            .map_err(|_| anyhow::anyhow!("billing.processor.api_base `{base}` is not a URL"))?;
        let loopback = matches!(
            url.host_str(),
            Some("127.0.0.1") | Some("localhost") | Some("[::1]") | Some("::1")
        );
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => anyhow::bail!(
                "billing.processor.api_base must be https (plain http only on loopback): the secret key travels with every request"
            ),
        }
        if secret_key.expose_secret().trim().is_empty() {
            anyhow::bail!("billing.processor: the Stripe secret key is empty");
        }
        if HeaderValue::from_str(&format!("Bearer {}", secret_key.expose_secret())).is_err() {
            anyhow::bail!("billing.processor: the Stripe secret key is not a valid header value");
        }
        if timeout.is_zero() {
            anyhow::bail!("billing.processor: the timeout must be positive");
        }
        // reqwest is built without a default crypto provider: everything in carehub uses ring.
        if let Ok(provider) = Arc::try_unwrap(carehub_platform::tls::provider()) {
            let _ = provider.install_default();
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect is never part of Stripe's API; following one would carry the key along.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("carehub-billing/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("building the Stripe client: {e}"))?;
        Ok(StripeProcessor {
            client,
            base,
            secret_key,
        })
    }

    /// Sends one request. Transport failures are `Unavailable`; any HTTP answer is returned.
    async fn send(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        form: Option<&[(&str, String)]>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, ProcessorError> {
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", self.secret_key.expose_secret())).map_err(
                |_| ProcessorError::Rejected {
                    code: "authentication_error".into(),
                },
            )?;
        auth.set_sensitive(true);
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(AUTHORIZATION, auth)
            .header("Stripe-Version", STRIPE_VERSION);
        if let Some(key) = idempotency_key {
            let value = HeaderValue::from_str(key).map_err(|_| ProcessorError::Rejected {
                code: "invalid_idempotency_key".into(),
            })?;
            request = request.header("Idempotency-Key", value);
        }
        if let Some(params) = form {
            request = request
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form_encode(params));
        }
        let response = request.send().await.map_err(|e| {
            let why = transport_reason(&e);
            tracing::warn!(op, why, "stripe request failed");
            ProcessorError::Unavailable(format!("stripe {op}: {why}"))
        })?;
        let status = response.status();
        let request_id = response
            .headers()
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.map_err(|e| {
            let why = transport_reason(&e);
            tracing::warn!(op, status = status.as_u16(), why, "stripe answer lost");
            ProcessorError::Unavailable(format!("stripe {op}: answer lost ({why})"))
        })?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            request_id,
        })
    }

    /// The body of a 2xx answer, or the error that the answer stands for.
    fn success(op: &'static str, answer: Answer) -> Result<Value, ProcessorError> {
        if answer.status.is_success() {
            if answer.body.is_object() {
                return Ok(answer.body);
            }
            return Err(malformed(op, "not a JSON object"));
        }
        let err = error_for(
            op,
            answer.status.as_u16(),
            &answer.body,
            answer.request_id.as_deref(),
        );
        log_error(op, &answer, &err);
        Err(err)
    }

    async fn post(
        &self,
        op: &'static str,
        path: &str,
        form: &[(&str, String)],
        idempotency_key: Option<&str>,
    ) -> Result<Value, ProcessorError> {
        let answer = self
            .send(op, Method::POST, path, Some(form), idempotency_key)
            .await?;
        Self::success(op, answer)
    }

    async fn get(&self, op: &'static str, path: &str) -> Result<Value, ProcessorError> {
        let answer = self.send(op, Method::GET, path, None, None).await?;
        Self::success(op, answer)
    }

    /// Creates a PaymentMethod from a card token (`tok_...`, as Stripe.js's legacy token flow or
    /// Stripe's test tokens give them).
    async fn payment_method_from_token(
        &self,
        customer: &str,
        token: &str,
    ) -> Result<String, ProcessorError> {
        let pm = self
            .post(
                "create payment method",
                "/v1/payment_methods",
                &[("type", "card".into()), ("card[token]", token.into())],
                Some(&format!("pm-{customer}-{token}")),
            )
            .await?;
        str_at(&pm, &["id"])
            .map(str::to_owned)
            .ok_or_else(|| malformed("create payment method", "no id"))
    }
}

#[async_trait::async_trait]
impl Processor for StripeProcessor {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn create_customer(
        &self,
        idempotency_key: &str,
        customer_id: Uuid,
    ) -> Result<String, ProcessorError> {
        let customer = self
            .post(
                "create customer",
                "/v1/customers",
                &[("metadata[carehub_customer_id]", customer_id.to_string())],
                Some(idempotency_key),
            )
            .await?;
        str_at(&customer, &["id"])
            .map(str::to_owned)
            .ok_or_else(|| malformed("create customer", "no id"))
    }

    async fn attach_payment_method(
        &self,
        customer: &str,
        token: &str,
    ) -> Result<CardDetails, ProcessorError> {
        let method = if token.starts_with("tok_") {
            self.payment_method_from_token(customer, token).await?
        } else {
            token.to_owned()
        };
        let attached = self
            .post(
                "attach payment method",
                &format!("/v1/payment_methods/{}/attach", path_segment(&method)),
                &[("customer", customer.into())],
                Some(&format!("attach-{customer}-{token}")),
            )
            .await?;
        card_details(&attached).map_err(|why| match why {
            CardProblem::NotACard => ProcessorError::Rejected {
                code: "payment_method_not_card".into(),
            },
            CardProblem::Malformed(what) => malformed("attach payment method", what),
        })
    }

    async fn detach_payment_method(&self, processor_method_id: &str) -> Result<(), ProcessorError> {
        let path = format!("/v1/payment_methods/{}", path_segment(processor_method_id));
        match self
            .post(
                "detach payment method",
                &format!("{path}/detach"),
                &[],
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(refused @ ProcessorError::Rejected { .. }) => {
                // Stripe refuses to detach what is not attached; whether that is why is read
                // from the method itself rather than from an error message.
                let answer = self
                    .send("get payment method", Method::GET, &path, None, None)
                    .await?;
                if answer.status == StatusCode::NOT_FOUND {
                    return Ok(());
                }
                let method = Self::success("get payment method", answer)?;
                if method.get("customer").is_none_or(Value::is_null) {
                    Ok(())
                } else {
                    Err(refused)
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn charge(&self, req: &ChargeRequest<'_>) -> Result<ChargeOutcome, ProcessorError> {
        const OP: &str = "charge";
        let form = [
            ("amount", req.amount_minor.to_string()),
            ("currency", req.currency.to_ascii_lowercase()),
            ("customer", req.customer.to_owned()),
            ("payment_method", req.payment_method.to_owned()),
            ("payment_method_types[]", "card".to_owned()),
            ("confirm", "true".to_owned()),
            ("off_session", "true".to_owned()),
            ("metadata[carehub_payment_id]", req.payment_id.to_string()),
        ];
        let answer = self
            .send(
                OP,
                Method::POST,
                "/v1/payment_intents",
                Some(&form),
                Some(req.idempotency_key),
            )
            .await?;
        if answer.status == StatusCode::PAYMENT_REQUIRED {
            if let Some(outcome) = declined_outcome(&answer.body) {
                tracing::info!(
                    processor_payment_id = %outcome.processor_payment_id,
                    "stripe declined the charge"
                );
                return Ok(outcome);
            }
        }
        let intent = Self::success(OP, answer)?;
        intent_outcome(&intent).map_err(|what| malformed(OP, what))
    }

    async fn find_charge(&self, payment_id: Uuid) -> Result<Option<ChargeOutcome>, ProcessorError> {
        const OP: &str = "search charges";
        let query = format!("metadata['carehub_payment_id']:'{payment_id}'");
        let path = format!(
            "/v1/payment_intents/search?{}",
            form_encode(&[("query", query), ("limit", "10".into())])
        );
        let result = self.get(OP, &path).await?;
        let Some(found) = result.get("data").and_then(Value::as_array) else {
            return Err(malformed(OP, "no data"));
        };
        let outcomes = found
            .iter()
            .map(intent_outcome)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|what| malformed(OP, what))?;
        // One payment id has one intent unless a key expired and billing charged again: then the
        // one that took the money is the one that counts.
        let best = outcomes
            .iter()
            .position(|o| o.status == ChargeStatus::Succeeded)
            .unwrap_or(0);
        Ok(outcomes.into_iter().nth(best))
    }

    async fn get_charge(
        &self,
        processor_payment_id: &str,
    ) -> Result<ChargeOutcome, ProcessorError> {
        const OP: &str = "get charge";
        let intent = self
            .get(
                OP,
                &format!("/v1/payment_intents/{}", path_segment(processor_payment_id)),
            )
            .await?;
        intent_outcome(&intent).map_err(|what| malformed(OP, what))
    }

    async fn refund(&self, req: &RefundRequest<'_>) -> Result<RefundOutcome, ProcessorError> {
        const OP: &str = "refund";
        let refund = self
            .post(
                OP,
                "/v1/refunds",
                &[
                    ("payment_intent", req.processor_payment_id.to_owned()),
                    ("amount", req.amount_minor.to_string()),
                    ("metadata[carehub_refund_id]", req.refund_id.to_string()),
                ],
                Some(req.idempotency_key),
            )
            .await?;
        refund_outcome(&refund).map_err(|what| malformed(OP, what))
    }
}

/// Reads a Stripe Event (`id`, `type`, `created`, `data.object`) into what billing acts on. The
/// signature must have been checked before (the webhook does that): this only parses.
pub fn parse_event(payload: &[u8]) -> Result<ProcessorEvent, String> {
    let event: Value =
        serde_json::from_slice(payload).map_err(|e| format!("not a JSON event: {e}"))?;
    let id = str_at(&event, &["id"])
        .ok_or("event without id")?
        .to_owned();
    let kind = str_at(&event, &["type"])
        .ok_or("event without type")?
        .to_owned();
    let created = event
        .get("created")
        .and_then(Value::as_i64)
        .ok_or("event without created")?;
    let object = event.get("data").and_then(|d| d.get("object"));
    let object = match kind.as_str() {
        "payment_intent.succeeded"
        | "payment_intent.processing"
        | "payment_intent.requires_action"
        | "payment_intent.payment_failed"
        | "payment_intent.canceled" => {
            let intent = object.ok_or("payment_intent event without data.object")?;
            EventObject::Charge {
                payment_id: metadata_uuid(intent, "carehub_payment_id"),
                outcome: intent_outcome(intent).map_err(|e| format!("{kind}: {e}"))?,
            }
        }
        "refund.created" | "refund.updated" | "refund.failed" => {
            let refund = object.ok_or("refund event without data.object")?;
            match str_at(refund, &["payment_intent"]) {
                // A refund of a charge made without a PaymentIntent is not billing's.
                None => EventObject::Other,
                Some(pi) => EventObject::Refund {
                    refund_id: metadata_uuid(refund, "carehub_refund_id"),
                    processor_payment_id: pi.to_owned(),
                    amount_minor: refund
                        .get("amount")
                        .and_then(Value::as_i64)
                        .ok_or_else(|| format!("{kind}: refund without amount"))?,
                    outcome: refund_outcome(refund).map_err(|e| format!("{kind}: {e}"))?,
                },
            }
        }
        _ => EventObject::Other,
    };
    Ok(ProcessorEvent {
        id,
        kind,
        created,
        object,
    })
}

/// A PaymentIntent's state as billing sees it.
fn intent_outcome(intent: &Value) -> Result<ChargeOutcome, &'static str> {
    let id = str_at(intent, &["id"]).ok_or("payment intent without id")?;
    let status = str_at(intent, &["status"]).ok_or("payment intent without status")?;
    let failure_code = |fallback: &str| {
        str_at(intent, &["last_payment_error", "decline_code"])
            .or_else(|| str_at(intent, &["last_payment_error", "code"]))
            .unwrap_or(fallback)
            .to_owned()
    };
    let (status, captured_minor) = match status {
        "succeeded" => (
            ChargeStatus::Succeeded,
            intent
                .get("amount_received")
                .and_then(Value::as_i64)
                .ok_or("succeeded payment intent without amount_received")?,
        ),
        "requires_action" => (ChargeStatus::RequiresAction, 0),
        "requires_payment_method" => (
            ChargeStatus::Failed {
                code: failure_code("card_declined"),
            },
            0,
        ),
        "canceled" => (
            ChargeStatus::Failed {
                code: failure_code("canceled"),
            },
            0,
        ),
        // `processing`, and states an automatic-capture, confirmed intent should not be in
        // (`requires_confirmation`, `requires_capture`): the outcome is still to come.
        _ => (ChargeStatus::Processing, 0),
    };
    Ok(ChargeOutcome {
        processor_payment_id: id.to_owned(),
        status,
        captured_minor,
    })
}

/// A 402 `card_error` answer that embeds the PaymentIntent it created: a declined charge.
fn declined_outcome(body: &Value) -> Option<ChargeOutcome> {
    let error = body.get("error")?;
    let id = str_at(error, &["payment_intent", "id"])?;
    let code = str_at(error, &["decline_code"])
        .or_else(|| str_at(error, &["code"]))
        .unwrap_or("card_declined");
    Some(ChargeOutcome {
        processor_payment_id: id.to_owned(),
        status: ChargeStatus::Failed {
            code: code.to_owned(),
        },
        captured_minor: 0,
    })
}

/// A Refund's state as billing sees it.
fn refund_outcome(refund: &Value) -> Result<RefundOutcome, &'static str> {
    let id = str_at(refund, &["id"]).ok_or("refund without id")?;
    let status = match str_at(refund, &["status"]).ok_or("refund without status")? {
        "succeeded" => RefundStatus::Succeeded,
        failed @ ("failed" | "canceled") => RefundStatus::Failed {
            code: str_at(refund, &["failure_reason"])
                .unwrap_or(failed)
                .to_owned(),
        },
        // `pending`, `requires_action`, and whatever Stripe adds: not final yet.
        _ => RefundStatus::Pending,
    };
    Ok(RefundOutcome {
        processor_refund_id: id.to_owned(),
        status,
    })
}

enum CardProblem {
    NotACard,
    Malformed(&'static str),
}

/// What card an attached PaymentMethod is.
fn card_details(method: &Value) -> Result<CardDetails, CardProblem> {
    let id = str_at(method, &["id"]).ok_or(CardProblem::Malformed("no id"))?;
    let Some(card) = method.get("card").filter(|c| c.is_object()) else {
        return Err(CardProblem::NotACard);
    };
    let text = |field, what| {
        str_at(card, &[field])
            .map(str::to_owned)
            .ok_or(CardProblem::Malformed(what))
    };
    let number = |field, what| {
        card.get(field)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(CardProblem::Malformed(what))
    };
    Ok(CardDetails {
        processor_method_id: id.to_owned(),
        brand: text("brand", "no card.brand")?,
        last4: text("last4", "no card.last4")?,
        exp_month: number("exp_month", "no card.exp_month")?,
        exp_year: number("exp_year", "no card.exp_year")?,
    })
}

/// What an HTTP error answer means for billing: ask again, or give up on the request.
fn error_for(op: &str, status: u16, body: &Value, request_id: Option<&str>) -> ProcessorError {
    let error = body.get("error");
    let kind = error.and_then(|e| str_at(e, &["type"]));
    let code = error.and_then(|e| str_at(e, &["code"]));
    let detail = || {
        let mut s = format!("stripe {op}: HTTP {status}");
        if let Some(kind) = kind {
            s.push_str(&format!(" {kind}"));
        }
        if let Some(code) = code {
            s.push_str(&format!("/{code}"));
        }
        if let Some(id) = request_id {
            s.push_str(&format!(" (request {id})"));
        }
        s
    };
    match status {
        // 409: another request with the same key is in flight; its outcome will be replayed.
        409 | 429 | 500..=599 => ProcessorError::Unavailable(detail()),
        401 => ProcessorError::Rejected {
            code: "authentication_error".into(),
        },
        403 => ProcessorError::Rejected {
            code: code.unwrap_or("permission_error").to_owned(),
        },
        400..=499 => ProcessorError::Rejected {
            code: code
                .or(kind)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("http_{status}")),
        },
        // 1xx/3xx (redirects are not followed): not Stripe's API answering.
        _ => ProcessorError::Unavailable(detail()),
    }
}

fn log_error(op: &'static str, answer: &Answer, err: &ProcessorError) {
    let error = answer.body.get("error");
    let kind = error.and_then(|e| str_at(e, &["type"])).unwrap_or("");
    let code = error.and_then(|e| str_at(e, &["code"])).unwrap_or("");
    let request_id = answer.request_id.as_deref().unwrap_or("");
    match err {
        ProcessorError::Unavailable(_) => tracing::warn!(
            op,
            status = answer.status.as_u16(),
            kind,
            code,
            request_id,
            "stripe unavailable"
        ),
        ProcessorError::Rejected { .. } => tracing::info!(
            op,
            status = answer.status.as_u16(),
            kind,
            code,
            request_id,
            "stripe refused the request"
        ),
    }
}

/// A 2xx answer billing cannot read: the outcome is unknown, so asking again (same key) is the
/// only safe move.
fn malformed(op: &str, what: &str) -> ProcessorError {
    tracing::warn!(op, what, "stripe answer malformed");
    ProcessorError::Unavailable(format!("stripe {op}: malformed answer ({what})"))
}

/// Why a request got no answer, without the URL (it carries ids) or anything else from it.
fn transport_reason(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "answer interrupted"
    } else if e.is_request() {
        "request failed"
    } else {
        "transport error"
    }
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

fn metadata_uuid(object: &Value, key: &str) -> Option<Uuid> {
    str_at(object, &["metadata", key]).and_then(|s| Uuid::parse_str(s).ok())
}

/// `application/x-www-form-urlencoded` (the WHATWG form serializer's byte set).
fn form_encode(params: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode_into(&mut out, key, true);
        out.push('=');
        percent_encode_into(&mut out, value, true);
    }
    out
}

/// An id as one URL path segment: ids are `[A-Za-z0-9_]`, anything else is escaped so that an
/// id can never change the path.
fn path_segment(id: &str) -> String {
    let mut out = String::new();
    percent_encode_into(&mut out, id, false);
    out
}

fn percent_encode_into(out: &mut String, s: &str, space_as_plus: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' if space_as_plus => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn form_encoding_escapes_brackets_quotes_and_spaces() {
        assert_eq!(
            form_encode(&[
                ("metadata[carehub_payment_id]", "a b".into()),
                ("query", "metadata['k']:'v'".into()),
                ("x", "é&=+".into()),
            ]),
            "metadata%5Bcarehub_payment_id%5D=a+b&query=metadata%5B%27k%27%5D%3A%27v%27&x=%C3%A9%26%3D%2B"
        );
        assert_eq!(path_segment("pm_1/../x y"), "pm_1%2F..%2Fx%20y");
    }

    #[test]
    fn new_refuses_plain_http_off_loopback_and_empty_keys() {
        let key = || SecretString::from("sk_test_x");
        let t = Duration::from_secs(1);
        assert!(StripeProcessor::new("https://api.stripe.com", key(), t).is_ok());
        assert!(StripeProcessor::new("http://127.0.0.1:1234/", key(), t).is_ok());
        assert!(StripeProcessor::new("http://stripe.example.com", key(), t).is_err());
        assert!(StripeProcessor::new("not a url", key(), t).is_err());
        assert!(StripeProcessor::new("https://api.stripe.com", "".into(), t).is_err());
        let p = StripeProcessor::new("https://api.stripe.com", key(), t).unwrap();
        assert!(!format!("{p:?}").contains("sk_test_x"));
    }

    /// Abridged from Stripe's API reference ("The PaymentIntent object").
    fn intent(status: &str) -> Value {
        json!({
            "id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
            "object": "payment_intent",
            "amount": 2000,
            "amount_capturable": 0,
            "amount_received": if status == "succeeded" { 2000 } else { 0 },
            "capture_method": "automatic",
            "currency": "usd",
            "customer": "cus_NffrFeUfNV2Hib",
            "last_payment_error": null,
            "latest_charge": null,
            "metadata": {"carehub_payment_id": "0190b5c4-4c7e-7d2a-9e62-0a4f3f0e1a2b"},
            "payment_method": "pm_1MtwBwLkdIwHu7ixgMXhA9Kh",
            "status": status
        })
    }

    #[test]
    fn intent_statuses_map_to_charge_statuses() {
        let o = intent_outcome(&intent("succeeded")).unwrap();
        assert_eq!(o.status, ChargeStatus::Succeeded);
        assert_eq!(o.captured_minor, 2000);
        assert_eq!(o.processor_payment_id, "pi_3MtwBwLkdIwHu7ix28a3tqPa");
        assert_eq!(
            intent_outcome(&intent("processing")).unwrap().status,
            ChargeStatus::Processing
        );
        assert_eq!(
            intent_outcome(&intent("requires_action")).unwrap().status,
            ChargeStatus::RequiresAction
        );
        assert_eq!(
            intent_outcome(&intent("requires_payment_method"))
                .unwrap()
                .status,
            ChargeStatus::Failed {
                code: "card_declined".into()
            }
        );
        assert_eq!(
            intent_outcome(&intent("canceled")).unwrap().status,
            ChargeStatus::Failed {
                code: "canceled".into()
            }
        );
        let mut declined = intent("requires_payment_method");
        declined["last_payment_error"] = json!({
            "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds"
        });
        assert_eq!(
            intent_outcome(&declined).unwrap().status,
            ChargeStatus::Failed {
                code: "insufficient_funds".into()
            }
        );
        declined["last_payment_error"] = json!({"type": "card_error", "code": "expired_card"});
        assert_eq!(
            intent_outcome(&declined).unwrap().status,
            ChargeStatus::Failed {
                code: "expired_card".into()
            }
        );
        assert!(intent_outcome(&json!({"id": "pi_1"})).is_err());
        let mut no_amount = intent("succeeded");
        no_amount.as_object_mut().unwrap().remove("amount_received");
        assert!(intent_outcome(&no_amount).is_err());
    }

    #[test]
    fn a_402_with_an_embedded_intent_is_a_declined_charge() {
        let mut pi = intent("requires_payment_method");
        pi["last_payment_error"] =
            json!({"code": "card_declined", "decline_code": "generic_decline"});
        let body = json!({"error": {
            "type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
            "message": "Your card was declined.", "payment_intent": pi
        }});
        let o = declined_outcome(&body).unwrap();
        assert_eq!(o.processor_payment_id, "pi_3MtwBwLkdIwHu7ix28a3tqPa");
        assert_eq!(
            o.status,
            ChargeStatus::Failed {
                code: "generic_decline".into()
            }
        );
        let body =
            json!({"error": {"type": "card_error", "code": "expired_card", "payment_intent": pi}});
        assert_eq!(
            declined_outcome(&body).unwrap().status,
            ChargeStatus::Failed {
                code: "expired_card".into()
            }
        );
        assert!(declined_outcome(&json!({"error": {"type": "card_error"}})).is_none());
    }

    #[test]
    fn refund_statuses_map_to_refund_statuses() {
        let refund = |status: &str, reason: Value| {
            json!({"id": "re_1Nispe2eZvKYlo2Cd31jOCgZ", "object": "refund", "amount": 1000,
                   "payment_intent": "pi_1", "status": status, "failure_reason": reason})
        };
        let s = |v| refund_outcome(&v).unwrap().status;
        assert_eq!(s(refund("succeeded", Value::Null)), RefundStatus::Succeeded);
        assert_eq!(s(refund("pending", Value::Null)), RefundStatus::Pending);
        assert_eq!(
            s(refund("requires_action", Value::Null)),
            RefundStatus::Pending
        );
        assert_eq!(
            s(refund("failed", json!("expired_or_canceled_card"))),
            RefundStatus::Failed {
                code: "expired_or_canceled_card".into()
            }
        );
        assert_eq!(
            s(refund("canceled", Value::Null)),
            RefundStatus::Failed {
                code: "canceled".into()
            }
        );
        assert!(refund_outcome(&json!({"status": "succeeded"})).is_err());
    }

    #[test]
    fn http_errors_map_to_unavailable_or_rejected() {
        let err = |kind: &str, code: Option<&str>| json!({"error": {"type": kind, "code": code}});
        let unavailable = |status, body: &Value| {
            matches!(
                error_for("op", status, body, None),
                ProcessorError::Unavailable(_)
            )
        };
        assert!(unavailable(500, &err("api_error", None)));
        assert!(unavailable(503, &Value::Null));
        assert!(unavailable(
            429,
            &err("invalid_request_error", Some("rate_limit"))
        ));
        assert!(unavailable(409, &err("idempotency_error", None)));
        assert!(unavailable(302, &Value::Null));
        let rejected = |status, body: &Value| error_for("op", status, body, Some("req_1"));
        assert_eq!(
            rejected(400, &err("invalid_request_error", Some("resource_missing"))),
            ProcessorError::Rejected {
                code: "resource_missing".into()
            }
        );
        assert_eq!(
            rejected(400, &err("idempotency_error", None)),
            ProcessorError::Rejected {
                code: "idempotency_error".into()
            }
        );
        assert_eq!(
            rejected(401, &err("invalid_request_error", None)),
            ProcessorError::Rejected {
                code: "authentication_error".into()
            }
        );
        assert_eq!(
            rejected(404, &Value::Null),
            ProcessorError::Rejected {
                code: "http_404".into()
            }
        );
        // The message names the request, never the body.
        let body = json!({"error": {"type": "api_error", "message": "card 4242424242424242"}});
        let ProcessorError::Unavailable(msg) = error_for("charge", 500, &body, Some("req_9"))
        else {
            panic!("5xx is unavailable");
        };
        assert_eq!(msg, "stripe charge: HTTP 500 api_error (request req_9)");
    }

    #[test]
    fn card_details_are_read_from_the_payment_method() {
        let pm = json!({
            "id": "pm_1MqLiJLkdIwHu7ixUEgbFdYF", "object": "payment_method", "type": "card",
            "customer": "cus_1",
            "card": {"brand": "visa", "last4": "4242", "exp_month": 8, "exp_year": 2026,
                     "funding": "credit", "country": "US"}
        });
        let Ok(card) = card_details(&pm) else {
            panic!("a card");
        };
        assert_eq!(
            card,
            CardDetails {
                processor_method_id: "pm_1MqLiJLkdIwHu7ixUEgbFdYF".into(),
                brand: "visa".into(),
                last4: "4242".into(),
                exp_month: 8,
                exp_year: 2026,
            }
        );
        let bank = json!({"id": "pm_2", "type": "us_bank_account", "us_bank_account": {}});
        assert!(matches!(card_details(&bank), Err(CardProblem::NotACard)));
    }

    /// Abridged from Stripe's "The Event object" and webhook docs.
    fn event(kind: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy",
            "object": "event",
            "api_version": "2024-06-20",
            "created": 1686089970,
            "data": {"object": object},
            "livemode": false,
            "pending_webhooks": 0,
            "request": {"id": null, "idempotency_key": null},
            "type": kind
        }))
        .unwrap()
    }

    #[test]
    fn payment_intent_events_carry_the_payment_id_and_outcome() {
        let e = parse_event(&event("payment_intent.succeeded", intent("succeeded"))).unwrap();
        assert_eq!(e.id, "evt_1NG8Du2eZvKYlo2CUI79vXWy");
        assert_eq!(e.kind, "payment_intent.succeeded");
        assert_eq!(e.created, 1686089970);
        assert_eq!(
            e.object,
            EventObject::Charge {
                payment_id: Some("0190b5c4-4c7e-7d2a-9e62-0a4f3f0e1a2b".parse().unwrap()),
                outcome: ChargeOutcome {
                    processor_payment_id: "pi_3MtwBwLkdIwHu7ix28a3tqPa".into(),
                    status: ChargeStatus::Succeeded,
                    captured_minor: 2000,
                },
            }
        );
        let mut failed = intent("requires_payment_method");
        failed["metadata"] = json!({"carehub_payment_id": "not-a-uuid"});
        failed["last_payment_error"] =
            json!({"code": "card_declined", "decline_code": "lost_card"});
        let e = parse_event(&event("payment_intent.payment_failed", failed)).unwrap();
        let EventObject::Charge {
            payment_id,
            outcome,
        } = e.object
        else {
            panic!("a charge event");
        };
        assert_eq!(payment_id, None);
        assert_eq!(
            outcome.status,
            ChargeStatus::Failed {
                code: "lost_card".into()
            }
        );
        let e = parse_event(&event("payment_intent.canceled", intent("canceled"))).unwrap();
        assert!(matches!(
            e.object,
            EventObject::Charge {
                outcome: ChargeOutcome {
                    status: ChargeStatus::Failed { .. },
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn refund_events_carry_the_refund_id_and_outcome() {
        let refund = json!({
            "id": "re_1Nispe2eZvKYlo2Cd31jOCgZ", "object": "refund", "amount": 1000,
            "charge": "ch_1NirD82eZvKYlo2CIvbtLWuY", "currency": "usd",
            "metadata": {"carehub_refund_id": "0190b5c4-4c7e-7d2a-9e62-0a4f3f0e1a2c"},
            "payment_intent": "pi_1", "reason": null, "status": "succeeded"
        });
        let e = parse_event(&event("refund.updated", refund.clone())).unwrap();
        assert_eq!(
            e.object,
            EventObject::Refund {
                refund_id: Some("0190b5c4-4c7e-7d2a-9e62-0a4f3f0e1a2c".parse().unwrap()),
                processor_payment_id: "pi_1".into(),
                amount_minor: 1000,
                outcome: RefundOutcome {
                    processor_refund_id: "re_1Nispe2eZvKYlo2Cd31jOCgZ".into(),
                    status: RefundStatus::Succeeded,
                },
            }
        );
        let mut failed = refund.clone();
        failed["status"] = json!("failed");
        failed["failure_reason"] = json!("lost_or_stolen_card");
        let e = parse_event(&event("refund.failed", failed)).unwrap();
        assert!(matches!(
            e.object,
            EventObject::Refund { outcome: RefundOutcome { status: RefundStatus::Failed { ref code }, .. }, .. }
                if code == "lost_or_stolen_card"
        ));
        let mut no_pi = refund;
        no_pi["payment_intent"] = Value::Null;
        assert_eq!(
            parse_event(&event("refund.created", no_pi)).unwrap().object,
            EventObject::Other
        );
    }

    #[test]
    fn other_and_malformed_events() {
        let e = parse_event(&event("customer.created", json!({"id": "cus_1"}))).unwrap();
        assert_eq!(e.object, EventObject::Other);
        let e = parse_event(&event(
            "payment_intent.created",
            intent("requires_confirmation"),
        ));
        assert_eq!(e.unwrap().object, EventObject::Other);
        assert!(parse_event(b"{not json").is_err());
        assert!(parse_event(br#"{"type": "x", "created": 1}"#).is_err());
        assert!(parse_event(br#"{"id": "evt_1", "created": 1}"#).is_err());
        assert!(parse_event(br#"{"id": "evt_1", "type": "x"}"#).is_err());
        assert!(parse_event(
            br#"{"id": "evt_1", "type": "payment_intent.succeeded", "created": 1, "data": {}}"#
        )
        .is_err());
        assert!(parse_event(&event("payment_intent.succeeded", json!({"id": "pi_1"}))).is_err());
    }
}
