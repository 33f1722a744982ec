//! Intake responses (table `intake_responses`). Every submission of an appointment's form is a
//! new version, numbered under a lock per (patient, appointment, form): two resubmissions
//! racing would otherwise both read the same highest version and the second would fail on the
//! unique index instead of becoming the next one.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

#[derive(Debug, sqlx::FromRow)]
pub struct IntakeRow {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub appointment_id: Uuid,
    pub form: String,
    /// The sealed answers (`sealed::seal_answers`).
    pub answers: Vec<u8>,
    pub version: i32,
    pub submitted_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, patient_id, appointment_id, form, answers, version, submitted_at, recorded_at";

/// A submission to store; `answers` is sealed for the row `id`.
#[derive(Debug)]
pub struct NewIntake<'a> {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub appointment_id: Uuid,
    pub form: &'a str,
    pub answers: &'a [u8],
    pub submitted_at: DateTime<Utc>,
}

/// Stores `n` as the next version of its appointment's form (1 for the first).
pub async fn insert_next(conn: &mut PgConnection, n: &NewIntake<'_>) -> Result<IntakeRow> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(
                    'intake/' || $1::text || '/' || $2::text || '/' || $3, 0))",
    )
    .bind(n.patient_id)
    .bind(n.appointment_id)
    .bind(n.form)
    .execute(&mut *conn)
    .await?;
    Ok(sqlx::query_as(&format!(
        "INSERT INTO intake_responses
                (id, patient_id, appointment_id, form, answers, version, submitted_at)
         SELECT $1, $2, $3, $4, $5, COALESCE(max(version), 0) + 1, $6
           FROM intake_responses
          WHERE patient_id = $2 AND appointment_id = $3 AND form = $4
         RETURNING {COLUMNS}"
    ))
    .bind(n.id)
    .bind(n.patient_id)
    .bind(n.appointment_id)
    .bind(n.form)
    .bind(n.answers)
    .bind(n.submitted_at)
    .fetch_one(&mut *conn)
    .await?)
}
