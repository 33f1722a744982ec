//! Tokens, AppRole and Kubernetes auth of the Vault double.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{random_id, Reply, Req, State};

#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub id: String,
    pub accessor: String,
    pub policies: Vec<String>,
    /// 0: never expires.
    pub ttl: u64,
    pub renewable: bool,
    pub path: String,
    pub display_name: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub renewed: Instant,
}

impl Token {
    pub fn root(id: &str) -> Self {
        Token {
            id: id.to_owned(),
            accessor: random_id(24),
            policies: vec!["root".into()],
            ttl: 0,
            renewable: false,
            path: "auth/token/root".into(),
            display_name: "root".into(),
            created: chrono::Utc::now(),
            renewed: Instant::now(),
        }
    }

    fn new(policies: Vec<String>, ttl: u64, renewable: bool, path: &str, name: &str) -> Self {
        let mut policies = policies;
        if !policies.iter().any(|p| p == "default") {
            policies.insert(0, "default".into());
        }
        policies.sort();
        policies.dedup();
        Token {
            id: format!("hvs.{}", random_id(24)),
            accessor: random_id(24),
            policies,
            ttl,
            renewable,
            path: path.to_owned(),
            display_name: name.to_owned(),
            created: chrono::Utc::now(),
            renewed: Instant::now(),
        }
    }

    fn remaining(&self) -> u64 {
        self.ttl.saturating_sub(self.renewed.elapsed().as_secs())
    }

    fn auth_block(&self) -> Value {
        json!({
            "client_token": self.id,
            "accessor": self.accessor,
            "policies": self.policies,
            "token_policies": self.policies,
            "identity_policies": null,
            "metadata": null,
            "lease_duration": self.ttl,
            "renewable": self.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": true,
            "mfa_requirement": null,
            "num_uses": 0,
        })
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct AppRole {
    role_id: String,
    secret_ids: Vec<String>,
    policies: Vec<String>,
    ttl: u64,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct KubeRole {
    service_accounts: Vec<String>,
    namespaces: Vec<String>,
    policies: Vec<String>,
    ttl: u64,
}

/// The token, if it exists and has not expired.
pub(crate) fn live_token(state: &mut State, id: &str) -> Option<Token> {
    let token = state.tokens.get(id)?;
    if token.ttl > 0 && token.renewed.elapsed() >= Duration::from_secs(token.ttl) {
        state.tokens.remove(id);
        return None;
    }
    Some(token.clone())
}

fn issue(state: &mut State, token: Token) -> Reply {
    let block = token.auth_block();
    state.tokens.insert(token.id.clone(), token);
    Reply::Auth(block)
}

/// `auth/<mount>/login` for AppRole and Kubernetes mounts (no token needed).
pub(crate) fn try_login(state: &mut State, req: &Req) -> Option<Reply> {
    let mount = req.path.strip_prefix("auth/")?.strip_suffix("/login")?;
    if req.method != Method::POST && req.method != Method::PUT {
        return None;
    }
    let kind = state.auth_mounts.get(mount)?.clone();
    let reply = match kind.as_str() {
        "approle" => {
            let role_id = req.str("role_id").unwrap_or_default();
            let secret_id = req.str("secret_id").unwrap_or_default();
            if role_id.is_empty() {
                return Some(Reply::bad_request("missing role_id"));
            }
            let found = state
                .approles
                .iter()
                .find(|((m, _), r)| m == mount && r.role_id == role_id)
                .map(|((_, name), r)| (name.clone(), r.clone()));
            match found {
                Some((name, role)) if role.secret_ids.iter().any(|s| s == secret_id) => {
                    let token = Token::new(
                        role.policies,
                        role.ttl,
                        true,
                        &format!("auth/{mount}/login"),
                        &format!("approle-{name}"),
                    );
                    issue(state, token)
                }
                Some(_) => Reply::bad_request("invalid role or secret ID"),
                None => Reply::bad_request("invalid role or secret ID"),
            }
        }
        "kubernetes" => {
            let role_name = req.str("role").unwrap_or_default().to_owned();
            let jwt = req.str("jwt").unwrap_or_default();
            if jwt.is_empty() {
                return Some(Reply::bad_request("missing jwt"));
            }
            let Some(role) = state
                .kube_roles
                .get(&(mount.to_owned(), role_name.clone()))
                .cloned()
            else {
                return Some(Reply::bad_request(format!(
                    "invalid role name \"{role_name}\""
                )));
            };
            match state.kube_jwts.get(jwt).cloned() {
                Some((sa, ns))
                    if role.service_accounts.iter().any(|a| a == &sa || a == "*")
                        && role.namespaces.iter().any(|n| n == &ns || n == "*") =>
                {
                    let token = Token::new(
                        role.policies,
                        role.ttl,
                        true,
                        &format!("auth/{mount}/login"),
                        &format!("{mount}-{ns}-{sa}"),
                    );
                    issue(state, token)
                }
                Some(_) => Reply::Error(
                    StatusCode::FORBIDDEN,
                    vec!["service account name not authorized".into()],
                ),
                None => Reply::Error(StatusCode::FORBIDDEN, vec!["permission denied".into()]),
            }
        }
        _ => return None,
    };
    Some(reply)
}

/// `auth/token/lookup-self` and `auth/token/renew-self`.
pub(crate) fn token_self(state: &mut State, req: &Req, token: &Token) -> Reply {
    if req.path.ends_with("renew-self") {
        if req.method != Method::POST && req.method != Method::PUT {
            return Reply::unsupported(&req.path);
        }
        if !token.renewable {
            return Reply::bad_request("lease is not renewable");
        }
        let Some(stored) = state.tokens.get_mut(&token.id) else {
            return Reply::Error(StatusCode::FORBIDDEN, vec!["permission denied".into()]);
        };
        stored.renewed = Instant::now();
        return Reply::Auth(stored.auth_block());
    }
    let expire = (token.ttl > 0).then(|| {
        (chrono::Utc::now() + chrono::Duration::seconds(token.remaining() as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    });
    Reply::Data(json!({
        "accessor": token.accessor,
        "creation_time": token.created.timestamp(),
        "creation_ttl": token.ttl,
        "display_name": token.display_name,
        "entity_id": "",
        "expire_time": expire,
        "explicit_max_ttl": 0,
        "id": token.id,
        "issue_time": token.created.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "meta": null,
        "num_uses": 0,
        "orphan": true,
        "path": token.path,
        "policies": token.policies,
        "renewable": token.renewable,
        "ttl": token.remaining(),
        "type": "service",
    }))
}

/// Token creation and AppRole / Kubernetes role management (policy already checked).
pub(crate) fn route(state: &mut State, req: &Req, rest: &str, caller: &Token) -> Reply {
    if rest == "token/create" {
        let mut policies = req.list("policies");
        if policies.is_empty() {
            policies = caller.policies.clone();
        }
        if !caller.policies.iter().any(|p| p == "root") && policies.iter().any(|p| p == "root") {
            return Reply::bad_request("root tokens may not be created without root");
        }
        let ttl = req.duration("ttl").unwrap_or(32 * 86_400);
        let renewable = req
            .body
            .get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let name = req.str("display_name").unwrap_or("token").to_owned();
        let token = Token::new(policies, ttl, renewable, "auth/token/create", &name);
        return issue(state, token);
    }
    let Some((mount, role_path)) = rest.split_once("/role/") else {
        return Reply::unsupported(&req.path);
    };
    let kind = state.auth_mounts.get(mount).cloned().unwrap_or_default();
    let (role, action) = match role_path.split_once('/') {
        Some((role, action)) => (role.to_owned(), action),
        None => (role_path.to_owned(), ""),
    };
    let key = (mount.to_owned(), role.clone());
    match (kind.as_str(), action, &req.method) {
        ("approle", "", &Method::POST | &Method::PUT) => {
            let entry = state.approles.entry(key).or_default();
            if entry.role_id.is_empty() {
                entry.role_id = uuid::Uuid::new_v4().to_string();
            }
            entry.policies = req.list("token_policies");
            entry.ttl = req.duration("token_ttl").unwrap_or(3600);
            Reply::Empty
        }
        ("approle", "role-id", &Method::GET) => match state.approles.get(&key) {
            Some(r) => Reply::Data(json!({ "role_id": r.role_id })),
            None => Reply::not_found(),
        },
        ("approle", "secret-id", &Method::POST | &Method::PUT) => {
            match state.approles.get_mut(&key) {
                Some(r) => {
                    let secret_id = uuid::Uuid::new_v4().to_string();
                    r.secret_ids.push(secret_id.clone());
                    Reply::Data(json!({
                        "secret_id": secret_id,
                        "secret_id_accessor": uuid::Uuid::new_v4().to_string(),
                        "secret_id_num_uses": 0,
                        "secret_id_ttl": 0,
                    }))
                }
                None => Reply::bad_request(format!("role \"{role}\" does not exist")),
            }
        }
        ("kubernetes", "", &Method::POST | &Method::PUT) => {
            state.kube_roles.insert(
                key,
                KubeRole {
                    service_accounts: req.list("bound_service_account_names"),
                    namespaces: req.list("bound_service_account_namespaces"),
                    policies: req.list("token_policies"),
                    ttl: req.duration("token_ttl").unwrap_or(3600),
                },
            );
            Reply::Empty
        }
        _ => Reply::unsupported(&req.path),
    }
}
