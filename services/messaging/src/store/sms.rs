//! The SMS consent ledger: one row per number (found by its blind index, the number itself
//! sealed under the row's own id as subject) with its current state, and every change with its
//! time and source.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct NumberRow {
    pub id: Uuid,
    /// `none`, `opted_in`, `opted_out`.
    pub state: String,
    /// When the current state was decided (none before the first change).
    pub changed_at: Option<DateTime<Utc>>,
    /// The last user known to hold the number (for the audit trail's subject).
    pub user_id: Option<Uuid>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ChangeRow {
    pub state: String,
    pub source: String,
    pub changed_at: DateTime<Utc>,
}

const NUMBER_COLUMNS: &str = "id, state, changed_at, user_id";

/// The number stored under one of `candidates` (its blind indexes under every held key).
pub async fn find(conn: &mut PgConnection, candidates: &[Vec<u8>]) -> Result<Option<NumberRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {NUMBER_COLUMNS} FROM sms_numbers WHERE phone_bidx = ANY($1)
          ORDER BY created_at LIMIT 1"
    ))
    .bind(candidates)
    .fetch_optional(&mut *conn)
    .await?)
}

/// [`find`], locked until the transaction ends.
pub async fn lock(conn: &mut PgConnection, candidates: &[Vec<u8>]) -> Result<Option<NumberRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {NUMBER_COLUMNS} FROM sms_numbers WHERE phone_bidx = ANY($1)
          ORDER BY created_at LIMIT 1 FOR UPDATE"
    ))
    .bind(candidates)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Adds a number in state `none` unless its index is taken (a concurrent first keyword from
/// the same number waits here for the other and adds nothing).
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    bidx: &[u8],
    sealed_phone: &[u8],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sms_numbers (id, phone_bidx, phone) VALUES ($1, $2, $3)
         ON CONFLICT (phone_bidx) DO NOTHING",
    )
    .bind(id)
    .bind(bidx)
    .bind(sealed_phone)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Appends a change to the number's history and makes it the current state.
pub async fn record_change(
    conn: &mut PgConnection,
    number: Uuid,
    state: &str,
    source: &str,
    at: DateTime<Utc>,
    user: Option<Uuid>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sms_consent_changes (id, number_id, state, source, changed_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::now_v7())
    .bind(number)
    .bind(state)
    .bind(source)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    touch(conn, number, state, at, user).await
}

/// Sets the current state and its decision time without a history entry (a decision that
/// repeats the standing state: it still outranks older ones arriving later).
pub async fn touch(
    conn: &mut PgConnection,
    number: Uuid,
    state: &str,
    at: DateTime<Utc>,
    user: Option<Uuid>,
) -> Result<()> {
    sqlx::query(
        "UPDATE sms_numbers
            SET state = $2, changed_at = GREATEST(COALESCE(changed_at, $3), $3),
                user_id = COALESCE($4, user_id)
          WHERE id = $1",
    )
    .bind(number)
    .bind(state)
    .bind(at)
    .bind(user)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The number's changes, oldest first.
pub async fn history(conn: &mut PgConnection, number: Uuid) -> Result<Vec<ChangeRow>> {
    Ok(sqlx::query_as(
        "SELECT state, source, changed_at FROM sms_consent_changes
          WHERE number_id = $1 ORDER BY changed_at, id",
    )
    .bind(number)
    .fetch_all(&mut *conn)
    .await?)
}
