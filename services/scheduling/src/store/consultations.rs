//! Consultation requests: the staff triage queue.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConsultationRow {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub reason: Vec<u8>,
    pub preferred_times: serde_json::Value,
    pub state: String,
    pub specialty: Option<String>,
    pub status: String,
    pub appointment_id: Option<Uuid>,
    pub decline_reason: Option<Vec<u8>>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, patient_id, reason, preferred_times, state, specialty, status,
    appointment_id, decline_reason, created_by, created_at, updated_at";

pub async fn insert(conn: &mut PgConnection, c: &ConsultationRow) -> Result<ConsultationRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO consultation_requests ({COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, 'open', NULL, NULL, $7, now(), now())
         RETURNING {COLUMNS}"
    ))
    .bind(c.id)
    .bind(c.patient_id)
    .bind(&c.reason)
    .bind(&c.preferred_times)
    .bind(&c.state)
    .bind(&c.specialty)
    .bind(c.created_by)
    .fetch_one(conn)
    .await?)
}

/// Requests of `patient` still open (waiting for staff to accept or decline them).
pub async fn open_of_patient(conn: &mut PgConnection, patient: Uuid) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM consultation_requests WHERE patient_id = $1 AND status = 'open'",
    )
    .bind(patient)
    .fetch_one(conn)
    .await?)
}

pub async fn get(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<Option<ConsultationRow>> {
    let lock = if lock { "FOR UPDATE" } else { "" };
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM consultation_requests WHERE id = $1 {lock}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

pub async fn decide(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    appointment: Option<Uuid>,
    decline_reason: Option<&[u8]>,
    by: Uuid,
) -> Result<ConsultationRow> {
    Ok(sqlx::query_as(&format!(
        "UPDATE consultation_requests
            SET status = $2, appointment_id = $3, decline_reason = $4, decided_by = $5,
                updated_at = now()
          WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(status)
    .bind(appointment)
    .bind(decline_reason)
    .bind(by)
    .fetch_one(conn)
    .await?)
}

/// Requests with `status`, oldest first; only `patient`'s when given.
pub async fn list(
    conn: &mut PgConnection,
    status: &str,
    patient: Option<Uuid>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ConsultationRow>> {
    let (at, last) = after.unzip();
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM consultation_requests
          WHERE status = $1 AND ($2::uuid IS NULL OR patient_id = $2)
            AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))
          ORDER BY created_at, id LIMIT $5"
    ))
    .bind(status)
    .bind(patient)
    .bind(at)
    .bind(last)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
