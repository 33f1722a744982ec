//! The Vault connection every Vault-backed part of a service shares: login (token, AppRole,
//! Kubernetes), token renewal, KV v1/v2 reads and writes in carehub's key layout, and PKI
//! issuance, all through `vaultrs`.
//!
//! Vault is never called on a request path: callers are start-up, background refreshers and
//! operator commands. Every HTTP request made here is counted ([`vault_requests_total`]) so tests
//! can prove that.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tokio::sync::RwLock;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::config::{VaultAuthMethod, VaultConfig};
pub use super::vault_error::VaultError;

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Vault HTTP requests made by this process so far (all connections).
pub fn vault_requests_total() -> u64 {
    REQUESTS.load(Ordering::SeqCst)
}

/// One KV secret as strings, with its KV v2 version when the mount is v2.
pub struct KvSecret {
    pub data: HashMap<String, String>,
    pub version: Option<u64>,
}

impl Drop for KvSecret {
    fn drop(&mut self) {
        for value in self.data.values_mut() {
            zeroize::Zeroize::zeroize(value);
        }
    }
}

impl std::fmt::Debug for KvSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvSecret")
            .field("fields", &self.data.len())
            .field("version", &self.version)
            .finish()
    }
}

/// KV v2 metadata of a secret.
#[derive(Debug, Clone)]
pub struct KvMetadata {
    pub current_version: u64,
    pub created_time: String,
    pub updated_time: String,
}

/// A certificate issued by Vault PKI.
#[derive(Clone)]
pub struct IssuedCertificate {
    pub certificate: String,
    pub private_key: Zeroizing<String>,
    pub issuing_ca: String,
    pub ca_chain: Vec<String>,
    pub serial_number: String,
    /// Unix seconds.
    pub expiration: Option<u64>,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("serial_number", &self.serial_number)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

struct TokenState {
    renewable: bool,
    ttl: Duration,
    obtained: Instant,
}

/// A logged-in Vault client for one service.
pub struct VaultConn {
    service: String,
    cfg: VaultConfig,
    client: RwLock<VaultClient>,
    token: Mutex<TokenState>,
    requests: AtomicU64,
}

impl std::fmt::Debug for VaultConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultConn")
            .field("service", &self.service)
            .field("addr", &self.cfg.addr)
            .finish_non_exhaustive()
    }
}

fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<String>, VaultError> {
    let raw = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        VaultError::Config(format!("cannot read {what} from {}: {e}", path.display()))
    })?);
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(VaultError::Config(format!(
            "{what} file {} is empty",
            path.display()
        )));
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

impl VaultConn {
    /// The client for one request to Vault (counted on `/metrics`).
    async fn api(&self) -> tokio::sync::RwLockReadGuard<'_, VaultClient> {
        crate::stats::vault_request();
        self.client.read().await
    }

    /// Builds the client and logs in with the configured method.
    pub async fn connect(service: &str, cfg: &VaultConfig) -> Result<Arc<Self>, VaultError> {
        let addr = cfg
            .addr
            .as_deref()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| VaultError::Config("server.vault.addr is not set".into()))?;
        if reqwest::Url::parse(addr).is_err() {
            return Err(VaultError::Config(format!(
                "server.vault.addr `{addr}` is not a URL"
            )));
        }
        // reqwest is built without a default crypto provider: everything in carehub uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(addr)
            .token("")
            .verify(true)
            .identity(None)
            .ca_certs(
                cfg.ca_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            )
            .timeout(Some(Duration::from_secs(cfg.request_timeout_secs.max(1))))
            .namespace(cfg.namespace.clone());
        let settings = settings
            .build()
            .map_err(|e| VaultError::Config(e.to_string()))?;
        let client = VaultClient::new(settings)
            .map_err(|e| VaultError::Config(format!("building the Vault client: {e}")))?;
        let conn = Arc::new(VaultConn {
            service: service.to_owned(),
            cfg: cfg.clone(),
            client: RwLock::new(client),
            token: Mutex::new(TokenState {
                renewable: false,
                ttl: Duration::ZERO,
                obtained: Instant::now(),
            }),
            requests: AtomicU64::new(0),
        });
        conn.login().await?;
        Ok(conn)
    }

    pub fn config(&self) -> &VaultConfig {
        &self.cfg
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// Vault HTTP requests made through this connection.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        REQUESTS.fetch_add(1, Ordering::SeqCst);
    }

    fn set_token_state(&self, renewable: bool, ttl_secs: u64) {
        let mut state = self.token.lock().unwrap_or_else(|e| e.into_inner());
        *state = TokenState {
            renewable,
            ttl: Duration::from_secs(ttl_secs),
            obtained: Instant::now(),
        };
    }

    /// Logs in (again) with the configured method and keeps the new token.
    pub async fn login(&self) -> Result<(), VaultError> {
        let auth = &self.cfg.auth;
        let mount = auth.mount().to_owned();
        let login_err =
            |e: ClientError| match VaultError::from_client(&format!("auth/{mount}/login"), e) {
                e @ (VaultError::Unreachable { .. } | VaultError::Sealed) => e,
                VaultError::Api { errors, code, .. } => VaultError::Login {
                    mount: mount.clone(),
                    reason: format!("HTTP {code}: {}", errors.join("; ")),
                },
                other => VaultError::Login {
                    mount: mount.clone(),
                    reason: other.to_string(),
                },
            };
        match auth.method {
            VaultAuthMethod::Token => {
                let token = match &auth.token {
                    Some(t) => Zeroizing::new(t.expose_secret().to_owned()),
                    None => Zeroizing::new(std::env::var("VAULT_TOKEN").map_err(|_| {
                        VaultError::Config(
                            "server.vault.auth.token is not set and VAULT_TOKEN is empty".into(),
                        )
                    })?),
                };
                self.client.write().await.set_token(&token);
                let info = {
                    let client = self.api().await;
                    self.count();
                    client
                        .lookup()
                        .await
                        .map_err(|e| VaultError::from_client("auth/token/lookup-self", e))?
                };
                self.set_token_state(info.renewable.unwrap_or(false), info.ttl);
            }
            VaultAuthMethod::Approle => {
                let role_id = auth.role_id.clone().ok_or_else(|| {
                    VaultError::Config("server.vault.auth.role_id is not set".into())
                })?;
                let file = auth.secret_id_file.as_deref().ok_or_else(|| {
                    VaultError::Config("server.vault.auth.secret_id_file is not set".into())
                })?;
                let secret_id = read_secret_file(file, "the AppRole secret id")?;
                let info = {
                    let client = self.api().await;
                    self.count();
                    vaultrs::auth::approle::login(&*client, &mount, &role_id, &secret_id)
                        .await
                        .map_err(login_err)?
                };
                self.client.write().await.set_token(&info.client_token);
                self.set_token_state(info.renewable, info.lease_duration);
            }
            VaultAuthMethod::Kubernetes => {
                let role = auth
                    .role
                    .clone()
                    .unwrap_or_else(|| format!("carehub-{}", self.service));
                let jwt = read_secret_file(&auth.jwt_file, "the service-account token")?;
                let info = {
                    let client = self.api().await;
                    self.count();
                    vaultrs::auth::kubernetes::login(&*client, &mount, &role, &jwt)
                        .await
                        .map_err(login_err)?
                };
                self.client.write().await.set_token(&info.client_token);
                self.set_token_state(info.renewable, info.lease_duration);
            }
        }
        tracing::info!(service = %self.service, method = ?auth.method, "logged in to Vault");
        Ok(())
    }

    /// Keeps the token alive: renews a renewable token past half its TTL; logs in again when
    /// renewal fails or a non-renewable AppRole/Kubernetes token nears its end. Call it from
    /// background tasks only.
    pub async fn maintain_token(&self) -> Result<(), VaultError> {
        let (renewable, ttl, age) = {
            let s = self.token.lock().unwrap_or_else(|e| e.into_inner());
            (s.renewable, s.ttl, s.obtained.elapsed())
        };
        // TTL 0 means a token that never expires (root, or periodic without TTL).
        if ttl.is_zero() || age < ttl / 2 {
            return Ok(());
        }
        if renewable {
            let renewed = {
                let client = self.api().await;
                self.count();
                client.renew(None).await
            };
            match renewed {
                Ok(info) => {
                    self.set_token_state(info.renewable, info.lease_duration);
                    tracing::debug!(service = %self.service, ttl = info.lease_duration, "Vault token renewed");
                    return Ok(());
                }
                Err(e) => {
                    let err = VaultError::from_client("auth/token/renew-self", e);
                    if err.is_transient() || self.cfg.auth.method == VaultAuthMethod::Token {
                        return Err(err);
                    }
                    tracing::warn!(service = %self.service, error = %err, "Vault token renewal failed; logging in again");
                }
            }
        }
        if self.cfg.auth.method == VaultAuthMethod::Token {
            return Ok(());
        }
        self.login().await
    }

    /// Renews the token now (`auth/token/renew-self`); returns its new TTL.
    pub async fn renew_token(&self) -> Result<Duration, VaultError> {
        let info = {
            let client = self.api().await;
            self.count();
            client
                .renew(None)
                .await
                .map_err(|e| VaultError::from_client("auth/token/renew-self", e))?
        };
        self.set_token_state(info.renewable, info.lease_duration);
        Ok(Duration::from_secs(info.lease_duration))
    }

    /// Token state for tests and status output: (renewable, remaining TTL).
    pub fn token_ttl(&self) -> (bool, Duration) {
        let s = self.token.lock().unwrap_or_else(|e| e.into_inner());
        (s.renewable, s.ttl.saturating_sub(s.obtained.elapsed()))
    }

    fn kv_mount(&self) -> &str {
        self.cfg.kv_mount.trim_matches('/')
    }

    fn kv_display_path(&self, path: &str) -> String {
        match self.cfg.kv_version {
            1 => format!("{}/{path}", self.kv_mount()),
            _ => format!("{}/data/{path}", self.kv_mount()),
        }
    }

    /// Reads a KV secret whose values are strings.
    pub async fn read_kv(&self, path: &str) -> Result<KvSecret, VaultError> {
        let shown = self.kv_display_path(path);
        let client = self.api().await;
        self.count();
        let (data, version) = if self.cfg.kv_version == 1 {
            let raw = vaultrs::kv1::get_raw(&*client, self.kv_mount(), path)
                .await
                .map_err(|e| VaultError::from_client(&shown, e))?;
            (raw.data, None)
        } else {
            let endpoint = vaultrs::api::kv2::requests::ReadSecretRequest::builder()
                .mount(self.kv_mount())
                .path(path)
                .build()
                .map_err(|e| VaultError::Config(e.to_string()))?;
            let raw = vaultrs::api::exec_with_result(&*client, endpoint)
                .await
                .map_err(|e| VaultError::from_client(&shown, e))?;
            (raw.data, Some(raw.metadata.version))
        };
        let data = match data {
            serde_json::Value::Object(map) => {
                let mut out = HashMap::with_capacity(map.len());
                for (k, v) in map {
                    match v {
                        serde_json::Value::String(s) => {
                            out.insert(k, s);
                        }
                        other => {
                            out.insert(k, other.to_string());
                        }
                    }
                }
                out
            }
            // A KV v2 secret whose latest version was deleted reads as `data: null`.
            serde_json::Value::Null => return Err(VaultError::NotFound { path: shown }),
            _ => {
                return Err(VaultError::Malformed {
                    path: shown,
                    reason: "data is not an object".into(),
                })
            }
        };
        Ok(KvSecret { data, version })
    }

    /// Writes a KV secret. On KV v2, `cas = Some(0)` creates only if absent and `Some(n)` updates
    /// only if version `n` is the latest; KV v1 has no check-and-set, so `cas` is checked by a
    /// read first (racy, which is why operators should prefer v2).
    pub async fn write_kv(
        &self,
        path: &str,
        data: &HashMap<String, String>,
        cas: Option<u64>,
    ) -> Result<Option<u64>, VaultError> {
        let shown = self.kv_display_path(path);
        if self.cfg.kv_version == 1 {
            if cas == Some(0) {
                match self.read_kv(path).await {
                    Ok(_) => return Err(VaultError::CasConflict { path: shown }),
                    Err(VaultError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            let client = self.api().await;
            self.count();
            let body: HashMap<&str, &String> = data.iter().map(|(k, v)| (k.as_str(), v)).collect();
            vaultrs::kv1::set(&*client, self.kv_mount(), path, &body)
                .await
                .map_err(|e| VaultError::from_client(&shown, e))?;
            return Ok(None);
        }
        let client = self.api().await;
        self.count();
        let meta = match cas {
            Some(cas) => {
                let cas = u32::try_from(cas)
                    .map_err(|_| VaultError::Config("check-and-set version too large".into()))?;
                let options = vaultrs::api::kv2::requests::SetSecretRequestOptions { cas };
                vaultrs::kv2::set_with_options(&*client, self.kv_mount(), path, data, options).await
            }
            None => vaultrs::kv2::set(&*client, self.kv_mount(), path, data).await,
        }
        .map_err(|e| VaultError::from_client(&shown, e))?;
        Ok(Some(meta.version))
    }

    /// KV v2 metadata (creation and update times, latest version); `None` on KV v1.
    pub async fn kv_metadata(&self, path: &str) -> Result<Option<KvMetadata>, VaultError> {
        if self.cfg.kv_version == 1 {
            return Ok(None);
        }
        let shown = format!("{}/metadata/{path}", self.kv_mount());
        let client = self.api().await;
        self.count();
        let meta = vaultrs::kv2::read_metadata(&*client, self.kv_mount(), path)
            .await
            .map_err(|e| VaultError::from_client(&shown, e))?;
        Ok(Some(KvMetadata {
            current_version: meta.current_version,
            created_time: meta.created_time,
            updated_time: meta.updated_time,
        }))
    }

    /// Issues a certificate from `<pki_mount>/issue/<role>`.
    pub async fn pki_issue(
        &self,
        role: &str,
        common_name: &str,
        uri_sans: &str,
        alt_names: &str,
        ttl: Duration,
    ) -> Result<IssuedCertificate, VaultError> {
        let mount = self.cfg.pki_mount.trim_matches('/');
        let shown = format!("{mount}/issue/{role}");
        let mut opts = vaultrs::api::pki::requests::GenerateCertificateRequest::builder();
        opts.common_name(common_name)
            .uri_sans(uri_sans)
            .alt_names(alt_names)
            .ttl(format!("{}s", ttl.as_secs().max(1)));
        let client = self.api().await;
        self.count();
        let issued = vaultrs::pki::cert::generate(&*client, mount, role, Some(&mut opts))
            .await
            .map_err(|e| VaultError::from_client(&shown, e))?;
        Ok(IssuedCertificate {
            certificate: issued.certificate,
            private_key: Zeroizing::new(issued.private_key),
            issuing_ca: issued.issuing_ca,
            ca_chain: issued.ca_chain.unwrap_or_default(),
            serial_number: issued.serial_number,
            expiration: issued.expiration,
        })
    }
}
