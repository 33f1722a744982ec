//! The first admin of a fresh install, created from the command line rather than the API.

use carehub_platform::auth::Role;
use carehub_platform::crypto::Envelope;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::password::PasswordHasher;
use crate::store;

/// Creates an account with a generated one-time password that must be changed at first login.
/// Returns its id and the password (shown once).
pub async fn create_account(
    pool: &PgPool,
    crypto: &Envelope,
    hasher: &PasswordHasher,
    role: Role,
    email: &str,
    given_name: &str,
    family_name: &str,
) -> anyhow::Result<(Uuid, String)> {
    let (account, password) = store::accounts::create_user_direct(
        pool,
        crypto,
        hasher,
        email,
        role,
        given_name,
        family_name,
        None,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}", tonic::Status::from(e).message()))?;
    let password = password.ok_or_else(|| anyhow::anyhow!("no one-time password was generated"))?;
    Ok((account.id, password))
}

/// Creates `email` as admin when identity has no admin yet; `None` when one exists.
pub async fn first_admin(
    pool: &PgPool,
    crypto: &Envelope,
    hasher: &PasswordHasher,
    email: &str,
) -> anyhow::Result<Option<String>> {
    let admins = store::accounts::count_by_role(pool, Role::Admin)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if admins > 0 {
        return Ok(None);
    }
    let (_, password) = create_account(
        pool,
        crypto,
        hasher,
        Role::Admin,
        email,
        "Carehub",
        "Administrator",
    )
    .await?;
    Ok(Some(password))
}
