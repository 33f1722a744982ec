//! Refunds: the intent stored before the processor is called, its lease, its outcome.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RefundRow {
    pub id: Uuid,
    pub actor: String,
    pub idempotency_key: String,
    pub request_hash: Vec<u8>,
    pub payment_id: Uuid,
    pub invoice_id: Uuid,
    pub patient_id: Uuid,
    pub currency: String,
    pub amount_minor: i64,
    pub reason: String,
    pub status: String,
    pub failure_code: Option<String>,
    pub processor_refund_id: Option<String>,
    pub locked_until: Option<DateTime<Utc>>,
    pub status_event_created: Option<i64>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub succeeded_time: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, actor, idempotency_key, request_hash, payment_id, invoice_id, patient_id, currency, amount_minor, reason, status, failure_code, processor_refund_id, locked_until, status_event_created, create_time, update_time, succeeded_time";

pub async fn by_key(
    conn: &mut PgConnection,
    actor: &str,
    key: &str,
) -> sqlx::Result<Option<RefundRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE actor = $1 AND idempotency_key = $2 FOR UPDATE"
    ))
    .bind(actor)
    .bind(key)
    .fetch_optional(conn)
    .await
}

pub async fn lock(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<RefundRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn lock_by_processor_id(
    conn: &mut PgConnection,
    processor_refund_id: &str,
) -> sqlx::Result<Option<RefundRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE processor_refund_id = $1 FOR UPDATE"
    ))
    .bind(processor_refund_id)
    .fetch_optional(conn)
    .await
}

pub async fn of_payment(conn: &mut PgConnection, payment: Uuid) -> sqlx::Result<Vec<RefundRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE payment_id = $1 ORDER BY create_time, id"
    ))
    .bind(payment)
    .fetch_all(conn)
    .await
}

/// What refunds still in flight hold of the payment.
pub async fn reserved(conn: &mut PgConnection, payment: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(amount_minor), 0)::bigint FROM refunds WHERE payment_id = $1 AND status = 'pending'",
    )
    .bind(payment)
    .fetch_one(conn)
    .await
}

#[allow(clippy::too_many_arguments)]
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    actor: &str,
    key: &str,
    request_hash: &[u8],
    payment: Uuid,
    invoice: Uuid,
    patient: Uuid,
    currency: &str,
    amount: i64,
    reason: &str,
    lease_secs: u64,
) -> sqlx::Result<RefundRow> {
    sqlx::query_as(&format!(
        "INSERT INTO refunds (id, actor, idempotency_key, request_hash, payment_id, invoice_id, patient_id,
             currency, amount_minor, reason, status, locked_until)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', now() + make_interval(secs => $11))
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(actor)
    .bind(key)
    .bind(request_hash)
    .bind(payment)
    .bind(invoice)
    .bind(patient)
    .bind(currency)
    .bind(amount)
    .bind(reason)
    .bind(lease_secs as f64)
    .fetch_one(conn)
    .await
}

pub async fn settle(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    failure_code: Option<&str>,
    processor_refund_id: Option<&str>,
    event_created: Option<i64>,
) -> sqlx::Result<RefundRow> {
    sqlx::query_as(&format!(
        "UPDATE refunds SET status = $2, failure_code = $3,
             processor_refund_id = COALESCE($4, processor_refund_id),
             status_event_created = COALESCE($5, status_event_created),
             locked_until = CASE WHEN $2 = 'pending' THEN locked_until END, update_time = now(),
             succeeded_time = CASE WHEN $2 = 'succeeded' THEN COALESCE(succeeded_time, now()) END
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(status)
    .bind(failure_code)
    .bind(processor_refund_id)
    .bind(event_created)
    .fetch_one(conn)
    .await
}

pub async fn succeeded_between(
    conn: &mut PgConnection,
    patient: Uuid,
    currency: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> sqlx::Result<Vec<RefundRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE patient_id = $1 AND currency = $2 AND status = 'succeeded'
           AND succeeded_time >= $3 AND succeeded_time < $4 ORDER BY succeeded_time, id"
    ))
    .bind(patient)
    .bind(currency)
    .bind(start)
    .bind(end)
    .fetch_all(conn)
    .await
}
