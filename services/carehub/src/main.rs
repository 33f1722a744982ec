//! `carehub`: the one binary. Serves a service, runs the whole suite locally, migrates
//! databases and carries the operator commands.

mod admin;
mod audit_cmd;
mod health;
mod keys_cmd;
mod loadgen;
mod outbox_cmd;
mod pgcluster;
mod up;

use std::path::PathBuf;

use anyhow::Context as _;
use carehub_identity::config::IdentityConfig;
use carehub_platform::config;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "carehub",
    version,
    about = "carehub telehealth backend: gRPC services over mTLS",
    long_about = "carehub telehealth backend.\n\nRun everything locally with `carehub up`; in a cluster each pod runs `carehub serve <service>`.\nConfiguration layers: defaults < --config TOML < CAREHUB_* environment (`__` between levels) < --set key=value."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one service until SIGINT/SIGTERM (graceful drain).
    Serve(ServiceArgs),
    /// Apply a service's embedded database migrations and exit.
    Migrate(ServiceArgs),
    /// Run every service in this process with a private PostgreSQL, development certificates
    /// and keys (created under --data-dir on first run).
    Up(up::UpArgs),
    /// Operator commands that act on a service's database directly.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Development helpers.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Ask a running service for its gRPC health over mTLS; exits 0 only when SERVING.
    Health(health::HealthArgs),
    /// Audit trail operations (verify a service's hash chain and checkpoints).
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// A service's transactional outbox: list rows, revive dead-lettered ones.
    #[command(subcommand)]
    Outbox(outbox_cmd::OutboxCommand),
    /// Keys in Vault: init, rotate, status, rewrap.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Load generator: drives a running carehub over mTLS (by default the one `carehub up`
    /// started) beside an echo and a pgbench baseline measured in the same run; exits non-zero
    /// when a scenario saw errors. `carehub loadgen baseline` measures the baselines only.
    Loadgen(Box<loadgen::LoadgenArgs>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Service {
    Identity,
}

#[derive(Args)]
struct ServiceArgs {
    /// The service.
    service: Service,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "CAREHUB_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set server.listen=0.0.0.0:50051 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<(String, String)>,
}

fn parse_override(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an account directly in identity's database (the first admin of a fresh install).
    /// Prints a one-time password once; it must be changed at first login.
    Create(admin::CreateArgs),
}

#[derive(Subcommand)]
enum DevCommand {
    /// Write a development CA and one certificate per workload (SAN spiffe://<domain>/service/<name>).
    Certs {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// SPIFFE trust domain.
        #[arg(long, default_value = "carehub.local")]
        trust_domain: String,
    },
}

/// Workloads that get a development certificate.
pub const DEV_WORKLOADS: &[&str] = &[
    "gateway",
    "identity",
    "scheduling",
    "messaging",
    "records",
    "billing",
    "admin-cli",
];

fn load_identity(args: &ConfigArgs) -> anyhow::Result<IdentityConfig> {
    config::load::<IdentityConfig>(args.config.as_deref(), &args.overrides)
        .context("loading identity configuration")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => match args.service {
            Service::Identity => {
                let cfg = load_identity(&args.config)?;
                let telemetry =
                    carehub_platform::telemetry::init("identity", &cfg.server.telemetry)?;
                let drain = std::time::Duration::from_secs(cfg.server.limits.drain_timeout_secs);
                let identity =
                    carehub_identity::serve(cfg, carehub_platform::server::shutdown_signal())
                        .await?;
                tracing::info!(grpc = %identity.server.grpc_addr, admin = %identity.server.admin_addr, "identity serving");
                let result = identity.server.wait().await;
                telemetry
                    .shutdown_with_timeout(drain.min(std::time::Duration::from_secs(5)))
                    .await;
                result
            }
        },
        Command::Migrate(args) => match args.service {
            Service::Identity => {
                let cfg = load_identity(&args.config)?;
                let pool = carehub_platform::db::connect(&cfg.server.database).await?;
                carehub_platform::db::migrate(&pool, &carehub_identity::MIGRATOR).await?;
                println!("identity: migrations applied");
                Ok(())
            }
        },
        Command::Up(args) => up::run(args).await,
        Command::Admin(AdminCommand::Create(args)) => admin::create(args).await,
        Command::Health(args) => health::run(&args).await,
        Command::Audit(cmd) => audit_cmd::run(cmd).await,
        Command::Keys(cmd) => keys_cmd::run(cmd).await,
        Command::Outbox(cmd) => outbox_cmd::run(cmd).await,
        Command::Loadgen(args) => loadgen::run(*args).await,
        Command::Dev(DevCommand::Certs { out, trust_domain }) => {
            carehub_platform::devcerts::generate_dev_pki(&out, &trust_domain, DEV_WORKLOADS)?;
            println!(
                "wrote a development CA and certificates for {} to {}",
                DEV_WORKLOADS.join(", "),
                out.display()
            );
            Ok(())
        }
    }
}
