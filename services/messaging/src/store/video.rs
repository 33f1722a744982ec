//! Video visits (table `video_visits`): what scheduling told messaging about each appointment.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

const COLUMNS: &str =
    "appointment_id, patient_id, provider_id, starts_at, ends_at, cancelled, room, revision";

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct VisitRow {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub provider_id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub cancelled: bool,
    pub room: String,
    /// The highest revision applied (0 while only unversioned upserts were).
    pub revision: i64,
}

/// A visit as scheduling describes it; `room` is used only when the visit is new.
#[derive(Debug)]
pub struct NewVisit<'a> {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub provider_id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub cancelled: bool,
    pub room: &'a str,
    /// Scheduling's revision of the appointment; 0: unversioned, always applied.
    pub revision: i64,
}

/// Records `v`, or changes the stored visit to it, unless the stored one is cancelled, belongs
/// to another patient, or is at a revision `v` does not exceed (when `v` has one, i.e. is not
/// 0): those are left alone. Returns the stored row either way, and whether `v` was written;
/// the caller tells the refusals apart from the row.
///
/// One statement, so that two deliveries racing for a new appointment cannot both miss the
/// other: the loser's insert turns into the conditional update, whose condition is checked
/// against the row as locked, so that revisions are compared and set without a race. An
/// unversioned change keeps the stored revision: a later delivery older than that revision is
/// still older.
pub async fn upsert(conn: &mut PgConnection, v: &NewVisit<'_>) -> Result<(bool, VisitRow)> {
    let written: Option<VisitRow> = sqlx::query_as(&format!(
        "INSERT INTO video_visits
                (appointment_id, patient_id, provider_id, starts_at, ends_at, cancelled, room,
                 revision)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (appointment_id) DO UPDATE
            SET provider_id = EXCLUDED.provider_id,
                starts_at = EXCLUDED.starts_at,
                ends_at = EXCLUDED.ends_at,
                cancelled = EXCLUDED.cancelled,
                revision = GREATEST(video_visits.revision, EXCLUDED.revision),
                updated_at = now()
          WHERE NOT video_visits.cancelled
            AND video_visits.patient_id = EXCLUDED.patient_id
            AND (EXCLUDED.revision = 0 OR EXCLUDED.revision > video_visits.revision)
         RETURNING {COLUMNS}"
    ))
    .bind(v.appointment_id)
    .bind(v.patient_id)
    .bind(v.provider_id)
    .bind(v.starts_at)
    .bind(v.ends_at)
    .bind(v.cancelled)
    .bind(v.room)
    .bind(v.revision)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = written {
        return Ok((true, row));
    }
    // The conflict's row exists and the update's condition kept it: read it as it is.
    let stored: VisitRow = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM video_visits WHERE appointment_id = $1"
    ))
    .bind(v.appointment_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok((false, stored))
}

/// Visit `appointment`, locked against a concurrent change until the transaction ends: a
/// cancellation either committed before (and is seen) or waits for the token's issue.
pub async fn get_for_share(conn: &mut PgConnection, appointment: Uuid) -> Result<Option<VisitRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM video_visits WHERE appointment_id = $1 FOR SHARE"
    ))
    .bind(appointment)
    .fetch_optional(&mut *conn)
    .await?)
}
