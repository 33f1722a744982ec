//! The first admin of a fresh install, created from the command line rather than the API.

use carehub_platform::auth::Role;
use rand::distributions::{Alphanumeric, DistString as _};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::password::PasswordHasher;
use crate::store;

/// A random one-time password: 20 alphanumerics (~119 bits), shown once.
pub fn one_time_password() -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, 20)
}

/// Creates an account with a one-time password that must be changed at first login.
/// Returns its id and the password. Fails with a database unique violation when the email exists.
pub async fn create_account(
    pool: &PgPool,
    hasher: &PasswordHasher,
    role: Role,
    email: &str,
    given_name: &str,
    family_name: &str,
) -> anyhow::Result<(Uuid, String)> {
    let email = email.trim().to_lowercase();
    if !(3..=254).contains(&email.len()) || !email.contains('@') {
        anyhow::bail!("--email must be an email address");
    }
    let password = one_time_password();
    let hash = hasher.hash_async(password.clone()).await?;
    let user_id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    store::bootstrap::insert_account(&mut tx, user_id, role.as_str(), &email, given_name, family_name, &hash)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.constraint() == Some("users_email_key") => {
                anyhow::anyhow!("an account with this email already exists")
            }
            _ => anyhow::Error::from(e),
        })?;
    tx.commit().await?;
    Ok((user_id, password))
}

/// Creates `email` as admin when identity has no active admin yet; `None` when one exists.
pub async fn first_admin(
    pool: &PgPool,
    hasher: &PasswordHasher,
    email: &str,
) -> anyhow::Result<Option<String>> {
    let mut conn = pool.acquire().await?;
    if store::bootstrap::admin_exists(&mut conn).await? {
        return Ok(None);
    }
    drop(conn);
    let (_, password) = create_account(pool, hasher, Role::Admin, email, "Carehub", "Administrator").await?;
    Ok(Some(password))
}
