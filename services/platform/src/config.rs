//! Layered configuration shared by every service.
//!
//! Precedence, lowest first: compiled defaults → TOML file → `CAREHUB_*` environment variables
//! (`__` separates levels: `CAREHUB_SERVER__LISTEN=0.0.0.0:50051`) → command-line overrides.
//! Secrets are `secrecy` types: they are never serialized, printed or logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod audit;
pub mod keys;

pub use audit::{AuditConfig, SinkKind};
pub use keys::{KeyProvider, KeysConfig, TlsSource, VaultAuthConfig, VaultAuthMethod, VaultConfig};

/// What every service needs from its configuration, under the `[server]` table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformConfig {
    /// gRPC port (mTLS only).
    pub listen: SocketAddr,
    /// Plain HTTP admin port: /metrics, /healthz, /readyz (and identity's JWKS).
    pub admin_listen: SocketAddr,
    pub tls: TlsConfig,
    pub database: DatabaseConfig,
    pub telemetry: TelemetryConfig,
    pub limits: ServerLimits,
    pub auth: AuthConfig,
    pub keys: KeysConfig,
    pub vault: VaultConfig,
    pub audit: AuditConfig,
    /// The transactional outbox's relay and its subscribers (`[server.outbox]`).
    pub outbox: OutboxConfig,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9051)),
            tls: TlsConfig::default(),
            database: DatabaseConfig::default(),
            telemetry: TelemetryConfig::default(),
            limits: ServerLimits::default(),
            auth: AuthConfig::default(),
            keys: KeysConfig::default(),
            vault: VaultConfig::default(),
            audit: AuditConfig::default(),
            outbox: OutboxConfig::default(),
        }
    }
}

/// mTLS material as PEM files; reloaded from disk when they change.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle that peers' certificates must chain to.
    pub ca_file: PathBuf,
    /// The SPIFFE trust domain of workload identities (`spiffe://<domain>/service/<name>`).
    pub trust_domain: String,
    /// How often the files are checked for changes.
    pub reload_interval_secs: u64,
    /// `files` (the PEM files above) or `vault_pki` (issued by `<vault.pki_mount>/issue/<pki_role>`).
    pub source: TlsSource,
    /// Vault PKI role; defaults to `carehub-<service>`.
    pub pki_role: Option<String>,
    /// Requested certificate lifetime; renewed at two thirds of it.
    pub pki_ttl_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::from("certs/service.pem"),
            key_file: PathBuf::from("certs/service-key.pem"),
            ca_file: PathBuf::from("certs/ca.pem"),
            trust_domain: "carehub.local".to_owned(),
            reload_interval_secs: 30,
            source: TlsSource::Files,
            pki_role: None,
            pki_ttl_secs: 86_400,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://...`; a secret because it may carry a password.
    #[serde(skip_serializing)]
    pub url: Option<SecretString>,
    pub max_connections: u32,
    /// Connections opened at start and kept open (at most `max_connections`), so that a burst
    /// finds the pool warm instead of connecting on the request path. 0: opened on demand.
    pub min_connections: u32,
    pub acquire_timeout_secs: u64,
    /// Run the embedded migrations when the service starts (`carehub migrate` otherwise).
    pub migrate_on_start: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            min_connections: 0,
            acquire_timeout_secs: 5,
            migrate_on_start: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector endpoint (`http://otel-collector:4317`); no export when absent.
    pub otlp_endpoint: Option<String>,
    /// Share of root traces sampled, 0.0..=1.0 (child spans follow their parent).
    pub sample_ratio: f64,
    pub log_format: LogFormat,
    /// `tracing` EnvFilter directive, for example `info,carehub_identity=debug`.
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            log_format: LogFormat::Json,
            log_filter: "info".to_owned(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    pub request_timeout_ms: u64,
    /// In-flight requests per server; more are shed with RESOURCE_EXHAUSTED.
    pub concurrency_limit: usize,
    pub max_message_bytes: usize,
    /// How long in-flight requests may finish after shutdown begins.
    pub drain_timeout_secs: u64,
    pub handshake_timeout_ms: u64,
    /// TLS handshakes in progress at once; connections beyond it are closed at once, so a flood
    /// of slow or bogus handshakes cannot eat the CPU that established connections need.
    pub max_concurrent_handshakes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            request_timeout_ms: 10_000,
            concurrency_limit: 512,
            max_message_bytes: 4 * 1024 * 1024,
            drain_timeout_secs: 20,
            handshake_timeout_ms: 5_000,
            max_concurrent_handshakes: 256,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// Identity's gRPC endpoint, for services that verify tokens (not identity itself).
    pub identity_endpoint: Option<String>,
    /// How often revoked sessions are fetched from identity (must stay well under 60 s).
    pub revocation_poll_secs: u64,
    /// After this long without a successful poll of the revocation feed, user tokens are refused
    /// (UNAVAILABLE) rather than trusted blindly. With identity's 5 s feed lag, a revocation
    /// reaches every service within this + 5 s; at most 55 keeps the 60 s promise.
    pub revocation_max_staleness_secs: u64,
    /// Workloads whose `x-forwarded-for` / `x-forwarded-user-agent` are trusted.
    pub gateway_workloads: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "carehub-identity".to_owned(),
            audience: "carehub".to_owned(),
            identity_endpoint: None,
            revocation_poll_secs: 15,
            revocation_max_staleness_secs: 50,
            gateway_workloads: vec!["gateway".to_owned()],
        }
    }
}

/// The outbox relay (`[server.outbox]`, see `crate::outbox`): where events go and how hard it
/// tries. No subscriber is configured by default; rows for a target without one stay pending
/// until one is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Subscribers by target name (`[server.outbox.targets.records]`).
    pub targets: std::collections::BTreeMap<String, OutboxTarget>,
    /// How often the relay looks for due rows when the last look found none.
    pub poll_interval_ms: u64,
    /// Rows claimed per round.
    pub batch_size: u32,
    /// How long a claim holds a row; a crashed relay's rows are taken up again after it.
    pub lease_secs: u64,
    /// Deadline of one delivery (must stay well under `lease_secs`).
    pub delivery_timeout_ms: u64,
    /// Failed deliveries after which a row is dead-lettered (`carehub outbox retry` revives it).
    pub max_attempts: u32,
    /// First retry delay; each further failure doubles it, up to `backoff_max_secs`, and a
    /// random part of it (full jitter) is used.
    pub backoff_base_ms: u64,
    pub backoff_max_secs: u64,
    /// Delivered rows are deleted after this long.
    pub delivered_retention_secs: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            targets: std::collections::BTreeMap::new(),
            poll_interval_ms: 500,
            batch_size: 32,
            lease_secs: 60,
            delivery_timeout_ms: 10_000,
            max_attempts: 10,
            backoff_base_ms: 1_000,
            backoff_max_secs: 600,
            delivered_retention_secs: 7 * 24 * 3600,
        }
    }
}

/// One subscriber of the outbox: its gRPC endpoint and the name its certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxTarget {
    /// `https://records:50051`.
    pub endpoint: String,
    /// The DNS name or service name in the subscriber's certificate (`records`).
    pub server_name: String,
}

impl OutboxConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        let mut need = |ok: bool, msg: String| {
            if !ok {
                problems.push(msg);
            }
        };
        need(
            self.poll_interval_ms > 0,
            "server.outbox.poll_interval_ms must be > 0".to_owned(),
        );
        need(
            (1..=1000).contains(&self.batch_size),
            "server.outbox.batch_size must be within 1..=1000".to_owned(),
        );
        need(
            self.max_attempts > 0,
            "server.outbox.max_attempts must be > 0".to_owned(),
        );
        need(
            self.backoff_base_ms > 0 && self.backoff_max_secs > 0,
            "server.outbox.backoff_base_ms and backoff_max_secs must be > 0".to_owned(),
        );
        // A lease that ends while its delivery still runs would let a second relay deliver the
        // same row at the same time.
        need(
            self.delivery_timeout_ms > 0
                && self.lease_secs.saturating_mul(1000)
                    >= self.delivery_timeout_ms.saturating_mul(2),
            "server.outbox.lease_secs must be at least twice delivery_timeout_ms (and both > 0)"
                .to_owned(),
        );
        for (name, target) in &self.targets {
            need(
                !target.endpoint.is_empty() && !target.server_name.is_empty(),
                format!("server.outbox.targets.{name} needs endpoint and server_name"),
            );
        }
    }
}

/// A configuration problem, named by its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// Checks a loaded configuration before the service starts.
pub trait Validate {
    /// Appends one message per problem, naming the key (`server.limits.concurrency_limit must be > 0`).
    fn validate(&self, problems: &mut Vec<String>);
}

impl Validate for PlatformConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        let mut need = |ok: bool, msg: &str| {
            if !ok {
                problems.push(msg.to_owned());
            }
        };
        need(
            self.limits.concurrency_limit > 0,
            "server.limits.concurrency_limit must be > 0",
        );
        need(
            self.limits.max_concurrent_handshakes > 0,
            "server.limits.max_concurrent_handshakes must be > 0",
        );
        need(
            self.limits.request_timeout_ms > 0,
            "server.limits.request_timeout_ms must be > 0",
        );
        need(
            (1024..=64 * 1024 * 1024).contains(&self.limits.max_message_bytes),
            "server.limits.max_message_bytes must be between 1 KiB and 64 MiB",
        );
        need(
            (0.0..=1.0).contains(&self.telemetry.sample_ratio),
            "server.telemetry.sample_ratio must be within 0.0..=1.0",
        );
        need(
            !self.tls.trust_domain.is_empty(),
            "server.tls.trust_domain must not be empty",
        );
        need(
            self.auth.revocation_poll_secs > 0 && self.auth.revocation_poll_secs <= 30,
            "server.auth.revocation_poll_secs must be within 1..=30 (revocations must reach every service within 60 s)",
        );
        need(
            self.auth.revocation_max_staleness_secs > self.auth.revocation_poll_secs
                && self.auth.revocation_max_staleness_secs <= 55,
            "server.auth.revocation_max_staleness_secs must be above revocation_poll_secs and at most 55",
        );
        keys::validate(&self.keys, &self.vault, self.tls.source, problems);
        let mut need = |ok: bool, msg: &str| {
            if !ok {
                problems.push(msg.to_owned());
            }
        };
        need(
            self.tls.source != TlsSource::VaultPki || self.tls.pki_ttl_secs >= 60,
            "server.tls.pki_ttl_secs must be at least 60",
        );
        need(
            self.database.max_connections > 0,
            "server.database.max_connections must be > 0",
        );
        self.audit.validate(problems);
        self.outbox.validate(problems);
        match &self.database.url {
            None => problems.push("server.database.url is required".to_owned()),
            Some(url) => {
                let url = url.expose_secret();
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    problems.push(
                        "server.database.url must start with postgres:// or postgresql://"
                            .to_owned(),
                    );
                }
            }
        }
    }
}

/// Loads `T` from defaults, an optional TOML file, `CAREHUB_*` variables and CLI overrides
/// (`("server.listen", "0.0.0.0:50051")`), then validates it.
pub fn load<T>(file: Option<&Path>, overrides: &[(String, String)]) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    // Variables one by one, kept as strings (figment's Env would turn `CAREHUB_..._ISSUER=2026`
    // into a number that no longer fits a string field); lossy extraction below makes numbers
    // and flags of them where the field wants one. Lists and tables (`[a, b]`) are parsed.
    for (key, value) in Env::prefixed("CAREHUB_").split("__").iter() {
        let value: figment::value::Value = if value.trim_start().starts_with(['[', '{']) {
            match value.parse() {
                Ok(parsed) => parsed,
                Err(never) => match never {},
            }
        } else {
            value.into()
        };
        figment = figment.merge(Serialized::global(key.as_str(), value));
    }
    for (key, value) in overrides {
        figment = figment.merge(Serialized::global(key.as_str(), value.as_str()));
    }
    // Lossy: `--set` values are strings, and `9` or `true` must still fill a number or a flag
    // (while a numeric-looking trust domain stays a string).
    let config: T = figment
        .extract_lossy()
        .map_err(|e| ConfigError::Load(Box::new(e)))?;
    let mut problems = Vec::new();
    config.validate(&mut problems);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]
    use super::*;

    #[derive(Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct TestConfig {
        server: PlatformConfig,
    }

    impl Validate for TestConfig {
        fn validate(&self, problems: &mut Vec<String>) {
            self.server.validate(problems);
        }
    }

    #[test]
    fn layers_override_in_order_and_secrets_are_not_printed() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[server]\nlisten = \"127.0.0.1:7000\"\n[server.database]\nurl = \"postgres://u:hunter2@db/x\"\n[server.limits]\nconcurrency_limit = 9\n",
            )?;
            jail.set_env("CAREHUB_SERVER__LIMITS__CONCURRENCY_LIMIT", "11");
            jail.set_env("CAREHUB_SERVER__AUTH__ISSUER", "2026");
            jail.set_env("CAREHUB_SERVER__AUTH__GATEWAY_WORKLOADS", "[gateway, edge]");
            let cfg: TestConfig = load(
                Some(Path::new("c.toml")),
                &[
                    ("server.admin_listen".into(), "127.0.0.1:7001".into()),
                    ("server.limits.request_timeout_ms".into(), "1234".into()),
                    ("server.database.migrate_on_start".into(), "true".into()),
                    ("server.tls.trust_domain".into(), "12345".into()),
                ],
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(cfg.server.limits.request_timeout_ms, 1234);
            assert!(cfg.server.database.migrate_on_start);
            assert_eq!(cfg.server.tls.trust_domain, "12345");
            assert_eq!(cfg.server.auth.issuer, "2026");
            assert_eq!(cfg.server.auth.gateway_workloads, ["gateway", "edge"]);
            assert_eq!(cfg.server.listen.port(), 7000);
            assert_eq!(cfg.server.limits.concurrency_limit, 11);
            assert_eq!(cfg.server.admin_listen.port(), 7001);
            assert!(!format!("{:?}", cfg.server.database).contains("hunter2"));
            Ok(())
        });
    }

    #[test]
    fn invalid_values_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CAREHUB_SERVER__LIMITS__CONCURRENCY_LIMIT", "0");
            let err = load::<TestConfig>(None, &[]).err().expect("must fail");
            let msg = err.to_string();
            assert!(msg.contains("server.limits.concurrency_limit"), "{msg}");
            assert!(msg.contains("server.database.url is required"), "{msg}");
            Ok(())
        });
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CAREHUB_SERVER__LIMITS__CONCURRENCY_LIMIT", "lots");
            let err = load::<TestConfig>(None, &[]).err().expect("must fail");
            assert!(err.to_string().contains("concurrency_limit"), "{err}");
            jail.clear_env();
            let err = load::<TestConfig>(None, &[("server.listen".into(), "nowhere".into())])
                .err()
                .expect("must fail");
            assert!(err.to_string().contains("listen"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[server]\nlisen = \"127.0.0.1:7000\"\n")?;
            let err = load::<TestConfig>(Some(Path::new("c.toml")), &[])
                .err()
                .expect("must fail");
            assert!(err.to_string().contains("lisen"), "{err}");
            Ok(())
        });
    }
}
