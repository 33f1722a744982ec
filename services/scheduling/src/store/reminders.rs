//! Reminder rows: written with the booking (or the move), handed over by the reminder worker.

use chrono::{DateTime, Duration, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

/// Writes one pending reminder per offset that is still ahead of `now`.
pub async fn schedule(
    conn: &mut PgConnection,
    appointment: Uuid,
    start: DateTime<Utc>,
    offsets_minutes: &[u32],
    now: DateTime<Utc>,
) -> Result<usize> {
    let mut n = 0;
    for &offset in offsets_minutes {
        let due = start - Duration::minutes(i64::from(offset));
        if due <= now {
            continue;
        }
        sqlx::query(
            "INSERT INTO reminders (id, appointment_id, offset_minutes, start_time, due_at, state)
             VALUES ($1, $2, $3, $4, $5, 'pending')",
        )
        .bind(Uuid::now_v7())
        .bind(appointment)
        .bind(i32::try_from(offset).unwrap_or(i32::MAX))
        .bind(start)
        .bind(due)
        .execute(&mut *conn)
        .await?;
        n += 1;
    }
    Ok(n)
}

/// Cancels the appointment's pending reminders (the caller holds the appointment's lock; a
/// reminder the worker is handing over right now is waited for and then left as sent).
pub async fn cancel_pending(conn: &mut PgConnection, appointment: Uuid) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE reminders SET state = 'cancelled', handled_at = now()
          WHERE appointment_id = $1 AND state = 'pending'",
    )
    .bind(appointment)
    .execute(conn)
    .await?
    .rows_affected())
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DueReminder {
    pub id: Uuid,
    pub appointment_id: Uuid,
    pub start_time: DateTime<Utc>,
    pub patient_id: Uuid,
    pub status: String,
    pub appointment_start: DateTime<Utc>,
}

/// Up to `limit` due pending reminders, locked (others skip them) until the caller's
/// transaction ends.
pub async fn claim_due(conn: &mut PgConnection, limit: i64) -> Result<Vec<DueReminder>> {
    Ok(sqlx::query_as(
        "SELECT r.id, r.appointment_id, r.start_time, a.patient_id, a.status,
                a.start_time AS appointment_start
           FROM reminders r JOIN appointments a ON a.id = r.appointment_id
          WHERE r.state = 'pending' AND r.due_at <= now()
          ORDER BY r.due_at LIMIT $1
          FOR UPDATE OF r SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

pub async fn mark(conn: &mut PgConnection, id: Uuid, state: &str) -> Result<()> {
    sqlx::query("UPDATE reminders SET state = $2, handled_at = now() WHERE id = $1")
        .bind(id)
        .bind(state)
        .execute(conn)
        .await?;
    Ok(())
}
