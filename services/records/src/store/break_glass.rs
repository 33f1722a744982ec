//! Break-glass accesses: a provider outside the care team opened a chart, until `expires_at`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

#[derive(Debug, sqlx::FromRow)]
pub struct AccessRow {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub provider_id: Uuid,
    pub reason: Vec<u8>,
    pub opened_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Records an access open for `minutes` from now, `reason` sealed already.
pub async fn open(
    conn: &mut PgConnection,
    id: Uuid,
    patient: Uuid,
    provider: Uuid,
    reason: &[u8],
    minutes: u32,
) -> Result<AccessRow> {
    Ok(sqlx::query_as(
        "INSERT INTO break_glass_accesses (id, patient_id, provider_id, reason, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(mins => $5))
         RETURNING id, patient_id, provider_id, reason, opened_at, expires_at",
    )
    .bind(id)
    .bind(patient)
    .bind(provider)
    .bind(reason)
    .bind(i32::try_from(minutes).unwrap_or(i32::MAX))
    .fetch_one(&mut *conn)
    .await?)
}

/// Accesses newest first, after the cursor `(opened_at, id)`; at most `limit`.
pub async fn list(
    conn: &mut PgConnection,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<AccessRow>> {
    let (at, id) = after.unzip();
    Ok(sqlx::query_as(
        "SELECT id, patient_id, provider_id, reason, opened_at, expires_at
           FROM break_glass_accesses
          WHERE $1::timestamptz IS NULL OR (opened_at, id) < ($1, $2)
          ORDER BY opened_at DESC, id DESC
          LIMIT $3",
    )
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}
