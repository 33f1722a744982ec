//! **A test double of HashiCorp Vault's HTTP API** — not Vault, and never for production.
//!
//! No Vault server can be installed on our build machines, so key and certificate tests run
//! against this in-process HTTP server (bound to 127.0.0.1, port 0). It answers the parts of the
//! Vault API carehub uses exactly as Vault's API documentation specifies them — the full response
//! envelope (`request_id`, `lease_id`, `renewable`, `lease_duration`, `data`, `wrap_info`,
//! `warnings`, `auth`), the status codes and `{"errors": [...]}` bodies — so that `vaultrs`
//! parses its answers like a real server's:
//!
//! - KV v1 and v2 (`sys/mounts` to enable; read, write with check-and-set, v2 `metadata`,
//!   `?version=`),
//! - ACL policies (`sys/policies/acl/<name>`, the `path "..." { capabilities = [...] }` subset of
//!   HCL with `*` and `+` globs): a path outside the token's policies answers 403,
//! - tokens (`auth/token/create`, `lookup-self`, `renew-self`; TTLs expire),
//! - AppRole (`sys/auth` to enable; roles, `role-id`, `secret-id`, `login`),
//! - Kubernetes (roles bound to service accounts, `login` with a JWT the test registered through
//!   [`VaultDouble::register_service_account_jwt`] — the double cannot ask a Kubernetes API),
//! - PKI (`root/generate/internal`, `roles/<name>`, `issue/<role>`): real certificates signed by
//!   the mount's own CA, SAN URIs checked against the role,
//! - `sys/health` (200 active, 429 standby, 503 sealed), sealing (every other path then answers
//!   503 `Vault is sealed`).
//!
//! Tests steer it: [`VaultDouble::stop`] (connections refused), [`VaultDouble::restart`] (same
//! address, same data), [`VaultDouble::set_delay`] (slow answers), [`VaultDouble::seal`] /
//! [`VaultDouble::unseal`], [`VaultDouble::set_standby`], and read [`VaultDouble::requests`] to
//! count the HTTP requests it answered.
//!
//! The same tests also run against a real Vault when `VAULT_ADDR` and `VAULT_TOKEN` are set (see
//! carehub_testkit::vault), so where the double and Vault differ, the live suite
//! shows it.

mod auth;
mod kv;
mod pki;
mod policy;
mod sys;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub(crate) use policy::Capability;

/// Everything the double remembers; survives [`VaultDouble::stop`] / [`VaultDouble::restart`].
#[derive(Default)]
pub(crate) struct State {
    pub sealed: bool,
    pub standby: bool,
    pub delay: Duration,
    pub mounts: HashMap<String, Mount>,
    pub auth_mounts: HashMap<String, String>,
    pub policies: HashMap<String, policy::Policy>,
    pub tokens: HashMap<String, auth::Token>,
    pub approles: HashMap<(String, String), auth::AppRole>,
    pub kube_roles: HashMap<(String, String), auth::KubeRole>,
    /// JWT → (service account, namespace), registered by the test.
    pub kube_jwts: HashMap<String, (String, String)>,
}

pub(crate) enum Mount {
    Kv {
        version: u8,
        secrets: HashMap<String, kv::Secret>,
    },
    Pki(Box<pki::Pki>),
}

struct Shared {
    state: Mutex<State>,
    requests: AtomicU64,
    root_token: String,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running double. Dropping it stops the server.
pub struct VaultDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<JoinSet<()>>>,
}

impl std::fmt::Debug for VaultDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultDouble")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl VaultDouble {
    /// Starts on 127.0.0.1 port 0 with a KV v2 mount at `secret/` (as `vault server -dev` has)
    /// and a root token ([`VaultDouble::root_token`]).
    pub async fn start() -> anyhow::Result<Self> {
        let root_token = format!("hvs.root{}", random_id(20));
        let mut state = State::default();
        state.mounts.insert(
            "secret".into(),
            Mount::Kv {
                version: 2,
                secrets: HashMap::new(),
            },
        );
        state.auth_mounts.insert("token".into(), "token".into());
        state
            .tokens
            .insert(root_token.clone(), auth::Token::root(&root_token));
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            requests: AtomicU64::new(0),
            root_token,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let double = VaultDouble {
            shared,
            addr,
            server: Mutex::new(None),
        };
        double.serve(listener);
        Ok(double)
    }

    fn serve(&self, listener: TcpListener) {
        let mut set = JoinSet::new();
        let shared = self.shared.clone();
        set.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                // Reap finished connections so the set does not grow without bound.
                while connections.try_join_next().is_some() {}
            }
        });
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(set);
    }

    /// `http://127.0.0.1:<port>`
    pub fn addr(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A token with the `root` policy.
    pub fn root_token(&self) -> String {
        self.shared.root_token.clone()
    }

    /// HTTP requests answered so far (every path, every status).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection: clients get "connection refused".
    pub fn stop(&self) {
        // Dropping the JoinSet aborts the accept loop, which drops (aborts) every connection.
        self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Serves again on the same address, with the same data.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// Every answer waits this long first (a slow or overloaded Vault).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    pub fn seal(&self) {
        self.shared.lock().sealed = true;
    }

    pub fn unseal(&self) {
        self.shared.lock().sealed = false;
    }

    /// A standby node: `sys/health` answers 429.
    pub fn set_standby(&self, standby: bool) {
        self.shared.lock().standby = standby;
    }

    /// Lets `jwt` log in at the Kubernetes auth method as `service_account` in `namespace`
    /// (Vault would ask the Kubernetes TokenReview API; the double has none).
    pub fn register_service_account_jwt(&self, jwt: &str, service_account: &str, namespace: &str) {
        self.shared.lock().kube_jwts.insert(
            jwt.to_owned(),
            (service_account.to_owned(), namespace.to_owned()),
        );
    }
}

impl Drop for VaultDouble {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn random_id(len: usize) -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A request as the handlers see it.
pub(crate) struct Req {
    pub method: Method,
    /// Path after `/v1/`, without a trailing slash.
    pub path: String,
    pub query: HashMap<String, String>,
    pub token: Option<String>,
    pub body: Value,
}

impl Req {
    pub fn str(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(Value::as_str)
    }

    /// A comma-separated string field or a JSON array, as Vault accepts both.
    pub fn list(&self, field: &str) -> Vec<String> {
        match self.body.get(field) {
            Some(Value::String(s)) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A duration field given as seconds or as a Go duration string (`90s`, `1h`, `10m`).
    pub fn duration(&self, field: &str) -> Option<u64> {
        match self.body.get(field)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => parse_duration(s),
            _ => None,
        }
    }
}

pub(crate) fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(secs);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    match unit {
        "s" => Some(n),
        "m" => Some(n * 60),
        "h" => Some(n * 3600),
        "d" => Some(n * 86_400),
        _ => None,
    }
}

/// An HTTP answer in Vault's shapes.
pub(crate) enum Reply {
    /// 200 with the response envelope around `data`.
    Data(Value),
    /// 200 with the envelope, `lease_duration` set (KV v1 reads carry the mount's TTL).
    DataWithLease(Value, u64),
    /// 200 with the envelope around an `auth` block.
    Auth(Value),
    /// 204 No Content.
    Empty,
    /// A raw JSON body with a status (sys/health).
    Raw(StatusCode, Value),
    /// `{"errors": [...]}`
    Error(StatusCode, Vec<String>),
}

impl Reply {
    pub fn bad_request(msg: impl Into<String>) -> Reply {
        Reply::Error(StatusCode::BAD_REQUEST, vec![msg.into()])
    }

    pub fn not_found() -> Reply {
        Reply::Error(StatusCode::NOT_FOUND, Vec::new())
    }

    pub fn denied() -> Reply {
        Reply::Error(
            StatusCode::FORBIDDEN,
            vec!["1 error occurred:\n\t* permission denied\n\n".into()],
        )
    }

    pub fn unsupported(path: &str) -> Reply {
        Reply::Error(
            StatusCode::NOT_FOUND,
            vec![format!(
                "no handler for route \"{path}\". route entry not found."
            )],
        )
    }

    fn into_response(self) -> Response<Body> {
        let envelope = |data: Value, auth: Value, lease: u64| {
            json!({
                "request_id": uuid::Uuid::new_v4().to_string(),
                "lease_id": "",
                "renewable": false,
                "lease_duration": lease,
                "data": data,
                "wrap_info": null,
                "warnings": null,
                "auth": auth,
                "mount_type": "",
            })
        };
        let (status, body) = match self {
            Reply::Data(data) => (StatusCode::OK, Some(envelope(data, Value::Null, 0))),
            Reply::DataWithLease(data, lease) => {
                (StatusCode::OK, Some(envelope(data, Value::Null, lease)))
            }
            Reply::Auth(auth) => (StatusCode::OK, Some(envelope(Value::Null, auth, 0))),
            Reply::Empty => (StatusCode::NO_CONTENT, None),
            Reply::Raw(status, body) => (status, Some(body)),
            Reply::Error(status, errors) => (status, Some(json!({ "errors": errors }))),
        };
        let mut builder = Response::builder().status(status);
        let body = match body {
            Some(body) => {
                builder = builder.header("content-type", "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        builder
            .header("cache-control", "no-store")
            .body(body)
            .unwrap_or_else(|_| Response::new(Body::empty()))
    }
}

async fn handle(shared: Arc<Shared>, req: hyper::Request<hyper::body::Incoming>) -> Response<Body> {
    use http_body_util::BodyExt as _;
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let delay = shared.lock().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    parse_and_dispatch(&shared, parts.method, &parts.uri, &parts.headers, &bytes).into_response()
}

fn parse_and_dispatch(
    shared: &Shared,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    let Some(path) = uri.path().strip_prefix("/v1/") else {
        return Reply::Error(StatusCode::NOT_FOUND, vec![]);
    };
    let path = path.trim_end_matches('/').to_owned();
    let query: HashMap<String, String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect();
    let body = if body.is_empty() {
        Value::Object(Default::default())
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => v,
            Err(e) => return Reply::bad_request(format!("failed to parse JSON input: {e}")),
        }
    };
    let token = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned)
        });
    let req = Req {
        method,
        path,
        query,
        token,
        body,
    };
    let mut state = shared.lock();
    dispatch(&mut state, &req)
}

fn dispatch(state: &mut State, req: &Req) -> Reply {
    let path = req.path.as_str();
    if path == "sys/health" {
        return sys::health(state, req);
    }
    if state.sealed {
        return Reply::Error(
            StatusCode::SERVICE_UNAVAILABLE,
            vec!["Vault is sealed".into()],
        );
    }
    // Logins need no token; everything else does.
    if let Some(reply) = auth::try_login(state, req) {
        return reply;
    }
    let Some(token) = req
        .token
        .as_deref()
        .and_then(|t| auth::live_token(state, t))
    else {
        return Reply::Error(StatusCode::FORBIDDEN, vec!["permission denied".into()]);
    };
    // The default policy lets every token look itself up and renew itself.
    if matches!(path, "auth/token/lookup-self" | "auth/token/renew-self") {
        return auth::token_self(state, req, &token);
    }
    let capability = match req.method {
        Method::GET if req.query.get("list").is_some_and(|v| v == "true") => Capability::List,
        Method::GET => Capability::Read,
        Method::DELETE => Capability::Delete,
        Method::POST | Method::PUT => Capability::Update,
        _ if req.method.as_str() == "LIST" => Capability::List,
        _ => return Reply::Error(StatusCode::METHOD_NOT_ALLOWED, vec![]),
    };
    if !policy::allowed(state, &token.policies, path, capability) {
        return Reply::denied();
    }
    if let Some(rest) = path.strip_prefix("sys/") {
        return sys::route(state, req, rest);
    }
    if let Some(rest) = path.strip_prefix("auth/") {
        return auth::route(state, req, rest, &token);
    }
    let Some((mount, rest)) = find_mount(state, path) else {
        return Reply::unsupported(path);
    };
    let Some(mount_state) = state.mounts.get_mut(&mount) else {
        return Reply::unsupported(path);
    };
    match mount_state {
        Mount::Kv { version, secrets } => kv::route(*version, secrets, req, &rest),
        Mount::Pki(pki) => pki::route(pki, req, &rest),
    }
}

fn find_mount(state: &State, path: &str) -> Option<(String, String)> {
    state
        .mounts
        .keys()
        .filter(|m| path == m.as_str() || path.starts_with(&format!("{m}/")))
        .max_by_key(|m| m.len())
        .map(|m| {
            let rest = path[m.len()..].trim_start_matches('/').to_owned();
            (m.clone(), rest)
        })
}
