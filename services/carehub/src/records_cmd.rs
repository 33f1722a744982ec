//! `carehub records export --patient ID [--out FILE]`: the whole chart as a FHIR R4 Bundle,
//! read with records' keys, audited as the operator CLI.
//!
//! `carehub records erase --patient ID --reason minor|operator [--now]`: schedules the
//! crypto-shredding of a patient's chart, straight in records' database (its configuration
//! names it), audited as the operator CLI. The running records service destroys the patient's
//! data keys once the erasure is due (after `records.erasure_hold_days`, or at once with
//! `--now`), within `records.erasure_check_secs`. Identity's account terminations schedule
//! erasures on their own; this is for data found to be a minor's, and for operators.

use std::path::PathBuf;

use anyhow::Context as _;
use carehub_platform::config;
use carehub_records::config::RecordsConfig;
use carehub_records::store::erasures::Reason;
use clap::{Args, Subcommand, ValueEnum};

#[derive(Subcommand)]
pub enum RecordsCommand {
    /// Schedule the erasure (crypto-shredding) of a patient's chart.
    Erase(EraseArgs),
    /// The whole chart of a patient as a FHIR R4 JSON Bundle (a copy for the patient, HIPAA
    /// 164.524), labels included; audited. Needs records' keys (Vault or the key file).
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// The patient's user id.
    #[arg(long)]
    patient: uuid::Uuid,
    /// Write the Bundle here (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Records' TOML configuration file.
    #[arg(long, short = 'c', env = "CAREHUB_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = crate::parse_override)]
    overrides: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EraseReason {
    /// The data was found to be a minor's.
    Minor,
    /// An operator's decision (e.g. a verified erasure request).
    Operator,
}

#[derive(Args)]
pub struct EraseArgs {
    /// The patient's user id.
    #[arg(long)]
    patient: uuid::Uuid,
    #[arg(long, value_enum)]
    reason: EraseReason,
    /// Due at once instead of after the legal hold (records.erasure_hold_days).
    #[arg(long)]
    now: bool,
    /// Records' TOML configuration file.
    #[arg(long, short = 'c', env = "CAREHUB_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set server.database.url=postgres://... (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = crate::parse_override)]
    overrides: Vec<(String, String)>,
}

pub async fn run(command: RecordsCommand) -> anyhow::Result<()> {
    match command {
        RecordsCommand::Export(args) => {
            let cfg: RecordsConfig = config::load(args.config.as_deref(), &args.overrides)
                .context("loading records' configuration")?;
            let pool = carehub_platform::db::connect(&cfg.server.database)
                .await
                .context("connecting to records' database")?;
            let keys = carehub_platform::keys::from_config("records", &cfg.server)
                .await
                .context("records' keys")?;
            let crypto = carehub_platform::crypto::Envelope::new(
                "records",
                pool.clone(),
                keys,
                cfg.records.crypto.clone(),
            )?;
            let bundle =
                carehub_records::api::export::whole_chart_bundle(&pool, &crypto, args.patient)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            let json = serde_json::to_vec_pretty(&bundle)?;
            match &args.out {
                Some(path) => std::fs::write(path, json)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => {
                    use std::io::Write as _;
                    std::io::stdout().write_all(&json)?;
                }
            }
            Ok(())
        }
        RecordsCommand::Erase(args) => {
            let cfg: RecordsConfig = config::load(args.config.as_deref(), &args.overrides)
                .context("loading records' configuration")?;
            let pool = carehub_platform::db::connect(&cfg.server.database)
                .await
                .context("connecting to records' database")?;
            let reason = match args.reason {
                EraseReason::Minor => Reason::Minor,
                EraseReason::Operator => Reason::Operator,
            };
            let due = carehub_records::api::erasure::schedule(
                &pool,
                cfg.records.erasure_hold_days,
                args.patient,
                reason,
                args.now,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "erasure of patient {} scheduled ({}); due {}; records erases it within {} s of that",
                args.patient,
                reason.as_str(),
                due.to_rfc3339(),
                cfg.records.erasure_check_secs
            );
            Ok(())
        }
    }
}
