//! `carehub up`: the whole suite in one process, for a developer's machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use futures::FutureExt as _;
use secrecy::SecretString;

use carehub_identity::config::{IdentityConfig, NotifierKind};
use carehub_platform::config::LogFormat;
use carehub_platform::db;

use crate::pgcluster::PgCluster;
use crate::DEV_WORKLOADS;

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
    /// First gRPC port; services take consecutive ports in the order identity, ...
    #[arg(long, default_value_t = 50051)]
    grpc_port: u16,
    /// First admin HTTP port (metrics, health, JWKS); consecutive like --grpc-port.
    #[arg(long, default_value_t = 9051)]
    admin_port: u16,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::path::absolute(&args.data_dir)?;
    let certs = data_dir.join("certs");
    if !certs.join("ca.pem").exists() {
        carehub_platform::devcerts::generate_dev_pki(&certs, "carehub.local", DEV_WORKLOADS)?;
        println!(
            "created development CA and certificates in {}",
            certs.display()
        );
    }
    let dev_keys = data_dir.join("keys/dev-keys.json");
    let added = carehub_platform::keys::file::write_dev_key_file(&dev_keys)?;
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
    let result = run_services(&args, &data_dir, cluster.as_ref()).await;
    if let Some(c) = &cluster {
        if let Err(e) = c.stop() {
            eprintln!("stopping PostgreSQL: {e:#}");
        }
    }
    result
}

async fn run_services(
    args: &UpArgs,
    data_dir: &std::path::Path,
    cluster: Option<&PgCluster>,
) -> anyhow::Result<()> {
    let admin_url = match (&args.database_url, cluster) {
        (Some(url), _) => url.clone(),
        (None, Some(c)) => c.admin_url(),
        (None, None) => anyhow::bail!("no database"),
    };
    let certs = data_dir.join("certs");

    // identity
    db::create_database_if_missing(
        &db::url_with_database(&admin_url, "postgres")?,
        "carehub_identity",
    )
    .await?;
    let mut cfg = IdentityConfig::default();
    cfg.server.listen = SocketAddr::from(([127, 0, 0, 1], args.grpc_port));
    cfg.server.admin_listen = SocketAddr::from(([127, 0, 0, 1], args.admin_port));
    cfg.server.tls.cert_file = certs.join("identity.pem");
    cfg.server.tls.key_file = certs.join("identity-key.pem");
    cfg.server.tls.ca_file = certs.join("ca.pem");
    cfg.server.database.url = Some(SecretString::from(db::url_with_database(
        &admin_url,
        "carehub_identity",
    )?));
    cfg.server.database.migrate_on_start = true;
    cfg.server.telemetry.log_format = LogFormat::Pretty;
    cfg.server.telemetry.log_filter =
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    cfg.server.keys.file = data_dir.join("keys/dev-keys.json");
    cfg.identity.notifier = NotifierKind::LogSandbox;

    let telemetry = carehub_platform::telemetry::init("up", &cfg.server.telemetry)?;
    let shutdown = carehub_platform::server::shutdown_signal().shared();

    let identity = carehub_identity::serve(cfg.clone(), shutdown.clone()).await?;
    let first_admin = crate::admin::bootstrap_first_admin(&identity.state).await?;

    println!();
    println!("carehub is up (development mode: sandbox notifier, development certificates)");
    println!(
        "  identity  grpc (mTLS) https://{}   admin http://{}",
        identity.server.grpc_addr, identity.server.admin_addr
    );
    println!(
        "            JWKS        http://{}/.well-known/jwks.json",
        identity.server.admin_addr
    );
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
    if let Some((email, otp)) = first_admin {
        println!();
        println!("  first admin: {email}");
        println!("  one-time password (shown once, change it at first login): {otp}");
    }
    println!();
    println!("Ctrl-C stops everything.");

    let result = identity.server.wait().await;
    telemetry
        .shutdown_with_timeout(Duration::from_secs(5))
        .await;
    result
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}
