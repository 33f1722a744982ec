//! The accounting of disclosures: what left carehub for a third party, when and why.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

#[derive(Debug, sqlx::FromRow)]
pub struct DisclosureRow {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub recipient: Vec<u8>,
    pub purpose: Vec<u8>,
    pub description: Vec<u8>,
    pub entry_ids: Vec<Uuid>,
    pub amendment_ids: Vec<Uuid>,
    pub disclosed_at: DateTime<Utc>,
    pub recorded_by: Uuid,
    pub recorded_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, patient_id, recipient, purpose, description, entry_ids, \
    amendment_ids, disclosed_at, recorded_by, recorded_at";

/// A disclosure's row, its texts sealed already.
pub struct NewDisclosure<'a> {
    pub id: Uuid,
    pub patient: Uuid,
    pub recipient: &'a [u8],
    pub purpose: &'a [u8],
    pub description: &'a [u8],
    pub entries: &'a [Uuid],
    pub amendments: &'a [Uuid],
    pub disclosed_at: DateTime<Utc>,
    pub recorded_by: Uuid,
}

pub async fn insert(conn: &mut PgConnection, d: &NewDisclosure<'_>) -> Result<DisclosureRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO disclosures (id, patient_id, recipient, purpose, description, entry_ids,
                                  amendment_ids, disclosed_at, recorded_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    ))
    .bind(d.id)
    .bind(d.patient)
    .bind(d.recipient)
    .bind(d.purpose)
    .bind(d.description)
    .bind(d.entries)
    .bind(d.amendments)
    .bind(d.disclosed_at)
    .bind(d.recorded_by)
    .fetch_one(&mut *conn)
    .await?)
}

/// `patient`'s disclosures since `since`, newest first, before the cursor; at most `limit`.
pub async fn list(
    conn: &mut PgConnection,
    patient: Uuid,
    since: DateTime<Utc>,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<DisclosureRow>> {
    let (at, id) = before.unzip();
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM disclosures
          WHERE patient_id = $1 AND disclosed_at >= $2
            AND ($3::timestamptz IS NULL OR (disclosed_at, id) < ($3, $4))
          ORDER BY disclosed_at DESC, id DESC LIMIT $5"
    ))
    .bind(patient)
    .bind(since)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// Which of `entries` are `patient`'s.
pub async fn entries_of(
    conn: &mut PgConnection,
    patient: Uuid,
    entries: &[Uuid],
) -> Result<Vec<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM entries WHERE patient_id = $1 AND id = ANY($2)")
            .bind(patient)
            .bind(entries)
            .fetch_all(&mut *conn)
            .await?,
    )
}
