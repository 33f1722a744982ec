//! Payments: the intent stored before the processor is called, its lease, its outcome.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PaymentRow {
    pub id: Uuid,
    pub actor: String,
    pub idempotency_key: String,
    pub request_hash: Vec<u8>,
    pub invoice_id: Uuid,
    pub patient_id: Uuid,
    pub payment_method_id: Uuid,
    pub currency: String,
    pub amount_minor: i64,
    pub status: String,
    pub failure_code: Option<String>,
    pub processor: String,
    pub processor_payment_id: Option<String>,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub locked_until: Option<DateTime<Utc>>,
    pub status_event_created: Option<i64>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub succeeded_time: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, actor, idempotency_key, request_hash, invoice_id, patient_id, payment_method_id, currency, amount_minor, status, failure_code, processor, processor_payment_id, captured_minor, refunded_minor, locked_until, status_event_created, create_time, update_time, succeeded_time";

pub async fn by_key(
    conn: &mut PgConnection,
    actor: &str,
    key: &str,
) -> sqlx::Result<Option<PaymentRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE actor = $1 AND idempotency_key = $2 FOR UPDATE"
    ))
    .bind(actor)
    .bind(key)
    .fetch_optional(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<PaymentRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM payments WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn lock(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<PaymentRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn lock_by_processor_id(
    conn: &mut PgConnection,
    processor_payment_id: &str,
) -> sqlx::Result<Option<PaymentRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE processor_payment_id = $1 FOR UPDATE"
    ))
    .bind(processor_payment_id)
    .fetch_optional(conn)
    .await
}

/// A new pending intent, leased to the calling request for `lease_secs`.
#[allow(clippy::too_many_arguments)]
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    actor: &str,
    key: &str,
    request_hash: &[u8],
    invoice: Uuid,
    patient: Uuid,
    method: Uuid,
    currency: &str,
    amount: i64,
    processor: &str,
    lease_secs: u64,
) -> sqlx::Result<PaymentRow> {
    sqlx::query_as(&format!(
        "INSERT INTO payments (id, actor, idempotency_key, request_hash, invoice_id, patient_id, payment_method_id,
             currency, amount_minor, status, processor, locked_until)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, now() + make_interval(secs => $11))
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(actor)
    .bind(key)
    .bind(request_hash)
    .bind(invoice)
    .bind(patient)
    .bind(method)
    .bind(currency)
    .bind(amount)
    .bind(processor)
    .bind(lease_secs as f64)
    .fetch_one(conn)
    .await
}

/// Records an outcome.
pub async fn settle(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    failure_code: Option<&str>,
    processor_payment_id: Option<&str>,
    captured: i64,
    event_created: Option<i64>,
) -> sqlx::Result<PaymentRow> {
    sqlx::query_as(&format!(
        "UPDATE payments SET status = $2, failure_code = $3,
             processor_payment_id = COALESCE($4, processor_payment_id), captured_minor = $5,
             status_event_created = COALESCE($6, status_event_created), locked_until = NULL,
             update_time = now(),
             succeeded_time = CASE WHEN $2 = 'succeeded' THEN COALESCE(succeeded_time, now()) END
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(status)
    .bind(failure_code)
    .bind(processor_payment_id)
    .bind(captured)
    .bind(event_created)
    .fetch_one(conn)
    .await
}

pub async fn add_refunded(conn: &mut PgConnection, id: Uuid, amount: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE payments SET refunded_minor = refunded_minor + $2, update_time = now() WHERE id = $1")
        .bind(id)
        .bind(amount)
        .execute(conn)
        .await?;
    Ok(())
}

/// The patient's succeeded payments in [start, end), oldest first (statements).
pub async fn succeeded_between(
    conn: &mut PgConnection,
    patient: Uuid,
    currency: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> sqlx::Result<Vec<PaymentRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE patient_id = $1 AND currency = $2 AND status = 'succeeded'
           AND succeeded_time >= $3 AND succeeded_time < $4 ORDER BY succeeded_time, id"
    ))
    .bind(patient)
    .bind(currency)
    .bind(start)
    .bind(end)
    .fetch_all(conn)
    .await
}
