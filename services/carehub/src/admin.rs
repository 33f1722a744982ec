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
    let role = carehub_platform::auth::Role::parse(&args.role)
        .filter(|r| *r != carehub_platform::auth::Role::Patient)
        .context(
            "--role must be one of admin, provider, staff, billing (patients register themselves)",
        )?;
    let cfg = crate::load_identity(&args.config)?;
    let pool = carehub_platform::db::connect(&cfg.server.database)
        .await
        .context("connecting to identity's database")?;
    let s = &cfg.identity;
    let hasher = carehub_identity::domain::password::PasswordHasher::new(
        s.argon2_memory_kib,
        s.argon2_iterations,
        s.argon2_parallelism,
        1,
        0,
    )?;
    let keys = carehub_platform::keys::from_config("identity", &cfg.server).await?;
    let crypto = carehub_identity::envelope(&pool, keys, s)?;
    let (user_id, password) = carehub_identity::bootstrap::create_account(
        &pool,
        &crypto,
        &hasher,
        role,
        &args.email,
        &args.given_name,
        &args.family_name,
    )
    .await?;
    println!("created {role} account {user_id}");
    println!("one-time password (shown once; it must be changed at first login): {password}");
    Ok(())
}
