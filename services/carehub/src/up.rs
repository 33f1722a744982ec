//! `carehub up`: the whole suite in one process, for a developer's machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use carehub_platform::kit::{AnyConfig, RunningService, ServiceDef};
use clap::Args;
use futures::future::BoxFuture;
use futures::FutureExt as _;
use secrecy::SecretString;

use carehub_platform::config::{LogFormat, TelemetryConfig};
use carehub_platform::db;

use crate::pgcluster::PgCluster;

#[derive(Args)]
pub struct UpArgs {
    /// Where certificates, keys and the private PostgreSQL cluster live.
    #[arg(long, default_value = ".carehub")]
    data_dir: PathBuf,
    /// Use this PostgreSQL server (any database on it; carehub creates its own databases)
    /// instead of a private cluster.
    #[arg(long, env = "CAREHUB_DATABASE_URL")]
    database_url: Option<String>,
    /// Port of the private PostgreSQL cluster.
    #[arg(long, default_value_t = 55432)]
    pg_port: u16,
    /// First gRPC port; services take consecutive ports in the order of the binary's list
    /// (`carehub services`): identity first.
    #[arg(long, default_value_t = 50051)]
    grpc_port: u16,
    /// First admin HTTP port (metrics, health, JWKS); consecutive like --grpc-port.
    #[arg(long, default_value_t = 9051)]
    admin_port: u16,
    /// Each service gets its own database, `<prefix>_<service>`.
    #[arg(long, default_value = "carehub")]
    database_prefix: String,
    /// Database connections each service opens at start and keeps (its pool's size): five
    /// services hold five times this many. Lower it on a PostgreSQL shared with other work.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    db_pool_size: u32,
}

/// Where `carehub up`'s messaging mirrors what its sandbox channels record (one JSON object a
/// line), under `data_dir`: `carehub demo` reads verification codes there.
pub fn sandbox_outbox_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("messaging/sandbox-outbox.jsonl")
}

/// Runs every service of `services` until `shutdown` resolves.
pub async fn run(
    args: UpArgs,
    services: &[&dyn ServiceDef],
    shutdown: BoxFuture<'static, ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::path::absolute(&args.data_dir)?;
    let certs = data_dir.join("certs");
    // A service added since the last run gets its certificate from the same CA.
    let workloads = crate::dev_workloads(services);
    let missing: Vec<&str> = workloads
        .iter()
        .copied()
        .filter(|w| !certs.join("ca.pem").exists() || !certs.join(format!("{w}.pem")).exists())
        .collect();
    if !missing.is_empty() {
        carehub_platform::devcerts::generate_dev_pki(&certs, "carehub.local", &missing)?;
        println!(
            "created development certificates for {} in {}",
            missing.join(", "),
            certs.display()
        );
    }
    let dev_keys = data_dir.join("keys/dev-keys.json");
    let mut keyed: Vec<&str> = carehub_platform::keys::file::SERVICES.to_vec();
    for def in services {
        if !keyed.contains(&def.name()) {
            keyed.push(def.name());
        }
    }
    let added = carehub_platform::keys::file::write_dev_key_file_for(&dev_keys, &keyed)?;
    if added > 0 {
        println!("created {added} development keys in {}", dev_keys.display());
    }

    let cluster = match &args.database_url {
        Some(_) => None,
        None => {
            let c = PgCluster::new(&data_dir, args.pg_port)?;
            c.init_if_needed()?;
            c.start()?;
            c.wait_ready(Duration::from_secs(30))?;
            Some(c)
        }
    };
    let result = run_services(&args, &data_dir, cluster.as_ref(), services, shutdown).await;
    if let Some(c) = &cluster {
        if let Err(e) = c.stop() {
            eprintln!("stopping PostgreSQL: {e:#}");
        }
    }
    result
}

/// Port `base` + `index`, or an error naming the flag.
fn port(base: u16, index: usize, flag: &str) -> anyhow::Result<u16> {
    u16::try_from(index)
        .ok()
        .and_then(|i| base.checked_add(i))
        .with_context(|| format!("{flag} {base} leaves no port for service #{}", index + 1))
}

async fn run_services(
    args: &UpArgs,
    data_dir: &std::path::Path,
    cluster: Option<&PgCluster>,
    services: &[&dyn ServiceDef],
    shutdown: BoxFuture<'static, ()>,
) -> anyhow::Result<()> {
    let admin_url = match (&args.database_url, cluster) {
        (Some(url), _) => url.clone(),
        (None, Some(c)) => c.admin_url(),
        (None, None) => anyhow::bail!("no database"),
    };
    let certs = data_dir.join("certs");
    let telemetry_cfg = TelemetryConfig {
        log_format: LogFormat::Pretty,
        log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
        ..TelemetryConfig::default()
    };
    let telemetry = carehub_platform::telemetry::init("up", &telemetry_cfg)?;
    let shutdown = shutdown.shared();
    // Where each service of this run listens, by name: what the others are pointed at.
    let mut endpoints = std::collections::BTreeMap::new();
    for (i, def) in services.iter().enumerate() {
        endpoints.insert(
            def.name(),
            format!(
                "https://127.0.0.1:{}",
                port(args.grpc_port, i, "--grpc-port")?
            ),
        );
    }
    let endpoint = |name: &str| endpoints.get(name).cloned();
    // Every other service verifies user tokens against identity's keys and revocations.
    let identity_endpoint = endpoint("identity");

    let mut running: Vec<(&dyn ServiceDef, RunningService)> = Vec::new();
    for (i, def) in services.iter().copied().enumerate() {
        let name = def.name();
        let database = format!("{}_{}", args.database_prefix, name.replace('-', "_"));
        db::create_database_if_missing(&db::url_with_database(&admin_url, "postgres")?, &database)
            .await?;
        let mut cfg = def.dev_config();
        let server = cfg.server_mut();
        server.listen = SocketAddr::from(([127, 0, 0, 1], port(args.grpc_port, i, "--grpc-port")?));
        server.admin_listen =
            SocketAddr::from(([127, 0, 0, 1], port(args.admin_port, i, "--admin-port")?));
        server.tls.cert_file = certs.join(format!("{name}.pem"));
        server.tls.key_file = certs.join(format!("{name}-key.pem"));
        server.tls.ca_file = certs.join("ca.pem");
        server.database.url = Some(SecretString::from(db::url_with_database(
            &admin_url, &database,
        )?));
        server.database.migrate_on_start = true;
        // A warm pool: no connection is opened on the request path (DESIGN.md §9).
        server.database.max_connections = args.db_pool_size;
        server.database.min_connections = args.db_pool_size;
        server.telemetry = telemetry_cfg.clone();
        server.keys.file = data_dir.join("keys/dev-keys.json");
        if name != "identity" {
            server.auth.identity_endpoint = identity_endpoint.clone();
        }
        // Each outbox reaches the services of this run it delivers to; rows for one not
        // running stay pending.
        for target in outbox_targets(name) {
            if let Some(endpoint) = endpoint(target) {
                server.outbox.targets.insert(
                    target.to_owned(),
                    carehub_platform::config::OutboxTarget {
                        endpoint,
                        server_name: target.to_owned(),
                    },
                );
            }
        }
        let admin_url = format!("http://{}", server.admin_listen);
        let cfg = wire_own_settings(cfg, name, &endpoint, &admin_url, data_dir)?;
        let started = def
            .start(cfg, None, shutdown.clone().boxed())
            .await
            .with_context(|| format!("starting {name}"))?;
        running.push((def, started));
    }

    println!();
    println!(
        "carehub is up (development mode: sandbox notifier, sandbox payment processor, development certificates)"
    );
    // Names in one column, however long the longest (scheduling).
    let width = running
        .iter()
        .map(|(def, _)| def.name().len())
        .max()
        .unwrap_or(0);
    let indent = " ".repeat(width + 3);
    for (def, service) in &running {
        println!(
            "  {:<width$} grpc (mTLS) https://{}   admin http://{}",
            def.name(),
            service.server.grpc_addr,
            service.server.admin_addr
        );
        for line in def
            .on_up(service)
            .await
            .with_context(|| format!("{}: after start", def.name()))?
        {
            println!("{indent}{line}");
        }
        if def.name() == "messaging" {
            println!(
                "{indent}sandbox notifications (codes, reminders) also appended to {}",
                sandbox_outbox_path(data_dir).display()
            );
        }
        if def.name() == "billing" {
            // The processor's webhook, signed with the development secret (`up` configures one
            // so that the route exists; in a cluster the secret comes from Vault).
            println!(
                "{indent}webhook POST http://{}{}   (signing secret: {})",
                service.server.admin_addr,
                BILLING_WEBHOOK_PATH,
                dev_webhook_secret_path(data_dir).display()
            );
        }
    }
    println!(
        "  certificates  {}  (client: gateway.pem / gateway-key.pem, CA: ca.pem)",
        certs.display()
    );
    match cluster {
        Some(c) => println!(
            "  postgres  127.0.0.1:{} (private cluster in {})",
            c.port,
            data_dir.join("postgres").display()
        ),
        None => println!("  postgres  {}", redact(&admin_url)),
    }
    println!();
    println!("Ctrl-C stops everything.");

    let results =
        futures::future::join_all(running.into_iter().map(|(_, s)| s.server.wait())).await;
    telemetry
        .shutdown_with_timeout(Duration::from_secs(5))
        .await;
    results.into_iter().collect()
}

/// Where `service`'s outbox delivers, by target name (each target is the service of that name).
pub fn outbox_targets(service: &str) -> Vec<&'static str> {
    let mut targets: Vec<&'static str> = match service {
        // Account events to their subscribers; notifications and SMS preferences to messaging.
        "identity" => carehub_identity::events::ACCOUNT_EVENT_SUBSCRIBERS
            .into_iter()
            .chain([
                carehub_identity::notify::MESSAGING_TARGET,
                carehub_identity::events::SMS_PREFERENCE_TARGET,
            ])
            .collect(),
        // Account actions on abuse reports and SMS consent changes, to identity.
        "messaging" => vec!["identity"],
        // Booked providers and intake answers to records, reminders and video visits to
        // messaging, appointment events to billing (AppointmentEvents; rows written while
        // billing was not running drain once it is).
        "scheduling" => vec![
            carehub_scheduling::api::effects::RECORDS,
            carehub_scheduling::api::effects::MESSAGING,
            carehub_scheduling::api::effects::BILLING,
        ],
        _ => Vec::new(),
    };
    targets.sort_unstable();
    targets.dedup();
    targets
}

/// Where billing's admin port serves the processor's webhook (when a signing secret is set).
const BILLING_WEBHOOK_PATH: &str = "/webhooks/stripe";

/// The development webhook signing secret of `carehub up`'s billing, kept under --data-dir.
fn dev_webhook_secret_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("billing/webhook-secret")
}

/// The development webhook signing secret: read from --data-dir, or made (random, `whsec_`
/// like the processor's, readable by the owner only) on the first run.
fn dev_webhook_secret(data_dir: &std::path::Path) -> anyhow::Result<SecretString> {
    let path = dev_webhook_secret_path(data_dir);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let secret = text.trim();
        if !secret.is_empty() {
            return Ok(SecretString::from(secret.to_owned()));
        }
    }
    let secret = format!("whsec_dev_{}", uuid::Uuid::new_v4().simple());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    {
        use std::io::Write as _;
        let mut file = options
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(file, "{secret}").with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "created a development webhook signing secret for billing in {}",
        path.display()
    );
    Ok(SecretString::from(secret))
}

/// The settings of `name`'s own table that point at other services of this run: identity sends
/// codes and reset links through messaging (when it runs here); messaging asks records about
/// care teams and mirrors its sandboxes to a file under `data_dir`; records' access log merges
/// messaging's, scheduling's and billing's audit trails. And the ones that
/// point at the service itself: scheduling's calendar feed links lead to its own admin port
/// (`admin_url`; in a cluster, the gateway's public address); billing charges the sandbox
/// processor and verifies its webhook with a development secret (kept under `data_dir`).
fn wire_own_settings(
    cfg: Box<dyn AnyConfig>,
    name: &str,
    endpoint: &dyn Fn(&str) -> Option<String>,
    admin_url: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<Box<dyn AnyConfig>> {
    let not_its_own =
        || anyhow::anyhow!("{name}: `carehub up` holds another service's configuration");
    Ok(match name {
        "identity" => {
            let mut c = cfg
                .into_any()
                .downcast::<carehub_identity::config::IdentityConfig>()
                .map_err(|_| not_its_own())?;
            // Codes reach the sandbox file (and `carehub demo`) only through messaging; without
            // it they stay in identity's log.
            if endpoint("messaging").is_some() {
                c.identity.notifier = carehub_identity::config::NotifierKind::Messaging;
            }
            c
        }
        "messaging" => {
            let mut c = cfg
                .into_any()
                .downcast::<carehub_messaging::config::MessagingConfig>()
                .map_err(|_| not_its_own())?;
            c.messaging.records_endpoint = endpoint("records");
            c.messaging.notifications.sandbox_file = Some(sandbox_outbox_path(data_dir));
            c
        }
        "records" => {
            let mut c = cfg
                .into_any()
                .downcast::<carehub_records::config::RecordsConfig>()
                .map_err(|_| not_its_own())?;
            for source in ["messaging", "scheduling", "billing"] {
                if let Some(e) = endpoint(source) {
                    c.records.audit_sources.insert(source.to_owned(), e);
                }
            }
            c
        }
        "scheduling" => {
            let mut c = cfg
                .into_any()
                .downcast::<carehub_scheduling::config::SchedulingConfig>()
                .map_err(|_| not_its_own())?;
            admin_url.clone_into(&mut c.scheduling.feed_base_url);
            c
        }
        "billing" => {
            let mut c = cfg
                .into_any()
                .downcast::<carehub_billing::config::BillingConfig>()
                .map_err(|_| not_its_own())?;
            let processor = &mut c.billing.processor;
            // The sandbox (test cards, no money moves), whatever the defaults become; secrets
            // from the development secret below, never from Vault.
            processor.kind = carehub_billing::config::ProcessorKind::Sandbox;
            processor.vault_path = None;
            processor.webhook_secrets = vec![dev_webhook_secret(data_dir)?];
            c
        }
        _ => cfg,
    })
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}
