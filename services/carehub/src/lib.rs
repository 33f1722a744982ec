//! `carehub`: the one binary. Serves a service, runs the whole suite locally, migrates
//! databases and carries the operator commands.
//!
//! The binary (src/bin/carehub.rs) is [`main`] over [`services::SERVICES`]; the commands that
//! act on "a service" (`serve`, `migrate`, `up`, `health`, `services`) take their services from
//! that one list, so a test can run them over a list of its own ([`run_args`]).

mod admin;
mod audit_cmd;
mod billing_cmd;
pub mod demo;
mod entry;
mod health;
mod keys_cmd;
mod loadgen;
mod outbox_cmd;
mod pgcluster;
mod records_cmd;
pub mod services;
mod up;

use std::path::PathBuf;

use anyhow::Context as _;
use carehub_identity::config::IdentityConfig;
use carehub_platform::config;
use carehub_platform::kit::ServiceDef;
use clap::{Args, Parser, Subcommand};
use futures::future::BoxFuture;

pub use entry::{command, dev_workloads, main, run_args, Exit};
use entry::{load_config, service};
/// Where each service's outbox delivers under `carehub up` (the end-to-end tests wire the same).
pub use up::outbox_targets;

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
    /// List the services this binary serves, one name a line (the chart's `services` block
    /// must name the same).
    Services,
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
    /// Records operations (schedule a chart's erasure).
    #[command(subcommand)]
    Records(records_cmd::RecordsCommand),
    /// Billing operations: `carehub billing reconcile` settles payment and refund intents whose
    /// call died and checks the ledger (exits 1 when an invariant is violated).
    #[command(subcommand)]
    Billing(billing_cmd::BillingCommand),
    /// Keys in Vault: init, rotate, status, rewrap.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Load generator: drives a running carehub over mTLS (by default the one `carehub up`
    /// started) beside an echo and a pgbench baseline measured in the same run; exits non-zero
    /// when a scenario saw errors. `carehub loadgen baseline` measures the baselines only.
    Loadgen(Box<loadgen::LoadgenArgs>),
    /// A scripted visit journey against a running suite (by default the one `carehub up`
    /// started), printed step by step: exits 1 naming the step, the RPC and the gRPC status
    /// when one fails.
    Demo(demo::DemoArgs),
}

#[derive(Args)]
struct ServiceArgs {
    /// The service (one of the binary's list of services).
    service: String,
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

fn load_identity(args: &ConfigArgs) -> anyhow::Result<IdentityConfig> {
    config::load::<IdentityConfig>(args.config.as_deref(), &args.overrides)
        .context("loading identity configuration")
}

/// Runs a parsed command over `services`; `serve` and `up` stop when `shutdown` resolves.
async fn run(
    cli: Cli,
    services: &[&dyn ServiceDef],
    shutdown: BoxFuture<'static, ()>,
) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let def = service(services, &args.service)?;
            let cfg = load_config(def, &args.config)?;
            let server = cfg.server();
            let telemetry = carehub_platform::telemetry::init(def.name(), &server.telemetry)?;
            let drain = std::time::Duration::from_secs(server.limits.drain_timeout_secs);
            let running = def.start(cfg, None, shutdown).await?;
            tracing::info!(grpc = %running.server.grpc_addr, admin = %running.server.admin_addr, "{} serving", def.name());
            let result = running.server.wait().await;
            telemetry
                .shutdown_with_timeout(drain.min(std::time::Duration::from_secs(5)))
                .await;
            result
        }
        Command::Migrate(args) => {
            let def = service(services, &args.service)?;
            let cfg = load_config(def, &args.config)?;
            let pool = carehub_platform::db::connect(&cfg.server().database).await?;
            carehub_platform::db::migrate(&pool, def.migrator()).await?;
            println!("{}: migrations applied", def.name());
            Ok(())
        }
        Command::Services => {
            for def in services {
                println!("{}", def.name());
            }
            Ok(())
        }
        Command::Up(args) => up::run(args, services, shutdown).await,
        Command::Health(args) => match health::check(&args).await {
            Ok(line) => {
                println!("{line}");
                Ok(())
            }
            // One line saying why, not a backtrace: a probe or `helm test` log shows it.
            Err(err) => {
                eprintln!("UNHEALTHY {err:#}");
                Err(Exit(1).into())
            }
        },
        Command::Admin(AdminCommand::Create(args)) => admin::create(args).await,
        Command::Audit(cmd) => audit_cmd::run(cmd).await,
        Command::Keys(cmd) => keys_cmd::run(cmd).await,
        Command::Outbox(cmd) => outbox_cmd::run(cmd).await,
        Command::Records(cmd) => records_cmd::run(cmd).await,
        Command::Billing(cmd) => billing_cmd::run(cmd).await,
        Command::Loadgen(args) => loadgen::run(*args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Dev(DevCommand::Certs { out, trust_domain }) => {
            let workloads = dev_workloads(services);
            carehub_platform::devcerts::generate_dev_pki(&out, &trust_domain, &workloads)?;
            println!(
                "wrote a development CA and certificates for {} to {}",
                workloads.join(", "),
                out.display()
            );
            Ok(())
        }
    }
}
