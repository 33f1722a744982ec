//! `carehub billing reconcile [-c config] [--set k=v]`: one reconciliation pass of billing,
//! straight against billing's database, keys and processor as its configuration names them
//! (the same pass every billing replica runs each `billing.reconcile_interval_secs`): payment
//! and refund intents whose call died are settled with the processor, and the ledger's
//! invariants are checked. Prints the report; exits 1 when the ledger violates an invariant
//! (an operator must look), 0 otherwise — so a CronJob or a runbook step can alert on it.

use std::path::PathBuf;

use anyhow::Context as _;
use carehub_billing::config::BillingConfig;
use carehub_platform::config;
use clap::{Args, Subcommand};

use crate::Exit;

#[derive(Subcommand)]
pub enum BillingCommand {
    /// One reconciliation pass: settle the payment and refund intents whose call died (crash,
    /// timeout) with the processor, and check the ledger's invariants. Prints the report;
    /// exits 1 when an invariant is violated, 0 when the ledger is clean.
    Reconcile(ReconcileArgs),
}

#[derive(Args)]
pub struct ReconcileArgs {
    /// Billing's TOML configuration file (the one `carehub serve billing` runs with).
    #[arg(long, short = 'c', env = "CAREHUB_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set server.database.url=postgres://... (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = crate::parse_override)]
    overrides: Vec<(String, String)>,
}

pub async fn run(command: BillingCommand) -> anyhow::Result<()> {
    match command {
        BillingCommand::Reconcile(args) => {
            let cfg: BillingConfig = config::load(args.config.as_deref(), &args.overrides)
                .context("loading billing's configuration")?;
            let report = carehub_billing::reconcile::run_offline(&cfg)
                .await
                .context("reconciling billing")?;
            println!("{}", report.to_string().trim_end());
            if report.is_clean() {
                Ok(())
            } else {
                eprintln!("billing reconcile: the ledger violates an invariant (see above)");
                Err(Exit(1).into())
            }
        }
    }
}
