//! `sys/` endpoints of the Vault double: health, mounts, auth methods, ACL policies.

use std::collections::HashMap;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{policy, Mount, Reply, Req, State};

pub(crate) fn health(state: &State, req: &Req) -> Reply {
    let status = if state.sealed {
        StatusCode::SERVICE_UNAVAILABLE
    } else if state.standby && req.query.get("standbyok").is_none_or(|v| v != "true") {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        StatusCode::OK
    };
    Reply::Raw(
        status,
        json!({
            "initialized": true,
            "sealed": state.sealed,
            "standby": state.standby,
            "performance_standby": false,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": chrono::Utc::now().timestamp(),
            "version": "1.17.0+double",
            "enterprise": false,
            "cluster_name": "vault-double",
            "cluster_id": "00000000-0000-0000-0000-000000000000",
            "echo_duration_ms": 0,
            "clock_skew_ms": 0,
        }),
    )
}

pub(crate) fn route(state: &mut State, req: &Req, rest: &str) -> Reply {
    if let Some(name) = rest.strip_prefix("mounts/") {
        if req.method != Method::POST && req.method != Method::PUT {
            return Reply::unsupported(&req.path);
        }
        let name = name.trim_matches('/').to_owned();
        if state.mounts.contains_key(&name) {
            return Reply::bad_request(format!("path is already in use at {name}/"));
        }
        let mount = match req.str("type") {
            Some("kv") | Some("kv-v2") => {
                let version = match req.body.pointer("/options/version").and_then(Value::as_str) {
                    Some("2") => 2,
                    _ if req.str("type") == Some("kv-v2") => 2,
                    _ => 1,
                };
                Mount::Kv {
                    version,
                    secrets: HashMap::new(),
                }
            }
            Some("pki") => Mount::Pki(Box::default()),
            Some(other) => {
                return Reply::bad_request(format!("plugin not found in the catalog: {other}"))
            }
            None => return Reply::bad_request("backend type must be specified as a string"),
        };
        state.mounts.insert(name, mount);
        return Reply::Empty;
    }
    if let Some(name) = rest.strip_prefix("auth/") {
        let name = name.trim_matches('/').to_owned();
        return match req.str("type") {
            Some(kind @ ("approle" | "kubernetes")) => {
                if state.auth_mounts.contains_key(&name) {
                    return Reply::bad_request(format!("path is already in use at {name}/"));
                }
                state.auth_mounts.insert(name, kind.to_owned());
                Reply::Empty
            }
            _ => Reply::bad_request("the double supports auth types approle and kubernetes"),
        };
    }
    if let Some(name) = rest.strip_prefix("policies/acl/") {
        return match req.method {
            Method::POST | Method::PUT => {
                let Some(text) = req.str("policy") else {
                    return Reply::bad_request("'policy' parameter not supplied or empty");
                };
                match policy::Policy::parse(text) {
                    Ok(p) => {
                        state.policies.insert(name.to_owned(), p);
                        Reply::Empty
                    }
                    Err(e) => Reply::bad_request(format!("failed to parse policy: {e}")),
                }
            }
            Method::DELETE => {
                state.policies.remove(name);
                Reply::Empty
            }
            _ => Reply::unsupported(&req.path),
        };
    }
    Reply::unsupported(&req.path)
}
