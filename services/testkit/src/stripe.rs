//! A Stripe API double: an in-process HTTP server on 127.0.0.1:0 that answers the part of
//! Stripe's REST API billing uses (Customers, PaymentMethods, PaymentIntents with search,
//! Refunds) as Stripe's API reference specifies it — form-encoded requests, Stripe's JSON
//! objects, ids and error bodies, and idempotent requests.
//!
//! Why a double: billing's Stripe adapter must be tested against the API it is written for, and
//! no Stripe endpoint is reachable from the tests. Stripe's own mock server (`stripe-mock`) is a
//! Go binary that keeps no state and ignores idempotency keys, which is precisely what billing's
//! "never charge twice" tests are about; so the double keeps state: customers, payment methods,
//! intents, refunds and every idempotency key's first answer.
//!
//! What it models, as Stripe documents it:
//! - authentication with the secret key [`SECRET_KEY`] (`Authorization: Bearer`, or basic auth
//!   with the key as user name); anything else is a 401;
//! - Stripe's test payment methods and tokens (`pm_card_visa`, `tok_visa`,
//!   `pm_card_chargeDeclined`, `pm_card_chargeDeclinedInsufficientFunds`,
//!   `pm_card_authenticationRequired`, ...; see [`TEST_CARDS`]): attaching `pm_card_visa` makes a
//!   new `pm_...` for the customer, declines answer 402 `card_error` with the PaymentIntent
//!   embedded, `authenticationRequired` leaves the intent in `requires_action`;
//! - `Idempotency-Key`: the first answer (status and body) is saved once execution began and
//!   replayed with `Idempotent-Replayed: true`; other parameters (or another endpoint) under a
//!   used key are a 400 `idempotency_error`; a key whose first request is still running is a
//!   409 `idempotency_error`; requests that fail parameter validation save nothing.
//!
//! What it adds for tests, because real failures are what billing's retries are for:
//! [`StripeDouble::hold_charges`] (a charge is captured and then not answered until released:
//! the client times out or is killed while Stripe has the money) and
//! [`StripeDouble::drop_next_charge_answers`] (a charge is captured, its answer saved for the
//! key, and the caller gets a 500: the processor succeeded and the call then failed). Work of a
//! request runs in a task of its own, so a client that disconnects does not cancel it — as with
//! the real service.
//!
//! Known differences: search answers at once (Stripe's search index lags by up to a minute);
//! `pm_card_authenticationRequired` confirmed off-session answers `requires_action` where
//! Stripe would fail the intent with `authentication_required`; refunds succeed at once.
//!
//! [`signed_event`] builds a webhook delivery (an Event and its `Stripe-Signature` header).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The secret key requests must present.
pub const SECRET_KEY: &str = "sk_test_carehub_double";

/// What a test card does when charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardBehavior {
    Succeeds,
    /// Declined: 402 `card_error` with this `code` and `decline_code`.
    Declines {
        code: &'static str,
        decline_code: &'static str,
        message: &'static str,
    },
    /// The issuer asks for authentication: the intent stays in `requires_action`.
    RequiresAuthentication,
}

/// One of Stripe's documented test cards: `pm_card_<name>` and `tok_<name>`.
#[derive(Clone, Copy, Debug)]
pub struct TestCard {
    pub name: &'static str,
    pub brand: &'static str,
    pub last4: &'static str,
    pub funding: &'static str,
    pub behavior: CardBehavior,
}

const DECLINED: &str = "Your card was declined.";

/// The test cards the double knows (from Stripe's testing documentation).
pub const TEST_CARDS: &[TestCard] = &[
    card("visa", "visa", "4242", "credit", CardBehavior::Succeeds),
    card(
        "visa_debit",
        "visa",
        "5556",
        "debit",
        CardBehavior::Succeeds,
    ),
    card(
        "mastercard",
        "mastercard",
        "4444",
        "credit",
        CardBehavior::Succeeds,
    ),
    card(
        "mastercard_debit",
        "mastercard",
        "8210",
        "debit",
        CardBehavior::Succeeds,
    ),
    card("amex", "amex", "8431", "credit", CardBehavior::Succeeds),
    card(
        "discover",
        "discover",
        "1117",
        "credit",
        CardBehavior::Succeeds,
    ),
    card(
        "chargeDeclined",
        "visa",
        "0002",
        "credit",
        declines("card_declined", "generic_decline", DECLINED),
    ),
    card(
        "chargeDeclinedInsufficientFunds",
        "visa",
        "9995",
        "credit",
        declines(
            "card_declined",
            "insufficient_funds",
            "Your card has insufficient funds.",
        ),
    ),
    card(
        "chargeDeclinedLostCard",
        "visa",
        "9987",
        "credit",
        declines("card_declined", "lost_card", DECLINED),
    ),
    card(
        "chargeDeclinedStolenCard",
        "visa",
        "9979",
        "credit",
        declines("card_declined", "stolen_card", DECLINED),
    ),
    card(
        "chargeDeclinedExpiredCard",
        "visa",
        "0069",
        "credit",
        declines("expired_card", "expired_card", "Your card has expired."),
    ),
    card(
        "chargeDeclinedIncorrectCvc",
        "visa",
        "0127",
        "credit",
        declines(
            "incorrect_cvc",
            "incorrect_cvc",
            "Your card's security code is incorrect.",
        ),
    ),
    card(
        "chargeCustomerFail",
        "visa",
        "0341",
        "credit",
        declines("card_declined", "generic_decline", DECLINED),
    ),
    card(
        "authenticationRequired",
        "visa",
        "3184",
        "credit",
        CardBehavior::RequiresAuthentication,
    ),
];

const fn card(
    name: &'static str,
    brand: &'static str,
    last4: &'static str,
    funding: &'static str,
    behavior: CardBehavior,
) -> TestCard {
    TestCard {
        name,
        brand,
        last4,
        funding,
        behavior,
    }
}

const fn declines(
    code: &'static str,
    decline_code: &'static str,
    message: &'static str,
) -> CardBehavior {
    CardBehavior::Declines {
        code,
        decline_code,
        message,
    }
}

fn test_card(id: &str, prefix: &str) -> Option<TestCard> {
    let name = id.strip_prefix(prefix)?;
    TEST_CARDS.iter().copied().find(|c| c.name == name)
}

/// One request as the double received it (for assertions on headers and parameters).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub idempotency_key: Option<String>,
    pub stripe_version: Option<String>,
    pub content_type: Option<String>,
    /// Form parameters (POST) or query parameters (GET), in order.
    pub params: Vec<(String, String)>,
}

/// The running double. Stops when dropped.
pub struct StripeDouble {
    addr: SocketAddr,
    state: Arc<DoubleState>,
    server: JoinHandle<()>,
}

struct DoubleState {
    inner: Mutex<Inner>,
    /// `true`: charges wait after capturing.
    hold: watch::Sender<bool>,
    held: AtomicUsize,
    drop_next: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    customers: HashMap<String, Value>,
    methods: HashMap<String, StoredMethod>,
    /// In creation order.
    intents: Vec<Value>,
    refunds: Vec<Value>,
    idempotency: HashMap<String, IdempotencyEntry>,
    requests: Vec<RecordedRequest>,
}

struct StoredMethod {
    json: Value,
    behavior: CardBehavior,
    /// Detached, or used without a customer: Stripe refuses to use it again.
    consumed: bool,
}

struct IdempotencyEntry {
    /// Endpoint and parameters of the first request (parameters sorted).
    fingerprint: (String, Vec<(String, String)>),
    /// `None` while the first request runs.
    saved: Option<Saved>,
}

#[derive(Clone)]
struct Saved {
    status: StatusCode,
    body: Value,
    request_id: String,
}

/// What a POST did.
struct Executed {
    status: StatusCode,
    body: Value,
    /// Saved for its idempotency key (Stripe saves nothing for parameter validation errors).
    save: bool,
    /// A PaymentIntent was created (charge faults apply).
    intent_created: bool,
}

impl Executed {
    fn ok(body: Value) -> Self {
        Executed {
            status: StatusCode::OK,
            body,
            save: true,
            intent_created: false,
        }
    }
}

/// A Stripe error answer.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
    param: Option<&'static str>,
    /// Parameter validation failed: nothing is saved for the idempotency key.
    validation: bool,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
            param: None,
            validation: false,
        }
    }
    fn missing_param(param: &'static str) -> Self {
        ApiError {
            code: Some("parameter_missing"),
            param: Some(param),
            validation: true,
            ..ApiError::invalid(format!("Missing required param: {param}."))
        }
    }
    fn no_such(param: &'static str, what: &str, id: &str) -> Self {
        ApiError {
            code: Some("resource_missing"),
            param: Some(param),
            ..ApiError::invalid(format!("No such {what}: '{id}'"))
        }
    }
    fn not_found(what: &str, id: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("resource_missing"),
            ..ApiError::invalid(format!("No such {what}: '{id}'"))
        }
    }
    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }
    fn validation(mut self) -> Self {
        self.validation = true;
        self
    }
    fn body(&self) -> Value {
        let mut error = json!({"type": self.kind, "message": self.message});
        if let Some(code) = self.code {
            error["code"] = json!(code);
            error["doc_url"] = json!(format!("https://stripe.com/docs/error-codes/{code}"));
        }
        if let Some(param) = self.param {
            error["param"] = json!(param);
        }
        json!({ "error": error })
    }
    fn executed(self) -> Executed {
        Executed {
            status: self.status,
            body: self.body(),
            save: !self.validation,
            intent_created: false,
        }
    }
}

impl StripeDouble {
    /// The secret key requests must present (the module's [`SECRET_KEY`]).
    pub const SECRET_KEY: &'static str = SECRET_KEY;

    /// Starts the double on 127.0.0.1:0.
    pub async fn start() -> StripeDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the Stripe double");
        let addr = listener.local_addr().expect("the Stripe double's address");
        let (hold, _) = watch::channel(false);
        let state = Arc::new(DoubleState {
            inner: Mutex::new(Inner::default()),
            hold,
            held: AtomicUsize::new(0),
            drop_next: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StripeDouble {
            addr,
            state,
            server,
        }
    }

    /// `http://127.0.0.1:<port>`: the API base.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While `true`, a `POST /v1/payment_intents` records (and captures) its intent and then
    /// does not answer until `hold_charges(false)`.
    pub fn hold_charges(&self, hold: bool) {
        self.state.hold.send_replace(hold);
    }

    /// Charges now waiting under [`hold_charges`](Self::hold_charges).
    pub fn held_charges(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Waits (up to 30 s, else panics) until at least `n` charges are held.
    pub async fn wait_for_held_charges(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.held_charges() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Stripe double: {n} held charge(s) expected, {} held",
                self.held_charges()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next `n` charge requests record their intent (and save their answer for the key) and
    /// then answer 500 `api_error`.
    pub fn drop_next_charge_answers(&self, n: usize) {
        self.state.drop_next.store(n, Ordering::SeqCst);
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.state.lock()
    }

    /// Succeeded intents whose `metadata[carehub_payment_id]` is `payment_id`.
    pub fn captured_for(&self, payment_id: &str) -> usize {
        self.inner()
            .intents
            .iter()
            .filter(|pi| {
                pi["status"] == "succeeded" && pi["metadata"]["carehub_payment_id"] == payment_id
            })
            .count()
    }

    /// Every PaymentIntent created.
    pub fn intent_count(&self) -> usize {
        self.inner().intents.len()
    }

    /// What all intents captured (minor units, any currency).
    pub fn total_captured(&self) -> i64 {
        self.inner()
            .intents
            .iter()
            .filter_map(|pi| pi["amount_received"].as_i64())
            .sum()
    }

    /// What succeeded or pending refunds of `pi` add up to.
    pub fn refunded(&self, pi: &str) -> i64 {
        refunded_of(&self.inner(), pi)
    }

    /// The current PaymentIntent object (panics when unknown).
    pub fn payment_intent_json(&self, pi: &str) -> Value {
        self.inner()
            .intents
            .iter()
            .find(|v| v["id"] == pi)
            .cloned()
            .unwrap_or_else(|| panic!("Stripe double: no payment intent {pi}"))
    }

    /// The current Refund object (panics when unknown).
    pub fn refund_json(&self, re: &str) -> Value {
        self.inner()
            .refunds
            .iter()
            .find(|v| v["id"] == re)
            .cloned()
            .unwrap_or_else(|| panic!("Stripe double: no refund {re}"))
    }

    /// The current Customer object (panics when unknown).
    pub fn customer_json(&self, cus: &str) -> Value {
        self.inner()
            .customers
            .get(cus)
            .cloned()
            .unwrap_or_else(|| panic!("Stripe double: no customer {cus}"))
    }

    /// The current PaymentMethod object (panics when unknown).
    pub fn payment_method_json(&self, pm: &str) -> Value {
        self.inner()
            .methods
            .get(pm)
            .map(|m| m.json.clone())
            .unwrap_or_else(|| panic!("Stripe double: no payment method {pm}"))
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner().requests.clone()
    }

    /// The cardholder completes (or fails) the authentication a `requires_action` intent waits
    /// for: it then succeeds (and captures) or falls back to `requires_payment_method` with
    /// `payment_intent_authentication_failure`. Returns the intent.
    pub fn authenticate(&self, pi: &str, succeed: bool) -> Value {
        let mut inner = self.inner();
        let intent = inner
            .intents
            .iter_mut()
            .find(|v| v["id"] == pi)
            .unwrap_or_else(|| panic!("Stripe double: no payment intent {pi}"));
        assert_eq!(
            intent["status"], "requires_action",
            "Stripe double: {pi} does not wait for authentication"
        );
        intent["next_action"] = Value::Null;
        if succeed {
            intent["status"] = json!("succeeded");
            intent["amount_received"] = intent["amount"].clone();
        } else {
            intent["status"] = json!("requires_payment_method");
            intent["last_payment_error"] = json!({
                "type": "invalid_request_error",
                "code": "payment_intent_authentication_failure",
                "message": "The provided PaymentMethod has failed authentication.",
                "payment_method": {"id": intent["payment_method"].clone()},
            });
            intent["payment_method"] = Value::Null;
        }
        intent.clone()
    }
}

impl Drop for StripeDouble {
    fn drop(&mut self) {
        // Held charges finish (their tasks end) rather than wait forever.
        self.state.hold.send_replace(false);
        self.server.abort();
    }
}

impl DoubleState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A webhook delivery: a Stripe Event (`evt_...`) of `event_type` carrying `object`, and its
/// `Stripe-Signature` header signed with `secret` at `created`.
pub fn signed_event(
    event_type: &str,
    object: Value,
    secret: &str,
    created: i64,
) -> (String, Vec<u8>) {
    let event = json!({
        "id": random_id("evt", 24),
        "object": "event",
        "api_version": STRIPE_VERSION,
        "created": created,
        "data": {"object": object},
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": event_type,
    });
    let body = serde_json::to_vec(&event).expect("serializing an event");
    (signature_header(secret, created, &body), body)
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`: Stripe's webhook
/// signature scheme.
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let v1 = data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes());
    format!("t={timestamp},v1={v1}")
}

/// The API version the double answers as.
const STRIPE_VERSION: &str = "2024-06-20";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn random_alphanumeric(len: usize) -> String {
    use rand::Rng as _;
    rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn random_id(prefix: &str, len: usize) -> String {
    format!("{prefix}_{}", random_alphanumeric(len))
}

fn json_response(status: StatusCode, body: &Value, request_id: &str) -> Response {
    let mut response = (status, axum::Json(body.clone())).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("request-id", v);
    }
    headers.insert("stripe-version", HeaderValue::from_static(STRIPE_VERSION));
    response
}

fn authorized(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        return token == SECRET_KEY;
    }
    if let Some(basic) = value.strip_prefix("Basic ") {
        let decoded = data_encoding::BASE64
            .decode(basic.trim().as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        return decoded.is_some_and(|s| s.split(':').next() == Some(SECRET_KEY));
    }
    false
}

fn parse_params(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw).into_owned().collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `metadata[k]=v` parameters as Stripe's metadata object.
fn metadata(params: &[(String, String)]) -> Result<Value, ApiError> {
    let mut map = Map::new();
    for (k, v) in params {
        if let Some(key) = k
            .strip_prefix("metadata[")
            .and_then(|k| k.strip_suffix(']'))
        {
            if key.is_empty() || key.chars().count() > 40 || v.chars().count() > 500 {
                return Err(ApiError::invalid(
                    "Metadata keys are at most 40 characters and values at most 500.",
                )
                .param("metadata")
                .validation());
            }
            map.insert(key.to_owned(), json!(v));
        }
    }
    if map.len() > 50 {
        return Err(ApiError::invalid("Metadata can have at most 50 keys.")
            .param("metadata")
            .validation());
    }
    Ok(Value::Object(map))
}

fn positive_integer(
    params: &[(String, String)],
    key: &'static str,
) -> Result<Option<i64>, ApiError> {
    match param(params, key) {
        None => Ok(None),
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(
                ApiError::invalid(format!("Invalid positive integer: {raw}"))
                    .code("parameter_invalid_integer")
                    .param(key)
                    .validation(),
            ),
        },
    }
}

fn boolean(params: &[(String, String)], key: &'static str) -> Result<bool, ApiError> {
    match param(params, key) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(raw) => Err(ApiError::invalid(format!("Invalid boolean: {raw}"))
            .param(key)
            .validation()),
    }
}

async fn handle(
    State(state): State<Arc<DoubleState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = random_id("req", 14);
    let params = if method == Method::POST {
        parse_params(&body)
    } else {
        parse_params(uri.query().unwrap_or("").as_bytes())
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let idempotency_key = header("idempotency-key");
    state.lock().requests.push(RecordedRequest {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        idempotency_key: idempotency_key.clone(),
        stripe_version: header("stripe-version"),
        content_type: header("content-type"),
        params: params.clone(),
    });
    if !authorized(&headers) {
        let error = ApiError {
            status: StatusCode::UNAUTHORIZED,
            ..ApiError::invalid(
                "Invalid API Key provided. You can find your API keys in the Dashboard.",
            )
        };
        return json_response(error.status, &error.body(), &request_id);
    }
    let segments: Vec<String> = uri
        .path()
        .trim_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect();
    if method == Method::GET {
        let (status, body) = match get(&state, &segments, &params) {
            Ok(body) => (StatusCode::OK, body),
            Err(e) => (e.status, e.body()),
        };
        return json_response(status, &body, &request_id);
    }
    if method != Method::POST {
        return unrecognized(&method, uri.path(), &request_id);
    }
    // The work runs in a task of its own: a client that goes away does not cancel it.
    let path = uri.path().to_owned();
    let task = tokio::spawn(post(
        state,
        segments,
        params,
        idempotency_key,
        request_id.clone(),
    ));
    match task.await {
        Ok(Some(response)) => response,
        Ok(None) => unrecognized(&method, &path, &request_id),
        Err(_) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": {"type": "api_error", "message": "An unknown error occurred"}}),
            &request_id,
        ),
    }
}

fn unrecognized(method: &Method, path: &str, request_id: &str) -> Response {
    let error = ApiError {
        status: StatusCode::NOT_FOUND,
        ..ApiError::invalid(format!(
            "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/."
        ))
    };
    json_response(error.status, &error.body(), request_id)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PostRoute<'a> {
    CreateCustomer,
    CreatePaymentMethod,
    Attach(&'a str),
    Detach(&'a str),
    CreateIntent,
    CreateRefund,
}

fn post_route(segments: &[String]) -> Option<PostRoute<'_>> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    Some(match s.as_slice() {
        ["v1", "customers"] => PostRoute::CreateCustomer,
        ["v1", "payment_methods"] => PostRoute::CreatePaymentMethod,
        ["v1", "payment_methods", id, "attach"] => PostRoute::Attach(id),
        ["v1", "payment_methods", id, "detach"] => PostRoute::Detach(id),
        ["v1", "payment_intents"] => PostRoute::CreateIntent,
        ["v1", "refunds"] => PostRoute::CreateRefund,
        _ => return None,
    })
}

/// A POST through Stripe's idempotency layer. `None`: no such endpoint.
async fn post(
    state: Arc<DoubleState>,
    segments: Vec<String>,
    params: Vec<(String, String)>,
    idempotency_key: Option<String>,
    request_id: String,
) -> Option<Response> {
    let route = post_route(&segments)?;
    let Some(key) = idempotency_key else {
        let executed = execute(&state, route, &params).await;
        let (status, body) = answer(&state, &executed);
        return Some(json_response(status, &body, &request_id));
    };
    let mut sorted = params.clone();
    sorted.sort();
    let fingerprint = (segments.join("/"), sorted);
    {
        let mut inner = state.lock();
        match inner.idempotency.get(&key) {
            Some(entry) if entry.fingerprint != fingerprint => {
                let error = ApiError {
                    kind: "idempotency_error",
                    ..ApiError::invalid(format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                    ))
                };
                return Some(json_response(error.status, &error.body(), &request_id));
            }
            Some(IdempotencyEntry { saved: None, .. }) => {
                let error = ApiError {
                    status: StatusCode::CONFLICT,
                    kind: "idempotency_error",
                    ..ApiError::invalid(format!(
                        "There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through): {key}. Please try again later."
                    ))
                };
                return Some(json_response(error.status, &error.body(), &request_id));
            }
            Some(IdempotencyEntry {
                saved: Some(saved), ..
            }) => {
                let mut response = json_response(saved.status, &saved.body, &request_id);
                let headers = response.headers_mut();
                headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
                if let Ok(v) = HeaderValue::from_str(&saved.request_id) {
                    headers.insert("original-request", v);
                }
                headers.insert(
                    "idempotency-key",
                    HeaderValue::from_str(&key).unwrap_or(HeaderValue::from_static("")),
                );
                return Some(response);
            }
            None => {
                inner.idempotency.insert(
                    key.clone(),
                    IdempotencyEntry {
                        fingerprint,
                        saved: None,
                    },
                );
            }
        }
    }
    let executed = execute(&state, route, &params).await;
    {
        let mut inner = state.lock();
        if executed.save {
            if let Some(entry) = inner.idempotency.get_mut(&key) {
                entry.saved = Some(Saved {
                    status: executed.status,
                    body: executed.body.clone(),
                    request_id: request_id.clone(),
                });
            }
        } else {
            inner.idempotency.remove(&key);
        }
    }
    let (status, body) = answer(&state, &executed);
    Some(json_response(status, &body, &request_id))
}

/// What the caller gets: the executed answer, unless a fault drops it.
fn answer(state: &DoubleState, executed: &Executed) -> (StatusCode, Value) {
    if executed.intent_created
        && state
            .drop_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"type": "api_error", "message": "An unknown error occurred"}}),
        );
    }
    (executed.status, executed.body.clone())
}

async fn execute(
    state: &DoubleState,
    route: PostRoute<'_>,
    params: &[(String, String)],
) -> Executed {
    let result = {
        let mut inner = state.lock();
        match route {
            PostRoute::CreateCustomer => create_customer(&mut inner, params).map(Executed::ok),
            PostRoute::CreatePaymentMethod => {
                create_payment_method(&mut inner, params).map(Executed::ok)
            }
            PostRoute::Attach(id) => attach(&mut inner, id, params).map(Executed::ok),
            PostRoute::Detach(id) => detach(&mut inner, id).map(Executed::ok),
            PostRoute::CreateIntent => create_intent(&mut inner, params),
            PostRoute::CreateRefund => create_refund(&mut inner, params).map(Executed::ok),
        }
    };
    let executed = result.unwrap_or_else(ApiError::executed);
    if executed.intent_created && *state.hold.borrow() {
        state.held.fetch_add(1, Ordering::SeqCst);
        let mut released = state.hold.subscribe();
        let _ = released.wait_for(|hold| !*hold).await;
        state.held.fetch_sub(1, Ordering::SeqCst);
    }
    executed
}

fn get(
    state: &DoubleState,
    segments: &[String],
    params: &[(String, String)],
) -> Result<Value, ApiError> {
    let inner = state.lock();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["v1", "customers", id] => inner
            .customers
            .get(*id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("customer", id)),
        ["v1", "payment_methods", id] => inner
            .methods
            .get(*id)
            .map(|m| m.json.clone())
            .ok_or_else(|| ApiError::not_found("PaymentMethod", id)),
        ["v1", "payment_intents", "search"] => search_intents(&inner, params),
        ["v1", "payment_intents", id] => inner
            .intents
            .iter()
            .find(|v| v["id"] == *id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("payment_intent", id)),
        ["v1", "refunds", id] => inner
            .refunds
            .iter()
            .find(|v| v["id"] == *id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("refund", id)),
        _ => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            ..ApiError::invalid(format!(
                "Unrecognized request URL (GET: /{}).",
                segments.join("/")
            ))
        }),
    }
}

fn create_customer(inner: &mut Inner, params: &[(String, String)]) -> Result<Value, ApiError> {
    let metadata = metadata(params)?;
    let id = random_id("cus", 14);
    let customer = json!({
        "id": id,
        "object": "customer",
        "address": null,
        "balance": 0,
        "created": now(),
        "currency": null,
        "default_source": null,
        "delinquent": false,
        "description": param(params, "description"),
        "email": param(params, "email"),
        "invoice_prefix": id.trim_start_matches("cus_").get(..8).map(str::to_uppercase),
        "invoice_settings": {
            "custom_fields": null,
            "default_payment_method": null,
            "footer": null,
            "rendering_options": null
        },
        "livemode": false,
        "metadata": metadata,
        "name": param(params, "name"),
        "phone": param(params, "phone"),
        "preferred_locales": [],
        "shipping": null,
        "tax_exempt": "none",
        "test_clock": null
    });
    inner.customers.insert(id, customer.clone());
    Ok(customer)
}

/// December, two years ahead: Stripe's test cards carry an expiry in the future.
fn expiry() -> (u32, i64) {
    let year = 1970 + now() / 31_556_952;
    (12, year + 2)
}

fn new_method(inner: &mut Inner, card: TestCard, customer: Option<&str>) -> Value {
    let (exp_month, exp_year) = expiry();
    let id = random_id("pm", 24);
    let json = json!({
        "id": id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {
            "address": {"city": null, "country": null, "line1": null, "line2": null,
                        "postal_code": null, "state": null},
            "email": null, "name": null, "phone": null
        },
        "card": {
            "brand": card.brand,
            "checks": {"address_line1_check": null, "address_postal_code_check": null,
                       "cvc_check": "pass"},
            "country": "US",
            "display_brand": card.brand,
            "exp_month": exp_month,
            "exp_year": exp_year,
            "fingerprint": format!("chdbl{}{}", card.brand, card.last4),
            "funding": card.funding,
            "generated_from": null,
            "last4": card.last4,
            "networks": {"available": [card.brand], "preferred": null},
            "three_d_secure_usage": {"supported": true},
            "wallet": null
        },
        "created": now(),
        "customer": customer,
        "livemode": false,
        "metadata": {},
        "type": "card"
    });
    inner.methods.insert(
        id,
        StoredMethod {
            json: json.clone(),
            behavior: card.behavior,
            consumed: false,
        },
    );
    json
}

fn create_payment_method(
    inner: &mut Inner,
    params: &[(String, String)],
) -> Result<Value, ApiError> {
    match param(params, "type") {
        None => return Err(ApiError::missing_param("type")),
        Some("card") => {}
        Some(other) => {
            return Err(
                ApiError::invalid(format!("Invalid payment method type: {other}"))
                    .code("parameter_invalid_string")
                    .param("type")
                    .validation(),
            )
        }
    }
    let Some(token) = param(params, "card[token]") else {
        if params.iter().any(|(k, _)| k == "card[number]") {
            return Err(ApiError::invalid(
                "Sending credit card numbers directly to the Stripe API is generally unsafe. Use test tokens such as tok_visa.",
            )
            .param("card[number]"));
        }
        return Err(ApiError::missing_param("card[token]"));
    };
    let card =
        test_card(token, "tok_").ok_or_else(|| ApiError::no_such("card[token]", "token", token))?;
    Ok(new_method(inner, card, None))
}

fn unexpected_state(message: &str) -> ApiError {
    ApiError::invalid(message).code("payment_method_unexpected_state")
}

fn attach(inner: &mut Inner, id: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
    let customer = param(params, "customer").ok_or_else(|| ApiError::missing_param("customer"))?;
    if !inner.customers.contains_key(customer) {
        return Err(ApiError::no_such("customer", "customer", customer));
    }
    if let Some(card) = test_card(id, "pm_card_") {
        // As Stripe does: a test payment method attached becomes a new one of the customer's.
        return Ok(new_method(inner, card, Some(customer)));
    }
    let method = inner
        .methods
        .get_mut(id)
        .ok_or_else(|| ApiError::not_found("PaymentMethod", id))?;
    if method.consumed {
        return Err(unexpected_state(
            "This PaymentMethod was previously used without being attached to a Customer or was detached from a Customer, and may not be used again.",
        ));
    }
    match method.json["customer"].as_str() {
        Some(owner) if owner == customer => {}
        Some(_) => {
            return Err(unexpected_state(
                "The payment method you provided has already been attached to a customer.",
            ))
        }
        None => method.json["customer"] = json!(customer),
    }
    Ok(method.json.clone())
}

fn detach(inner: &mut Inner, id: &str) -> Result<Value, ApiError> {
    let method = inner
        .methods
        .get_mut(id)
        .ok_or_else(|| ApiError::not_found("PaymentMethod", id))?;
    if method.json["customer"].is_null() {
        return Err(unexpected_state(
            "The payment method you provided is not attached to a customer so detachment is impossible.",
        ));
    }
    method.json["customer"] = Value::Null;
    method.consumed = true;
    Ok(method.json.clone())
}

const CURRENCIES: &[&str] = &[
    "usd", "eur", "gbp", "cad", "aud", "chf", "nzd", "sgd", "sek", "nok", "dkk", "jpy", "mxn",
    "brl", "inr", "pln", "czk", "hkd",
];

/// Stripe's minimum charge amounts (minor units) for the currencies that have a documented one.
fn minimum_amount(currency: &str) -> i64 {
    match currency {
        "gbp" => 30,
        "usd" | "eur" | "cad" | "aud" | "chf" | "nzd" | "sgd" | "jpy" => 50,
        _ => 1,
    }
}

fn create_intent(inner: &mut Inner, params: &[(String, String)]) -> Result<Executed, ApiError> {
    let amount =
        positive_integer(params, "amount")?.ok_or_else(|| ApiError::missing_param("amount"))?;
    let currency = param(params, "currency")
        .ok_or_else(|| ApiError::missing_param("currency"))?
        .to_ascii_lowercase();
    if !CURRENCIES.contains(&currency.as_str()) {
        return Err(ApiError::invalid(format!("Invalid currency: {currency}."))
            .param("currency")
            .validation());
    }
    if amount < minimum_amount(&currency) {
        return Err(ApiError::invalid(format!(
            "Amount must be at least {} {currency}",
            minimum_amount(&currency)
        ))
        .code("amount_too_small")
        .param("amount")
        .validation());
    }
    if amount > 99_999_999 {
        return Err(ApiError::invalid("Amount must be no more than 99999999")
            .code("amount_too_large")
            .param("amount")
            .validation());
    }
    for (k, v) in params {
        if k.starts_with("payment_method_types[") && v != "card" {
            return Err(
                ApiError::invalid(format!("The payment method type \"{v}\" is invalid."))
                    .code("payment_method_invalid_parameter")
                    .param("payment_method_types")
                    .validation(),
            );
        }
    }
    let confirm = boolean(params, "confirm")?;
    let off_session = match param(params, "off_session") {
        None | Some("false") => false,
        Some("true" | "one_off" | "recurring") => true,
        Some(raw) => {
            return Err(ApiError::invalid(format!("Invalid off_session: {raw}"))
                .param("off_session")
                .validation())
        }
    };
    if off_session && !confirm {
        return Err(
            ApiError::invalid("off_session can only be used when confirm=true.")
                .param("off_session")
                .validation(),
        );
    }
    let metadata = metadata(params)?;
    let customer = param(params, "customer");
    if let Some(customer) = customer {
        if !inner.customers.contains_key(customer) {
            return Err(ApiError::no_such("customer", "customer", customer));
        }
    }
    let method = match param(params, "payment_method") {
        None => None,
        Some(id) => Some(if let Some(card) = test_card(id, "pm_card_") {
            let json = new_method(inner, card, None);
            (
                json["id"].as_str().unwrap_or_default().to_owned(),
                card.behavior,
            )
        } else {
            let stored = inner
                .methods
                .get_mut(id)
                .ok_or_else(|| ApiError::no_such("payment_method", "PaymentMethod", id))?;
            if stored.consumed {
                return Err(unexpected_state(
                    "The provided PaymentMethod was previously used with a PaymentIntent without Customer attachment, shared with a connected account without Customer attachment, or was detached from a Customer. It may not be used again.",
                )
                .param("payment_method"));
            }
            match stored.json["customer"].as_str() {
                Some(owner) if Some(owner) != customer => return Err(ApiError::invalid(
                    "The provided PaymentMethod belongs to a Customer other than the one given.",
                )
                .param("payment_method")),
                _ => {}
            }
            (id.to_owned(), stored.behavior)
        }),
    };
    if confirm && method.is_none() {
        return Err(ApiError::invalid(
            "You cannot confirm this PaymentIntent because it's missing a payment method.",
        )
        .code("payment_intent_unexpected_state")
        .validation());
    }
    let id = random_id("pi", 24);
    let mut intent = json!({
        "id": id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": null,
        "application_fee_amount": null,
        "automatic_payment_methods": null,
        "canceled_at": null,
        "cancellation_reason": null,
        "capture_method": "automatic",
        "client_secret": format!("{id}_secret_{}", random_alphanumeric(25)),
        "confirmation_method": "automatic",
        "created": now(),
        "currency": currency,
        "customer": customer,
        "description": param(params, "description"),
        "last_payment_error": null,
        "latest_charge": null,
        "livemode": false,
        "metadata": metadata,
        "next_action": null,
        "on_behalf_of": null,
        "payment_method": method.as_ref().map(|(id, _)| id.clone()),
        "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
        "payment_method_types": ["card"],
        "processing": null,
        "receipt_email": null,
        "setup_future_usage": null,
        "shipping": null,
        "statement_descriptor": null,
        "status": if method.is_some() { "requires_confirmation" } else { "requires_payment_method" },
        "transfer_data": null,
        "transfer_group": null
    });
    let mut status = StatusCode::OK;
    let mut body = Value::Null;
    if let (true, Some((pm, behavior))) = (confirm, &method) {
        let charge = random_id("ch", 24);
        intent["latest_charge"] = json!(charge);
        match behavior {
            CardBehavior::Succeeds => {
                intent["status"] = json!("succeeded");
                intent["amount_received"] = json!(amount);
            }
            CardBehavior::RequiresAuthentication => {
                intent["status"] = json!("requires_action");
                intent["next_action"] = json!({
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {"type": "three_d_secure_redirect",
                                       "stripe_js": "https://hooks.stripe.com/3d_secure_2/hosted",
                                       "source": random_id("src", 24)}
                });
            }
            CardBehavior::Declines {
                code,
                decline_code,
                message,
            } => {
                let pm_json = inner
                    .methods
                    .get(pm)
                    .map(|m| m.json.clone())
                    .unwrap_or(Value::Null);
                let error = json!({
                    "charge": charge,
                    "code": code,
                    "decline_code": decline_code,
                    "doc_url": format!("https://stripe.com/docs/error-codes/{code}"),
                    "message": message,
                    "payment_method": pm_json,
                    "type": "card_error"
                });
                intent["status"] = json!("requires_payment_method");
                intent["last_payment_error"] = error.clone();
                intent["payment_method"] = Value::Null;
                let mut error = error;
                error["payment_intent"] = intent.clone();
                status = StatusCode::PAYMENT_REQUIRED;
                body = json!({ "error": error });
            }
        }
        // A method used without a customer cannot be used again.
        if let Some(stored) = inner.methods.get_mut(pm) {
            if stored.json["customer"].is_null() {
                stored.consumed = true;
            }
        }
    }
    if body.is_null() {
        body = intent.clone();
    }
    inner.intents.push(intent);
    Ok(Executed {
        status,
        body,
        save: true,
        intent_created: true,
    })
}

/// `metadata['k']:'v'`, `status:'succeeded'`, `customer:'cus_...'`, `currency:'usd'`, joined by
/// `AND`: the subset of Stripe's search query language billing uses.
fn search_intents(inner: &Inner, params: &[(String, String)]) -> Result<Value, ApiError> {
    let query = param(params, "query").ok_or_else(|| ApiError::missing_param("query"))?;
    let limit = match param(params, "limit") {
        None => 10,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "Invalid limit: must be an integer between 1 and 100.",
                )
                .param("limit"))
            }
        },
    };
    let mut clauses = Vec::new();
    for clause in query.split(" AND ") {
        let invalid = || {
            ApiError::invalid(format!(
                "Invalid search query: `{clause}` is not a supported clause."
            ))
            .code("parameter_invalid_string")
            .param("query")
        };
        let (field, value) = clause.trim().split_once(':').ok_or_else(invalid)?;
        let unquote = |s: &str| {
            s.strip_prefix('\'')
                .and_then(|s| s.strip_suffix('\''))
                .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                .map(str::to_owned)
        };
        let value = unquote(value).ok_or_else(invalid)?;
        let path: Vec<String> = if let Some(key) = field
            .strip_prefix("metadata[")
            .and_then(|f| f.strip_suffix(']'))
        {
            vec!["metadata".into(), unquote(key).ok_or_else(invalid)?]
        } else if matches!(field, "status" | "customer" | "currency") {
            vec![field.to_owned()]
        } else {
            return Err(invalid());
        };
        clauses.push((path, value));
    }
    let data: Vec<Value> = inner
        .intents
        .iter()
        .rev()
        .filter(|pi| {
            clauses.iter().all(|(path, value)| {
                path.iter().fold(*pi, |v, k| &v[k.as_str()]).as_str() == Some(value.as_str())
            })
        })
        .take(limit)
        .cloned()
        .collect();
    Ok(json!({
        "object": "search_result",
        "url": "/v1/payment_intents/search",
        "has_more": false,
        "data": data,
        "next_page": null
    }))
}

fn refunded_of(inner: &Inner, pi: &str) -> i64 {
    inner
        .refunds
        .iter()
        .filter(|r| {
            r["payment_intent"] == pi
                && matches!(r["status"].as_str(), Some("succeeded" | "pending"))
        })
        .filter_map(|r| r["amount"].as_i64())
        .sum()
}

fn create_refund(inner: &mut Inner, params: &[(String, String)]) -> Result<Value, ApiError> {
    let pi_id = match (param(params, "payment_intent"), param(params, "charge")) {
        (Some(pi), _) => pi.to_owned(),
        (None, Some(charge)) => inner
            .intents
            .iter()
            .find(|pi| pi["latest_charge"] == charge)
            .and_then(|pi| pi["id"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| ApiError::no_such("charge", "charge", charge))?,
        (None, None) => {
            return Err(ApiError::invalid(
                "One of the following params should be provided for this request: payment_intent or charge.",
            )
            .code("parameter_missing")
            .validation())
        }
    };
    let amount = positive_integer(params, "amount")?;
    let metadata = metadata(params)?;
    let intent = inner
        .intents
        .iter()
        .find(|v| v["id"] == pi_id.as_str())
        .cloned()
        .ok_or_else(|| ApiError::no_such("payment_intent", "payment_intent", &pi_id))?;
    if intent["status"] != "succeeded" {
        return Err(ApiError::invalid(format!(
            "This PaymentIntent ({pi_id}) does not have a successful charge to refund."
        ))
        .param("payment_intent"));
    }
    let charge = intent["latest_charge"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let received = intent["amount_received"].as_i64().unwrap_or(0);
    let remaining = received - refunded_of(inner, &pi_id);
    if remaining <= 0 {
        return Err(
            ApiError::invalid(format!("Charge {charge} has already been refunded."))
                .code("charge_already_refunded"),
        );
    }
    let amount = amount.unwrap_or(remaining);
    if amount > remaining {
        return Err(ApiError::invalid(format!(
            "Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})"
        ))
        .param("amount"));
    }
    let refund = json!({
        "id": random_id("re", 24),
        "object": "refund",
        "amount": amount,
        "balance_transaction": random_id("txn", 24),
        "charge": charge,
        "created": now(),
        "currency": intent["currency"].clone(),
        "destination_details": {"card": {"reference_status": "pending", "reference_type": "acquirer_reference_number", "type": "refund"}, "type": "card"},
        "failure_reason": null,
        "metadata": metadata,
        "payment_intent": pi_id,
        "reason": param(params, "reason"),
        "receipt_number": null,
        "source_transfer_reversal": null,
        "status": "succeeded",
        "transfer_reversal": null
    });
    inner.refunds.push(refund.clone());
    Ok(refund)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature_header("whsec_test", 1_700_000_000, b"{}"),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }

    #[test]
    fn signed_event_is_a_stripe_event() {
        let (header, body) = signed_event(
            "payment_intent.succeeded",
            json!({"id": "pi_1"}),
            "whsec_x",
            42,
        );
        assert_eq!(header, signature_header("whsec_x", 42, &body));
        let event: Value = serde_json::from_slice(&body).unwrap();
        assert!(event["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(event["object"], "event");
        assert_eq!(event["type"], "payment_intent.succeeded");
        assert_eq!(event["created"], 42);
        assert_eq!(event["data"]["object"]["id"], "pi_1");
    }

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    async fn post(
        http: &reqwest::Client,
        url: String,
        key: Option<&str>,
        body: &str,
    ) -> (u16, HeaderMap, Value) {
        let mut request = http
            .post(url)
            .bearer_auth(SECRET_KEY)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned());
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.json().await.unwrap())
    }

    #[tokio::test]
    async fn idempotent_requests_replay_refuse_and_conflict() {
        let double = StripeDouble::start().await;
        let http = client();
        let url = format!("{}/v1/customers", double.url());
        let (status, headers, first) = post(&http, url.clone(), Some("k1"), "metadata[a]=1").await;
        assert_eq!(status, 200);
        assert!(headers.get("idempotent-replayed").is_none());
        assert!(headers.get("request-id").is_some());
        let (status, headers, replay) = post(&http, url.clone(), Some("k1"), "metadata[a]=1").await;
        assert_eq!((status, &replay), (200, &first));
        assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
        let (status, _, other) = post(&http, url.clone(), Some("k1"), "metadata[a]=2").await;
        assert_eq!(status, 400);
        assert_eq!(other["error"]["type"], "idempotency_error");
        // The same key on another endpoint is another request too.
        let pm = format!("{}/v1/payment_methods", double.url());
        let (status, _, _) = post(&http, pm, Some("k1"), "metadata[a]=1").await;
        assert_eq!(status, 400);

        // A validation error saves nothing: the key can be used again, correctly.
        let pi = format!("{}/v1/payment_intents", double.url());
        let (status, _, invalid) = post(&http, pi.clone(), Some("k2"), "currency=usd").await;
        assert_eq!(status, 400);
        assert_eq!(invalid["error"]["code"], "parameter_missing");
        assert_eq!(invalid["error"]["param"], "amount");
        let (status, _, _) = post(&http, pi.clone(), Some("k2"), "amount=100&currency=usd").await;
        assert_eq!(status, 200);

        // In flight: 409.
        double.hold_charges(true);
        let body = "amount=100&currency=usd&payment_method=pm_card_visa&confirm=true";
        let held = {
            let (http, pi) = (http.clone(), pi.clone());
            tokio::spawn(async move { post(&http, pi, Some("k3"), body).await })
        };
        double.wait_for_held_charges(1).await;
        let (status, _, conflict) = post(&http, pi.clone(), Some("k3"), body).await;
        assert_eq!(status, 409);
        assert_eq!(conflict["error"]["type"], "idempotency_error");
        double.hold_charges(false);
        let (status, _, intent) = held.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(intent["status"], "succeeded");
        assert_eq!(double.intent_count(), 2);
    }

    #[tokio::test]
    async fn authentication_and_unknown_urls() {
        let double = StripeDouble::start().await;
        let http = client();
        let response = http
            .post(format!("{}/v1/customers", double.url()))
            .bearer_auth("sk_test_wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let response = http
            .get(format!("{}/v1/customers", double.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        // Basic auth with the key as user name, as Stripe's curl examples do.
        let response = http
            .get(format!("{}/v1/nothing", double.url()))
            .basic_auth(SECRET_KEY, Some(""))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404);
    }

    #[tokio::test]
    async fn declines_embed_the_intent_and_search_finds_it() {
        let double = StripeDouble::start().await;
        let http = client();
        let pi = format!("{}/v1/payment_intents", double.url());
        let (status, _, declined) = post(
            &http,
            pi,
            None,
            "amount=2000&currency=usd&payment_method=pm_card_chargeDeclinedInsufficientFunds&confirm=true&metadata[order]=o%201",
        )
        .await;
        assert_eq!(status, 402);
        let error = &declined["error"];
        assert_eq!(error["type"], "card_error");
        assert_eq!(error["code"], "card_declined");
        assert_eq!(error["decline_code"], "insufficient_funds");
        assert_eq!(error["payment_intent"]["status"], "requires_payment_method");
        assert_eq!(
            error["payment_intent"]["last_payment_error"]["decline_code"],
            "insufficient_funds"
        );
        let id = error["payment_intent"]["id"].as_str().unwrap();
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "query",
                "metadata['order']:'o 1' AND status:'requires_payment_method'",
            )
            .finish();
        let found: Value = http
            .get(format!(
                "{}/v1/payment_intents/search?{query}",
                double.url()
            ))
            .bearer_auth(SECRET_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(found["object"], "search_result");
        assert_eq!(found["data"][0]["id"], id);
        assert_eq!(found["data"].as_array().unwrap().len(), 1);
    }
}
