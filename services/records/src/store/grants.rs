//! The patient's grants of sensitive entries to care-team members. The label of a grant is
//! sealed, so the active grants of one member are read and opened together (a handful).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

#[derive(Debug, sqlx::FromRow)]
pub struct GrantRow {
    pub id: Uuid,
    pub grantee_id: Uuid,
    pub label: Vec<u8>,
    pub granted_at: DateTime<Utc>,
}

/// Active grants of `patient` (to `grantee` only, when given), oldest first.
pub async fn active(
    conn: &mut PgConnection,
    patient: Uuid,
    grantee: Option<Uuid>,
) -> Result<Vec<GrantRow>> {
    Ok(sqlx::query_as(
        "SELECT id, grantee_id, label, granted_at FROM sensitivity_grants
          WHERE patient_id = $1 AND ($2::uuid IS NULL OR grantee_id = $2) AND revoked_at IS NULL
          ORDER BY granted_at, id",
    )
    .bind(patient)
    .bind(grantee)
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    patient: Uuid,
    grantee: Uuid,
    label: &[u8],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sensitivity_grants (id, patient_id, grantee_id, label) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(patient)
    .bind(grantee)
    .bind(label)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn revoke(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE sensitivity_grants SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Serializes the grant changes of one patient for one member (two concurrent grants of one
/// label must not both insert; labels are sealed, so no unique index can say so).
pub async fn lock_member(conn: &mut PgConnection, patient: Uuid, grantee: Uuid) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2::text, 0))")
        .bind(patient)
        .bind(grantee)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
