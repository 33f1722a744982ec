//! One harness for the Vault tests of any service, over either backend:
//!
//! - the in-process Vault API double (`carehub_platform::vault_double`), always;
//! - a real Vault when `VAULT_ADDR` and `VAULT_TOKEN` (a root or operator token) are set — the
//!   live suite. Every live test works under its own freshly enabled mounts and policies named
//!   `carehub-test-<random>`, so it can run against a shared dev server.
//!
//! Setup goes through Vault's HTTP API (sys/mounts, sys/policies/acl, auth/token/create,
//! sys/auth, approle roles, PKI root and roles) the same way for both backends, so the double is
//! exercised on those endpoints too.
//!
//! `both_backends!(name_double, name_live, body)` declares both tests. The live one is
//! `#[ignore]`d, so a run without a Vault reports it as skipped (never as passed);
//! `scripts/test.sh` runs the ignored live tests when `VAULT_ADDR` and `VAULT_TOKEN` are set,
//! and a live test run without them fails.

use std::collections::HashMap;
use std::path::PathBuf;

use carehub_platform::config::{KeysConfig, VaultAuthMethod, VaultConfig};
use carehub_platform::keys::KeyVersions;
use carehub_platform::vault_double::VaultDouble;
use secrecy::SecretString;
use serde_json::{json, Value};

pub struct TestVault {
    pub double: Option<VaultDouble>,
    pub addr: String,
    pub root_token: String,
    /// Unique per test: prefix of every mount and policy it creates.
    pub prefix: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

fn random(len: usize) -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

impl TestVault {
    pub async fn double() -> TestVault {
        let double = VaultDouble::start().await.unwrap();
        let addr = double.addr();
        let root_token = double.root_token();
        Self::with(Some(double), addr, root_token)
    }

    /// A real Vault from `VAULT_ADDR`/`VAULT_TOKEN`, or None (after printing why).
    pub async fn live(test: &str) -> Option<TestVault> {
        match (std::env::var("VAULT_ADDR"), std::env::var("VAULT_TOKEN")) {
            (Ok(addr), Ok(token)) if !addr.is_empty() && !token.is_empty() => {
                Some(Self::with(None, addr, token))
            }
            _ => {
                eprintln!(
                    "live Vault test {test}: VAULT_ADDR and VAULT_TOKEN are not set (see README, \"Live Vault tests\")"
                );
                None
            }
        }
    }

    fn with(double: Option<VaultDouble>, addr: String, root_token: String) -> TestVault {
        let _ = rustls::crypto::ring::default_provider().install_default();
        TestVault {
            double,
            addr,
            root_token,
            prefix: format!("carehub-test-{}", random(8)),
            http: reqwest::Client::builder().build().unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn is_live(&self) -> bool {
        self.double.is_none()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// An HTTP call with the root token; returns (status, JSON body or Null).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/v1/{path}", self.addr.trim_end_matches('/'));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, url)
            .header("X-Vault-Token", &self.root_token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, value)
    }

    /// Like [`TestVault::call`], failing the test on a status other than 2xx.
    pub async fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let (mut status, mut value) = self.call(method, path, Some(body.clone())).await;
        // A freshly enabled KV v2 mount on a real Vault answers "Upgrading from non-versioned
        // to versioned data" for a moment; wait (bounded) for it.
        let mut tries = 0;
        while status >= 400 && value.to_string().contains("pgrading") && tries < 100 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            (status, value) = self.call(method, path, Some(body.clone())).await;
            tries += 1;
        }
        assert!(
            (200..300).contains(&status),
            "{method} {path}: HTTP {status}: {value}"
        );
        value
    }

    /// A fresh KV mount of `version`; returns its path.
    pub async fn enable_kv(&self, version: u8) -> String {
        let mount = format!("{}-kv{version}", self.prefix);
        self.admin(
            "POST",
            &format!("sys/mounts/{mount}"),
            json!({"type": "kv", "options": {"version": version.to_string()}}),
        )
        .await;
        mount
    }

    /// Writes a key secret in carehub's layout, as `carehub keys init` would.
    pub async fn write_key(
        &self,
        mount: &str,
        version: u8,
        service: &str,
        segment: &str,
        keys: &KeyVersions,
    ) {
        let data = keys.to_kv_data();
        let path = format!("carehub/{service}/{segment}");
        if version == 1 {
            self.admin("POST", &format!("{mount}/{path}"), json!(data))
                .await;
        } else {
            self.admin(
                "POST",
                &format!("{mount}/data/{path}"),
                json!({ "data": data }),
            )
            .await;
        }
    }

    /// Writes every key `service` needs (fresh first versions); returns them.
    pub async fn seed_service(
        &self,
        mount: &str,
        version: u8,
        service: &str,
    ) -> HashMap<String, KeyVersions> {
        let mut out = HashMap::new();
        for name in carehub_platform::keys::vault_keys::required_keys(service) {
            let keys = KeyVersions::generate();
            self.write_key(mount, version, service, name.path_segment(), &keys)
                .await;
            out.insert(name.path_segment().to_owned(), keys);
        }
        out
    }

    /// The read-only policy of `service` on `mount` (as k8s/vault/ grants), named uniquely.
    pub async fn service_policy(&self, mount: &str, version: u8, service: &str) -> String {
        let name = format!("{}-{service}", self.prefix);
        let kv_path = if version == 1 {
            format!("{mount}/carehub/{service}/*")
        } else {
            format!("{mount}/data/carehub/{service}/*")
        };
        let hcl = format!("path \"{kv_path}\" {{\n  capabilities = [\"read\"]\n}}\n");
        self.admin(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            json!({ "policy": hcl }),
        )
        .await;
        name
    }

    /// A token carrying `policies`.
    pub async fn token(&self, policies: &[&str], ttl: &str) -> String {
        let v = self
            .admin(
                "POST",
                "auth/token/create",
                json!({"policies": policies, "ttl": ttl, "renewable": true, "no_parent": true}),
            )
            .await;
        v["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// Enables AppRole at a unique mount with role `carehub-<service>`; returns the mount,
    /// role id and a file holding a fresh secret id.
    pub async fn approle(&self, service: &str, policy: &str) -> (String, String, PathBuf) {
        let mount = format!("{}-approle", self.prefix);
        self.admin(
            "POST",
            &format!("sys/auth/{mount}"),
            json!({"type": "approle"}),
        )
        .await;
        let role = format!("carehub-{service}");
        self.admin(
            "POST",
            &format!("auth/{mount}/role/{role}"),
            json!({"token_policies": [policy], "token_ttl": "1h"}),
        )
        .await;
        let role_id = self
            .admin(
                "GET",
                &format!("auth/{mount}/role/{role}/role-id"),
                json!(null),
            )
            .await["data"]["role_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let secret_id = self
            .admin(
                "POST",
                &format!("auth/{mount}/role/{role}/secret-id"),
                json!({}),
            )
            .await["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let file = self.dir.path().join(format!("{service}-secret-id"));
        std::fs::write(&file, format!("{secret_id}\n")).unwrap();
        (mount, role_id, file)
    }

    /// A Vault config for `mount` logging in with `token`.
    pub fn config(&self, mount: &str, version: u8, token: &str) -> VaultConfig {
        let mut cfg = VaultConfig {
            addr: Some(self.addr.clone()),
            kv_mount: mount.to_owned(),
            kv_version: version,
            pki_mount: format!("{}-pki", self.prefix),
            request_timeout_secs: 5,
            ..VaultConfig::default()
        };
        cfg.auth.method = VaultAuthMethod::Token;
        cfg.auth.token = Some(SecretString::from(token.to_owned()));
        cfg
    }
}

/// Keys config with the given refresh interval and maximum staleness.
pub fn keys_config(refresh_secs: u64, max_staleness_secs: u64) -> KeysConfig {
    KeysConfig {
        provider: carehub_platform::config::KeyProvider::Vault,
        refresh_interval_secs: refresh_secs,
        max_staleness_secs,
        ..KeysConfig::default()
    }
}

/// Declares `<name>_double` and `<name>_live` running `body(&TestVault)`.
#[macro_export]
macro_rules! both_backends {
    ($double:ident, $live:ident, $body:path) => {
        #[tokio::test]
        async fn $double() {
            let vault = $crate::vault::TestVault::double().await;
            $body(&vault).await;
        }

        #[tokio::test]
        #[ignore = "needs VAULT_ADDR/VAULT_TOKEN (real Vault)"]
        async fn $live() {
            let vault = $crate::vault::TestVault::live(stringify!($live))
                .await
                .expect("live Vault tests need VAULT_ADDR and VAULT_TOKEN (a real Vault)");
            $body(&vault).await;
        }
    };
}
