//! `carehub audit verify --service S [--from T] [--to T] [--checkpoints FILE]...`: walks a
//! service's audit chain and signed checkpoints straight from its database (the service's own
//! configuration names the database and the checkpoint keys), so it works while the service is
//! down or compromised. `--checkpoints` gives the checkpoints the sink shipped outside the
//! database (its JSON-lines file, or any copy): a chain shorter than one of them, or that
//! disagrees with one, fails even when the stored checkpoints were deleted with the tail.
//!
//! It also reports the sealing lag: events committed but still queued for the chain, and how
//! many have waited longer than `[server.audit] sealing_lag_secs` (a sequencer that is behind,
//! or not running anywhere).
//!
//! Exit status: 0 intact, 3 tampered (the first broken row is named), 4 intact but events wait
//! longer than the bound to be sealed, 1 could not verify, 2 usage.

use std::path::PathBuf;

use anyhow::Context as _;
use carehub_platform::audit::{self, VerifyRange, VerifyReport};
use carehub_platform::config::{self, PlatformConfig, Validate};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

/// Exit status when the log was tampered with.
pub const EXIT_TAMPERED: i32 = 3;
/// Exit status when the chain is intact but queued events wait longer than the bound.
pub const EXIT_SEALING_LAG: i32 = 4;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify a service's audit chain and checkpoints; exits 3 and names the first broken row
    /// when the log was tampered with.
    Verify(VerifyArgs),
    /// List the newest events about a subject or by an actor, straight from the service's
    /// database; client addresses and user agents are opened with the service's keys (shown as
    /// sealed when a key is unavailable).
    Events(EventsArgs),
}

#[derive(Args)]
pub struct EventsArgs {
    /// The service whose audit trail to read.
    /// One of the binary's services (`carehub services`).
    #[arg(long)]
    service: String,
    /// Events about this subject (user id).
    #[arg(long, conflicts_with = "actor", required_unless_present = "actor")]
    subject: Option<uuid::Uuid>,
    /// Events by this actor (user id).
    #[arg(long)]
    actor: Option<uuid::Uuid>,
    /// At most this many events, newest first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    limit: i64,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// The service's TOML configuration file.
    #[arg(long, short = 'c', env = "CAREHUB_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set server.database.url=postgres://... (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = crate::parse_override)]
    overrides: Vec<(String, String)>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The service whose audit trail to verify.
    /// One of the binary's services (`carehub services`).
    #[arg(long)]
    service: String,
    /// Only events that occurred at or after this instant (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    from: Option<DateTime<Utc>>,
    /// Only events that occurred before this instant (RFC 3339). Without --to the walk reaches
    /// the chain head and also checks for a truncated tail.
    #[arg(long, value_parser = parse_time)]
    to: Option<DateTime<Utc>>,
    /// JSON lines shipped by the audit sink (or a copy of them): their `audit_checkpoint` lines
    /// for this service anchor the chain outside the database. Repeatable.
    #[arg(long, value_name = "FILE")]
    checkpoints: Vec<PathBuf>,
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
pub(crate) struct ServerOnly {
    pub(crate) server: PlatformConfig,
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
            if report.sealing.is_some_and(|s| s.older_than_bound > 0) {
                std::process::exit(EXIT_SEALING_LAG);
            }
            Ok(())
        }
        AuditCommand::Events(args) => events(&args).await,
    }
}

/// A client field as shown: opened, or why not.
fn shown(opened: Option<&str>, sealed: Option<&[u8]>, why: Option<&str>) -> String {
    match (opened, sealed) {
        (Some(v), _) => v.to_owned(),
        (None, Some(s)) => format!(
            "[sealed, kek v{}{}]",
            audit::seal::key_version(s).map_or_else(|| "?".to_owned(), |v| v.to_string()),
            why.map(|w| format!(": {w}")).unwrap_or_default()
        ),
        (None, None) => "-".to_owned(),
    }
}

async fn events(args: &EventsArgs) -> anyhow::Result<()> {
    let cfg: ServerOnly = config::load(args.config.as_deref(), &args.overrides)
        .with_context(|| format!("loading {}'s configuration", args.service))?;
    let pool = carehub_platform::db::connect(&cfg.server.database)
        .await
        .with_context(|| format!("connecting to {}'s database", args.service))?;
    // Without the keys the trail is still listed, its client fields shown sealed.
    let sealer = match carehub_platform::keys::from_config(&args.service, &cfg.server).await {
        Ok(keys) => Some(audit::ClientSealer::new(args.service.clone(), keys)),
        Err(e) => {
            eprintln!(
                "warning: {}'s keys are unavailable ({e:#}); client fields stay sealed",
                args.service
            );
            None
        }
    };
    let whose = match (args.subject, args.actor) {
        (Some(id), _) => audit::chain::Whose::Subject(id),
        (None, Some(id)) => audit::chain::Whose::Actor(id),
        (None, None) => anyhow::bail!("--subject or --actor is required"),
    };
    let mut conn = pool.acquire().await?;
    let mut rows = audit::chain::events_of(&mut conn, whose, args.limit)
        .await
        .with_context(|| format!("reading {}'s audit trail", args.service))?;
    drop(conn);
    pool.close().await;
    for e in &mut rows {
        let why = match &sealer {
            Some(s) => s.open_event(e).err().map(|err| err.to_string()),
            None => Some("no key".to_owned()),
        };
        let ip = shown(
            e.event.source_ip.as_deref(),
            e.client.source_ip.as_deref(),
            why.as_deref(),
        );
        let ua = shown(
            e.event.user_agent.as_deref(),
            e.client.user_agent.as_deref(),
            why.as_deref(),
        );
        if args.json {
            let mut v = serde_json::to_value(&*e)?;
            if let Some(obj) = v.as_object_mut() {
                obj.insert("source_ip".into(), ip.into());
                obj.insert("user_agent".into(), ua.into());
            }
            println!("{v}");
        } else {
            println!(
                "{:>8}  {}  {:<32} {:<14} {:<10} subject={} actor={} ip={ip} ua={ua}",
                e.seq,
                e.event.occurred_at.to_rfc3339(),
                e.event.kind,
                e.event.outcome.as_str(),
                e.event.purpose.as_str(),
                e.event
                    .subject_id
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                e.event
                    .actor_user_id
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            );
        }
    }
    Ok(())
}

async fn verify(args: &VerifyArgs) -> anyhow::Result<VerifyReport> {
    let mut shipped = Vec::new();
    for path in &args.checkpoints {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading shipped checkpoints from {}", path.display()))?;
        let found = audit::sink::read_checkpoints(&text, &args.service)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if found.is_empty() {
            eprintln!(
                "warning: {} holds no checkpoint of {}",
                path.display(),
                args.service
            );
        }
        shipped.extend(found);
    }
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
    let mut report = audit::verify_with(&pool, keys.as_ref(), &args.service, &range, &shipped)
        .await
        .with_context(|| format!("reading {}'s audit trail", args.service))?;
    let bound = std::time::Duration::from_secs(cfg.server.audit.sealing_lag_secs);
    report.sealing = Some(
        audit::sequencer::sealing_lag(&pool, bound)
            .await
            .with_context(|| format!("reading {}'s audit queue", args.service))?,
    );
    pool.close().await;
    Ok(report)
}

fn describe(r: &VerifyReport) -> String {
    let checkpoints = match r.last_checkpoint_seq {
        Some(seq) => format!(
            "{} checkpoint(s) valid ({} shipped), newest at row {seq}",
            r.checkpoints_checked, r.shipped_checkpoints_checked
        ),
        None => "no checkpoint in range".to_owned(),
    };
    let sealing = match r.sealing {
        None => String::new(),
        Some(s) if s.older_than_bound > 0 => format!(
            "\nSEALING LAG: {} of {} queued event(s) waited longer than {}s to be sealed (oldest {:.1}s): is a sequencer running?",
            s.older_than_bound, s.queued, s.bound_secs, s.oldest_age_secs
        ),
        Some(s) => format!(
            "\nsealing lag: {} event(s) queued, oldest {:.1}s (bound {}s)",
            s.queued, s.oldest_age_secs, s.bound_secs
        ),
    };
    match &r.problem {
        None => format!(
            "{}: audit trail intact: {} row(s) checked ({}..={}), {checkpoints}; chain head at row {}{sealing}",
            r.service, r.rows_checked, r.from_seq, r.to_seq, r.head_seq
        ),
        Some(p) => format!(
            "{}: AUDIT TRAIL TAMPERED at row {} ({:?}): {}\n({} row(s) verified before it; chain head at row {})",
            r.service, p.seq, p.kind, p.detail, r.rows_checked, r.head_seq
        ),
    }
}
