//! Keys a service holds in memory: key-encryption keys, blind-index keys, audit-checkpoint and
//! token-signing seeds, each with all its versions, as pulled from Vault (or, in development,
//! from a local key file).
//!
//! Every consumer (crypto, audit, identity's token signer) reads keys through [`KeySource`], so
//! the request path only ever touches memory: providers fetch in the background and hand out
//! snapshots.
//!
//! Layout in Vault (KV v1 or v2, see k8s/vault/): `carehub/<service>/<key name>` holds
//! `{"current": "<n>", "v1": "<base64 32 bytes>", "v2": ...}`. All versions live in one secret so
//! that KV v1 and v2 behave the same and a rotated key still decrypts what it encrypted.

/// The keys' configuration lives with the rest of the configuration (a leaf); this path stays.
pub use crate::config::keys as config;
pub mod file;
pub mod pki;
pub mod vault;
mod vault_error;
pub mod vault_keys;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use zeroize::Zeroizing;

/// The kinds of key a service keeps, named as their Vault path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyName {
    /// Wraps per-subject data keys (envelope encryption).
    Kek,
    /// HMAC-SHA-256 keys for blind indexes of encrypted fields that must be looked up.
    BlindIndex,
    /// Ed25519 seeds that sign audit-chain checkpoints.
    AuditCheckpoint,
    /// Ed25519 seeds that sign access tokens (identity only).
    Signing,
}

impl KeyName {
    pub const ALL: [KeyName; 4] = [
        KeyName::Kek,
        KeyName::BlindIndex,
        KeyName::AuditCheckpoint,
        KeyName::Signing,
    ];

    /// The last path segment under `carehub/<service>/`.
    pub fn path_segment(self) -> &'static str {
        match self {
            KeyName::Kek => "kek",
            KeyName::BlindIndex => "blind-index",
            KeyName::AuditCheckpoint => "audit-checkpoint",
            KeyName::Signing => "signing",
        }
    }

    /// `carehub/<service>/<segment>`: the path of this key inside the KV mount.
    pub fn vault_path(self, service: &str) -> String {
        format!("carehub/{service}/{}", self.path_segment())
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path_segment())
    }
}

/// 32 bytes of key material, wiped from memory when the last reference goes.
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(Zeroizing::new(bytes))
    }

    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, bytes.as_mut());
        SecretKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Every version of one key, and which of them is current (used for new data).
#[derive(Debug, Clone)]
pub struct KeyVersions {
    current: u32,
    keys: BTreeMap<u32, Arc<SecretKey>>,
}

impl KeyVersions {
    /// A first version, freshly generated.
    pub fn generate() -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(1, Arc::new(SecretKey::generate()));
        KeyVersions { current: 1, keys }
    }

    pub fn from_versions(
        current: u32,
        keys: BTreeMap<u32, Arc<SecretKey>>,
    ) -> Result<Self, KeyError> {
        if !keys.contains_key(&current) {
            return Err(KeyError::Malformed(format!(
                "current version {current} is not among the stored versions"
            )));
        }
        Ok(KeyVersions { current, keys })
    }

    /// The version used for new data.
    pub fn current(&self) -> (u32, Arc<SecretKey>) {
        match self.keys.get(&self.current) {
            Some(key) => (self.current, Arc::clone(key)),
            // from_versions/rotate keep `current` among the keys.
            None => unreachable!("current key version missing"),
        }
    }

    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// A specific version, for data written before a rotation.
    pub fn get(&self, version: u32) -> Option<Arc<SecretKey>> {
        self.keys.get(&version).cloned()
    }

    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    /// Adds a freshly generated version and makes it current; returns its number.
    pub fn rotate(&mut self) -> u32 {
        let next = self.keys.keys().next_back().copied().unwrap_or(0) + 1;
        self.keys.insert(next, Arc::new(SecretKey::generate()));
        self.current = next;
        next
    }

    /// Parses the KV secret layout described in the module docs.
    pub fn from_kv_data(data: &HashMap<String, String>) -> Result<Self, KeyError> {
        let current = data
            .get("current")
            .ok_or_else(|| KeyError::Malformed("field `current` is missing".into()))?
            .parse::<u32>()
            .map_err(|_| KeyError::Malformed("field `current` is not a version number".into()))?;
        let mut keys = BTreeMap::new();
        for (field, value) in data {
            let Some(version) = field.strip_prefix('v').and_then(|v| v.parse::<u32>().ok()) else {
                continue;
            };
            let decoded = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(value.trim())
                    .map_err(|_| KeyError::Malformed(format!("field `{field}` is not base64")))?,
            );
            let bytes: [u8; 32] = decoded
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::Malformed(format!("field `{field}` is not 32 bytes")))?;
            keys.insert(version, Arc::new(SecretKey::from_bytes(bytes)));
        }
        Self::from_versions(current, keys)
    }

    /// The KV secret layout described in the module docs. The values are secrets: callers write
    /// them to Vault (or a development key file) and drop them.
    pub fn to_kv_data(&self) -> HashMap<String, String> {
        let mut data = HashMap::new();
        data.insert("current".to_string(), self.current.to_string());
        for (version, key) in &self.keys {
            data.insert(
                format!("v{version}"),
                base64::engine::general_purpose::STANDARD.encode(key.as_bytes()),
            );
        }
        data
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key was never loaded (Vault unreachable at start, path missing or denied).
    #[error("key `{0}` is not available")]
    Unavailable(KeyName),
    /// Data names a version this service does not hold (destroyed, or from another install).
    #[error("key `{name}` has no version {version}")]
    UnknownVersion { name: KeyName, version: u32 },
    /// Vault has been unreachable for longer than the configured maximum staleness.
    #[error("keys are stale: last refreshed {age_secs}s ago, the limit is {max_secs}s")]
    Stale { age_secs: u64, max_secs: u64 },
    #[error("malformed key secret: {0}")]
    Malformed(String),
}

/// Where a service's keys come from. Implementations answer from memory.
pub trait KeySource: Send + Sync + 'static {
    /// All versions of one key of this service.
    fn versions(&self, name: KeyName) -> Result<Arc<KeyVersions>, KeyError>;

    /// The current version of a key, for new data.
    fn current(&self, name: KeyName) -> Result<(u32, Arc<SecretKey>), KeyError> {
        Ok(self.versions(name)?.current())
    }

    /// A given version of a key, for existing data.
    fn version(&self, name: KeyName, version: u32) -> Result<Arc<SecretKey>, KeyError> {
        self.versions(name)?
            .get(version)
            .ok_or(KeyError::UnknownVersion { name, version })
    }

    /// How fresh the keys are, for readiness and metrics. Sources that never refresh are
    /// always serving.
    fn status(&self) -> KeyStatus {
        KeyStatus::default()
    }
}

/// The health of a [`KeySource`]: whether it answers, and how old its keys are.
#[derive(Debug, Clone)]
pub struct KeyStatus {
    /// `vault`, `file` or `static`.
    pub provider: &'static str,
    /// False once the keys are older than the maximum staleness (lookups fail closed).
    pub serving: bool,
    /// Time since the last successful refresh (None: never refreshed, never stale).
    pub age: Option<std::time::Duration>,
    pub max_staleness: Option<std::time::Duration>,
    /// Why the last refresh failed, if it did.
    pub last_error: Option<String>,
}

impl Default for KeyStatus {
    fn default() -> Self {
        KeyStatus {
            provider: "static",
            serving: true,
            age: None,
            max_staleness: None,
            last_error: None,
        }
    }
}

/// The key source a service's configuration names: the Vault provider (keys fetched now,
/// refreshed in the background) or the development key file.
pub async fn from_config(
    service: &str,
    cfg: &crate::config::PlatformConfig,
) -> anyhow::Result<Arc<dyn KeySource>> {
    from_parts(service, &cfg.keys, &cfg.vault).await
}

/// [`from_config`] from the two configuration tables it reads.
pub async fn from_parts(
    service: &str,
    keys: &config::KeysConfig,
    vault_cfg: &config::VaultConfig,
) -> anyhow::Result<Arc<dyn KeySource>> {
    use anyhow::Context as _;
    match keys.provider {
        config::KeyProvider::File => Ok(file::FileKeys::load(service, keys)?),
        config::KeyProvider::Vault => {
            let conn = vault::VaultConn::connect(service, vault_cfg)
                .await
                .context("connecting to Vault for keys")?;
            let source = vault_keys::VaultKeys::start(service, keys, conn)
                .await
                .with_context(|| format!("loading {service}'s keys from Vault"))?;
            Ok(source)
        }
    }
}

/// A readiness check for [`crate::server::ServiceHost::readiness`]: not ready once the keys are
/// past their maximum staleness.
pub fn readiness(source: Arc<dyn KeySource>) -> crate::admin::ReadinessCheck {
    Arc::new(move || source.status().serving)
}

/// The key-cache gauges (label `provider`) and what they mean.
pub const KEY_CACHE_METRICS: [(&str, &str); 4] = [
    (
        "carehub_key_cache_age_seconds",
        "Seconds since the keys were last refreshed successfully (0: a provider that never refreshes).",
    ),
    (
        "carehub_key_cache_max_staleness_seconds",
        "Age past which the keys fail closed (server.keys.max_staleness_secs; 0: never).",
    ),
    (
        "carehub_key_cache_serving",
        "1 while the keys answer; 0 once they are past their maximum staleness (failing closed).",
    ),
    (
        "carehub_key_cache_refresh_failing",
        "1 while the last refresh of the keys failed.",
    ),
];

/// Publishes the gauges of [`KEY_CACHE_METRICS`] now (so that a first scrape already has them)
/// and then every `every` until `source` is dropped elsewhere.
pub fn spawn_metrics(
    source: &Arc<dyn KeySource>,
    metrics: Arc<crate::admin::Metrics>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    for (name, help) in KEY_CACHE_METRICS {
        metrics.describe(name, crate::admin::MetricKind::Gauge, help);
    }
    publish_metrics(source.as_ref(), &metrics);
    let weak = Arc::downgrade(source);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every.max(std::time::Duration::from_millis(10)));
        loop {
            ticker.tick().await;
            let Some(source) = weak.upgrade() else { break };
            publish_metrics(source.as_ref(), &metrics);
        }
    })
}

/// Sets the key-cache gauges of [`KEY_CACHE_METRICS`] once. A provider that never refreshes
/// (file, static) reads age 0 and maximum staleness 0, so that the staleness alert, which
/// compares the two, never fires for it.
pub fn publish_metrics(source: &dyn KeySource, metrics: &crate::admin::Metrics) {
    let status = source.status();
    let labels = [("provider", status.provider)];
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let secs = |d: Option<std::time::Duration>| d.map_or(0.0, |d| d.as_secs_f64());
    metrics.set_gauge(KEY_CACHE_METRICS[0].0, &labels, secs(status.age));
    metrics.set_gauge(KEY_CACHE_METRICS[1].0, &labels, secs(status.max_staleness));
    metrics.set_gauge(KEY_CACHE_METRICS[2].0, &labels, flag(status.serving));
    metrics.set_gauge(
        KEY_CACHE_METRICS[3].0,
        &labels,
        flag(status.last_error.is_some()),
    );
}

/// Keys held in memory and never refreshed: for tests, and the base the providers build on.
#[derive(Debug, Clone, Default)]
pub struct StaticKeys {
    keys: HashMap<KeyName, Arc<KeyVersions>>,
}

impl StaticKeys {
    /// One freshly generated version of every key kind.
    pub fn generate() -> Self {
        let keys = KeyName::ALL
            .into_iter()
            .map(|name| (name, Arc::new(KeyVersions::generate())))
            .collect();
        StaticKeys { keys }
    }

    pub fn with(mut self, name: KeyName, versions: KeyVersions) -> Self {
        self.keys.insert(name, Arc::new(versions));
        self
    }
}

impl KeySource for StaticKeys {
    fn versions(&self, name: KeyName) -> Result<Arc<KeyVersions>, KeyError> {
        self.keys
            .get(&name)
            .cloned()
            .ok_or(KeyError::Unavailable(name))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn kv_layout_round_trips_every_version() {
        let mut versions = KeyVersions::generate();
        let first = versions.current().1.as_bytes().to_owned();
        assert_eq!(versions.rotate(), 2);
        let parsed = KeyVersions::from_kv_data(&versions.to_kv_data()).unwrap();
        assert_eq!(parsed.current_version(), 2);
        assert_eq!(parsed.get(1).unwrap().as_bytes(), &first);
        assert_ne!(parsed.get(2).unwrap().as_bytes(), &first);
    }

    #[test]
    fn malformed_secrets_are_refused() {
        let mut data = HashMap::from([("current".to_string(), "2".to_string())]);
        data.insert(
            "v1".into(),
            base64::engine::general_purpose::STANDARD.encode([0u8; 32]),
        );
        assert!(matches!(
            KeyVersions::from_kv_data(&data),
            Err(KeyError::Malformed(_))
        ));
        data.insert("v2".into(), "not base64!".into());
        assert!(matches!(
            KeyVersions::from_kv_data(&data),
            Err(KeyError::Malformed(_))
        ));
        data.insert(
            "v2".into(),
            base64::engine::general_purpose::STANDARD.encode([0u8; 16]),
        );
        assert!(matches!(
            KeyVersions::from_kv_data(&data),
            Err(KeyError::Malformed(_))
        ));
    }

    /// A Vault-backed source whose last refresh failed and that is past its staleness bound.
    struct StaleVault;

    impl KeySource for StaleVault {
        fn versions(&self, _name: KeyName) -> Result<Arc<KeyVersions>, KeyError> {
            Err(KeyError::Stale {
                age_secs: 90,
                max_secs: 60,
            })
        }

        fn status(&self) -> KeyStatus {
            KeyStatus {
                provider: "vault",
                serving: false,
                age: Some(std::time::Duration::from_secs(90)),
                max_staleness: Some(std::time::Duration::from_secs(60)),
                last_error: Some("connection refused".into()),
            }
        }
    }

    #[test]
    fn key_cache_gauges_show_staleness_and_failing_closed() {
        let metrics = crate::admin::Metrics::new("records");
        publish_metrics(&StaleVault, &metrics);
        let text = metrics.render();
        for line in [
            "carehub_key_cache_age_seconds{service=\"records\",provider=\"vault\"} 90\n",
            "carehub_key_cache_max_staleness_seconds{service=\"records\",provider=\"vault\"} 60\n",
            "carehub_key_cache_serving{service=\"records\",provider=\"vault\"} 0\n",
            "carehub_key_cache_refresh_failing{service=\"records\",provider=\"vault\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }

        // Static keys never refresh: every gauge is still there, at values no alert fires on.
        let metrics = crate::admin::Metrics::new("records");
        publish_metrics(&StaticKeys::generate(), &metrics);
        let text = metrics.render();
        for line in [
            "carehub_key_cache_age_seconds{service=\"records\",provider=\"static\"} 0\n",
            "carehub_key_cache_max_staleness_seconds{service=\"records\",provider=\"static\"} 0\n",
            "carehub_key_cache_serving{service=\"records\",provider=\"static\"} 1\n",
            "carehub_key_cache_refresh_failing{service=\"records\",provider=\"static\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
    }

    #[test]
    fn unknown_versions_are_named() {
        let keys = StaticKeys::generate();
        assert!(keys.version(KeyName::Kek, 1).is_ok());
        let err = keys.version(KeyName::Kek, 7).unwrap_err();
        assert_eq!(err.to_string(), "key `kek` has no version 7");
    }
}
