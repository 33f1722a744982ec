//! `carehub keys ...`: create, rotate, inspect and rewrap the services' keys in Vault (or, for
//! development, in a local key file).
//!
//! Vault connection: `[server.vault]` of `--config`/`--set`/`CAREHUB_SERVER__VAULT__*`, else
//! `VAULT_ADDR`; the token from `server.vault.auth.token` or `VAULT_TOKEN` (an operator token
//! with the `carehub-operator` policy, k8s/vault/). Layout: README, "Keys in Vault".

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use carehub_platform::config::{self, PlatformConfig, Validate};
use carehub_platform::keys::file::{write_dev_key_file, SERVICES};
use carehub_platform::keys::vault::{KvSecret, VaultConn, VaultError};
use carehub_platform::keys::vault_keys::required_keys;
use carehub_platform::keys::{KeyName, KeyVersions};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::ConfigArgs;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create every missing key (KEK, blind-index, audit-checkpoint; identity's signing key) for
    /// all services, or those named. Existing keys are never touched.
    Init(InitArgs),
    /// Add a new version of one key of a service and make it current (older versions stay, so
    /// existing data still decrypts). Then run `keys rewrap` for a KEK.
    Rotate(RotateArgs),
    /// Show key versions in use and their age, and data keys per KEK version.
    Status(StatusArgs),
    /// Rewrap a service's data keys under its current KEK (resumable; encrypted data untouched).
    Rewrap(RewrapArgs),
    /// Print the `keys:` entry a LiveKit-compatible SFU needs to accept messaging's video join
    /// tokens: `messaging.video.api_key` (from --config, messaging's TOML, or --set) and the API
    /// secret messaging derives for it from its current KEK. A KEK rotation changes the secret:
    /// print it again and update the SFU. The secret goes to stdout only.
    VideoSecret(VideoSecretArgs),
}

#[derive(Args)]
pub struct InitArgs {
    /// Only these services (repeatable); all five when absent.
    #[arg(long = "service", value_enum)]
    services: Vec<ServiceName>,
    /// Write a development key file here instead of using Vault.
    #[arg(long, value_name = "FILE")]
    dev: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
pub struct RotateArgs {
    #[arg(long, value_enum)]
    service: ServiceName,
    /// Which key; the key-encryption key by default.
    #[arg(long, value_enum, default_value = "kek")]
    key: KeyArg,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Only this service. With a database configured (`server.database.url`), also counts its
    /// data keys per KEK version.
    #[arg(long, value_enum)]
    service: Option<ServiceName>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
pub struct RewrapArgs {
    #[arg(long, value_enum)]
    service: ServiceName,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
pub struct VideoSecretArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServiceName {
    Identity,
    Scheduling,
    Messaging,
    Records,
    Billing,
}

impl ServiceName {
    fn as_str(self) -> &'static str {
        match self {
            ServiceName::Identity => "identity",
            ServiceName::Scheduling => "scheduling",
            ServiceName::Messaging => "messaging",
            ServiceName::Records => "records",
            ServiceName::Billing => "billing",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyArg {
    Kek,
    BlindIndex,
    AuditCheckpoint,
    Signing,
}

impl From<KeyArg> for KeyName {
    fn from(k: KeyArg) -> KeyName {
        match k {
            KeyArg::Kek => KeyName::Kek,
            KeyArg::BlindIndex => KeyName::BlindIndex,
            KeyArg::AuditCheckpoint => KeyName::AuditCheckpoint,
            KeyArg::Signing => KeyName::Signing,
        }
    }
}

/// The `[server]` table only; the service's other tables are ignored here.
#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct OperatorConfig {
    server: PlatformConfig,
}

// Each command checks what it uses (Vault for init/rotate, also the database for rewrap).
impl Validate for OperatorConfig {
    fn validate(&self, _problems: &mut Vec<String>) {}
}

fn load(args: &ConfigArgs) -> anyhow::Result<PlatformConfig> {
    let mut cfg = config::load::<OperatorConfig>(args.config.as_deref(), &args.overrides)
        .context("loading configuration")?
        .server;
    if cfg.vault.addr.as_deref().is_none_or(str::is_empty) {
        cfg.vault.addr = std::env::var("VAULT_ADDR").ok().filter(|a| !a.is_empty());
    }
    Ok(cfg)
}

async fn connect(cfg: &PlatformConfig) -> anyhow::Result<Arc<VaultConn>> {
    VaultConn::connect("operator", &cfg.vault)
        .await
        .context("connecting to Vault (set server.vault.addr or VAULT_ADDR, and VAULT_TOKEN)")
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Init(args) => init(args).await,
        KeysCommand::Rotate(args) => rotate(args).await,
        KeysCommand::Status(args) => status(args).await,
        KeysCommand::Rewrap(args) => rewrap(args).await,
        KeysCommand::VideoSecret(args) => video_secret(args).await,
    }
}

/// `[server]` and `[messaging.video]` of messaging's configuration; its other settings are not
/// needed to derive the secret and are ignored.
#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct VideoOperatorConfig {
    server: PlatformConfig,
    messaging: VideoOnly,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct VideoOnly {
    video: carehub_messaging::config::VideoSettings,
}

impl Validate for VideoOperatorConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        self.messaging.video.validate(problems);
    }
}

async fn video_secret(args: VideoSecretArgs) -> anyhow::Result<()> {
    use carehub_platform::config::KeyProvider;
    use carehub_platform::keys::{KeySource, StaticKeys};

    let mut cfg =
        config::load::<VideoOperatorConfig>(args.config.config.as_deref(), &args.config.overrides)
            .context("loading messaging's configuration")?;
    let api_key = cfg.messaging.video.api_key.clone();
    let keys: Arc<dyn KeySource> = match cfg.server.keys.provider {
        // Development: the key file messaging itself reads.
        KeyProvider::File => carehub_platform::keys::from_config("messaging", &cfg.server).await?,
        // Vault: the operator's token reads messaging's KEK (carehub-operator policy).
        KeyProvider::Vault => {
            if cfg.server.vault.addr.as_deref().is_none_or(str::is_empty) {
                cfg.server.vault.addr = std::env::var("VAULT_ADDR").ok().filter(|a| !a.is_empty());
            }
            let conn = connect(&cfg.server).await?;
            let path = KeyName::Kek.vault_path("messaging");
            let secret = conn
                .read_kv(&path)
                .await
                .with_context(|| format!("reading {path} (run `carehub keys init` first?)"))?;
            let kek = KeyVersions::from_kv_data(&secret.data)
                .with_context(|| format!("{path} is not in carehub's key layout"))?;
            Arc::new(StaticKeys::default().with(KeyName::Kek, kek))
        }
    };
    let version = keys.current(KeyName::Kek)?.0;
    let secret = carehub_messaging::video::api_secret(&keys, &api_key)
        .context("deriving the video API secret")?;
    eprintln!(
        "the SFU's key for messaging.video.api_key {api_key:?}, derived from messaging's KEK version \
         {version}; rotating that KEK changes it"
    );
    println!("keys:\n  {api_key}: {}", secret.as_str());
    Ok(())
}

async fn init(args: InitArgs) -> anyhow::Result<()> {
    if let Some(file) = args.dev {
        let added = write_dev_key_file(&file)?;
        println!(
            "{}: {added} development key(s) created, existing ones kept. DEVELOPMENT ONLY: never use this file with real patient data.",
            file.display()
        );
        return Ok(());
    }
    let cfg = load(&args.config)?;
    let conn = connect(&cfg).await?;
    let services: Vec<&str> = if args.services.is_empty() {
        SERVICES.to_vec()
    } else {
        args.services.iter().map(|s| s.as_str()).collect()
    };
    let (mut created, mut kept) = (0, 0);
    for service in services {
        for name in required_keys(service) {
            let path = name.vault_path(service);
            let keys = KeyVersions::generate();
            match conn.write_kv(&path, &keys.to_kv_data(), Some(0)).await {
                Ok(_) => {
                    created += 1;
                    println!("{path}: created (version 1)");
                }
                Err(VaultError::CasConflict { .. }) => {
                    kept += 1;
                    println!("{path}: exists, untouched");
                }
                Err(err) => return Err(err).with_context(|| format!("creating {path}")),
            }
        }
    }
    println!("keys init: {created} created, {kept} already present");
    Ok(())
}

async fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    let service = args.service.as_str();
    let name = KeyName::from(args.key);
    if name == KeyName::Signing && service != "identity" {
        bail!("only identity has a signing key");
    }
    let cfg = load(&args.config)?;
    let conn = connect(&cfg).await?;
    let path = name.vault_path(service);
    let secret = conn
        .read_kv(&path)
        .await
        .with_context(|| format!("reading {path} (run `carehub keys init` first?)"))?;
    let mut keys = KeyVersions::from_kv_data(&secret.data)
        .with_context(|| format!("{path} is not in carehub's key layout"))?;
    let previous = keys.current_version();
    let next = keys.rotate();
    // Fields other than `current` and `vN` (bookkeeping such as identity's publication times)
    // are carried over untouched.
    // (A KvSecret wipes its values when dropped.)
    let mut merged = KvSecret {
        data: secret.data.clone(),
        version: None,
    };
    merged.data.extend(keys.to_kv_data());
    // KV v2: only if nobody rotated in between; KV v1 has no check-and-set.
    conn.write_kv(&path, &merged.data, secret.version)
        .await
        .with_context(|| format!("writing {path}"))?;
    println!("{path}: version {next} is now current (was {previous}); older versions kept");
    if name == KeyName::Kek {
        println!(
            "services pick the new KEK up within server.keys.refresh_interval_secs; then run `carehub keys rewrap --service {service}`"
        );
    }
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let cfg = load(&args.config)?;
    let conn = connect(&cfg).await?;
    let services: Vec<&str> = match args.service {
        Some(s) => vec![s.as_str()],
        None => SERVICES.to_vec(),
    };
    let now = chrono::Utc::now();
    for service in &services {
        println!("{service}:");
        for name in required_keys(service) {
            let path = name.vault_path(service);
            let secret = match conn.read_kv(&path).await {
                Ok(s) => s,
                Err(VaultError::NotFound { .. }) => {
                    println!("  {name:<17} missing (run `carehub keys init`)");
                    continue;
                }
                Err(err) => return Err(err).with_context(|| format!("reading {path}")),
            };
            let keys = KeyVersions::from_kv_data(&secret.data)
                .with_context(|| format!("{path} is not in carehub's key layout"))?;
            let versions: Vec<String> = keys.versions().map(|v| v.to_string()).collect();
            let age = match conn.kv_metadata(&path).await {
                Ok(Some(meta)) => chrono::DateTime::parse_from_rfc3339(&meta.updated_time)
                    .map(|t| format!(", last changed {} days ago", (now - t.to_utc()).num_days()))
                    .unwrap_or_default(),
                // KV v1 keeps no timestamps; the operator policy may lack metadata access.
                Ok(None) | Err(VaultError::Denied { .. }) => String::new(),
                Err(err) => return Err(err).with_context(|| format!("reading metadata of {path}")),
            };
            println!(
                "  {name:<17} current v{} (versions {}){age}",
                keys.current_version(),
                versions.join(", ")
            );
        }
    }
    if let (Some(service), Some(_)) = (args.service, cfg.database.url.as_ref()) {
        let pool = carehub_platform::db::connect(&cfg.database).await?;
        let stats = carehub_platform::crypto::data_key_stats(&pool, service.as_str())
            .await
            .context("counting data keys")?;
        println!(
            "  data keys: {} subjects, {} shredded",
            stats.subjects, stats.shredded_subjects
        );
        for (kek_version, count) in &stats.by_kek_version {
            println!("    under KEK v{kek_version}: {count}");
        }
    }
    Ok(())
}

async fn rewrap(args: RewrapArgs) -> anyhow::Result<()> {
    let service = args.service.as_str();
    let cfg = load(&args.config)?;
    if cfg.database.url.is_none() {
        bail!("server.database.url is required: rewrap works on {service}'s database");
    }
    let keys = carehub_platform::keys::from_config(service, &cfg)
        .await
        .with_context(|| format!("loading {service}'s keys"))?;
    let pool = carehub_platform::db::connect(&cfg.database).await?;
    let done = carehub_platform::crypto::rewrap(&pool, service, keys.as_ref(), |p| {
        println!(
            "{service}: {}/{} data keys rewrapped under KEK v{}",
            p.rewrapped, p.total, p.target_kek_version
        );
        ControlFlow::Continue(())
    })
    .await
    .context("rewrapping data keys")?;
    println!(
        "{service}: rewrap {}: {} data key(s) now under KEK v{}",
        if done.done {
            "complete"
        } else {
            "interrupted (run again to resume)"
        },
        done.rewrapped,
        done.target_kek_version
    );
    Ok(())
}
