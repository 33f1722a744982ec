//! Care-team membership periods. A member has at most one active period per patient (a
//! partial unique index): adding an active member again is a no-op, whoever races.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::access::TeamRole;
use crate::error::Result;

#[derive(Debug, sqlx::FromRow)]
pub struct MemberRow {
    pub member_id: Uuid,
    pub member_role: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub added_by: Uuid,
}

/// Active members first, then former periods; each group oldest first.
pub async fn list(conn: &mut PgConnection, patient: Uuid) -> Result<Vec<MemberRow>> {
    Ok(sqlx::query_as(
        "SELECT member_id, member_role, started_at, ended_at, added_by
           FROM care_team_members WHERE patient_id = $1
          ORDER BY (ended_at IS NOT NULL), started_at, id",
    )
    .bind(patient)
    .fetch_all(&mut *conn)
    .await?)
}

/// Starts a period for `member` unless one is active; whether a period started.
pub async fn add(
    conn: &mut PgConnection,
    patient: Uuid,
    member: Uuid,
    role: TeamRole,
    added_by: Uuid,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO care_team_members (id, patient_id, member_id, member_role, added_by)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (patient_id, member_id) WHERE ended_at IS NULL DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(patient)
    .bind(member)
    .bind(role.as_str())
    .bind(added_by)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Ends `member`'s active period; whether one was active.
pub async fn remove(
    conn: &mut PgConnection,
    patient: Uuid,
    member: Uuid,
    ended_by: Uuid,
) -> Result<bool> {
    let ended = sqlx::query(
        "UPDATE care_team_members SET ended_at = now(), ended_by = $3
          WHERE patient_id = $1 AND member_id = $2 AND ended_at IS NULL",
    )
    .bind(patient)
    .bind(member)
    .bind(ended_by)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(ended == 1)
}
