//! Amendment requests. Each change is one UPDATE that also checks the state it starts from, so
//! that two providers deciding at once cannot both win (the loser sees the state the winner
//! left, as FAILED_PRECONDITION).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{RecordsError, Result};

/// Days an amendment request is due in (164.526(f)(2)), and its one extension.
pub const DUE_DAYS: i32 = 60;
pub const EXTENSION_DAYS: i32 = 30;

#[derive(Debug, sqlx::FromRow)]
pub struct AmendmentRow {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub entry_id: Uuid,
    pub status: String,
    pub reason: Vec<u8>,
    pub requested_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub extension_reason: Option<Vec<u8>>,
    pub decided_by: Option<Uuid>,
    pub decided_at: Option<DateTime<Utc>>,
    pub denial_reason: Option<Vec<u8>>,
    pub amended_version: Option<i64>,
    pub disagreement: Option<Vec<u8>>,
    pub disagreement_at: Option<DateTime<Utc>>,
    pub rebuttal: Option<Vec<u8>>,
    pub rebuttal_by: Option<Uuid>,
    pub rebuttal_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, patient_id, entry_id, status, reason, requested_at, due_at, \
    extension_reason, decided_by, decided_at, denial_reason, amended_version, disagreement, \
    disagreement_at, rebuttal, rebuttal_by, rebuttal_at";

pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    patient: Uuid,
    entry: Uuid,
    reason: &[u8],
) -> Result<AmendmentRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO amendments (id, patient_id, entry_id, status, reason, due_at)
         VALUES ($1, $2, $3, 'requested', $4, now() + make_interval(days => $5))
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(patient)
    .bind(entry)
    .bind(reason)
    .bind(DUE_DAYS)
    .fetch_one(&mut *conn)
    .await?)
}

/// The amendment `id` of `patient`, locked until the transaction ends.
pub async fn lock(conn: &mut PgConnection, patient: Uuid, id: Uuid) -> Result<AmendmentRow> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM amendments WHERE id = $1 AND patient_id = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(patient)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| RecordsError::NotFound {
        what: "amendment",
        id: id.to_string(),
    })
}

/// `patient`'s requests, newest first.
pub async fn list(conn: &mut PgConnection, patient: Uuid) -> Result<Vec<AmendmentRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM amendments WHERE patient_id = $1 ORDER BY requested_at DESC, id DESC"
    ))
    .bind(patient)
    .fetch_all(&mut *conn)
    .await?)
}

/// Denied requests of `entries` (what goes with a disclosure of them).
pub async fn denied_of(
    conn: &mut PgConnection,
    patient: Uuid,
    entries: &[Uuid],
) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM amendments
          WHERE patient_id = $1 AND entry_id = ANY($2) AND status = 'denied'
          ORDER BY requested_at, id",
    )
    .bind(patient)
    .bind(entries)
    .fetch_all(&mut *conn)
    .await?)
}

/// One change of a locked request (the caller checked the state it starts from).
pub enum Change<'a> {
    Extend { reason: &'a [u8] },
    Accept { by: Uuid, version: i64 },
    Deny { by: Uuid, reason: &'a [u8] },
    Disagree { statement: &'a [u8] },
    Rebut { by: Uuid, statement: &'a [u8] },
}

pub async fn apply(conn: &mut PgConnection, id: Uuid, change: Change<'_>) -> Result<AmendmentRow> {
    let set = match &change {
        Change::Extend { .. } => format!(
            "extension_reason = $2, due_at = due_at + make_interval(days => {EXTENSION_DAYS})"
        ),
        Change::Accept { .. } => "status = 'accepted', decided_by = $2, decided_at = now(), \
                                  amended_version = $3"
            .to_owned(),
        Change::Deny { .. } => "status = 'denied', decided_by = $2, decided_at = now(), \
                                denial_reason = $3"
            .to_owned(),
        Change::Disagree { .. } => "disagreement = $2, disagreement_at = now()".to_owned(),
        Change::Rebut { .. } => "rebuttal_by = $2, rebuttal = $3, rebuttal_at = now()".to_owned(),
    };
    let sql = format!("UPDATE amendments SET {set} WHERE id = $1 RETURNING {COLUMNS}");
    let q = sqlx::query_as(&sql).bind(id);
    let q = match change {
        Change::Extend { reason } => q.bind(reason),
        Change::Accept { by, version } => q.bind(by).bind(version),
        Change::Deny { by, reason } => q.bind(by).bind(reason),
        Change::Disagree { statement } => q.bind(statement),
        Change::Rebut { by, statement } => q.bind(by).bind(statement),
    };
    Ok(q.fetch_one(&mut *conn).await?)
}
