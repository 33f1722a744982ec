//! Notifications and their deliveries (one per channel). Parameters (codes, reset links) and
//! addresses arrive here sealed; statuses, reasons and instants are in clear.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::Result;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct NotificationRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub template: String,
    pub urgent: bool,
    pub caller_workload: String,
    pub idempotency_key: String,
    pub params: Vec<u8>,
    pub channels: Vec<String>,
    pub direct_address: Option<Vec<u8>>,
    pub time_zone: String,
    pub quiet_start: i16,
    pub quiet_end: i16,
    pub created_at: DateTime<Utc>,
}

const NOTIFICATION_COLUMNS: &str = "id, user_id, template, urgent, caller_workload, \
    idempotency_key, params, channels, direct_address, time_zone, quiet_start, quiet_end, \
    created_at";

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub notification_id: Uuid,
    pub channel: String,
    pub status: String,
    pub reason: Option<String>,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
}

const DELIVERY_COLUMNS: &str =
    "id, notification_id, channel, status, reason, attempts, next_attempt_at, sent_at";

/// The notification `workload` stored under `key`, if any.
pub async fn find_by_key(
    conn: &mut PgConnection,
    workload: &str,
    key: &str,
) -> Result<Option<NotificationRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications
          WHERE caller_workload = $1 AND idempotency_key = $2"
    ))
    .bind(workload)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<NotificationRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Inserts `n` unless its (workload, key) is taken; whether it was inserted. A concurrent
/// insert of the same key waits here for the other transaction and then finds it taken.
pub async fn insert(conn: &mut PgConnection, n: &NotificationRow) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO notifications
             (id, user_id, template, urgent, caller_workload, idempotency_key, params, channels,
              direct_address, time_zone, quiet_start, quiet_end)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (caller_workload, idempotency_key) DO NOTHING",
    )
    .bind(n.id)
    .bind(n.user_id)
    .bind(&n.template)
    .bind(n.urgent)
    .bind(&n.caller_workload)
    .bind(&n.idempotency_key)
    .bind(&n.params)
    .bind(&n.channels)
    .bind(&n.direct_address)
    .bind(&n.time_zone)
    .bind(n.quiet_start)
    .bind(n.quiet_end)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1)
}

/// A delivery to insert: pending (due at `next_attempt_at`) or already settled (skipped).
pub struct NewDelivery {
    pub id: Uuid,
    pub notification_id: Uuid,
    pub channel: &'static str,
    pub status: &'static str,
    pub reason: Option<&'static str>,
    pub address: Option<Vec<u8>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

pub async fn insert_delivery(conn: &mut PgConnection, d: &NewDelivery) -> Result<()> {
    sqlx::query(
        "INSERT INTO notification_deliveries
             (id, notification_id, channel, status, reason, address, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(d.id)
    .bind(d.notification_id)
    .bind(d.channel)
    .bind(d.status)
    .bind(d.reason)
    .bind(&d.address)
    .bind(d.next_attempt_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn deliveries(conn: &mut PgConnection, notification: Uuid) -> Result<Vec<DeliveryRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM notification_deliveries
          WHERE notification_id = $1 ORDER BY channel"
    ))
    .bind(notification)
    .fetch_all(&mut *conn)
    .await?)
}

/// A delivery a worker claimed, with what it needs to send it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub notification_id: Uuid,
    pub channel: String,
    /// Including this one.
    pub attempts: i32,
    pub address: Option<Vec<u8>>,
    /// Proves the claim is still this worker's when it reports back.
    pub claim: Uuid,
    pub user_id: Uuid,
    pub template: String,
    pub urgent: bool,
    pub params: Vec<u8>,
    pub time_zone: String,
    pub quiet_start: i16,
    pub quiet_end: i16,
}

/// Claims up to `limit` due deliveries for `lease`: `FOR UPDATE SKIP LOCKED`, so that replicas
/// never claim the same row, and a lease, so that a replica that dies mid-send leaves its rows
/// to the others once the lease ends. Counts the attempt now: a crash mid-send still counts.
pub async fn claim_due(
    pool: &PgPool,
    limit: i64,
    lease: std::time::Duration,
) -> Result<Vec<Claimed>> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    Ok(sqlx::query_as(
        "WITH due AS (
             SELECT id FROM notification_deliveries
              WHERE status = 'pending' AND next_attempt_at <= now()
                AND (lease_until IS NULL OR lease_until < now())
              ORDER BY next_attempt_at
              LIMIT $1
              FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE notification_deliveries d
                SET attempts = d.attempts + 1,
                    claim = gen_random_uuid(),
                    lease_until = now() + make_interval(secs => $2::double precision / 1000),
                    updated_at = now()
               FROM due WHERE d.id = due.id
             RETURNING d.id, d.notification_id, d.channel, d.attempts, d.address, d.claim
         )
         SELECT c.id, c.notification_id, c.channel, c.attempts, c.address, c.claim,
                n.user_id, n.template, n.urgent, n.params, n.time_zone, n.quiet_start,
                n.quiet_end
           FROM claimed c JOIN notifications n ON n.id = c.notification_id",
    )
    .bind(limit)
    .bind(lease_ms)
    .fetch_all(pool)
    .await?)
}

/// How a claimed delivery ended.
pub enum Settled<'a> {
    Sent { provider_ref: Option<&'a str> },
    Skipped { reason: &'a str },
    Failed { reason: &'a str },
    Retry { at: DateTime<Utc>, reason: &'a str },
}

/// Records how the claimed delivery `c` ended, if the claim is still its own (a worker whose
/// lease ran out lost the row to another and must not overwrite that one's outcome); whether it
/// was.
pub async fn settle(pool: &PgPool, c: &Claimed, outcome: &Settled<'_>) -> Result<bool> {
    let (status, reason, next, provider_ref): (&str, Option<&str>, Option<DateTime<Utc>>, _) =
        match *outcome {
            Settled::Sent { provider_ref } => ("sent", None, None, provider_ref),
            Settled::Skipped { reason } => ("skipped", Some(reason), None, None),
            Settled::Failed { reason } => ("failed", Some(reason), None, None),
            Settled::Retry { at, reason } => ("pending", Some(reason), Some(at), None),
        };
    Ok(sqlx::query(
        "UPDATE notification_deliveries
            SET status = $3, reason = $4, next_attempt_at = $5, provider_ref = $6,
                sent_at = CASE WHEN $3 = 'sent' THEN now() ELSE sent_at END,
                lease_until = NULL, claim = NULL, updated_at = now()
          WHERE id = $1 AND claim = $2 AND status = 'pending'",
    )
    .bind(c.id)
    .bind(c.claim)
    .bind(status)
    .bind(reason)
    .bind(next)
    .bind(provider_ref)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}
