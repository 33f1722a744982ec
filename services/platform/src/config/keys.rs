//! Configuration of key providers and of the Vault connection (`[server.keys]`,
//! `[server.vault]`, `[server.vault.auth]`), re-exported from `crate::config` and, for the
//! code that reads them, from `crate::keys::config`.
//!
//! Names are fixed by the team (chart values and docs use them); see README "Keys in Vault".

use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Where a service's keys come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyProvider {
    /// A local JSON key file: development only, refused when `production = true`.
    #[default]
    File,
    /// HashiCorp Vault KV (see [`VaultConfig`]).
    Vault,
}

/// `[server.keys]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    pub provider: KeyProvider,
    /// The development key file (JSON: `{"<service>": {"kek": {"current": "1", "v1": ...}}}`).
    pub file: PathBuf,
    /// Set in every production deployment: the file provider then refuses to start.
    pub production: bool,
    /// How often keys are re-read from Vault in the background.
    pub refresh_interval_secs: u64,
    /// How long the service keeps serving from its cached keys while Vault cannot be read;
    /// after that, key lookups fail closed and the service reports not ready.
    pub max_staleness_secs: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            provider: KeyProvider::File,
            file: PathBuf::from("keys/dev-keys.json"),
            production: false,
            refresh_interval_secs: 300,
            max_staleness_secs: 3600,
        }
    }
}

/// How the service logs in to Vault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuthMethod {
    /// A token given in the config or `VAULT_TOKEN`.
    #[default]
    Token,
    /// AppRole: `role_id` plus a secret id read from `secret_id_file`.
    Approle,
    /// The pod's service-account JWT exchanged at the Kubernetes auth method.
    Kubernetes,
}

impl VaultAuthMethod {
    /// The default mount path of the auth method (`auth/<mount>/login`).
    pub fn default_mount(self) -> &'static str {
        match self {
            VaultAuthMethod::Token => "token",
            VaultAuthMethod::Approle => "approle",
            VaultAuthMethod::Kubernetes => "kubernetes",
        }
    }
}

/// `[server.vault.auth]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultAuthConfig {
    pub method: VaultAuthMethod,
    /// Auth mount path; defaults to the method's name.
    pub mount: Option<String>,
    /// Token for `method = "token"`; `VAULT_TOKEN` is used when absent.
    #[serde(skip_serializing)]
    pub token: Option<SecretString>,
    /// AppRole role id (not a secret on its own).
    pub role_id: Option<String>,
    /// File holding the AppRole secret id (mounted from a Kubernetes secret or written by CI).
    pub secret_id_file: Option<PathBuf>,
    /// Kubernetes auth role; defaults to `carehub-<service>`.
    pub role: Option<String>,
    /// The service-account token Kubernetes projects into the pod.
    pub jwt_file: PathBuf,
}

impl Default for VaultAuthConfig {
    fn default() -> Self {
        Self {
            method: VaultAuthMethod::Token,
            mount: None,
            token: None,
            role_id: None,
            secret_id_file: None,
            role: None,
            jwt_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        }
    }
}

impl VaultAuthConfig {
    pub fn mount(&self) -> &str {
        self.mount
            .as_deref()
            .unwrap_or_else(|| self.method.default_mount())
    }
}

/// `[server.vault]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example:8200` (http only for a local dev server).
    pub addr: Option<String>,
    /// CA bundle that Vault's TLS certificate chains to.
    pub ca_file: Option<PathBuf>,
    /// Vault Enterprise namespace.
    pub namespace: Option<String>,
    pub kv_mount: String,
    /// 1 or 2.
    pub kv_version: u8,
    pub pki_mount: String,
    /// Per-request timeout of Vault calls (start-up, refresh, renewal; never on a request path).
    pub request_timeout_secs: u64,
    pub auth: VaultAuthConfig,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            addr: None,
            ca_file: None,
            namespace: None,
            kv_mount: "secret".to_owned(),
            kv_version: 2,
            pki_mount: "pki".to_owned(),
            request_timeout_secs: 10,
            auth: VaultAuthConfig::default(),
        }
    }
}

/// Where the service's mTLS certificate comes from (`[server.tls] source`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsSource {
    /// PEM files, reloaded when they change.
    #[default]
    Files,
    /// Issued by Vault PKI at start, renewed at two thirds of its lifetime.
    VaultPki,
}

/// Checks `[server.keys]` and, when Vault is used, `[server.vault]`.
pub fn validate(
    keys: &KeysConfig,
    vault: &VaultConfig,
    tls_source: TlsSource,
    problems: &mut Vec<String>,
) {
    let mut need = |ok: bool, msg: &str| {
        if !ok {
            problems.push(msg.to_owned());
        }
    };
    need(
        keys.refresh_interval_secs > 0,
        "server.keys.refresh_interval_secs must be > 0",
    );
    need(
        keys.max_staleness_secs > keys.refresh_interval_secs,
        "server.keys.max_staleness_secs must be greater than refresh_interval_secs (a single failed refresh must not stop the service)",
    );
    need(
        !(keys.production && keys.provider == KeyProvider::File),
        "server.keys.provider = \"file\" is for development only and server.keys.production is true: use provider = \"vault\"",
    );
    if keys.provider != KeyProvider::Vault && tls_source != TlsSource::VaultPki {
        return;
    }
    match vault.addr.as_deref() {
        None | Some("") => need(
            false,
            "server.vault.addr is required when keys or certificates come from Vault",
        ),
        Some(addr) => need(
            addr.starts_with("https://") || addr.starts_with("http://"),
            "server.vault.addr must start with https:// (or http:// for a local dev server)",
        ),
    }
    need(
        matches!(vault.kv_version, 1 | 2),
        "server.vault.kv_version must be 1 or 2",
    );
    need(
        !vault.kv_mount.trim_matches('/').is_empty(),
        "server.vault.kv_mount must not be empty",
    );
    need(
        !vault.pki_mount.trim_matches('/').is_empty(),
        "server.vault.pki_mount must not be empty",
    );
    need(
        vault.request_timeout_secs > 0,
        "server.vault.request_timeout_secs must be > 0",
    );
    if vault.auth.method == VaultAuthMethod::Approle {
        need(
            vault.auth.role_id.as_deref().is_some_and(|r| !r.is_empty()),
            "server.vault.auth.role_id is required for method = \"approle\"",
        );
        need(
            vault.auth.secret_id_file.is_some(),
            "server.vault.auth.secret_id_file is required for method = \"approle\"",
        );
    }
}
