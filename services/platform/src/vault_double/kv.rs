//! KV secrets engine v1 and v2 of the Vault double.

use std::collections::{BTreeMap, HashMap};

use axum::http::Method;
use serde_json::{json, Map, Value};

use super::{now_rfc3339, Reply, Req};

/// KV v1 reads carry the mount's default lease (768h), as Vault's do.
const KV1_LEASE_SECS: u64 = 2_764_800;

pub(crate) struct Version {
    data: Map<String, Value>,
    created_time: String,
}

#[derive(Default)]
pub(crate) struct Secret {
    versions: BTreeMap<u64, Version>,
    created_time: String,
    updated_time: String,
}

impl Secret {
    fn current(&self) -> u64 {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }

    fn put(&mut self, data: Map<String, Value>, keep_history: bool) -> (u64, String) {
        let now = now_rfc3339();
        if self.created_time.is_empty() {
            self.created_time = now.clone();
        }
        self.updated_time = now.clone();
        let next = self.current() + 1;
        if !keep_history {
            self.versions.clear();
        }
        self.versions.insert(
            next,
            Version {
                data,
                created_time: now.clone(),
            },
        );
        (next, now)
    }
}

fn version_metadata(version: u64, created: &str) -> Value {
    json!({
        "created_time": created,
        "custom_metadata": null,
        "deletion_time": "",
        "destroyed": false,
        "version": version,
    })
}

pub(crate) fn route(
    version: u8,
    secrets: &mut HashMap<String, Secret>,
    req: &Req,
    rest: &str,
) -> Reply {
    if version == 1 {
        return v1(secrets, req, rest);
    }
    if let Some(path) = rest.strip_prefix("data/") {
        return v2_data(secrets, req, path);
    }
    if let Some(path) = rest.strip_prefix("metadata/") {
        return v2_metadata(secrets, req, path);
    }
    Reply::unsupported(&req.path)
}

fn v1(secrets: &mut HashMap<String, Secret>, req: &Req, path: &str) -> Reply {
    match req.method {
        Method::GET => match secrets
            .get(path)
            .and_then(|s| s.versions.values().next_back())
        {
            Some(v) => Reply::DataWithLease(Value::Object(v.data.clone()), KV1_LEASE_SECS),
            None => Reply::not_found(),
        },
        Method::POST | Method::PUT => {
            let Value::Object(data) = req.body.clone() else {
                return Reply::bad_request("the request body must be a JSON object");
            };
            secrets.entry(path.to_owned()).or_default().put(data, false);
            Reply::Empty
        }
        Method::DELETE => {
            secrets.remove(path);
            Reply::Empty
        }
        _ => Reply::unsupported(&req.path),
    }
}

fn v2_data(secrets: &mut HashMap<String, Secret>, req: &Req, path: &str) -> Reply {
    match req.method {
        Method::GET => {
            let Some(secret) = secrets.get(path) else {
                return Reply::not_found();
            };
            let wanted = match req.query.get("version").map(|v| v.parse::<u64>()) {
                None | Some(Ok(0)) => secret.current(),
                Some(Ok(v)) => v,
                Some(Err(_)) => return Reply::bad_request("invalid version"),
            };
            match secret.versions.get(&wanted) {
                Some(v) => Reply::Data(json!({
                    "data": Value::Object(v.data.clone()),
                    "metadata": version_metadata(wanted, &v.created_time),
                })),
                None => Reply::not_found(),
            }
        }
        Method::POST | Method::PUT => {
            let Some(Value::Object(data)) = req.body.get("data").cloned() else {
                return Reply::bad_request("no data provided");
            };
            let current = secrets.get(path).map_or(0, Secret::current);
            if let Some(cas) = req.body.pointer("/options/cas") {
                let Some(cas) = cas.as_u64() else {
                    return Reply::bad_request("invalid cas value");
                };
                if cas != current {
                    return Reply::bad_request(
                        "check-and-set parameter did not match the current version",
                    );
                }
            }
            let (version, created) = secrets.entry(path.to_owned()).or_default().put(data, true);
            Reply::Data(version_metadata(version, &created))
        }
        _ => Reply::unsupported(&req.path),
    }
}

fn v2_metadata(secrets: &mut HashMap<String, Secret>, req: &Req, path: &str) -> Reply {
    if req.method != Method::GET {
        return Reply::unsupported(&req.path);
    }
    let Some(secret) = secrets.get(path) else {
        return Reply::not_found();
    };
    let versions: Map<String, Value> = secret
        .versions
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                json!({"created_time": v.created_time, "deletion_time": "", "destroyed": false}),
            )
        })
        .collect();
    Reply::Data(json!({
        "cas_required": false,
        "created_time": secret.created_time,
        "current_version": secret.current(),
        "custom_metadata": null,
        "delete_version_after": "0s",
        "max_versions": 0,
        "oldest_version": 0,
        "updated_time": secret.updated_time,
        "versions": versions,
    }))
}
