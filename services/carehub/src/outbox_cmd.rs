//! `carehub outbox list|retry --service S`: a service's transactional outbox, straight from its
//! database (the service's own configuration names it), so it works while the service is down.
//! No payload is ever shown (payloads are sealed and may carry personal data), and no key is
//! needed.
//!
//! - `list` shows id, target, method, state, attempts, last error and age, oldest first.
//! - `retry` makes dead-lettered rows pending again with a fresh attempt count (`--id` for one,
//!   `--all` for every one); the relays of the running replicas deliver them within a poll.

use std::path::PathBuf;

use anyhow::Context as _;
use carehub_platform::config;
use carehub_platform::outbox::{self, Entry, State};
use clap::{Args, Subcommand};

use crate::audit_cmd::ServerOnly;

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// List outbox rows (no payloads): id, target, method, state, attempts, last error, age.
    List(ListArgs),
    /// Revive dead-lettered rows: one (--id) or all (--all).
    Retry(RetryArgs),
}

#[derive(Args)]
pub struct Target {
    /// The service whose outbox to read.
    /// One of the binary's services (`carehub services`).
    #[arg(long)]
    service: String,
    /// The service's TOML configuration file.
    #[arg(long, short = 'c', env = "CAREHUB_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set server.database.url=postgres://... (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = crate::parse_override)]
    overrides: Vec<(String, String)>,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: Target,
    /// Only rows in this state: pending, delivered or dead (all when absent).
    #[arg(long)]
    state: Option<State>,
    /// At most this many rows, oldest first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    limit: i64,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RetryArgs {
    #[command(flatten)]
    target: Target,
    /// The dead-lettered row to revive.
    #[arg(long, conflicts_with = "all", required_unless_present = "all")]
    id: Option<uuid::Uuid>,
    /// Revive every dead-lettered row.
    #[arg(long)]
    all: bool,
}

pub async fn run(command: OutboxCommand) -> anyhow::Result<()> {
    match command {
        OutboxCommand::List(args) => {
            let rows = list(&args).await?;
            for e in &rows {
                if args.json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    println!("{}", describe(e, chrono::Utc::now()));
                }
            }
            if rows.is_empty() && !args.json {
                eprintln!("{}: no outbox rows", args.target.service);
            }
            Ok(())
        }
        OutboxCommand::Retry(args) => {
            let revived = retry(&args).await?;
            println!(
                "{}: {} dead-lettered row(s) made pending again",
                args.target.service,
                revived.len()
            );
            for id in revived {
                println!("{id}");
            }
            Ok(())
        }
    }
}

async fn pool_of(t: &Target) -> anyhow::Result<sqlx::PgPool> {
    let cfg: ServerOnly = config::load(t.config.as_deref(), &t.overrides)
        .with_context(|| format!("loading {}'s configuration", t.service))?;
    carehub_platform::db::connect(&cfg.server.database)
        .await
        .with_context(|| format!("connecting to {}'s database", t.service))
}

async fn list(args: &ListArgs) -> anyhow::Result<Vec<Entry>> {
    let pool = pool_of(&args.target).await?;
    let rows = outbox::list(&pool, args.state, args.limit)
        .await
        .with_context(|| format!("reading {}'s outbox", args.target.service))?;
    pool.close().await;
    Ok(rows)
}

async fn retry(args: &RetryArgs) -> anyhow::Result<Vec<uuid::Uuid>> {
    let pool = pool_of(&args.target).await?;
    let revived = outbox::retry(&pool, if args.all { None } else { args.id })
        .await
        .with_context(|| {
            format!(
                "reviving {}'s dead-lettered outbox rows",
                args.target.service
            )
        })?;
    pool.close().await;
    Ok(revived)
}

fn describe(e: &Entry, now: chrono::DateTime<chrono::Utc>) -> String {
    let state = if e.in_flight {
        "in-flight"
    } else {
        e.state.as_str()
    };
    let age = (now - e.created_at).num_seconds().max(0);
    format!(
        "{}  {:<12} {:<52} {:<9} attempts={:<3} age={}s last_error={}",
        e.id,
        e.target,
        e.method,
        state,
        e.attempts,
        age,
        e.last_error.as_deref().unwrap_or("-"),
    )
}
