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
    let (user_id, password) =
        create_account(&cfg, role, &args.email, &args.given_name, &args.family_name).await?;
    println!("created {role} account {user_id}");
    println!("one-time password (shown once; it must be changed at first login): {password}");
    Ok(())
}

/// Creates an account of `role` in identity's database (`cfg.server.database`, keys from
/// `cfg.server.keys`): its id and one-time password. `carehub admin create` and `carehub demo`.
pub async fn create_account(
    cfg: &carehub_identity::config::IdentityConfig,
    role: carehub_platform::auth::Role,
    email: &str,
    given_name: &str,
    family_name: &str,
) -> anyhow::Result<(uuid::Uuid, String)> {
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
    let created = carehub_identity::bootstrap::create_account(
        &pool,
        &crypto,
        &hasher,
        role,
        email,
        given_name,
        family_name,
    )
    .await;
    pool.close().await;
    created
}
