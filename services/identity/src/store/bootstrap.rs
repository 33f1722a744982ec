//! Accounts created outside the API: the first admin of a fresh install (`carehub admin
//! create`, `carehub up`).

use sqlx::PgConnection;
use uuid::Uuid;

/// Whether any active admin exists.
pub async fn admin_exists(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin' AND status = 'active')")
        .fetch_one(conn)
        .await
}

/// Inserts an active account whose password must be changed at first login, with default
/// consents and preferences rows.
pub async fn insert_account(
    conn: &mut PgConnection,
    user_id: Uuid,
    role: &str,
    email: &str,
    given_name: &str,
    family_name: &str,
    password_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (id, role, email, given_name, family_name, password_hash, password_change_required)
         VALUES ($1, $2, $3, $4, $5, $6, true)",
    )
    .bind(user_id)
    .bind(role)
    .bind(email)
    .bind(given_name)
    .bind(family_name)
    .bind(password_hash)
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO consents (user_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO communication_preferences (user_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
