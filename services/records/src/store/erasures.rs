//! Scheduled erasures: one row per patient, due when their legal hold ends, marked erased once
//! their data keys are destroyed.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

/// Why a patient's chart is erased.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Identity terminated the account (its outbox event).
    AccountTerminated,
    /// The data was found to be a minor's (carehub does not serve minors).
    Minor,
    /// An operator asked (`carehub records erase`).
    Operator,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AccountTerminated => "account_terminated",
            Reason::Minor => "minor",
            Reason::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Reason::AccountTerminated, Reason::Minor, Reason::Operator]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Schedules `patient`'s erasure `hold_days` from now, unless one is scheduled already (the
/// earlier schedule stands); whether this call scheduled it.
pub async fn schedule(
    conn: &mut PgConnection,
    patient: Uuid,
    reason: Reason,
    hold_days: u32,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO erasures (patient_id, reason, due_at)
         VALUES ($1, $2, now() + make_interval(days => $3))
         ON CONFLICT (patient_id) DO NOTHING",
    )
    .bind(patient)
    .bind(reason.as_str())
    .bind(i32::try_from(hold_days).unwrap_or(i32::MAX))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Brings a scheduled erasure forward to now (an operator's immediate erasure).
pub async fn make_due(conn: &mut PgConnection, patient: Uuid) -> Result<()> {
    sqlx::query("UPDATE erasures SET due_at = now() WHERE patient_id = $1 AND erased_at IS NULL AND due_at > now()")
        .bind(patient)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
pub struct Due {
    pub patient_id: Uuid,
    pub reason: String,
    pub due_at: DateTime<Utc>,
}

/// The next due erasure, locked (skipping those another replica is erasing).
pub async fn next_due(conn: &mut PgConnection) -> Result<Option<Due>> {
    Ok(sqlx::query_as(
        "SELECT patient_id, reason, due_at FROM erasures
          WHERE erased_at IS NULL AND due_at <= now()
          ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *conn)
    .await?)
}

pub async fn mark_erased(conn: &mut PgConnection, patient: Uuid) -> Result<()> {
    sqlx::query("UPDATE erasures SET erased_at = now() WHERE patient_id = $1")
        .bind(patient)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// When `patient`'s erasure is (or was) due.
pub async fn due_at(conn: &mut PgConnection, patient: Uuid) -> Result<DateTime<Utc>> {
    Ok(
        sqlx::query_scalar("SELECT due_at FROM erasures WHERE patient_id = $1")
            .bind(patient)
            .fetch_one(&mut *conn)
            .await?,
    )
}
