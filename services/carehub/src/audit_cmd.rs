//! `carehub audit verify --service S [--from T] [--to T]`: walks a service's audit chain and
//! signed checkpoints straight from its database (the service's own configuration names the
//! database and the checkpoint keys), so it works while the service is down or compromised.
//!
//! Exit status: 0 intact, 3 tampered (the first broken row is named), 1 could not verify, 2 usage.

use std::path::PathBuf;

use anyhow::Context as _;
use carehub_platform::audit::{self, VerifyRange, VerifyReport};
use carehub_platform::config::{self, PlatformConfig, Validate};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

/// Exit status when the log was tampered with.
pub const EXIT_TAMPERED: i32 = 3;

/// The services that keep an audit trail.
const SERVICES: [&str; 5] = ["identity", "scheduling", "messaging", "records", "billing"];

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify a service's audit chain and checkpoints; exits 3 and names the first broken row
    /// when the log was tampered with.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The service whose audit trail to verify.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SERVICES))]
    service: String,
    /// Only events that occurred at or after this instant (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    from: Option<DateTime<Utc>>,
    /// Only events that occurred before this instant (RFC 3339). Without --to the walk reaches
    /// the chain head and also checks for a truncated tail.
    #[arg(long, value_parser = parse_time)]
    to: Option<DateTime<Utc>>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The service's TOML configuration file.
    #[arg(long, short = 'c', env = "CAREHUB_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set server.database.url=postgres://... (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = crate::parse_override)]
    overrides: Vec<(String, String)>,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("expected an RFC 3339 instant such as 2026-11-22T20:00:00Z: {e}"))
}

/// Any service's configuration, read for its `[server]` table only.
#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct ServerOnly {
    server: PlatformConfig,
}

impl Validate for ServerOnly {
    fn validate(&self, problems: &mut Vec<String>) {
        self.server.validate(problems);
    }
}

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify(args) => {
            let report = verify(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", describe(&report));
            }
            if !report.is_intact() {
                std::process::exit(EXIT_TAMPERED);
            }
            Ok(())
        }
    }
}

async fn verify(args: &VerifyArgs) -> anyhow::Result<VerifyReport> {
    let cfg: ServerOnly = config::load(args.config.as_deref(), &args.overrides)
        .with_context(|| format!("loading {}'s configuration", args.service))?;
    let pool = carehub_platform::db::connect(&cfg.server.database)
        .await
        .with_context(|| format!("connecting to {}'s database", args.service))?;
    let keys = carehub_platform::keys::from_config(&args.service, &cfg.server)
        .await
        .with_context(|| format!("loading {}'s audit-checkpoint keys", args.service))?;
    let range = VerifyRange {
        from_time: args.from,
        to_time: args.to,
        ..VerifyRange::default()
    };
    let report = audit::verify(&pool, keys.as_ref(), &args.service, &range)
        .await
        .with_context(|| format!("reading {}'s audit trail", args.service))?;
    pool.close().await;
    Ok(report)
}

fn describe(r: &VerifyReport) -> String {
    let checkpoints = match r.last_checkpoint_seq {
        Some(seq) => format!(
            "{} checkpoint(s) valid, newest at row {seq}",
            r.checkpoints_checked
        ),
        None => "no checkpoint in range".to_owned(),
    };
    match &r.problem {
        None => format!(
            "{}: audit trail intact: {} row(s) checked ({}..={}), {checkpoints}; chain head at row {}",
            r.service, r.rows_checked, r.from_seq, r.to_seq, r.head_seq
        ),
        Some(p) => format!(
            "{}: AUDIT TRAIL TAMPERED at row {} ({:?}): {}\n({} row(s) verified before it; chain head at row {})",
            r.service, p.seq, p.kind, p.detail, r.rows_checked, r.head_seq
        ),
    }
}
