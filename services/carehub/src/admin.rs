//! Operator commands that act on identity's database directly.

use anyhow::Context as _;
use clap::Args;

use crate::ConfigArgs;

#[derive(Args)]
pub struct CreateArgs {
    /// Login email of the new account.
    #[arg(long)]
    email: String,
    /// Role: admin, provider, staff, billing (patients register themselves).
    #[arg(long, default_value = "admin")]
    role: String,
    #[arg(long, default_value = "Carehub")]
    given_name: String,
    #[arg(long, default_value = "Administrator")]
    family_name: String,
    #[command(flatten)]
    config: ConfigArgs,
}

pub async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let _ = (&args.email, &args.role, &args.given_name, &args.family_name);
    let cfg = crate::load_identity(&args.config)?;
    let _pool = carehub_platform::db::connect(&cfg.server.database)
        .await
        .context("connecting to identity's database")?;
    anyhow::bail!("not wired yet")
}

/// Creates admin@carehub.local with a one-time password when identity has no admin yet.
pub async fn bootstrap_first_admin(
    _state: &carehub_identity::AppState,
) -> anyhow::Result<Option<(String, String)>> {
    Ok(None)
}
