//! Ending sessions: shared by logout, admin actions and password changes.
//!
//! Each also notifies `identity_revocations` in the caller's transaction, so that every
//! replica's session cache evicts when it commits; the replica that made the change evicts
//! itself as well, before it answers ([`crate::session_cache`]).

use sqlx::PgConnection;
use uuid::Uuid;

/// Revokes every active session of `user_id` (except `keep`), invalidates every token issued
/// until now and publishes the revocation for other services. Returns how many sessions ended.
pub async fn revoke_user_sessions(
    conn: &mut PgConnection,
    user_id: Uuid,
    reason: &str,
    keep: Option<Uuid>,
) -> Result<u64, sqlx::Error> {
    let ended = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoke_reason = $2
         WHERE user_id = $1 AND revoked_at IS NULL AND ($3::uuid IS NULL OR id <> $3)",
    )
    .bind(user_id)
    .bind(reason)
    .bind(keep)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if keep.is_none() {
        sqlx::query("UPDATE users SET sessions_revoked_before = now() WHERE id = $1")
            .bind(user_id)
            .execute(&mut *conn)
            .await?;
        sqlx::query("INSERT INTO revocations (user_id) VALUES ($1)")
            .bind(user_id)
            .execute(&mut *conn)
            .await?;
    } else {
        sqlx::query(
            "INSERT INTO revocations (session_id)
             SELECT id FROM sessions WHERE user_id = $1 AND revoke_reason = $2 AND revoked_at = now()",
        )
        .bind(user_id)
        .bind(reason)
        .execute(&mut *conn)
        .await?;
    }
    Ok(ended)
}

/// Revokes one session and publishes it. Returns false when it was already revoked.
pub async fn revoke_session(
    conn: &mut PgConnection,
    session_id: Uuid,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoke_reason = $2 WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(session_id)
    .bind(reason)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if done {
        sqlx::query("INSERT INTO revocations (session_id) VALUES ($1)")
            .bind(session_id)
            .execute(&mut *conn)
            .await?;
        crate::session_cache::notify_session(conn, session_id).await?;
    }
    Ok(done)
}
