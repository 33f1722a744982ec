//! What the login, MFA, password and session handlers share: checks of credential fields
//! (passwords, tokens, ids), the caller's own credentials, and password hashing.

use carehub_platform::errors::FieldViolations;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::password::{self, HashPermit, PasswordHasher};
use crate::domain::tokens;
use crate::error::{IdentityError, Result};
use crate::store::sessions::{self as store, Credentials};

pub(super) const PASSWORD_MAX: usize = password::MAX_LEN;

pub(super) fn is_active(cred: &Credentials) -> bool {
    cred.status == "active"
}

/// Configured seconds as the i64 the database and chrono take; saturates instead of wrapping.
pub(super) fn secs(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX / 1000)
}

pub(super) fn check_secret(v: &mut FieldViolations, field: &str, value: &str, max: usize) {
    v.require_len(value, field, 1, max);
}

pub(super) fn check_token(v: &mut FieldViolations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() > tokens::MAX_TOKEN_LEN {
        v.add(
            field,
            format!("must be at most {} characters", tokens::MAX_TOKEN_LEN),
        );
    } else if !tokens::is_token_format(value) {
        v.add(field, "is malformed");
    }
}

pub(super) fn check_uuid(v: &mut FieldViolations, field: &str, value: &str) -> Option<Uuid> {
    if value.is_empty() {
        v.add(field, "is required");
        return None;
    }
    match Uuid::parse_str(value) {
        Ok(id) if value.len() <= 36 => Some(id),
        _ => {
            v.add(field, "must be a UUID");
            None
        }
    }
}

pub(super) async fn hash_password(hasher: &PasswordHasher, secret: String) -> Result<String> {
    Ok(hasher.hash_async(secret).await?)
}

/// Checks `password` against the signed-in user's stored hash before any transaction begins
/// (no database connection is held while argon2 runs). Returns the hash it matched, which the
/// transaction then confirms unchanged with [`confirm_checked_password`]; `None` when wrong.
pub(super) async fn check_own_password(
    pool: &sqlx::PgPool,
    permit: &HashPermit,
    user_id: Uuid,
    password: String,
) -> Result<Option<String>> {
    let cred = {
        let mut conn = pool.acquire().await?;
        store::credentials_by_id(&mut conn, user_id, false).await?
    };
    let Some(cred) = cred else {
        return Err(IdentityError::SessionExpired);
    };
    let ok = permit
        .verify(password, Some(cred.password_hash.clone()))
        .await;
    Ok(ok.then_some(cred.password_hash))
}

/// Inside the transaction, with `cred` locked: the password was checked against the hash that
/// still stands (a password changed in between makes the check void).
pub(super) fn confirm_checked_password(cred: &Credentials, checked: Option<&str>) -> Result<()> {
    match checked {
        Some(hash) if hash == cred.password_hash => Ok(()),
        _ => Err(IdentityError::InvalidCredentials),
    }
}

/// The signed-in user's credentials, locked until the commit so that concurrent credential
/// changes serialize. SESSION_EXPIRED when the account is gone: the token outlived it.
pub(super) async fn lock_own_credentials(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> Result<Credentials> {
    store::credentials_by_id(conn, user_id, true)
        .await?
        .ok_or(IdentityError::SessionExpired)
}
